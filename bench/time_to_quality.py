"""Quality per CPU-minute (issue 13): train a profile for fixed wall-clock budgets and score each budget's EMA.

One run per recipe (a profile): training resumes from budget to budget, each leg sized from the img/s measured so
far, so budget k's EMA is the run's snapshot once its training time (wall_s, steps only) reaches budget k. From each
budget's EMA it samples --num-images images with fixed seeds and prints Inception FID against the training set,
MeanMSE, the copy rate (emojidiff.classify_samples), training and sampling img/s. One row per (recipe, budget).
A conditional recipe is sampled with the null label (unconditionally). With --posthoc-std a power-EMA recipe
(train.ema_std > 0, best with train.ema_std_extra) is also scored at each budget through post-hoc EMAs of those
relative stds, rebuilt from its snapshots (one row each, recipe@std, with the fit's residual).

    nice -n 10 .venv/bin/python bench/time_to_quality.py --params params/cpu.yaml --budgets 5,10,20
    .venv/bin/python bench/time_to_quality.py --params params/smoke.yaml --budgets 3,6 --seconds --num-images 64
    .venv/bin/python bench/time_to_quality.py --params params/cpu-edm2.yaml --budgets 13 --posthoc-std 0.02,0.05,0.1
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import torch

from emojidiff.config import load_config
from emojidiff.data.dataset import dataset_from_config
from emojidiff.evaluation.copies import classify_samples, reference_set
from emojidiff.evaluation.metrics import fid_from_features, nearest_mse
from emojidiff.images import to_uint8
from emojidiff.model.sampler import generate, network_evaluations
from emojidiff.training.checkpoint import latest_good_snapshot, load_denoiser
from emojidiff.training.posthoc_ema import reconstruct
from emojidiff.training.train import train

sys.path.insert(0, str(Path(__file__).parent))
from sampling_nfe import train_features  # noqa: E402  (the cached training-set features, shared with that bench)

MAX_LEGS = 6  # train() calls per budget: the first overshoots or undershoots, the next ones correct it


def train_to_budget(cfg, out: Path, width: int, budget_s: float, rate_guess: float, fresh: bool) -> dict:
    """Train (resuming) until this width's training time reaches budget_s; the summary of the last leg."""
    summary, kimg, wall = None, 0.0, 0.0
    for leg in range(MAX_LEGS):
        rate = kimg * 1000 / wall if wall > 0 else rate_guess
        share = 0.25 if wall == 0 else 1.0  # a first leg of a quarter at the guessed rate, then the measured one
        target = kimg + max(share * rate * (budget_s - wall) / 1000, cfg.train.batch_size / 1000)
        leg_cfg = replace(cfg, train=replace(cfg.train, duration_kimg=target, max_snapshots=10_000))
        with warnings.catch_warnings():  # "resuming with changed train settings: duration_kimg" is the point
            warnings.filterwarnings("ignore", message="resuming .* with changed train settings")
            summary = train(leg_cfg, out, width=width, resume=not (fresh and leg == 0), progress=False)["runs"][width]
        kimg, wall = summary["kimg"], summary["wall_s"]
        if wall >= 0.98 * budget_s:
            break
    return summary


