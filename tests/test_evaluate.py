"""Evaluation over training: snapshot choice, the CSV (floors, rates, memoriser), claims, Inception unavailable."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import emojidiff
import emojidiff.training.checkpoint as ckpt
from emojidiff.config import ModelConfig
from emojidiff.evaluation.evaluate import evaluate
from emojidiff.model.edm import build_denoiser

SMOKE = Path(__file__).resolve().parents[1] / "params" / "smoke.yaml"



def _tiny_run(tmp_path):
    """A smoke config shrunk to seconds, with two random-weight EMA snapshots saved in tmp_path."""
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
    return cfg, layout


def test_evaluate_writes_metrics_with_floors_rates_and_memoriser_distance(tmp_path):
    from emojidiff.evaluation.copies import classify_samples, holdout_share, probe_verdict

    cfg, layout = _tiny_run(tmp_path)
    cfg.eval.inception = False
    cfg.eval.kid_subset_size = 1000  # more than the 6 samples: clipped, warned and recorded
    with pytest.warns(UserWarning, match="clipped to \\[6\\]"):
        df = evaluate(cfg, tmp_path, progress=False)
    csv = pd.read_csv(layout.metrics / "metrics.csv")
    assert list(csv.kimg) == [0.1, 0.2] and (csv.width == 16).all() and (csv.num_samples == 6).all()
    assert (csv.kid_subset_size == 6).all()
    # MeanMSE and the domain FID/KID are filled in, with their floors; Inception is NaN, never a silent zero
    assert (csv.mean_mse > 0).all() and np.isfinite(csv.fid_domain).all() and (csv.fid_domain > 0).all()
    assert np.isfinite(csv.kid_domain_mean).all()
    assert csv.fid_inception.isna().all() and csv.fid_inception_floor_train.isna().all()
    for c in ("fid_domain_floor_train", "fid_domain_floor_holdout", "kid_domain_floor_train",
              "kid_domain_floor_holdout"):
        assert np.isfinite(csv[c]).all() and csv[c].nunique() == 1, c  # one floor per sample count
    ds = emojidiff.data.dataset.dataset_from_config(cfg, progress=False)
    assert csv.floor_holdout_n.iloc[0] == min(6, len(ds.holdout_images()))
    # random-weight nets draw noise, far from every real image: far above the floor of real training images
    assert (csv.fid_domain > csv.fid_domain_floor_train).all()
    # rates with intervals, from classify_samples (mirrors included)
    images, _ = emojidiff.load_samples(layout, 16, kimg=0.2)
    table = classify_samples(images, ds, xflip=cfg.train.xflip)
    assert math.isclose(df.mean_mse.iloc[1], table.nearest_train_mse.mean(), rel_tol=1e-9)
    assert df.copy_rate.iloc[1] == (table.verdict == "copy").mean()
    for v in ("copy", "unseen_fusion", "neither"):
        assert ((csv[f"{v}_lo"] <= csv[f"{v}_rate"]) & (csv[f"{v}_rate"] <= csv[f"{v}_hi"])).all()
    assert np.allclose(csv.copy_rate + csv.unseen_fusion_rate + csv.neither_rate, 1)
    assert (csv.neither_hi - csv.neither_lo > 0.2).all()  # 6 samples: a wide interval, not a bare 100%
    hits = int((table.verdict == "unseen_fusion").sum())
    close = int(table.verdict.isin(["copy", "unseen_fusion"]).sum())
    assert df.probe_verdict.iloc[1] == probe_verdict(hits, close, holdout_share(ds))  # the probe's one line
    # the memoriser's samples are drawn once, from the same seeds, and are copies
    mem_files = list((layout.root / "samples" / "memoriser").glob("memoriser-n6-seed0-steps2-*.npz"))
    assert len(mem_files) == 1
    with np.load(mem_files[0]) as f:
        mem = f["images"]
    assert (classify_samples(mem, ds, xflip=cfg.train.xflip).verdict == "copy").all()
    d = emojidiff.evaluation.metrics.paired_mse(images, mem)
    assert math.isclose(df.memoriser_mse.iloc[1], d.mean(), rel_tol=1e-9)
    assert math.isclose(df.memoriser_mse_median.iloc[1], np.median(d), rel_tol=1e-9)
    assert (csv.memoriser_mse > 0.05).all()  # noise-like samples are far from the copier's images
    notes = json.loads((layout.metrics / "metrics_notes.json").read_text())
    assert notes["memoriser"]["num_images"] == 6 and notes["memoriser"]["seconds"] >= 0
    assert notes["thresholds"]["copy_mse"] > 0 and notes["kid_subset_size_used"] == [6]
    # evaluate draws nothing; a second call reuses the memoriser's samples (same file, same numbers)
    assert not layout.figures.exists() or not any(layout.figures.iterdir())
    mtime = mem_files[0].stat().st_mtime_ns
    again = evaluate(cfg, tmp_path, progress=False)
    assert mem_files[0].stat().st_mtime_ns == mtime
    pd.testing.assert_frame_equal(again, df)
    # the plot functions return figures from the table and save nothing
    import matplotlib.figure

    ev = emojidiff.evaluation.evaluate
    for plot in (ev.plot_over_training, ev.plot_width_over_training, ev.plot_copy_rates, ev.plot_memoriser_distance):
        assert isinstance(plot(csv), matplotlib.figure.Figure)
    assert not layout.figures.exists() or not any(layout.figures.iterdir())


def test_evaluate_reports_inception_unavailable(tmp_path, monkeypatch):
    import emojidiff.evaluation.evaluate
    import emojidiff.evaluation.features

    def unavailable(*args, **kwargs):
        raise emojidiff.evaluation.features.InceptionUnavailable("simulated: no weights; set eval.inception_weights")

    monkeypatch.setattr(emojidiff.evaluation.evaluate, "load_inception", unavailable)  # the name evaluate() calls
    cfg, layout = _tiny_run(tmp_path)
    cfg.eval.domain_features = False
    with pytest.warns(UserWarning, match="simulated: no weights"):
        df = evaluate(cfg, tmp_path, progress=False)
    assert df.fid_inception.isna().all() and df.kid_inception_mean.isna().all()
    assert df.fid_domain.isna().all() and df.fid_inception_floor_holdout.isna().all()
    notes = json.loads((layout.metrics / "metrics_notes.json").read_text())
    assert "simulated: no weights" in notes["inception"]
    assert (df.mean_mse > 0).all() and (df.memoriser_mse > 0).all()  # the pixel metrics still run


def test_evaluate_without_snapshots_says_what_to_run(tmp_path):
    cfg = emojidiff.load_config(SMOKE)
    cfg.eval.inception, cfg.eval.domain_features = False, False
    with pytest.raises(FileNotFoundError, match="02_training"):
        evaluate(cfg, tmp_path, progress=False)


def test_check_claims_in_words():
    from emojidiff.evaluation.evaluate import check_claims

    df = pd.DataFrame({"width": [32] * 5 + [64] * 5, "kimg": [10, 20, 30, 40, 50] * 2,
                       "fid_domain": [50, 11, 10, 10, 10, 60, 40, 30, 12, 11],
                       "kid_domain_mean": [1, .1, .1, .1, .1, 1, .5, .3, .1, .1],
                       "mean_mse": [.5, .3, .2, .15, .1] * 2})
    text = "\n".join(check_claims(df))
    assert "width 32, domain features: FID settles (within 10% of its range of the final value) at 20 kimg" in text
    assert "an early plateau, as the seed says" in text and "no early plateau" in text  # w32 early, w64 late
    assert "it keeps falling, as the seed says" in text
    assert "the widest is not the fastest" in text


def _claims_frame(fid32):
    return pd.DataFrame({"width": [32] * 4, "kimg": [10, 20, 30, 40], "fid_domain": fid32,
                         "kid_domain_mean": [1, .5, .3, .1], "mean_mse": [.5, .3, .2, .1], "num_samples": 500})


def test_check_claims_when_fid_settles_only_at_the_last_snapshot():
    from emojidiff.evaluation.evaluate import check_claims

    # FID still falling at the end: it "settles" only at the last snapshot, so one row lies after it
    text = "\n".join(check_claims(_claims_frame([50, 40, 30, 10])))
    assert "settle only at the last snapshot (40 kimg)" in text and "not testable here" in text
    assert "it does not keep falling" not in text and "it keeps falling" not in text  # no verdict from one row
    assert "0.5000 -> 0.1000" in text  # the whole run's MeanMSE is still reported
    # settling one snapshot earlier leaves two rows: a verdict on them
    text = "\n".join(check_claims(_claims_frame([50, 40, 10, 10]).assign(kid_domain_mean=[1, .5, .1, .1])))
    assert "over the 2 snapshots from 30 kimg" in text and "it keeps falling, as the seed says" in text


def test_check_claims_reads_floors_and_memoriser_distance():
    from emojidiff.evaluation.evaluate import check_claims

    df = _claims_frame([50, 40, 30, 10]).assign(
        fid_domain_floor_train=2.0, fid_domain_floor_holdout=4.0, kid_domain_floor_train=0.0,
        kid_domain_floor_holdout=0.01, floor_holdout_n=380, kid_subset_size=500, memoriser_mse=0.02,
        memoriser_mse_median=0.01, memoriser_match_rate=0.25, copy_rate=0.1, copy_lo=0.08, copy_hi=0.13,
        unseen_fusion_rate=0.05, unseen_fusion_lo=0.03, unseen_fusion_hi=0.07, probe_verdict="undecided")
    text = "\n".join(check_claims(df))
    assert "FID 10 against floors 2 (500 training images) and 4 (380 held-out images)" in text
    assert "5.0x its training floor" in text and "(subset size 500)" in text
    assert "MSE 0.0200 (median 0.0100) from the ideal memoriser's samples" in text and "25%" in text
    assert "copies 10.0% [95% CI 8.0%, 13.0%], unseen fusions 5.0% [3.0%, 7.0%] of 500 samples; probe: undecided" \
        in text
