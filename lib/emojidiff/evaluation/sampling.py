"""Sample a checkpoint, or a run's EMA snapshots, into the run folder as uint8 arrays; list, load and show them."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
from pathlib import Path

import numpy as np
import torch

from emojidiff.config import Config, SampleConfig, load_config
from emojidiff.evaluation.kitchen import write_pair
from emojidiff.images import make_grid, save_grid
from emojidiff.layout import RunLayout
from emojidiff.model.compiled import compile_for_sampling
from emojidiff.model.sampler import generate
from emojidiff.runlock import run_lock
from emojidiff.training import distributed as dist
from emojidiff.training.checkpoint import (
    latest_good_snapshot,
    list_snapshots,
    load_denoiser,
    pick_snapshots,
    read_meta,
    remove_orphans,
)
from emojidiff.training.distributed import resolve_precision
from emojidiff.training.train import memory_format

DEFAULT_SOLVER, DEFAULT_GUIDANCE = "heun", 1.0
_NAME = re.compile(r"kimg(?P<kimg>[0-9.]+)-n(?P<n>\d+)-seed(?P<seed>\d+)-steps(?P<steps>\d+)"
                   r"(?:-(?P<solver>[a-z][a-z0-9]*))?(?:-g(?P<guidance>[-+0-9.e]+))?")


def samples_name(kimg: float, num_images: int, seed: int, num_steps: int, solver: str = DEFAULT_SOLVER,
                 guidance: float = DEFAULT_GUIDANCE) -> str:
    """File stem of one sample set: snapshot, count, seed, steps (and solver, guidance when not the defaults)."""
    extra = ("" if solver == DEFAULT_SOLVER else f"-{solver}") + \
        ("" if guidance == DEFAULT_GUIDANCE else f"-g{guidance:g}")
    return f"kimg{kimg:09.3f}-n{num_images}-seed{seed}-steps{num_steps}{extra}"


def sampler_options(sample: SampleConfig) -> dict:
    """generate()'s keyword arguments from the config section, beyond steps and batch size."""
    # solver and guidance only when not the defaults, so default sets keep their names, keys and bytes
    out = {} if sample.solver == DEFAULT_SOLVER else {"solver": sample.solver}
    if sample.guidance != DEFAULT_GUIDANCE:
        out["guidance"] = sample.guidance
    if sample.solver == "heun":  # churn belongs to Algorithm 2 (Heun) alone
        out |= {"S_churn": sample.S_churn, "S_min": sample.S_min, "S_max": sample.S_max, "S_noise": sample.S_noise}
    return out


def sample_checkpoint(checkpoint: str | Path, out_folder: str | Path, sample: SampleConfig, seed: int = 0,
                      device: str = "auto", precision: str = "auto", overwrite: bool = False,
                      progress: bool = True) -> Path:
    """Sample `sample.num_images` from a checkpoint's EMA weights into out_folder/<samples_name>.npz (+ a .png grid).

    Image i's noise is seeded by (seed, i), so sets drawn with other batch sizes or rank counts agree. Under torchrun
    each rank draws a contiguous share and rank 0 writes the file. An existing file is reused unless `overwrite` or
    it was drawn from other weights (its info records the checkpoint's sha256; files without it are redrawn).
    bf16 autocast follows the training rule (resolve_precision); fp16 GPUs sample in fp32. `sample.compile`
    compiles the UNet (other rounding than eager, which bf16 lets grow along the ODE; a set's info says "compiled").
    """
    if not isinstance(sample, SampleConfig):
        raise TypeError(f"sample must be the profile's SampleConfig (cfg.sample), got {type(sample).__name__}")
    if sample.num_images < 1:
        raise ValueError(f"num_images must be positive, got {sample.num_images}")
    meta = read_meta(checkpoint)
    out_folder = Path(out_folder)
    stem = samples_name(float(meta["kimg"]), sample.num_images, seed, sample.num_steps, sample.solver, sample.guidance)
    path = out_folder / f"{stem}.npz"
    info = dist.setup(device)
    # rank 0 decides for all, so no rank skips while another draws (it would wait in the gather)
    if dist.broadcast(not overwrite and info.is_main and _drawn_from(path, meta["sha256"]), info):
        return path
    with run_lock(out_folder, "sampling") if info.is_main else contextlib.nullcontext():
        _sample_into(path, checkpoint, meta, info, sample, seed, precision, progress)
    dist.barrier(info)
    return path


def _drawn_from(path: Path, checkpoint_sha256: str) -> bool:
    """Whether the sample set at `path` exists and was drawn from the checkpoint with this sha256 (else: a note)."""
    if not path.is_file():
        return False
    try:
        with np.load(path) as f:
            had = json.loads(str(f["info"])).get("checkpoint_sha256")
    except (OSError, ValueError, KeyError) as e:  # torn or foreign file: redraw it
        had, why = None, f"unreadable ({e})"
    else:
        why = "drawn before samples recorded their checkpoint" if had is None else "drawn from other weights"
    if had == checkpoint_sha256:
        return True
    print(f"redrawing {path.name}: the existing set was {why} (a retrained checkpoint never reuses old samples)")
    return False


