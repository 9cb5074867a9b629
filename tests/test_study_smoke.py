"""The whole study, end to end: `emojidiff run` with the smoke profile executes every notebook."""

import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from emojidiff.runner import find_notebooks


@pytest.fixture(scope="module")
def smoke_run(repo, tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "smoke"
    exe = shutil.which("emojidiff", path=str(Path(sys.executable).parent)) or "emojidiff"
    cmd = [exe, "run", "--params", str(repo / "params" / "smoke.yaml"), "--out", str(out), "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=repo, timeout=900)
    return proc, out, cmd


def test_every_notebook_runs_with_the_smoke_profile(smoke_run, repo):
    proc, out, _ = smoke_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for nb in find_notebooks(repo / "notebooks"):
        executed = nbformat.read(out / "notebooks" / nb.name, as_version=4)
        errors = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])
                  if o.get("output_type") == "error"]
        assert not errors, f"{nb.name}: {errors[:1]}"
        assert f"{nb.stem}: done in" in proc.stdout
    assert (out / "config.yaml").is_file()
    assert any((out / "figures").glob("*.png"))


def test_a_second_run_redoes_nothing(smoke_run):
    proc, out, cmd = smoke_run
    assert proc.returncode == 0
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "running" not in again.stdout and again.stdout.count("up to date") == len(
        list((out / "notebooks").glob("*.ipynb")))


def test_the_smoke_study_computes_sane_numbers(smoke_run):
    import math

    import pandas as pd

    proc, out, _ = smoke_run
    assert proc.returncode == 0
    df = pd.read_csv(out / "metrics" / "metrics.csv")
    assert len(df) >= 1 and set(df["width"]) == {16}
    for col in ("mean_mse", "fid_domain", "kid_domain_mean", "copy_rate"):
        assert df[col].map(math.isfinite).all(), f"{col}: {df[col].tolist()}"
    # [-1, 1] scale: 0 would be a perfect copy, about 1 is noise against a face; a few hundred images of
    # training give blurry faces in between
    assert ((df["mean_mse"] > 0.0) & (df["mean_mse"] < 1.5)).all(), df["mean_mse"].tolist()
    assert (df["fid_domain"] >= 0).all() and df["copy_rate"].between(0, 1).all()
    # the copy rule's controls: the memoriser copies, the generaliser makes unseen fusions, nonsense is neither
    controls = pd.read_csv(out / "metrics" / "copy_controls.csv").set_index("set")
    assert controls.loc["memoriser", "copy_rate"] >= 0.95
    assert controls.loc["generaliser", "copy_rate"] <= 0.05
    assert controls.loc["generaliser", "unseen_fusion_rate"] >= 0.95
    assert controls.loc["nonsense", ["copy_rate", "unseen_fusion_rate"]].sum() == 0


def test_the_smoke_study_runs_the_kitchen(smoke_run, repo):
    import pandas as pd

    import emojidiff

    proc, out, _ = smoke_run
    assert proc.returncode == 0 and "07_kitchen: done in" in proc.stdout
    cfg = emojidiff.load_config(repo / "params" / "smoke.yaml")
    assert cfg.model.conditional, "the smoke profile covers 07 with a conditional net"
    for w in cfg.model.widths:
        summary = pd.read_csv(out / "metrics" / f"kitchen_summary_w{w}.csv").set_index("group")
        assert set(summary.index) == {"held-out", "training"}
        assert (summary["samples"] == summary["pairs"] * cfg.kitchen.samples).all()
        for rate in ("closer", "copied", "parent_acc"):
            assert summary[rate].between(0, 1).all() and (summary[f"{rate}_lo"] <= summary[rate]).all()
        sweep = pd.read_csv(out / "metrics" / f"kitchen_sweep_w{w}.csv")
        assert sweep["guidance"].tolist() == cfg.kitchen.sweep and (sweep["diversity"] > 0).all()
        for fig in ("gap", "sweep", "gallery_held-out", "gallery_training"):
            assert (out / "figures" / f"kitchen_{fig}_w{w}.png").is_file(), fig


def test_the_smoke_study_runs_the_transition(smoke_run, repo):
    import pandas as pd

    import emojidiff

    proc, out, _ = smoke_run
    assert proc.returncode == 0 and "08_transition: done in" in proc.stdout
    cfg = emojidiff.load_config(repo / "params" / "smoke.yaml")
    table = pd.read_csv(out / "metrics" / "transition.csv")
    assert table["N"].nunique() == len(cfg.transition.ladder)  # both N of the tiny ladder (0 resolved)
    assert (table.groupby("N").size() == cfg.transition.snapshots).all()
    assert (table["samples"] == cfg.transition.samples).all()
    assert table["disagreement_ratio"].ge(0).all() and table[["copy_own", "copy_other"]].stack().between(0, 1).all()
    for fig in ("transition", "transition_mean_mse", "transition_galleries"):
        assert (out / "figures" / f"{fig}.png").is_file(), fig
