"""The `data`, `train`, `sample`, `evaluate` and `posthoc-ema` subcommands and the sampling and time-to-quality
benchmarks end to end, each as its own process on a tiny profile."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

EXE = shutil.which("emojidiff", path=str(Path(sys.executable).parent)) or "emojidiff"


def _cli(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([EXE, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)
    assert proc.returncode == 0, f"emojidiff {args[0]}: {proc.stdout[-2000:]}{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def tiny_run(repo, tmp_path_factory):
    """The smoke profile cut to seconds (2 training steps, 8 samples, no Inception), trained by `emojidiff train`."""
    root = tmp_path_factory.mktemp("cli")
    profile = yaml.safe_load((repo / "params" / "smoke.yaml").read_text())
    profile["name"] = "tiny"
    profile["train"].update(duration_kimg=0.032, snapshot_kimg=0.032, checkpoint_kimg=0.032, precision="fp32")
    profile["sample"].update(num_steps=2, num_images=8, batch_size=8)
    profile["eval"].update(inception=False, kid_subsets=2, kid_subset_size=4, domain_epochs=1)
    params = root / "tiny.yaml"
    params.write_text(yaml.safe_dump(profile))
    out = root / "run"
    _cli("train", "--params", str(params), "--out", str(out), cwd=root)
    return params, out


def test_data_builds_the_profile_dataset_and_writes_its_summary(tiny_run):
    params, out = tiny_run
    summary = out / "data_summary.json"
    text = _cli("data", "--params", str(params), "--out", str(summary), cwd=out.parent)
    got = json.loads(summary.read_text())
    assert got["faces"] == 8 and got["pairs"] == 8 * 7  # smoke: the first 8 core faces, all ordered pairs
    assert got["train"] + got["holdout"] == got["rows"] and got["holdout"] > 0
    assert 0.5 < got["sigma_data"] < 0.8  # measured on the fusions
    assert f"pairs: {got['pairs']}" in text


def test_sample_draws_the_requested_images_from_the_latest_snapshot(tiny_run):
    params, out = tiny_run
    text = _cli("sample", "--params", str(params), "--out", str(out), "--num", "6", "--seed", "5", cwd=out.parent)
    path = Path(text.strip().splitlines()[-1].split(": ", 1)[1])
    assert path.parent == out / "samples" / "w16" and path.is_file()
    with np.load(path) as f:
        images = f["images"]
    assert images.shape == (6, 32, 32, 3) and images.dtype == np.uint8
    assert images.std() > 0  # not a blank image set
    again = _cli("sample", "--params", str(params), "--out", str(out), "--num", "6", "--seed", "5", cwd=out.parent)
    assert again == text  # the same file, reused


def test_evaluate_writes_finite_metrics_for_every_snapshot(tiny_run):
    params, out = tiny_run
    _cli("evaluate", "--params", str(params), "--out", str(out), cwd=out.parent)
    df = pd.read_csv(out / "metrics" / "metrics.csv")
    assert df["width"].tolist() == [16] and df["kimg"].tolist() == pytest.approx([0.032])
    assert df["num_samples"].tolist() == [8]
    for col in ("mean_mse", "fid_domain", "kid_domain_mean"):
        assert math.isfinite(df[col].iloc[0]), col
    assert 0.0 < df["mean_mse"].iloc[0] < 4.0  # [-1, 1] scale: a MSE lies in [0, 4]
    assert json.loads((out / "metrics" / "metrics_notes.json").read_text())["num_images"] == 8


@pytest.mark.parametrize("reference_steps", [0, 2])
def test_the_sampling_benchmark_scores_each_solver_and_plots_only_measured_panels(tiny_run, repo, reference_steps):
    params, out = tiny_run
    plot = out.parent / f"nfe-{reference_steps}.png"
    args = [sys.executable, str(repo / "bench" / "sampling_nfe.py"), str(out), "--params", str(params),
            "--no-inception", "--num-images", "4", "--batch-size", "4", "--heun", "2", "--euler", "2,3",
            "--dpmpp2m", "2", "--reference-steps", str(reference_steps), "--reference-images", "4",
            "--speed", "", "--plot", str(plot)]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=out.parent, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.split()[:1] in (["heun"], ["euler"], ["dpmpp2m"])]
    assert [(r[0], int(r[1]), int(r[2])) for r in rows] == [("heun", 2, 3), ("euler", 2, 2), ("euler", 3, 3),
                                                             ("dpmpp2m", 2, 2)]  # solver, steps, NFE
    assert all(r[3] == "nan" for r in rows)  # no Inception: FID not computed
    assert all((r[5] == "nan") == (reference_steps == 0) for r in rows)  # reference distance only with a reference
    from PIL import Image

    width = Image.open(plot).size[0]  # one panel per measured quantity: MeanMSE, plus the distance with a reference
    assert width == pytest.approx(120 * 4.7 * (1 + (reference_steps > 0)), abs=2)


def test_posthoc_ema_rebuilds_a_power_ema_run_and_refuses_others_by_name(tiny_run, tmp_path):
    params, out = tiny_run
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    half_life = subprocess.run([EXE, "posthoc-ema", str(out / "train" / "w16"), "--std", "0.05"], capture_output=True,
                               text=True, env=env, timeout=300)
    assert half_life.returncode == 1 and "ema_std" in half_life.stderr
    bad = subprocess.run([EXE, "posthoc-ema", str(out / "train" / "w16"), "--std", "0.5"], capture_output=True,
                         text=True, env=env, timeout=300)
    assert bad.returncode == 2 and "--std must be in (0, 0.2887), got 0.5" in bad.stderr

    profile = yaml.safe_load(params.read_text())
    profile["train"].update(ema_std=0.1, duration_kimg=0.064)
    power = tmp_path / "power.yaml"
    power.write_text(yaml.safe_dump(profile))
    _cli("train", "--params", str(power), "--out", str(tmp_path / "run"), cwd=tmp_path)
    text = _cli("posthoc-ema", str(tmp_path / "run" / "train" / "w16"), "--std", "0.05", "0.1", cwd=tmp_path)
    assert "from 2 snapshots" in text
    files = sorted((tmp_path / "run" / "train" / "w16" / "posthoc").glob("ema-*-std*.json"))
    assert [json.loads(f.read_text())["posthoc"]["std"] for f in files] == [0.05, 0.1]
    assert json.loads(files[1].read_text())["posthoc"]["rel_error"] < 1e-9  # 0.1 is the trained profile


def test_the_time_to_quality_benchmark_scores_post_hoc_emas_beside_the_trained_one(tiny_run, repo, tmp_path):
    params, _ = tiny_run
    profile = yaml.safe_load(params.read_text())
    profile["train"].update(ema_std=0.1, ema_std_extra=0.05, snapshot_kimg=0.016)
    power = tmp_path / "power.yaml"
    power.write_text(yaml.safe_dump(profile))
    bench = [sys.executable, str(repo / "bench" / "time_to_quality.py"), "--budgets", "2", "--seconds",
             "--no-inception", "--num-images", "4", "--steps", "2", "--rate-guess", "20", "--out", str(tmp_path / "b")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    refused = subprocess.run([*bench, "--params", str(params), "--posthoc-std", "0.05"], capture_output=True,
                             text=True, cwd=tmp_path, timeout=300, env=env)
    assert refused.returncode != 0 and f"{params}" in refused.stderr and "half-life" in refused.stderr
    assert not (tmp_path / "b").exists()  # refused before any training
    proc = subprocess.run([*bench, "--params", str(power), "--posthoc-std", "0.05,0.2"], capture_output=True,
                          text=True, cwd=tmp_path, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r[0]: r for r in (line.split() for line in proc.stdout.splitlines()) if r[:1] and r[0].startswith("power")}
    assert list(rows) == ["power", "power@0.05", "power@0.2"]
    assert rows["power"][-1] == "nan" and float(rows["power@0.05"][-1]) < 1e-6  # 0.05 is the stored second EMA
    assert 0 <= float(rows["power@0.2"][-1]) < 1  # longer than both: fitted, with its residual shown
    rebuilt = sorted((tmp_path / "b" / "power").rglob("posthoc/ema-*-std0p200.json"))
    assert len(rebuilt) == 1 and json.loads(rebuilt[0].read_text())["posthoc"]["std"] == 0.2
    assert all(r[2] == rows["power"][2] for r in rows.values())  # same budget, same kimg