def _sample_into(path: Path, checkpoint, meta: dict, info, sample: SampleConfig, seed: int, precision: str,
                 progress: bool) -> None:
    """Draw this rank's share; rank 0 writes the set atomically (temp file + rename) and its preview grid."""
    net = load_denoiser(checkpoint, info.device, ema=True)
    amp = resolve_precision(precision, info.device)
    if amp is not None and amp != torch.bfloat16:  # fp16 training (GPUs without bf16): sample in fp32
        amp = None
    if sample.compile:  # the same ODE with other rounding: not bit for bit, in bf16 visibly apart on some pixels
        net = compile_for_sampling(net, memory_format("auto", amp, info.device))
    n = sample.num_images
    per = -(-n // info.world_size)
    start, stop = min(info.rank * per, n), min((info.rank + 1) * per, n)
    options = sampler_options(sample)
    images = generate(net, stop - start, seed, batch_size=sample.batch_size, num_steps=sample.num_steps,
                      start_index=start, device=info.device, dtype=torch.float32, autocast=amp is not None,
                      uint8=True, progress=progress and info.is_main, **options)
    if info.active:
        images = np.concatenate(dist.gather(images, info))  # every rank's share, in rank order
    if info.is_main:
        sample_info = {"checkpoint": str(checkpoint), "checkpoint_sha256": meta["sha256"], "kimg": float(meta["kimg"]),
                       "width": meta.get("width"), "num_images": n, "seed": seed, "num_steps": sample.num_steps,
                       "sampler": sample.solver, **options, **({"compiled": True} if sample.compile else {}),
                       "precision": "bf16" if amp is not None else "fp32", "world_size": info.world_size}
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_orphans(path.parent)  # .NAME.tmpPID.npz of killed writers
        tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.npz")
        np.savez(tmp, images=images, info=json.dumps(sample_info))
        os.replace(tmp, path)
        save_grid(path.with_suffix(".png"), images[:100], ncols=10, scale=2)



def sample_snapshots(cfg: Config, layout: RunLayout, width: int, progress: bool = True) -> list[tuple[float, Path]]:
    """Sample every snapshot that evaluation scores (cfg.eval) with the profile's fixed N and seed; reuses files."""
    snaps = list_snapshots(layout.train(width))
    if not snaps:
        raise FileNotFoundError(f"no EMA snapshots in {layout.train(width)}: run notebook 02_training "
                                f"(or emojidiff train) first")
    return [(kimg, sample_checkpoint(path, layout.samples(width), cfg.sample, cfg.seed, cfg.device,
                                     cfg.train.precision, progress=progress))
            for kimg, path in pick_snapshots(snaps, cfg.eval.snapshots, cfg.eval.max_snapshots)]


def list_samples(layout: RunLayout | str | Path, width: int) -> list[dict]:
    """Every sample set of one width as dicts (kimg, num_images, seed, num_steps, solver, guidance, path), oldest
    snapshot first."""
    layout = layout if isinstance(layout, RunLayout) else RunLayout(layout)
    out = []
    for p in sorted(layout.samples(width).glob("kimg*-n*-seed*-steps*.npz")):
        m = _NAME.fullmatch(p.stem)
        if m is None:
            continue
        out.append({"kimg": float(m["kimg"]), "num_images": int(m["n"]), "seed": int(m["seed"]),
                    "num_steps": int(m["steps"]), "solver": m["solver"] or DEFAULT_SOLVER,
                    "guidance": float(m["guidance"]) if m["guidance"] else DEFAULT_GUIDANCE, "path": p})
    return sorted(out, key=lambda r: (r["kimg"], r["num_images"], r["solver"], r["guidance"]))


def load_samples(layout: RunLayout | str | Path, width: int, kimg: float | None = None) -> tuple[np.ndarray, dict]:
    """(uint8 NHWC images, info) of one width's samples at snapshot `kimg` (None: the latest); largest set wins."""
    sets = list_samples(layout, width)
    folder = (layout if isinstance(layout, RunLayout) else RunLayout(layout)).samples(width)
    if not sets:
        raise FileNotFoundError(f"no samples in {folder}: run `emojidiff sample` or notebook 04_metrics first "
                                f"(after training: notebook 02_training)")
    if kimg is None:
        kimg = sets[-1]["kimg"]
    match = [s for s in sets if abs(s["kimg"] - kimg) < 1e-6]
    if not match:
        raise FileNotFoundError(f"no samples at {kimg} kimg in {folder}; have {sorted({s['kimg'] for s in sets})}")
    with np.load(match[-1]["path"]) as f:
        return f["images"], {**json.loads(str(f["info"])), "path": str(match[-1]["path"])}


def plot_samples_vs_training(layout: RunLayout | str | Path, width: int, train_images: np.ndarray,
                             kimg: float | None = None, n: int = 40, seed: int = 0):
    """A figure: n samples (upscaled 4x to 128 px) beside n random training images at the same scale."""
    import matplotlib.pyplot as plt  # pyplot is heavy and picks a backend: only where a figure is drawn

    images, info = load_samples(layout, width, kimg)
    pick = np.random.default_rng(seed).choice(len(train_images), min(n, len(train_images)), replace=False)
    fig, axes = plt.subplots(1, 2, figsize=(14, 6.5))
    for ax, ims, title in [(axes[0], images[:n], f"samples, width {width}, {info['kimg']:g} kimg"),
                           (axes[1], train_images[pick], "random training fusions")]:
        ax.imshow(make_grid(ims, ncols=8, scale=128 // ims.shape[1]))
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    return fig


def plot_samples_over_training(layout: RunLayout | str | Path, width: int, n: int = 10):
    """A figure: one row of the same n seeds per snapshot, so each image's evolution over training reads down."""
    import matplotlib.pyplot as plt

    sets = {s["kimg"]: s for s in list_samples(layout, width)}  # one set per snapshot (the largest)
    rows = [load_samples(layout, width, k)[0][:n] for k in sets]
    fig, ax = plt.subplots(figsize=(n * 1.3, 1.4 * len(rows) + 0.6))
    ax.imshow(make_grid(np.concatenate(rows), ncols=n, scale=128 // rows[0].shape[1]))
    ax.set_yticks([(i + 0.5) * ax.get_ylim()[0] / len(rows) for i in range(len(rows))], [f"{k:g} kimg" for k in sets])
    ax.set_xticks([])
    ax.set_title(f"width {width}: the same seeds at each snapshot")
    fig.tight_layout()
    return fig


def cli_configure(parser) -> None:
    parser.add_argument("--params", required=True, help="profile YAML (params/*.yaml)")
    parser.add_argument("--checkpoint", default=None,
                        help="EMA snapshot or checkpoint (default: the latest EMA snapshot of every width)")
    # not --num: under torchrun that prefix is taken by torchrun's own --numa-binding (`--num` still abbreviates this)
    parser.add_argument("--num-images", type=int, default=None, help="images to draw (default: sample.num_images)")
    parser.add_argument("--out", default=None, help="run folder (default outputs/<profile name>)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (default: the profile's seed)")
    parser.add_argument("--pair", nargs=2, metavar=("A", "B"), default=None,
                        help="conditional nets: the fusion of faces A and B (name, emoji or index) into <run>/kitchen/")
    parser.add_argument("--guidance", type=float, default=None,
                        help="with --pair: guidance w (default kitchen.guidance)")


def cli_main(args) -> int:
    """Sample from EMA snapshots into the run's samples/w<width>/ folder, holding the run folder's lock."""
    cfg = load_config(args.params)
    layout = RunLayout.for_config(cfg, args.out)
    if args.checkpoint:
        jobs = [(int(read_meta(args.checkpoint)["width"]), Path(args.checkpoint))]
    else:
        jobs = []
        for w in cfg.model.widths:
            snap = latest_good_snapshot(layout.train(w))  # a damaged newest one is named and skipped
            if snap is None:
                raise FileNotFoundError(f"no usable EMA snapshot in {layout.train(w)}: train first (emojidiff train)")
            jobs.append((w, snap[1]))
    if getattr(args, "pair", None):  # the kitchen: one fusion, a PNG grid and an npz (evaluation/kitchen.py)
        for w, ckpt in jobs:
            path = write_pair(ckpt, layout.root / "kitchen" / f"w{w}", *args.pair, n=args.num_images or 8,
                              guidance=cfg.kitchen.guidance if args.guidance is None else args.guidance,
                              seed=cfg.seed if args.seed is None else args.seed,
                              num_steps=cfg.kitchen.num_steps or cfg.sample.num_steps,
                              solver=cfg.kitchen.solver or cfg.sample.solver)
            print(f"w{w}: {path}")
        return 0
    sample = cfg.sample if args.num_images is None else dataclasses.replace(cfg.sample, num_images=args.num_images)
    main = dist.setup(cfg.device).is_main  # under torchrun rank 0 holds the lock for all
    with run_lock(layout.root, "sampling") if main else contextlib.nullcontext():
        for w, ckpt in jobs:
            path = sample_checkpoint(ckpt, layout.samples(w), sample, cfg.seed if args.seed is None else args.seed,
                                     cfg.device, cfg.train.precision)
            print(f"w{w}: {path}")
    return 0
