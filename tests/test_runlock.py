"""The run-folder lock: a second writer fails at once naming the folder and PID; a killed holder never blocks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _train_tiny import tiny_config

from emojidiff.runlock import ENV, LOCK_NAME, RunLocked, holder, run_lock

HELPER = Path(__file__).with_name("_train_tiny.py")
REPO = Path(__file__).resolve().parents[1]
TRY_LOCK = "import sys; from emojidiff.runlock import run_lock\nwith run_lock(sys.argv[1], 'test'): print('got it')"


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def test_two_training_processes_on_one_folder_the_second_fails_at_once_naming_folder_and_pid(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, str(HELPER), json.dumps(tiny_config(duration_kimg=40.0)), str(run)]  # long enough
    first = subprocess.Popen(cmd, env=_env())
    try:
        deadline = time.time() + 120
        while not holder(run).startswith(f"{first.pid} ") and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert holder(run) == f"{first.pid} training"
        t0 = time.time()
        second = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
        assert second.returncode != 0 and "RunLocked" in second.stderr
        msg = f"{run.resolve()}: training is running elsewhere (process {first.pid} holds {LOCK_NAME})"
        assert msg in second.stderr
        assert time.time() - t0 < 60 and first.poll() is None  # refused at once; the first one keeps training

        # The console script says the same in one line, before touching the folder.
        params = tmp_path / "smoke.yaml"
        params.write_text((REPO / "params" / "smoke.yaml").read_text())
        cli = subprocess.run([str(REPO / ".venv" / "bin" / "emojidiff"), "train", "--params", str(params), "--out",
                              str(run)], env=_env(), capture_output=True, text=True, timeout=120)
        one_line = f"emojidiff train: RunLocked: {msg}; wait for it to finish or stop it, then retry"
        assert cli.returncode == 1 and cli.stderr.strip().splitlines() == [one_line]
        assert not (run / "config.yaml").exists()
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The OS released the killed process's lock: the next writer gets the folder although the file still names it.
    assert holder(run).startswith(f"{first.pid} ")
    with run_lock(run, "resumed"):
        assert holder(run) == f"{os.getpid()} resumed"


def test_nested_holds_and_children_of_the_holder_pass_other_processes_do_not(tmp_path):
    env_before = os.environ.get(ENV)
    with run_lock(tmp_path, "the study run") as folder:
        assert holder(tmp_path) == f"{os.getpid()} the study run"
        with run_lock(tmp_path / "train" / "w8", "training"):  # inside the held folder: no second lock
            pass
        with run_lock(tmp_path, "training"):  # nested in one process
            pass
        child = subprocess.run([sys.executable, "-c", TRY_LOCK, str(tmp_path)], capture_output=True, text=True,
                               timeout=60)  # a notebook kernel started by the runner inherits the hold
        assert child.returncode == 0, child.stderr
        stranger = subprocess.run([sys.executable, "-c", TRY_LOCK, str(tmp_path)], env=_env(), capture_output=True,
                                  text=True, timeout=60)
        assert stranger.returncode != 0
        assert f"{folder}: the study run is running elsewhere (process {os.getpid()}" in stranger.stderr
    assert os.environ.get(ENV) == env_before  # released: nothing leaks to later children
    with run_lock(tmp_path, "again"):
        assert holder(tmp_path) == f"{os.getpid()} again"
    with pytest.raises(RunLocked, match="training is running elsewhere"):
        blocker = subprocess.Popen([sys.executable, "-c", "import sys, time; from emojidiff.runlock import run_lock\n"
                                    "with run_lock(sys.argv[1]): print('ok', flush=True); time.sleep(60)",
                                    str(tmp_path)], env=_env(), stdout=subprocess.PIPE, text=True)
        try:
            assert blocker.stdout.readline().strip() == "ok"
            with run_lock(tmp_path):
                pass
        finally:
            blocker.kill()
            blocker.wait()
