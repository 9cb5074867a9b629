"""The console script: user errors are one line on stderr and a non-zero exit; --debug shows the traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from emojidiff.runlock import ENV

REPO = Path(__file__).resolve().parents[1]
EMOJIDIFF = REPO / ".venv" / "bin" / "emojidiff"


def _cli(*args, **env) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in (ENV, "EMOJIDIFF_DEBUG")}
    return subprocess.run([str(EMOJIDIFF), *map(str, args)], capture_output=True, text=True, timeout=300,
                          env={**base, "OMP_NUM_THREADS": "1", **env})


def _profile(tmp_path, **train) -> Path:
    profile = yaml.safe_load((REPO / "params" / "smoke.yaml").read_text())
    profile["train"].update(train)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(profile))
    return path


def _one_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.mark.parametrize("command", ["train", "sample", "data", "evaluate"])
def test_a_bad_profile_is_one_line_and_exit_2_for_every_subcommand(tmp_path, command):
    params, out = _profile(tmp_path, lr=0), tmp_path / "out"
    extra = ["--out", out] if command in ("train", "sample") else []
    proc = _cli(command, "--params", params, *extra)
    assert proc.returncode == 2
    assert _one_line(proc) == f"emojidiff {command}: error: {params}: train.lr must be positive, got 0.0"
    assert not out.exists()


def test_debug_flag_or_environment_variable_shows_the_traceback(tmp_path):
    params = _profile(tmp_path, lr=-1)
    for proc in (_cli("--debug", "train", "--params", params), _cli("train", "--params", params, EMOJIDIFF_DEBUG="1")):
        assert proc.returncode != 0
        assert "Traceback (most recent call last)" in proc.stderr and "ConfigError: " in proc.stderr


def test_missing_inputs_and_unusable_checkpoints_are_one_line(tmp_path):
    params, out = _profile(tmp_path), tmp_path / "out"
    proc = _cli("sample", "--params", params, "--out", out)  # nothing trained yet
    assert proc.returncode == 1
    assert _one_line(proc).startswith(f"emojidiff sample: error: no usable EMA snapshot in {out / 'train' / 'w16'}")
    w16 = out / "train" / "w16"
    w16.mkdir(parents=True)
    (w16 / "ckpt-00000005.json").write_text('{"format": "emojidiff-checkpoint/1", "tensors": "ckpt-00000005.sa')
    (w16 / "metrics.jsonl").write_text('{"step": 5, "loss": 1.0}\n')
    proc = _cli("train", "--params", params, "--out", out)
    assert proc.returncode == 1
    warning, line = proc.stderr.strip().splitlines()  # warnings are one line too
    assert warning.startswith("emojidiff train: warning: skipping bad checkpoint ckpt-00000005.json: ")
    assert line.startswith(f"emojidiff train: CheckpointError: {w16}: no usable checkpoint") and "--no-resume" in line
    assert (w16 / "metrics.jsonl").read_text() == '{"step": 5, "loss": 1.0}\n' and (w16 / "bad").is_dir()


def test_training_diverged_is_one_line_in_process(tmp_path, monkeypatch, capsys):
    from emojidiff.cli import main

    train_mod = sys.modules["emojidiff.training.train"]

    def diverges(*a, **k):
        raise train_mod.TrainingDiverged("non-finite loss (nan) at step 3; stopped, no checkpoint was written yet")

    monkeypatch.setattr(train_mod, "train", diverges)
    assert main(["train", "--params", str(_profile(tmp_path))]) == 1
    assert capsys.readouterr().err == ("emojidiff train: TrainingDiverged: non-finite loss (nan) at step 3; stopped, "
                                       "no checkpoint was written yet\n")
    with pytest.raises(train_mod.TrainingDiverged):
        main(["--debug", "train", "--params", str(_profile(tmp_path))])