def score(net, cfg, ds, args, inception, train_feats) -> dict:
    """Sample with fixed seeds and score: FID, MeanMSE, copy rate, sampling img/s."""
    t = time.perf_counter()
    x = generate(net, args.num_images, args.seed, batch_size=cfg.sample.batch_size, num_steps=args.steps,
                 solver=args.solver, dtype=torch.float32, autocast=args.precision == "bf16", progress=False)
    secs = time.perf_counter() - t
    u8 = to_uint8(x)
    train = ds.train_images()
    row = {"sample_img_s": args.num_images / secs,
           "mean_mse": float(nearest_mse(u8, reference_set(train, cfg.train.xflip).images)[0].mean()),
           "copy_rate": float((classify_samples(u8, ds, xflip=cfg.train.xflip).verdict == "copy").mean()),
           "fid": float("nan")}
    if inception is not None:
        from emojidiff.evaluation.features import inception_features

        row["fid"] = fid_from_features(inception_features(u8, inception, progress=False), train_feats)
    return row


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", nargs="+", default=["params/cpu.yaml"], help="one profile per recipe")
    p.add_argument("--budgets", default="5,10,20", help="training wall-clock budgets, minutes (comma-separated)")
    p.add_argument("--seconds", action="store_true", help="budgets are in seconds (for smoke checks)")
    p.add_argument("--width", type=int, default=None, help="default: each profile's first width")
    p.add_argument("--num-images", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0, help="sampling seed (fixed across budgets and recipes)")
    p.add_argument("--solver", default="heun")
    p.add_argument("--steps", type=int, default=18)
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16", help="of sampling")
    p.add_argument("--rate-guess", type=float, default=50.0, help="training img/s assumed for the first leg")
    p.add_argument("--out", default="outputs/bench/time_to_quality", help="a run folder per recipe under here")
    p.add_argument("--resume", action="store_true", help="continue the recipes' runs instead of starting over")
    p.add_argument("--no-inception", action="store_true", help="skip FID")
    p.add_argument("--cache", default="outputs/bench/cache", help="folder for the training set's features")
    p.add_argument("--posthoc-std", default="", help="also score post-hoc EMAs of these relative stds (comma-"
                   "separated) at every budget; power-EMA recipes only (train.ema_std > 0)")
    args = p.parse_args(argv)
    unit = 1 if args.seconds else 60
    try:
        budgets = sorted(float(b) * unit for b in args.budgets.split(",") if b)
    except ValueError:
        raise SystemExit(f"--budgets must be numbers separated by commas, got {args.budgets!r}") from None
    if not budgets or budgets[0] <= 0:
        raise SystemExit(f"--budgets must be positive, got {args.budgets!r}")
    try:
        posthoc = [float(s) for s in args.posthoc_std.split(",") if s]
    except ValueError:
        raise SystemExit(f"--posthoc-std must be numbers separated by commas, got {args.posthoc_std!r}") from None
    if any(not 0 < s < 0.2887 for s in posthoc):
        raise SystemExit(f"--posthoc-std values must be in (0, 0.2887), got {args.posthoc_std!r}")
    configs = {params: load_config(params) for params in args.params}  # every profile checked before any training
    no_power = [params for params, cfg in configs.items() if posthoc and cfg.train.ema_std <= 0]
    if no_power:
        raise SystemExit(f"--posthoc-std needs power-EMA recipes (train.ema_std > 0); {', '.join(no_power)} "
                         "has a half-life EMA")

    inception = None
    if not args.no_inception:
        from emojidiff.evaluation.features import load_inception

        inception = load_inception(None)
    rows = []
    header = (f"{'recipe':14} {'budget':>7} {'kimg':>7} {'train s':>7} {'img/s':>6} {'FID':>7} {'MeanMSE':>8} "
              f"{'copies':>7} {'smp img/s':>9} {'residual':>8}")
    print(f"sampling: {args.solver} {args.steps} steps ({network_evaluations(args.solver, args.steps)} NFE), "
          f"{args.num_images} images, seed {args.seed}, {args.precision}; {torch.get_num_threads()} threads")
    print(header, flush=True)
    for params in args.params:
        cfg = configs[params]
        width = args.width if args.width is not None else cfg.model.widths[0]
        ds = dataset_from_config(cfg, progress=False)
        train_feats = None if inception is None else train_features(ds.train_images(), inception, Path(args.cache))
        out = Path(args.out) / Path(params).stem
        for i, budget in enumerate(budgets):
            summary = train_to_budget(cfg, out, width, budget, args.rate_guess, fresh=not args.resume and i == 0)
            snap = latest_good_snapshot(Path(summary["train_dir"]))
            net = load_denoiser(snap[1], "cpu", ema=True)
            base = {"recipe": Path(params).stem, "budget_s": budget, "kimg": summary["kimg"],
                    "train_s": summary["wall_s"], "train_img_s": summary["kimg"] * 1000 / max(summary["wall_s"], 1e-9)}
            row = {**base, "snapshot": str(snap[1]), "posthoc_residual": math.nan,
                   **score(net, cfg, ds, args, inception, train_feats)}
            print_row(row, budget / unit, args.seconds)
            rows.append(row)

            # Post-hoc EMAs of the same budget (the last snapshot's step).
            for std in posthoc:
                path = reconstruct(Path(summary["train_dir"]), std)
                fit = json.loads(path.read_text())["posthoc"]
                net = load_denoiser(path, "cpu", ema=True)
                row = {**base, "recipe": f"{base['recipe']}@{std:g}", "snapshot": str(path),
                       "posthoc_residual": fit["rel_error"], **score(net, cfg, ds, args, inception, train_feats)}
                print_row(row, budget / unit, args.seconds)
                rows.append(row)
    return rows


def print_row(row: dict, budget: float, seconds: bool) -> None:
    print(f"{row['recipe']:14} {budget:6g}{'s' if seconds else 'm'} {row['kimg']:7.2f} "
          f"{row['train_s']:7.0f} {row['train_img_s']:6.1f} {row['fid']:7.2f} {row['mean_mse']:8.4f} "
          f"{row['copy_rate']:7.1%} {row['sample_img_s']:9.1f} {row['posthoc_residual']:8.3f}", flush=True)


if __name__ == "__main__":
    main()
