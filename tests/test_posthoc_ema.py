"""Post-hoc EMA: exact power-EMA weightings, least-squares reconstruction, and files a trained run can rebuild."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _train_tiny import synthetic_images, tiny_config

from emojidiff.config import config_from_dict
from emojidiff.layout import RunLayout
from emojidiff.training import checkpoint as ckpt
from emojidiff.training.ema import power_beta, power_gamma, power_std
from emojidiff.training.posthoc_ema import power_weights, reconstruct, snapshot_profiles, solve_coefficients
from emojidiff.training.train import train_width


def _recursion_weights(step: int, gamma: float) -> np.ndarray:
    """The EMA of the basis vectors e_1..e_step, updated as the training loop does: weights by direct simulation."""
    ema = np.zeros(step)
    for t in range(1, step + 1):
        e = np.zeros(step)
        e[t - 1] = 1.0
        beta = power_beta(t, gamma)
        ema = beta * ema + (1 - beta) * e
    return ema


@pytest.mark.parametrize("gamma", [0.0, 6.94, 16.97])
def test_power_weights_equal_the_training_loops_recursion(gamma):
    w = power_weights(200, gamma, total=250)
    assert w.shape == (250,) and np.all(w[200:] == 0)
    assert np.allclose(w[:200], _recursion_weights(200, gamma), rtol=1e-9, atol=1e-15)
    assert w.sum() == pytest.approx(1.0)


def test_a_target_equal_to_a_snapshot_is_that_snapshot():
    steps, gammas = [100, 200, 300, 100, 200, 300], [6.94] * 3 + [16.97] * 3
    x, err = solve_coefficients(steps, gammas, 200, 16.97)
    assert err < 1e-9 and np.allclose(x, [0, 0, 0, 0, 1, 0], atol=1e-6)


def test_reconstruction_from_two_profiles_approximates_a_third_on_a_random_walk():
    rng = np.random.default_rng(0)
    theta = np.cumsum(rng.normal(size=(2000, 5)), axis=0)  # five "parameters" along 2,000 steps
    steps = list(range(100, 2001, 100))
    gammas = [power_gamma(0.05)] * len(steps) + [power_gamma(0.10)] * len(steps)
    snaps = [power_weights(s, g, 2000) @ theta for s, g in zip(steps * 2, gammas)]
    target_gamma = power_gamma(0.03)
    x, err = solve_coefficients(steps * 2, gammas, 2000, target_gamma)
    truth = power_weights(2000, target_gamma) @ theta
    rebuilt = sum(c * s for c, s in zip(x, snaps))
    assert err < 0.1  # EDM2 Fig. 5: shorter profiles than the stored ones are approximated, not exact
    spread = np.abs(snaps[-1] - snaps[len(steps) - 1]).max()  # the two stored EMAs differ by this much
    assert np.abs(rebuilt - truth).max() < 0.2 * spread


def test_a_second_stored_profile_fits_a_target_between_them_far_better_than_one():
    steps = list(range(100, 1601, 100))  # 16 snapshots, as the cpu-edm2 bench run kept
    short, long, target = power_gamma(0.03), power_gamma(0.10), power_gamma(0.05)
    _, one = solve_coefficients(steps, [short] * 16, 1600, target)
    _, two = solve_coefficients(steps * 2, [short] * 16 + [long] * 16, 1600, target)
    assert one > 0.1 and two < one / 5


def test_thinning_keeps_each_second_ema_beside_its_snapshot(tmp_path):
    train_dir = _train_power_ema(tmp_path, ema_std_extra=0.05, snapshot_kimg=0.04, max_snapshots=3)
    emas, pemas = (sorted(p.name for p in train_dir.glob(f"{prefix}-*.json")) for prefix in ("ema", "pema"))
    assert len(emas) <= 3 and pemas == ["p" + n for n in emas]


def _train_power_ema(tmp_path, **train):
    cfg = config_from_dict(tiny_config(**{"ema_std": 0.1, **train}))
    torch.set_num_threads(1)
    train_width(cfg, RunLayout(tmp_path), 8, images=synthetic_images(), progress=False)
    return RunLayout(tmp_path).train(8)


def test_a_power_ema_run_rebuilds_its_own_snapshot_and_writes_a_loadable_shorter_one(tmp_path):
    train_dir = _train_power_ema(tmp_path)
    snaps = ckpt.list_snapshots(train_dir)
    assert len(snaps) == 2
    last, meta = ckpt.load(snaps[-1][1])
    same = reconstruct(train_dir, 0.1)
    rebuilt, info = ckpt.load(same)
    assert info["posthoc"]["rel_error"] < 1e-9 and info["step"] == meta["step"]
    for k, v in last.items():
        assert torch.allclose(rebuilt[k].float(), v.float(), atol=1e-6), k
    shorter = reconstruct(train_dir, 0.05)
    assert shorter.parent == train_dir / "posthoc" and ckpt.list_snapshots(train_dir) == snaps  # not a snapshot
    den = ckpt.load_denoiser(shorter)
    x = torch.randn(2, 3, 32, 32)
    assert torch.isfinite(den(x, torch.ones(2))).all()
    assert json.loads(shorter.read_text())["posthoc"]["std"] == 0.05


def test_a_run_with_two_profiles_rebuilds_the_second_exactly_from_both(tmp_path):
    train_dir = _train_power_ema(tmp_path, ema_std_extra=0.05)
    profiles = snapshot_profiles(train_dir)
    assert sorted(round(power_std(g), 6) for _, g, _ in profiles) == [0.05, 0.05, 0.1, 0.1]
    pema, _ = ckpt.load(ckpt.list_snapshots(train_dir, "pema")[-1][1])
    rebuilt, info = ckpt.load(reconstruct(train_dir, 0.05))
    assert info["posthoc"]["rel_error"] < 1e-9 and sorted(info["posthoc"]["from_stds"]) == [0.05, 0.05, 0.1, 0.1]
    for k, v in pema.items():
        assert torch.allclose(rebuilt[k].float(), v.float(), atol=1e-6), k


def test_half_life_snapshots_are_refused_with_the_reason(tmp_path):
    torch.set_num_threads(1)
    train_width(config_from_dict(tiny_config()), RunLayout(tmp_path), 8, images=synthetic_images(), progress=False)
    with pytest.raises(ValueError, match="ema_std"):
        reconstruct(RunLayout(tmp_path).train(8), 0.05)
