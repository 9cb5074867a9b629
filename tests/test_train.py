"""Training: data order, loss parity with edm_loss, EMA, lr ramp-up and decay, NaN guard, kill-resume exactness."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from _train_tiny import synthetic_images, tiny_config
from safetensors.torch import load_file

import emojidiff
from emojidiff.config import config_from_dict
from emojidiff.layout import RunLayout
from emojidiff.training import checkpoint as ckpt
from emojidiff.training.batches import TrainingData, epoch_order, next_indices, training_data
from emojidiff.training.checkpoint import read_metrics, sample_grids
from emojidiff.training.distributed import resolve_precision
from emojidiff.training.ema import ema_beta, make_ema, update_ema
from emojidiff.training.train import TrainingDiverged, learning_rate, train_width

HELPER = Path(__file__).with_name("_train_tiny.py")


def _run(cfg_dict, layout, **kw):
    torch.set_num_threads(1)
    return train_width(config_from_dict(cfg_dict), layout, 8, images=synthetic_images(), progress=False, **kw)


def _final_tensors(train_dir: Path) -> dict:
    return load_file(sorted(Path(train_dir).glob("ckpt-*.safetensors"))[-1])


def test_epoch_order_is_a_seeded_permutation_and_batches_cross_epochs():
    a, b = epoch_order(10, 0, 0), epoch_order(10, 0, 0)
    assert torch.equal(a, b) and sorted(a.tolist()) == list(range(10))
    assert not torch.equal(a, epoch_order(10, 0, 1)) and not torch.equal(a, epoch_order(10, 1, 0))
    idx, epoch, pos = next_indices(10, 8, 0, 0, 6)  # 4 left in epoch 0, then 4 of epoch 1
    assert (epoch, pos) == (1, 4)
    assert idx.tolist() == epoch_order(10, 0, 0)[6:].tolist() + epoch_order(10, 0, 1)[:4].tolist()


def test_ema_beta_follows_edm_halflife_with_rampup():
    assert ema_beta(10**9, 64, 10.0, 0.05) == pytest.approx(0.5 ** (64 / 10_000))  # full half-life
    assert ema_beta(20_000, 64, 10.0, 0.05) == pytest.approx(0.5 ** (64 / 1_000))  # ramp-up: 5% of 20k
    assert ema_beta(0, 64, 10.0, 0.05) == 0.0  # first step copies the net
    assert ema_beta(0, 64, 10.0, None) == pytest.approx(0.5 ** (64 / 10_000))
    net = torch.nn.Linear(2, 2)
    ema = make_ema(net)
    with torch.no_grad():
        net.weight.add_(1.0)
    expected = 0.25 * ema.weight + 0.75 * net.weight
    update_ema(ema, net, 0.25)
    torch.testing.assert_close(ema.weight, expected)


def test_precision_choice():
    assert resolve_precision("fp32", torch.device("cpu")) is None
    assert resolve_precision("bf16", torch.device("cpu")) is torch.bfloat16
    # "auto" by the CPU flags and CUDA support: test_auto_precision_follows_the_cpu_flags


def test_training_writes_checkpoints_logs_grids_and_ramps_lr(tmp_path):
    cfg = tiny_config(duration_kimg=0.16, snapshot_kimg=0.08)
    s = _run(cfg, RunLayout(tmp_path))
    assert s["steps"] == 20 and s["kimg"] == pytest.approx(0.16) and np.isfinite(s["final_loss"])
    m = read_metrics(s["train_dir"])
    assert m["step"].tolist() == [10, 20]
    assert m["lr"].tolist() == pytest.approx([2e-3 * 80 / 100, 2e-3])  # ramp-up over 0.1 kimg
    assert [k for k, _ in emojidiff.list_snapshots(s["train_dir"])] == pytest.approx([0.08, 0.16])
    assert len(sample_grids(s["train_dir"])) == 2
    d = emojidiff.load_denoiser(s["train_dir"])
    assert not d.training and d.sigma_data == 0.6
    assert ckpt.weights_sha256(d) == s["ema_sha256"]
    # a finished run resumes to a no-op; --no-resume starts over and reproduces it bit for bit
    assert _run(cfg, RunLayout(tmp_path))["resumed_from"] is not None
    again = _run(cfg, RunLayout(tmp_path), resume=False)
    assert again["resumed_from"] is None and again["net_sha256"] == s["net_sha256"]
    other = tiny_config(duration_kimg=0.16, snapshot_kimg=0.08)
    other["model"]["channel_mult"] = [1, 1]
    with pytest.raises(ValueError, match=r"ckpt-00000020\.json: trained with other model settings \(channel_mult\)"):
        _run(other, RunLayout(tmp_path))
    with pytest.warns(UserWarning, match="changed train settings: duration_kimg"):
        assert _run(tiny_config(duration_kimg=0.176, snapshot_kimg=0.08), RunLayout(tmp_path))["steps"] == 22


def test_lr_decays_as_the_inverse_square_root_of_kimg_after_the_ramp_up(tmp_path):
    # EDM2 (Karras et al. 2024) eq. 16: alpha_ref / sqrt(max(t / t_ref, 1)), after our linear ramp-up
    tc = config_from_dict(tiny_config(lr_rampup_kimg=0.02, lr_decay_kimg=0.04)).train
    assert [learning_rate(tc, n) for n in (10, 30, 40, 160, 360)] == pytest.approx(
        [1e-3, 2e-3, 2e-3, 1e-3, 2e-3 / 3])
    assert learning_rate(replace(tc, lr_decay_kimg=0.0), 10**6) == pytest.approx(2e-3)  # 0: constant
    s = _run(tiny_config(duration_kimg=0.16, snapshot_kimg=0.08, lr_rampup_kimg=0.02, lr_decay_kimg=0.04),
             RunLayout(tmp_path))
    assert read_metrics(s["train_dir"])["lr"].tolist() == pytest.approx([2e-3 / np.sqrt(2), 1e-3])  # 80, 160 img


def _poison_loss_at(monkeypatch, step: int) -> dict:
    """Make the training loss NaN at one step; returns the call counter."""
    train_mod = sys.modules["emojidiff.training.train"]  # the module (emojidiff.train is the function)
    calls = {"n": 0}
    real = train_mod.edm_loss

    def poisoned(*a, **k):
        calls["n"] += 1
        loss = real(*a, **k)
        return loss * float("nan") if calls["n"] == step else loss

    monkeypatch.setattr(train_mod, "edm_loss", poisoned)
    return calls


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    _poison_loss_at(monkeypatch, 13)
    with pytest.raises(TrainingDiverged, match=r"non-finite loss.*step 13 .*ckpt-00000010\.json is kept"):
        _run(tiny_config(), RunLayout(tmp_path))
    kept = sorted((tmp_path / "train" / "w8").glob("ckpt-*.json"))
    assert [p.name for p in kept] == ["ckpt-00000005.json", "ckpt-00000010.json"]
    _, meta = ckpt.load(kept[-1])
    assert meta["step"] == 10


@pytest.mark.filterwarnings("ignore:resuming.*changed train settings")  # the part run was shorter
def test_truncated_latest_checkpoint_is_named_and_resume_uses_the_previous(tmp_path):
    ref = _run(tiny_config(duration_kimg=0.12), RunLayout(tmp_path / "ref"))
    part = RunLayout(tmp_path / "part")
    _run(tiny_config(duration_kimg=0.08), part)  # stops at step 10, checkpoints at 5 and 10
    bad = part.train(8) / "ckpt-00000010.safetensors"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    with pytest.warns(UserWarning, match=r"ckpt-00000010\.json.*checksum mismatch"):
        resumed = _run(tiny_config(duration_kimg=0.12), part)
    assert resumed["resumed_from"].endswith("ckpt-00000005.json")
    assert resumed["net_sha256"] == ref["net_sha256"] and resumed["ema_sha256"] == ref["ema_sha256"]


def test_sigkill_at_a_random_moment_then_resume_matches_uninterrupted_run(tmp_path):
    cfg = tiny_config(duration_kimg=0.32)  # 40 steps, checkpoint every 5
    _run(cfg, RunLayout(tmp_path / "ref"))  # in this process, one thread like the subprocess
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(HELPER), json.dumps(cfg)]

    run_dir = tmp_path / "killed" / "train" / "w8"
    for max_delay in (1.0, 0.2, 0.0):  # a shorter delay when fast hardware finished before the kill
        shutil.rmtree(tmp_path / "killed", ignore_errors=True)
        proc = subprocess.Popen([*cmd, str(tmp_path / "killed")], env=env)
        deadline = time.time() + 120
        while not list(run_dir.glob("ckpt-*.json")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
        time.sleep(random.uniform(0.0, max_delay))  # anywhere after the first checkpoint, even inside a save
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_at = max((json.loads(p.read_text())["step"] for p in run_dir.glob("ckpt-*.json")), default=0)
        if killed_at < 40:  # the final checkpoint was not yet written: resume has work to do
            break
    assert killed_at < 40, "the training finished before every kill: the resume was never exercised"
    subprocess.run([*cmd, str(tmp_path / "killed")], check=True, env=env, timeout=300)

    ref, got = _final_tensors(tmp_path / "ref" / "train" / "w8"), _final_tensors(run_dir)
    assert ref.keys() == got.keys()
    for k in ref:  # weights, EMA, Adam moments and RNG states: bit for bit
        assert torch.equal(ref[k], got[k]), f"{k} differs after resume (killed after step {killed_at})"
    steps = read_metrics(run_dir)["step"].tolist()
    assert steps == read_metrics(tmp_path / "ref" / "train" / "w8")["step"].tolist()  # no duplicated log lines
    assert not list((tmp_path / "killed").rglob(".*.tmp*"))  # a killed write's temporary file was removed
    assert _log(run_dir) == _log(tmp_path / "ref" / "train" / "w8"), f"killed after step {killed_at}"


def _log(train_dir: Path) -> list[dict]:
    """metrics.jsonl less its wall-clock fields: what must not change when a run is killed and resumed."""
    return read_metrics(train_dir).drop(columns=["img_per_s", "wall_s"]).to_dict("records")


def test_cli_trains_the_smoke_profile_on_the_real_dataset(tmp_path, capsys):
    import yaml

    from emojidiff.cli import main

    profile = yaml.safe_load((Path(__file__).parents[1] / "params" / "smoke.yaml").read_text())
    profile["train"].update(duration_kimg=0.032, snapshot_kimg=0.032, checkpoint_kimg=0.032, precision="fp32")
    profile["sample"]["num_steps"] = 2
    params = tmp_path / "tiny.yaml"
    params.write_text(yaml.safe_dump(profile))
    assert main(["train", "--params", str(params), "--out", str(tmp_path / "run")]) == 0
    assert "w16: 0.032 kimg, loss" in capsys.readouterr().out
    _, meta = ckpt.load(sorted((tmp_path / "run" / "train" / "w16").glob("ckpt-*.json"))[-1])
    assert meta["step"] == 2 and 0.5 < meta["sigma_data"] < 0.8  # measured on the fusions (about 0.67)
    assert (tmp_path / "run" / "config.yaml").is_file()


# --- issue 17: tests that catch silent training bugs (flip, scaling, clipping, EMA, bf16, retention) ---


def _noise_images(n: int = 24, size: int = 32) -> np.ndarray:
    """Random pixels: no symmetry, so a flipped image differs from the original everywhere."""
    return np.random.default_rng(7).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_one_step_matches_a_hand_computed_update(tmp_path):
    # Step 2 recomputed from checkpoint 1: x-flip, [-1, 1] scaling, gradient clipping, Adam with the ramped lr,
    # and the EMA update with its half-life beta (no ramp-up, so beta is far from 0).
    cfg = tiny_config(duration_kimg=0.016, checkpoint_kimg=0.008, snapshot_kimg=0.016, grad_clip=0.01,
                      ema_rampup_ratio=None)
    images = _noise_images()
    torch.set_num_threads(1)
    train_width(config_from_dict(cfg), RunLayout(tmp_path), 8, images=images, progress=False)
    run = tmp_path / "train" / "w8"
    t1, m1 = ckpt.load(run / "ckpt-00000001.json")
    t2, m2 = ckpt.load(run / "ckpt-00000002.json")
    tc = config_from_dict(cfg).train
    B = tc.batch_size
    net = emojidiff.build_denoiser(config_from_dict(cfg).model, 8, 32, m1["sigma_data"]).train()
    ema = make_ema(net)
    opt = torch.optim.Adam(net.parameters(), lr=tc.lr, betas=(0.9, 0.999), eps=1e-8)
    gen = torch.Generator()
    ckpt.restore_state(t1, m1, net, ema, opt, {"noise": gen})
    idx, _, _ = next_indices(len(images), B, cfg["seed"], m1["epoch"], m1["pos"])
    flip = torch.rand(B, generator=gen) < 0.5
    rnd_normal, noise = torch.randn(B, 1, 1, 1, generator=gen), torch.randn(B, 3, 32, 32, generator=gen)
    assert 0 < int(flip.sum()) < B  # this batch has flipped and unflipped images
    y = torch.from_numpy(images[idx.numpy()]).permute(0, 3, 1, 2).double() / 127.5 - 1
    y = torch.where(flip[:, None, None, None], y.flip(3), y).float()
    loss = emojidiff.edm_loss(net, y, tc.P_mean, tc.P_std, m1["sigma_data"], rnd_normal=rnd_normal,
                              noise=noise).mean()
    loss.backward()
    norm = torch.cat([p.grad.flatten() for p in net.parameters()]).norm()
    assert norm > 4 * tc.grad_clip  # clipping is active
    with torch.no_grad():
        for p in net.parameters():
            p.grad *= tc.grad_clip / (norm + 1e-6)
    for g in opt.param_groups:
        g["lr"] = tc.lr * 2 * B / (tc.lr_rampup_kimg * 1000)
    opt.step()
    got = {k[4:]: v for k, v in t2.items() if k.startswith("net.")}
    for k, v in net.state_dict().items():
        torch.testing.assert_close(got[k], v, msg=f"net.{k}: the step differs from the hand-computed one")
    beta = 0.5 ** (B / (tc.ema_halflife_kimg * 1000))  # about 0.95
    for k, v in got.items():
        want = beta * t1[f"ema.{k}"] + (1 - beta) * v
        torch.testing.assert_close(t2[f"ema.{k}"], want, msg=f"ema.{k}: not the EMA of the raw weights")


def test_bf16_training_really_autocasts_and_resumes_bit_for_bit(tmp_path, monkeypatch):
    train_mod = sys.modules["emojidiff.training.train"]
    seen = []
    real = train_mod.edm_loss

    def recording(*a, **k):
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return real(*a, **k)

    monkeypatch.setattr(train_mod, "edm_loss", recording)
    full = _run(tiny_config(duration_kimg=0.08, precision="bf16"), RunLayout(tmp_path / "full"))
    assert full["precision"] == "bf16" and seen and all(seen)
    fp32 = _run(tiny_config(duration_kimg=0.08, precision="fp32"), RunLayout(tmp_path / "fp32"))
    loss_bf16 = read_metrics(full["train_dir"])["loss"].iloc[0]
    loss_fp32 = read_metrics(fp32["train_dir"])["loss"].iloc[0]
    assert abs(loss_bf16 - loss_fp32) > 2e-6 * loss_fp32  # bf16 rounding shows (about 1e-5 here)
    assert full["net_sha256"] != fp32["net_sha256"]
    part = RunLayout(tmp_path / "part")
    _run(tiny_config(duration_kimg=0.04, precision="bf16"), part)
    with pytest.warns(UserWarning, match="changed train settings: duration_kimg"):
        resumed = _run(tiny_config(duration_kimg=0.08, precision="bf16"), part)
    assert resumed["resumed_from"].endswith("ckpt-00000005.json")
    assert resumed["net_sha256"] == full["net_sha256"] and resumed["ema_sha256"] == full["ema_sha256"]


def test_a_longer_run_leaves_exactly_the_retained_files(tmp_path):
    # 40 steps, a checkpoint and a snapshot every 5: the latest two checkpoints, and the snapshots thinned to
    # a doubling series (keep 3: after ordinals 1..8 only 4 and 8 survive, i.e. steps 20 and 40).
    cfg = tiny_config(duration_kimg=0.32, checkpoint_kimg=0.04, snapshot_kimg=0.04, max_snapshots=3)
    s = _run(cfg, RunLayout(tmp_path))
    assert s["steps"] == 40
    files = sorted(p.name for p in Path(s["train_dir"]).iterdir())
    want = [f"{kind}-{step:08d}.{ext}" for kind, steps, exts in
            [("ckpt", (35, 40), ("json", "safetensors")), ("ema", (20, 40), ("json", "png", "safetensors"))]
            for step in steps for ext in exts]
    assert files == sorted([*want, "metrics.jsonl"])


@pytest.mark.parametrize("flags, capability, want", [
    ("fpu avx2 avx512f avx512_bf16", "AVX512", torch.bfloat16),  # Zen 4 / Cooper Lake: native bf16 dot products
    ("fpu avx2 avx512f amx_bf16 amx_tile", "AVX512", torch.bfloat16),  # Sapphire Rapids: AMX
    ("fpu avx2 avx512f", "AVX512", None),  # AVX-512 without bf16: emulated bf16 is slower than fp32
    ("fpu avx2 avx512_bf16", "AVX2", None),  # the flag, but torch was not built to use it
    (None, "AVX512", None),  # no /proc/cpuinfo (not Linux)
])
def test_auto_precision_follows_the_cpu_flags(monkeypatch, flags, capability, want):
    real = Path.read_text

    def fake(self, *a, **k):
        if str(self) != "/proc/cpuinfo":
            return real(self, *a, **k)
        if flags is None:
            raise OSError("no such file")
        return f"processor\t: 0\nflags\t\t: {flags}\n"

    monkeypatch.setattr(Path, "read_text", fake)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert resolve_precision("auto", torch.device("cpu")) is want
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", torch.device("cuda")) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", torch.device("cuda")) is None


def test_a_folder_whose_checkpoints_are_all_unreadable_says_so_and_keeps_its_log(tmp_path):
    part = RunLayout(tmp_path / "part")
    first = _run(tiny_config(duration_kimg=0.08), part)  # checkpoints at steps 5 and 10
    out = part.train(8)
    for p in out.glob("ckpt-*.safetensors"):
        p.write_bytes(p.read_bytes()[:-9])
    log = (out / "metrics.jsonl").read_bytes()
    with pytest.warns(UserWarning) as rec:
        with pytest.raises(ckpt.CheckpointError, match=r"w8: no usable checkpoint .*pass --no-resume"):
            _run(tiny_config(duration_kimg=0.08), part)
    assert str(rec[-1].message).endswith("no usable checkpoint is left")
    assert (out / "metrics.jsonl").read_bytes() == log  # not erased by a silent restart
    assert sorted(p.name for p in (out / "bad").iterdir()) == [
        "ckpt-00000005.json", "ckpt-00000005.safetensors", "ckpt-00000010.json", "ckpt-00000010.safetensors"]
    again = _run(tiny_config(duration_kimg=0.08), part, resume=False)  # the user chooses to start over
    assert again["resumed_from"] is None and again["net_sha256"] == first["net_sha256"]


@pytest.mark.filterwarnings("ignore:resuming.*changed train settings")  # the part run was shorter
def test_unreadable_newer_checkpoints_are_moved_aside_and_never_make_cleanup_delete_good_ones(tmp_path):
    ref = _run(tiny_config(duration_kimg=0.12), RunLayout(tmp_path / "ref"))
    part = RunLayout(tmp_path / "part")
    _run(tiny_config(duration_kimg=0.08), part)  # checkpoints at steps 5 and 10
    out = part.train(8)
    for step in (98, 99):  # e.g. left by a crashed run with other settings, or damaged on disk
        (out / f"ckpt-{step:08d}.json").write_text("{not json")
        (out / f"ckpt-{step:08d}.safetensors").write_bytes(b"\0" * 64)
    with pytest.warns(UserWarning) as rec:
        resumed = _run(tiny_config(duration_kimg=0.12), part)
    said = [str(w.message) for w in rec if "bad checkpoint" in str(w.message)]
    assert [m.split(":")[0] for m in said] == ["skipping bad checkpoint ckpt-00000099.json",
                                               "skipping bad checkpoint ckpt-00000098.json"]
    assert all(f"moved to {out / 'bad'}; falling back to the previous one" in m for m in said)
    assert resumed["resumed_from"].endswith("ckpt-00000010.json") and resumed["net_sha256"] == ref["net_sha256"]
    assert sorted(p.name for p in out.glob("ckpt-*.json")) == ["ckpt-00000010.json", "ckpt-00000015.json"]
    assert sorted(p.name for p in (out / "bad").glob("*.json")) == ["ckpt-00000098.json", "ckpt-00000099.json"]


@pytest.mark.filterwarnings("ignore:resuming.*changed train settings")
def test_a_torn_metrics_line_and_orphaned_temporary_files_are_cleaned_up_at_resume(tmp_path):
    ref = RunLayout(tmp_path / "ref")
    _run(tiny_config(duration_kimg=0.12), ref)
    part = RunLayout(tmp_path / "part")
    _run(tiny_config(duration_kimg=0.08), part)
    out = part.train(8)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 20, "kimg": 0.1')  # a write torn by a crash or a full disk
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = out / f".ckpt-00000015.safetensors.tmp{dead.pid}"
    orphan.write_bytes(b"\0" * 1000)
    with pytest.warns(UserWarning, match=r"metrics\.jsonl: skipped unreadable line\(s\) 2 \(a torn write\?\)"):
        _run(tiny_config(duration_kimg=0.12), part)
    assert not orphan.exists() and not list(out.glob(".*.tmp*"))
    assert _log(out) == _log(ref.train(8))  # same steps and the same mean losses as the uninterrupted run


def test_the_cuda_ema_update_in_one_foreach_launch_agrees_with_the_per_tensor_lerp():
    from emojidiff.training.ema import lerp_foreach

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.GroupNorm(2, 8)).to(memory_format=torch.channels_last)
    ema, ref, fused = make_ema(net), make_ema(net), make_ema(net)
    for beta in (0.0, 0.5, 0.93, 0.999):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
            update_ema(ema, net, beta)  # on CPU: the per-tensor update training always used, bit for bit
            for pe, pn in zip(ref.parameters(), net.parameters(), strict=True):
                pe.copy_(pn.detach().lerp(pe, beta))
            lerp_foreach(list(fused.parameters()), list(net.parameters()), beta)  # the CUDA path, here on CPU
        assert all(torch.equal(a, b) for a, b in zip(ema.parameters(), ref.parameters(), strict=True))
        for a, b in zip(fused.parameters(), ref.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert not torch.equal(ema[0].weight, net[0].weight)  # it averaged, not copied


def test_gradient_accumulation_gives_the_update_of_one_large_batch(tmp_path):
    cfg = tiny_config(duration_kimg=0.04, checkpoint_kimg=0.04, snapshot_kimg=0.04)  # 5 steps of 8
    whole = _run(cfg, RunLayout(tmp_path / "whole"))
    same = _run({**cfg, "train": {**cfg["train"], "batch_gpu": 8}}, RunLayout(tmp_path / "same"))
    acc = _run({**cfg, "train": {**cfg["train"], "batch_gpu": 2}}, RunLayout(tmp_path / "acc"))
    assert (whole["rounds"], same["rounds"], acc["rounds"], acc["batch_gpu"]) == (1, 1, 4, 2)
    # batch_gpu equal to the whole batch is the unaccumulated step, bit for bit
    assert (same["net_sha256"], same["ema_sha256"]) == (whole["net_sha256"], whole["ema_sha256"])
    a, b = _final_tensors(tmp_path / "whole/train/w8"), _final_tensors(tmp_path / "acc/train/w8")
    assert acc["net_sha256"] != whole["net_sha256"]  # other float rounding, so the comparison below is real
    for k in (k for k in a if k.startswith(("net.", "ema.", "opt."))):
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
    la, lb = (read_metrics(tmp_path / d / "train/w8")["loss"] for d in ("whole", "acc"))
    np.testing.assert_allclose(lb, la, rtol=1e-5)  # the logged loss is the mean over the chunks


def test_batch_gpu_that_does_not_divide_a_process_share_is_refused():
    from emojidiff.config import ConfigError
    from emojidiff.training.distributed import DistInfo
    from emojidiff.training.train import accumulation

    assert accumulation(256, 0, DistInfo(0, 4)) == (64, 1)  # 0: the whole share, one round
    assert accumulation(256, 32, DistInfo(0, 4)) == (32, 2)
    assert accumulation(256, 64, DistInfo(0, 1)) == (64, 4)
    with pytest.raises(ConfigError, match=r"train.batch_gpu=64 must divide each process's share \(32 = 256 / 8"):
        accumulation(256, 64, DistInfo(0, 8))  # divides the batch (the profile check) but not a rank's share


def test_finiteness_checked_every_few_steps_still_names_the_step_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    train_mod = sys.modules["emojidiff.training.train"]
    monkeypatch.setattr(train_mod, "CHECK_EVERY_CPU", 4)  # as on CUDA: steps 4, 8, 12 ... and before checkpoints
    calls = _poison_loss_at(monkeypatch, 13)
    with pytest.raises(TrainingDiverged, match=r"non-finite loss \(nan\).*at step 13 \(96 images.*ckpt-00000010"):
        _run(tiny_config(), RunLayout(tmp_path))
    assert calls["n"] == 15  # found at step 15, which would have written a checkpoint: none was
    kept = sorted((tmp_path / "train" / "w8").glob("ckpt-*.json"))
    assert [p.name for p in kept] == ["ckpt-00000005.json", "ckpt-00000010.json"]


def test_precision_auto_on_cuda_ignores_emulated_bf16_and_fp16_is_cuda_only(monkeypatch, tmp_path):
    from emojidiff.training.train import memory_format

    asked = []

    def bf16_supported(including_emulation=True):  # a V100/T4: bf16 only by emulation
        asked.append(including_emulation)
        return including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", bf16_supported)
    assert resolve_precision("auto", torch.device("cuda:0")) is None and asked == [False]
    assert resolve_precision("fp16", torch.device("cuda:0")) is torch.float16
    assert resolve_precision("bf16", torch.device("cuda:0")) is torch.bfloat16  # asked for: as asked
    with pytest.raises(NotImplementedError, match="fp16 needs CUDA"):
        _run(tiny_config(precision="fp16"), RunLayout(tmp_path))
    cpu, cuda = torch.device("cpu"), torch.device("cuda:0")
    assert memory_format("auto", torch.bfloat16, cpu) == torch.channels_last  # the CPU rule of before
    assert memory_format("auto", None, cpu) == torch.contiguous_format
    assert memory_format("auto", torch.bfloat16, cuda) == torch.contiguous_format  # until a GPU benchmark says
    assert memory_format("on", None, cuda) == torch.channels_last
    assert memory_format("off", torch.bfloat16, cpu) == torch.contiguous_format


def test_old_checkpoints_resume_without_warning_about_keys_added_since(tmp_path):
    import warnings

    part = RunLayout(tmp_path)
    _run(tiny_config(duration_kimg=0.04, checkpoint_kimg=0.04, snapshot_kimg=0.04), part)
    (js,) = (tmp_path / "train" / "w8").glob("ckpt-*.json")
    meta = json.loads(js.read_text())
    for key in ("batch_gpu", "channels_last", "deterministic", "ema_std", "ema_std_extra", "adam_beta2"):
        del meta["train"][key]
    del meta["model"]["architecture"]
    meta["train"]["num_workers"] = 0
    js.write_text(json.dumps(meta))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _run(tiny_config(duration_kimg=0.04, checkpoint_kimg=0.04, snapshot_kimg=0.04), part)["steps"] == 5


def test_an_edm2_power_ema_run_resumes_bit_for_bit_with_its_weights_kept_at_unit_norm(tmp_path):
    def edm2(duration):
        cfg = tiny_config(duration_kimg=duration, precision="bf16", ema_std=0.1, adam_beta2=0.99, lr=1e-2)
        cfg["model"]["architecture"] = "edm2"
        return cfg

    full = _run(edm2(0.08), RunLayout(tmp_path / "full"))
    part = RunLayout(tmp_path / "part")
    _run(edm2(0.04), part)
    with pytest.warns(UserWarning, match="changed train settings: duration_kimg"):
        resumed = _run(edm2(0.08), part)
    assert resumed["net_sha256"] == full["net_sha256"] and resumed["ema_sha256"] == full["ema_sha256"]
    net = ckpt.load_denoiser(full["train_dir"], ema=False).net
    assert isinstance(net, emojidiff.EDM2UNet) and abs(float(net.out_gain)) > 0  # it trained
    for name, w in net.named_parameters():
        if w.ndim >= 2:  # every MPConv weight: unit RMS per output channel after the last step (forced WN)
            rms = w.pow(2).mean(dim=tuple(range(1, w.ndim)))
            assert torch.allclose(rms, torch.ones_like(rms), atol=1e-3), name


def test_a_second_power_ema_resumes_bit_for_bit_and_is_not_grown_on_a_run_without_one(tmp_path):
    def two_emas(duration, **train):
        return tiny_config(duration_kimg=duration, snapshot_kimg=0.04, ema_std=0.1, **train)

    def last_pema(summary):
        return load_file(sorted(Path(summary["train_dir"]).glob("pema-*.safetensors"))[-1])

    full = _run(two_emas(0.08, ema_std_extra=0.05), RunLayout(tmp_path / "full"))
    part = RunLayout(tmp_path / "part")
    _run(two_emas(0.04, ema_std_extra=0.05), part)
    with pytest.warns(UserWarning, match="changed train settings: duration_kimg"):
        resumed = _run(two_emas(0.08, ema_std_extra=0.05), part)
    assert resumed["net_sha256"] == full["net_sha256"] and resumed["ema_sha256"] == full["ema_sha256"]
    a, b = last_pema(full), last_pema(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    main = load_file(sorted(Path(full["train_dir"]).glob("ema-*.safetensors"))[-1])
    assert any(not torch.equal(a[k], main[k]) for k in a)  # a different average of the same weights
    pemas = sorted(p.name for p in Path(full["train_dir"]).glob("pema-*.json"))
    assert pemas == ["p" + p.name for p in sorted(Path(full["train_dir"]).glob("ema-*.json"))]

    plain = RunLayout(tmp_path / "plain")
    _run(two_emas(0.04), plain)
    with pytest.raises(ckpt.CheckpointError, match="ema_std_extra 0.0, not 0.05"):  # its past would be unknown
        _run(two_emas(0.08, ema_std_extra=0.05), plain)


def _conditional_data(n: int = 24, faces: int = 4) -> TrainingData:
    """Synthetic faces, each marked with its index in binary (top-left pixels), and (A, B) labels from the index."""
    images = synthetic_images(n)
    for i in range(n):
        images[i, 0, :8] = [[255 * ((i >> b) & 1)] * 3 for b in range(8)]
    labels = np.stack([np.arange(n) % faces, (np.arange(n) // faces) % faces], 1).astype(np.int64)
    return TrainingData(images, labels, faces)


def _conditional_config(**train) -> dict:
    cfg = tiny_config(**{"duration_kimg": 0.04, "checkpoint_kimg": 0.04, "snapshot_kimg": 0.04, **train})
    cfg["model"].update(conditional=True, label_dropout=0.2)
    return cfg


def test_conditional_training_saves_label_dim_reloads_and_resumes_bit_for_bit(tmp_path):
    data = _conditional_data()

    def run(folder, **train):
        return train_width(config_from_dict(_conditional_config(**train)), RunLayout(tmp_path / folder), 8,
                           data=data, progress=False)

    s = run("one")
    assert s["label_dim"] == 4 and s["steps"] == 5
    (js,) = Path(s["train_dir"]).glob("ckpt-*.json")
    assert json.loads(js.read_text())["model"]["label_dim"] == 4
    for ema in (True, False):
        d = emojidiff.load_denoiser(js, ema=ema)
        assert d.net.label_dim == 4 and d.net.map_label.in_features == 8
    # the trained net reads its labels: the same images, sigmas and noise with parents swapped give another loss
    net = emojidiff.load_denoiser(js, ema=False)
    y = torch.from_numpy(data.images[:8]).permute(0, 3, 1, 2).float() / 127.5 - 1
    labels, g = torch.from_numpy(data.labels[:8]), torch.Generator().manual_seed(0)
    rnd, noise = torch.randn(8, 1, 1, 1, generator=g), torch.randn(8, 3, 32, 32, generator=g)
    loss = emojidiff.edm_loss(net, y, labels=labels, rnd_normal=rnd, noise=noise)
    swapped = emojidiff.edm_loss(net, y, labels=labels.flip(1), rnd_normal=rnd, noise=noise)
    assert not torch.allclose(loss, swapped)
    # label dropout draws from the saved RNG: a resumed conditional run equals an uninterrupted one
    with pytest.warns(UserWarning, match="changed train settings: duration_kimg"):
        resumed = run("one", duration_kimg=0.08)
    whole = run("two", duration_kimg=0.08)
    assert resumed["steps"] == 10 and resumed["net_sha256"] == whole["net_sha256"]


def test_each_image_reaches_the_loss_with_its_own_parents(tmp_path, monkeypatch):
    train_mod = sys.modules["emojidiff.training.train"]
    data, seen, real = _conditional_data(), [], train_mod.edm_loss

    def recording(net, y, *a, labels=None, **k):
        seen.append((y.detach().clone(), None if labels is None else labels.clone()))
        return real(net, y, *a, labels=labels, **k)

    monkeypatch.setattr(train_mod, "edm_loss", recording)
    train_width(config_from_dict(_conditional_config()), RunLayout(tmp_path / "c"), 8, data=data, progress=False)
    ref = torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert len(seen) == 5
    for y, labels in seen:
        assert labels.dtype == torch.int64 and labels.shape == (8, 2)
        for image, label in zip(y, labels):
            mse = torch.minimum(((ref - image) ** 2).mean((1, 2, 3)), ((ref.flip(3) - image) ** 2).mean((1, 2, 3)))
            assert mse.min() < 1e-6  # an image of the data (or its mirror) ...
            assert label.tolist() == data.labels[int(mse.argmin())].tolist()  # ... with its own parents
    seen.clear()
    _run(tiny_config(duration_kimg=0.04, checkpoint_kimg=0.04, snapshot_kimg=0.04), RunLayout(tmp_path / "u"))
    assert len(seen) == 5 and all(labels is None for _, labels in seen)  # unconditional: no labels


def test_conditional_settings_that_cannot_work_are_refused_by_name(tmp_path):
    from emojidiff.config import ConfigError

    with pytest.raises(ValueError, match=r"model.conditional needs \(N, 2\) parent labels for the 24 images"):
        _run(_conditional_config(), RunLayout(tmp_path / "a"))  # images without labels
    wrong = _conditional_config()
    wrong["model"]["label_dim"] = 5
    with pytest.raises(ConfigError, match="model.label_dim=5 but the dataset has 4 faces"):
        train_width(config_from_dict(wrong), RunLayout(tmp_path / "b"), 8, data=_conditional_data(), progress=False)
    plain = tiny_config()
    plain["model"]["label_dim"] = 4
    with pytest.raises(ConfigError, match="model.label_dim=4 without model.conditional"):
        _run(plain, RunLayout(tmp_path / "c"))


def test_training_data_of_a_conditional_profile_carries_the_dataset_parents():
    cfg = emojidiff.load_config(Path(__file__).parents[1] / "params" / "smoke.yaml")
    ds = emojidiff.dataset_from_config(cfg, progress=False)
    data = training_data(replace(cfg, model=replace(cfg.model, conditional=True)))
    assert data.num_faces == ds.num_faces == 8 and np.array_equal(data.images, ds.train_images())
    assert data.labels.dtype == np.int64 and np.array_equal(data.labels, ds.train_labels())
    assert training_data(replace(cfg, model=replace(cfg.model, conditional=False))).labels is None


def test_compiled_training_matches_eager_and_a_failed_compile_falls_back_with_a_warning(tmp_path, monkeypatch):
    cfg = tiny_config(duration_kimg=0.024, checkpoint_kimg=0.008, snapshot_kimg=0.024)  # 3 steps, fp32
    eager = _final_tensors(_run(cfg, RunLayout(tmp_path / "eager"))["train_dir"])
    real_compile, calls = torch.compile, []

    def recording(module, **kw):
        fn = real_compile(module, **kw)
        return lambda *a, **k: calls.append(1) or fn(*a, **k)

    monkeypatch.setattr(torch, "compile", recording)
    compiled = _final_tensors(_run({**cfg, "train": {**cfg["train"], "compile": True}},
                                   RunLayout(tmp_path / "compiled"))["train_dir"])
    for k, v in eager.items():  # inductor fuses and reorders float ops: equal to rounding, not bit for bit
        if k.startswith(("net.", "ema.")):
            torch.testing.assert_close(compiled[k], v, rtol=1e-4, atol=1e-5, msg=f"{k}: compiled step differs")
    assert len(calls) == 3  # every step went through the compiled module

    def broken(module, **kw):  # what torch.compile gives where no C++ compiler is found: fails on the first call
        def fail(*a, **k):
            raise RuntimeError("InductorError: no working C++ compiler found")
        return fail

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.warns(UserWarning, match="torch.compile failed .*no working C.. compiler.*training runs eagerly"):
        fallback = _run({**cfg, "train": {**cfg["train"], "compile": True}}, RunLayout(tmp_path / "fallback"))
    got = _final_tensors(fallback["train_dir"])
    assert all(torch.equal(got[k], v) for k, v in eager.items() if k.startswith(("net.", "ema.")))


def test_a_compiled_conditional_bf16_run_repeats_and_resumes_bit_for_bit(tmp_path):
    # the cpu profile's setting: label dropout draws inside the compiled graph, from the RNG a checkpoint saves
    data = _conditional_data()

    def run(folder, **train):
        torch.set_num_threads(1)
        cfg = config_from_dict(_conditional_config(compile=True, precision="bf16", **train))
        return train_width(cfg, RunLayout(tmp_path / folder), 8, data=data, progress=False)

    run("resumed", duration_kimg=0.04)
    with pytest.warns(UserWarning, match="changed train settings: duration_kimg"):
        resumed = run("resumed", duration_kimg=0.08)
    whole, again = run("whole", duration_kimg=0.08), run("again", duration_kimg=0.08)
    assert resumed["steps"] == whole["steps"] == 10
    assert whole["net_sha256"] == again["net_sha256"] == resumed["net_sha256"]
    assert whole["ema_sha256"] == resumed["ema_sha256"]
