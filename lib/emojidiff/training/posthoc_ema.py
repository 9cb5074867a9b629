"""Post-hoc EMA (Karras et al. 2024, Sec. 3.2): an EMA of any length, rebuilt after training as a linear
combination of the power-function EMA snapshots a run saved (`train.ema_std > 0`; with `train.ema_std_extra` a
second profile beside each, as EDM2 keeps two: one profile alone fits others poorly).

Every snapshot is a known weighting of the raw weights theta_1..theta_T (one per step). We choose coefficients x
so that sum_i x_i w_i is the least-squares closest weighting to the target profile, then combine the snapshots'
tensors with the same x. The weightings are the exact discrete ones of the training loop, not their continuous
limit, so a target equal to a saved snapshot is reproduced exactly.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from emojidiff.training import checkpoint as ckpt
from emojidiff.training.ema import power_gamma, power_std


def power_weights(step: int, gamma: float, total: int | None = None) -> np.ndarray:
    """Weight of theta_1..theta_total in the power EMA after `step` updates (zero past `step`); sums to one."""
    total = step if total is None else total
    t = np.arange(1, step + 1, dtype=np.float64)
    log_beta = np.concatenate([[-np.inf], (gamma + 1) * np.log1p(-1 / t[1:])])  # log power_beta(t, gamma)
    # theta_tau enters with weight (1 - beta_tau) and is then decayed by beta_{tau+1} ... beta_step.
    decay = np.concatenate([np.cumsum(log_beta[:0:-1])[::-1], [0.0]])
    w = (1 - np.exp(log_beta)) * np.exp(decay)
    return np.concatenate([w, np.zeros(total - step)])


def solve_coefficients(steps: list[int], gammas: list[float], target_step: int,
                       target_gamma: float) -> tuple[np.ndarray, float]:
    """Least-squares coefficients x of the snapshots (steps, gammas) for the target profile, and the relative
    residual |sum x_i w_i - w_target| / |w_target| (0: exact)."""
    if not steps:
        raise ValueError("no snapshots to reconstruct from")
    total = max(max(steps), target_step)
    A = np.stack([power_weights(s, g, total) for s, g in zip(steps, gammas, strict=True)], axis=1)
    b = power_weights(target_step, target_gamma, total)
    x, *_ = np.linalg.lstsq(A, b, rcond=None)
    return x, float(np.linalg.norm(A @ x - b) / np.linalg.norm(b))


def snapshot_profiles(train_dir: str | Path) -> list[tuple[int, float, Path]]:
    """(step, gamma, tensor path) of every power-function EMA snapshot of a training folder (the main EMA's, then
    the second one's of train.ema_std_extra, if kept), each oldest first."""
    out = []
    for prefix in ("ema", "pema"):
        for _, path in ckpt.list_snapshots(train_dir, prefix):
            meta = json.loads(path.with_suffix(".json").read_text())
            std = float(meta.get("ema_std", meta.get("train", {}).get("ema_std", 0.0)))  # "ema_std": a pema file
            if std <= 0:
                raise ckpt.CheckpointError(f"{path.with_suffix('.json')}: a half-life EMA snapshot (train.ema_std "
                                           "0); post-hoc EMA needs a run trained with train.ema_std > 0")
            out.append((int(meta["step"]), power_gamma(std), path))
    if not out:
        raise ckpt.CheckpointError(f"{train_dir}: no EMA snapshots to reconstruct from")
    return out


def reconstruct(train_dir: str | Path, std: float, at_step: int | None = None) -> Path:
    """Write the post-hoc EMA of relative std `std` at `at_step` (default: the last snapshot) under
    train_dir/posthoc/ as an EMA snapshot file that load_denoiser and the benchmarks read; returns its json."""
    train_dir = Path(train_dir)
    profiles = snapshot_profiles(train_dir)
    at_step = max(p[0] for p in profiles) if at_step is None else int(at_step)
    usable = [p for p in profiles if p[0] <= at_step]  # later snapshots hold weights from after the target
    if not usable:
        raise ckpt.CheckpointError(f"{train_dir}: no snapshot at or before step {at_step}")
    x, rel_error = solve_coefficients([s for s, _, _ in usable], [g for _, g, _ in usable], at_step,
                                      power_gamma(std))

    # Combine the snapshots' tensors with the coefficients (float64 sums, stored as float32 like the EMA).
    combined = {}
    for coef, (_, _, path) in zip(x, usable, strict=True):
        tensors, _ = ckpt.load(path)
        for k, v in tensors.items():
            combined[k] = combined.get(k, 0) + coef * v.double() if v.is_floating_point() else v
    tensors = {k: v.to(torch.float32) if torch.is_tensor(v) and v.is_floating_point() else v
               for k, v in combined.items()}
    meta = ckpt.read_meta(max(usable, key=lambda p: p[0])[2].with_suffix(".json"))
    meta = {k: v for k, v in meta.items() if k not in ("format", "tensors", "sha256", "_json")}
    batch = meta["nimg"] // meta["step"]  # a fixed batch size: the target's image count
    meta |= {"step": at_step, "nimg": at_step * batch, "kimg": at_step * batch / 1000}
    meta.pop("ema_std", None)
    meta["kind"] = "ema"
    meta["posthoc"] = {"std": std, "at_step": at_step, "from_steps": [s for s, _, _ in usable],
                       "from_stds": [round(power_std(g), 6) for _, g, _ in usable],
                       "coefficients": [float(c) for c in x], "rel_error": rel_error}
    stem = f"ema-{at_step:08d}-std{std:.3f}".replace(".", "p")  # no dot: with_suffix would cut the name there
    return ckpt.save(train_dir / "posthoc" / stem, tensors, meta, fmt=ckpt.EMA_FORMAT)


def _std(text: str) -> float:
    value = float(text)
    if not 0 < value < power_std(0.0):
        raise argparse.ArgumentTypeError(f"--std must be in (0, {power_std(0.0):.4f}), got {text}")
    return value


def cli_configure(parser) -> None:
    parser.add_argument("train_dir", help="a training folder of a run with train.ema_std > 0 (outputs/<run>/train/w32)")
    parser.add_argument("--std", type=_std, nargs="+", required=True, help="relative EMA std(s) to rebuild")
    parser.add_argument("--at-step", type=int, default=None, help="training step (default: the last snapshot's)")


def cli_main(args) -> int:
    for std in args.std:
        path = reconstruct(args.train_dir, std, args.at_step)
        info = json.loads(path.read_text())["posthoc"]
        print(f"std {std:g} at step {info['at_step']}: {path.with_suffix('.safetensors')} "
              f"(from {len(info['from_steps'])} snapshots, profile residual {info['rel_error']:.3f})")
    return 0
