"""FID and MeanMSE against network evaluations (NFE) for Heun, Euler and DPM-Solver++(2M) on a trained checkpoint.

Every point draws the same images (same seeds, so the same initial noise) with one solver and step count and scores
them: Inception FID against the training set, MeanMSE (mean nearest-training-image MSE, mirrors included when the
run trains with x-flips), and the RMS distance to a fine-step reference solution of the same ODE from the same noise
(on the first --reference-images images). A last table times sampling img/s per solver: bf16 vs fp32, batch size.

    nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python bench/sampling_nfe.py outputs/cpu --num-images 500
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import numpy as np
import torch

from emojidiff.config import load_config
from emojidiff.data.dataset import dataset_from_config
from emojidiff.evaluation.copies import reference_set
from emojidiff.evaluation.metrics import fid_from_features, nearest_mse
from emojidiff.images import to_uint8
from emojidiff.model.compiled import compile_for_sampling
from emojidiff.model.sampler import SOLVERS, generate, network_evaluations
from emojidiff.training.checkpoint import latest_good_snapshot, load_denoiser, read_meta

DEFAULT_STEPS = {"heun": "5,8,12,18", "euler": "12,24,35", "dpmpp2m": "6,8,10,12,18"}


def resolve(run: Path, width: int | None) -> tuple[Path, Path | None]:
    """(checkpoint file or training folder, the run's config.yaml if found) from a run folder, train folder or file."""
    if run.is_file():
        cfg = run.parents[2] / "config.yaml"  # outputs/<profile>/train/w<W>/<file>
        return run, cfg if cfg.is_file() else None
    if (run / "train").is_dir():
        widths = sorted(int(p.name[1:]) for p in (run / "train").glob("w*") if p.name[1:].isdigit())
        if not widths:
            raise SystemExit(f"{run}/train has no w<width> folder: train first")
        w = width if width is not None else widths[0]
        if w not in widths:
            raise SystemExit(f"width {w} not trained in {run}/train (have {widths})")
        return run / "train" / f"w{w}", run / "config.yaml" if (run / "config.yaml").is_file() else None
    if run.is_dir():
        cfg = run.parents[1] / "config.yaml"
        return run, cfg if cfg.is_file() else None
    raise SystemExit(f"{run}: no such run folder, training folder or checkpoint")


def train_features(train: np.ndarray, inception, cache_dir: Path) -> np.ndarray:
    """Inception features of the training images, cached by their bytes (the pass takes minutes on 2 cores)."""
    from emojidiff.evaluation.features import inception_features

    key = hashlib.sha256(np.ascontiguousarray(train).tobytes()).hexdigest()[:16]
    path = cache_dir / f"train_inception_{key}.npy"
    if path.is_file():
        return np.load(path, allow_pickle=False)
    feats = inception_features(train, inception, progress=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(path, feats, allow_pickle=False)
    return feats


def sample(net, n: int, seed: int, solver: str, steps: int, batch: int, bf16: bool) -> tuple[torch.Tensor, float]:
    """n float images in [-1, 1] and the seconds they took."""
    t = time.perf_counter()
    x = generate(net, n, seed, batch_size=batch, num_steps=steps, solver=solver, dtype=torch.float32,
                 autocast=bf16, progress=False)
    return x, time.perf_counter() - t


def compiled_net(ckpt: Path, solver: str, batch: int):
    """The EMA net in channels_last with its UNet torch.compile'd, warmed up on one batch (compiling is not timed)."""
    net = compile_for_sampling(load_denoiser(ckpt, "cpu", ema=True), torch.channels_last)  # as sample.compile
    sample(net, batch, 0, solver, 2, batch, True)
    return net


def parse_points(args) -> list[tuple[str, int]]:
    """(solver, steps) for every requested point, ordered by solver then steps."""
    points = []
    for solver in SOLVERS:
        spec = getattr(args, solver)
        for s in filter(None, spec.split(",")):
            if not s.strip().isdigit() or int(s) < 1:
                raise SystemExit(f"--{solver}: steps must be positive integers, got {s!r}")
            points.append((solver, int(s)))
    return points


def plot(rows: list[dict], path: Path) -> None:
    """FID, MeanMSE and reference distance against NFE, one line per solver; a panel with no values is left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(key, title) for key, title in (("fid", "Inception FID vs training set"),
                                              ("mean_mse", "MeanMSE (nearest training image)"),
                                              ("ref_rmse", "RMS distance to the reference ODE solution"))
              if any(np.isfinite(r[key]) for r in rows)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.7 * len(panels), 4), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        for solver in SOLVERS:
            rs = sorted((r for r in rows if r["solver"] == solver), key=lambda r: r["nfe"])
            if rs:
                ax.plot([r["nfe"] for r in rs], [r[key] for r in rs], "o-", label=solver)
        ax.set_xlabel("network evaluations per image")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend()
        if key == "ref_rmse":
            ax.set_yscale("log")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", nargs="?", default="outputs/cpu", help="run folder, training folder or checkpoint file")
    p.add_argument("--width", type=int, default=None, help="which trained width of a run folder (default smallest)")
    p.add_argument("--params", default=None, help="profile for the training set (default: the run's config.yaml)")
    p.add_argument("--num-images", type=int, default=2000, help="images per point")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16", help="of the quality points")
    for solver in SOLVERS:
        p.add_argument(f"--{solver}", default=DEFAULT_STEPS[solver], help=f"{solver} step counts (comma-separated)")
    p.add_argument("--reference-steps", type=int, default=32, help="Heun steps of the reference solution (0: off)")
    p.add_argument("--reference-images", type=int, default=100, help="images compared with the reference")
    p.add_argument("--no-inception", action="store_true", help="skip FID (MeanMSE and reference distance only)")
    p.add_argument("--speed", default="heun:18,dpmpp2m:12,euler:18", help="solver:steps to time (empty: none)")
    p.add_argument("--speed-images", type=int, default=256)
    p.add_argument("--speed-batches", default="64,256", help="batch sizes timed in bf16 (fp32 at the largest)")
    p.add_argument("--compile", action="store_true",
                   help="also time a torch.compile'd channels_last net (bf16, the largest batch)")
    p.add_argument("--compiled-points", action="store_true",
                   help="draw the quality points with the torch.compile'd channels_last net (as sample.compile)")
    p.add_argument("--plot", default="outputs/bench/sampling_nfe.png", help="where to save the figure")
    p.add_argument("--cache", default="outputs/bench/cache", help="folder for the training set's features")
    args = p.parse_args(argv)
    points = parse_points(args)

    ckpt, cfg_path = resolve(Path(args.run), args.width)
    cfg_path = Path(args.params) if args.params else cfg_path
    if cfg_path is None:
        raise SystemExit("no config.yaml beside the checkpoint: pass --params with the profile it was trained on")
    cfg = load_config(cfg_path)
    if ckpt.is_dir():  # the newest good EMA snapshot, named so the table says what it scored
        snap = latest_good_snapshot(ckpt)
        ckpt = snap[1] if snap is not None else ckpt
    net = load_denoiser(ckpt, "cpu", ema=True)
    if getattr(net.net, "label_dim", 0):
        print(f"{ckpt}: a conditional net, sampled with the null label (unconditionally)")
    meta = read_meta(ckpt) if ckpt.is_file() else {}
    train = dataset_from_config(cfg).train_images()
    ref = reference_set(train, xflip=cfg.train.xflip).images
    print(f"checkpoint {ckpt} {('kimg ' + str(meta.get('kimg'))) if meta else ''}; {len(train)} training images; "
          f"{args.num_images} images per point, {args.precision}, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads")

    inception, train_feats = None, None
    if not args.no_inception:
        from emojidiff.evaluation.features import inception_features, load_inception

        inception = load_inception(cfg.eval.inception_weights)
        train_feats = train_features(train, inception, Path(args.cache))

    reference = None
    if args.reference_steps:
        reference, secs = sample(net, args.reference_images, args.seed, "heun", args.reference_steps,
                                 args.batch_size, False)
        print(f"reference: Heun {args.reference_steps} steps fp32 on {args.reference_images} images, {secs:.0f} s")

    if args.compiled_points and points:
        net = compiled_net(ckpt, points[0][0], args.batch_size)
        print("quality points: torch.compile'd channels_last net (sample.compile)")
    rows = []
    header = f"{'solver':8} {'steps':>5} {'NFE':>4} {'FID':>7} {'MeanMSE':>8} {'ref RMS':>8} {'img/s':>6}"
    print(header)
    for solver, steps in points:
        x, secs = sample(net, args.num_images, args.seed, solver, steps, args.batch_size, args.precision == "bf16")
        u8 = to_uint8(x)
        row = {"solver": solver, "steps": steps, "nfe": network_evaluations(solver, steps),
               "mean_mse": float(nearest_mse(u8, ref)[0].mean()), "img_s": args.num_images / secs,
               "fid": float("nan"), "ref_rmse": float("nan")}
        if inception is not None:
            row["fid"] = fid_from_features(inception_features(u8, inception, progress=False), train_feats)
        if reference is not None:
            k = min(len(reference), len(x))
            row["ref_rmse"] = float(((x[:k] - reference[:k]) ** 2).mean().sqrt())
        rows.append(row)
        print(f"{solver:8} {steps:5d} {row['nfe']:4d} {row['fid']:7.2f} {row['mean_mse']:8.4f} "
              f"{row['ref_rmse']:8.4f} {row['img_s']:6.1f}", flush=True)
    if rows:
        plot(rows, Path(args.plot))
        print(f"plot: {args.plot}")

    batches = [int(b) for b in args.speed_batches.split(",") if b]
    specs = [s.split(":") for s in args.speed.split(",") if s]
    if specs:
        print(f"\nsampling speed, {args.speed_images} images per cell (img/s; 10k images in minutes)")
        for solver, steps in specs:
            cells = [("bf16", b) for b in batches] + [("fp32", max(batches))]
            cells += [("bf16 compiled", max(batches))] if args.compile else []
            out = []
            for prec, b in cells:
                model = compiled_net(ckpt, solver, b) if prec == "bf16 compiled" else net
                _, secs = sample(model, args.speed_images, args.seed, solver, int(steps), b, prec != "fp32")
                rate = args.speed_images / secs
                out.append(f"{prec} b{b}: {rate:5.1f} ({10_000 / rate / 60:.0f} min)")
            print(f"{solver:8} {int(steps):3d} steps, NFE {network_evaluations(solver, int(steps)):3d}: "
                  + "; ".join(out), flush=True)


if __name__ == "__main__":
    main()
