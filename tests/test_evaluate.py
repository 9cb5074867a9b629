"""Evaluation over training: snapshot choice, the CSV and figures, and Inception reported unavailable offline."""

import json
import math
import urllib.error
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

import emojidiff
import emojidiff.checkpoint as ckpt
from emojidiff.config import ModelConfig
from emojidiff.edm import build_denoiser
from emojidiff.evaluate import evaluate, pick_snapshots

SMOKE = Path(__file__).resolve().parents[1] / "params" / "smoke.yaml"


def test_pick_snapshots():
    snaps = [(float(k), f"p{k}") for k in range(10)]
    assert pick_snapshots(snaps, "all") == snaps
    assert pick_snapshots(snaps, "last") == snaps[-1:]
    picked = pick_snapshots(snaps, "all", max_snapshots=4)
    assert [k for k, _ in picked] == [0.0, 3.0, 6.0, 9.0]
    assert pick_snapshots(snaps[:3], "all", max_snapshots=4) == snaps[:3]
    assert pick_snapshots([], "all") == []


def test_evaluate_offline_writes_csv_and_figures(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("simulated: no network")

    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", no_network)
    cfg = emojidiff.load_config(SMOKE)
    cfg.sample.num_images, cfg.sample.num_steps, cfg.sample.batch_size = 6, 2, 6
    cfg.eval.domain_epochs, cfg.eval.kid_subsets, cfg.eval.kid_subset_size = 1, 3, 4
    cfg.model.widths, cfg.train.precision, cfg.device = [16], "fp32", "cpu"
    layout = emojidiff.RunLayout(tmp_path)
    mc = ModelConfig(widths=[16], channel_mult=[1], num_blocks=1, attn_resolutions=[])
    for step, kimg in [(1, 0.1), (2, 0.2)]:
        torch.manual_seed(step)
        net = build_denoiser(mc, 16, cfg.data.size, 0.5)
        ckpt.save(layout.train(16) / f"ema-{step:08d}", {f"ema.{k}": v for k, v in net.state_dict().items()},
                  {"kimg": kimg, "width": 16, "img_resolution": cfg.data.size, "sigma_data": 0.5,
                   "model": mc.__dict__}, fmt=ckpt.EMA_FORMAT)
    with pytest.warns(UserWarning, match="eval.inception_weights"):
        df = evaluate(cfg, tmp_path, progress=False)
    csv = pd.read_csv(layout.metrics / "metrics.csv")
    assert list(csv.kimg) == [0.1, 0.2] and (csv.width == 16).all() and (csv.num_samples == 6).all()
    # MeanMSE and the domain FID/KID are filled in; Inception is NaN, never a silent zero
    assert (csv.mean_mse > 0).all() and np.isfinite(csv.fid_domain).all() and (csv.fid_domain > 0).all()
    assert np.isfinite(csv.kid_domain_mean).all()
    assert csv.fid_inception.isna().all() and csv.kid_inception_mean.isna().all()
    assert ((csv.copy_rate_ratio >= 0) & (csv.copy_rate_ratio <= 1)).all()
    notes = json.loads((layout.metrics / "metrics_notes.json").read_text())
    assert "simulated: no network" in notes["inception"] and "eval.inception_weights" in notes["inception"]
    assert (layout.figures / "fig4_fid_kid_over_training.png").is_file()
    assert (layout.figures / "fig5_meanmse_fid_kid_width.png").is_file()
    # MeanMSE agrees with nearest_mse on the saved samples
    images, _ = emojidiff.load_samples(layout, 16, kimg=0.2)
    train = emojidiff.dataset.dataset_from_config(cfg, progress=False).train_images()
    assert math.isclose(df.mean_mse.iloc[1], emojidiff.nearest_mse(images, train)[0].mean(), rel_tol=1e-9)


def test_evaluate_without_snapshots_says_what_to_run(tmp_path):
    cfg = emojidiff.load_config(SMOKE)
    cfg.eval.inception, cfg.eval.domain_features = False, False
    with pytest.raises(FileNotFoundError, match="02_training"):
        evaluate(cfg, tmp_path, progress=False)


def test_check_claims_in_words():
    from emojidiff.evaluate import check_claims

    df = pd.DataFrame({"width": [32] * 5 + [64] * 5, "kimg": [10, 20, 30, 40, 50] * 2,
                       "fid_domain": [50, 11, 10, 10, 10, 60, 40, 30, 12, 11],
                       "kid_domain_mean": [1, .1, .1, .1, .1, 1, .5, .3, .1, .1],
                       "mean_mse": [.5, .3, .2, .15, .1] * 2})
    text = "\n".join(check_claims(df))
    assert "width 32, domain features: FID settles (within 10% of its range of the final value) at 20 kimg" in text
    assert "an early plateau, as the seed says" in text and "no early plateau" in text  # w32 early, w64 late
    assert "it keeps falling, as the seed says" in text
    assert "the widest is not the fastest" in text
