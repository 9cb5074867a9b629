"""Draw thousands of emoji from a checkpoint's EMA weights (Heun, seeded per image) and keep them as uint8 arrays."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from emojidiff.layout import RunLayout
from emojidiff.runlock import run_lock


def samples_name(kimg: float, num_images: int, seed: int, num_steps: int) -> str:
    """File stem of one sample set: snapshot, count, seed and steps, so a different request never reuses it."""
    return f"kimg{kimg:09.3f}-n{num_images}-seed{seed}-steps{num_steps}"


def _gather(images: np.ndarray, info) -> np.ndarray:
    """Concatenate every rank's images in rank order (all ranks get the result)."""
    import torch.distributed as dist

    parts = [None] * info.world_size
    dist.all_gather_object(parts, images)
    return np.concatenate(parts)


def sample_checkpoint(checkpoint: str | Path, out_folder: str | Path, num_images: int = 1000, seed: int = 0,
                      num_steps: int = 18, batch_size: int = 256, device: str = "auto", precision: str = "auto",
                      S_churn: float = 0.0, S_min: float = 0.0, S_max: float = float("inf"), S_noise: float = 1.0,
                      overwrite: bool = False, progress: bool = True) -> Path:
    """Sample `num_images` from a checkpoint's EMA weights into out_folder/<samples_name>.npz (+ a .png grid).

    Image i's noise is seeded by (seed, i), so sets drawn with other batch sizes or rank counts agree. Under torchrun
    each rank draws a contiguous share and rank 0 writes the file. An existing file is reused unless `overwrite` or
    it was drawn from other weights (its info records the checkpoint's sha256; files without it are redrawn).
    bf16 autocast follows the training rule (emojidiff.training.train.resolve_precision); fp16 GPUs sample in fp32.
    """
    from emojidiff.training import distributed as dist
    from emojidiff.training.checkpoint import read_meta

    if num_images < 1:
        raise ValueError(f"num_images must be positive, got {num_images}")
    meta = read_meta(checkpoint)
    kimg = float(meta["kimg"])
    out_folder = Path(out_folder)
    path = out_folder / f"{samples_name(kimg, num_images, seed, num_steps)}.npz"
    info = dist.setup(device)
    # rank 0 decides for all, so no rank skips while another draws (it would wait in the gather)
    if dist.broadcast(not overwrite and info.is_main and _drawn_from(path, meta["sha256"]), info):
        return path
    with run_lock(out_folder, "sampling") if info.is_main else contextlib.nullcontext():
        _sample_into(path, checkpoint, meta, info, num_images, seed, num_steps, batch_size, precision,
                     dict(S_churn=S_churn, S_min=S_min, S_max=S_max, S_noise=S_noise), progress)
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


def _sample_into(path: Path, checkpoint, meta: dict, info, num_images: int, seed: int, num_steps: int,
                 batch_size: int, precision: str, churn: dict, progress: bool) -> None:
    """Draw this rank's share; rank 0 writes the set atomically (temp file + rename) and its preview grid."""
    from emojidiff.images import save_grid
    from emojidiff.model.sampler import generate
    from emojidiff.training.checkpoint import load_denoiser, remove_orphans
    from emojidiff.training.train import resolve_precision

    net = load_denoiser(checkpoint, info.device, ema=True)
    amp = resolve_precision(precision, info.device)
    if amp is not None and amp != torch.bfloat16:  # fp16 training (GPUs without bf16): sample in fp32
        amp = None
    per = -(-num_images // info.world_size)
    start, stop = min(info.rank * per, num_images), min((info.rank + 1) * per, num_images)
    images = generate(net, stop - start, seed, batch_size=batch_size, num_steps=num_steps, start_index=start,
                      device=info.device, dtype=torch.float32, autocast=amp is not None, uint8=True,
                      progress=progress and info.is_main, **churn)
    if info.active:
        images = _gather(images, info)
    if info.is_main:
        sample_info = {"checkpoint": str(checkpoint), "checkpoint_sha256": meta["sha256"], "kimg": float(meta["kimg"]),
                       "width": meta.get("width"),
                       "num_images": num_images, "seed": seed, "num_steps": num_steps, "sampler": "heun", **churn,
                       "precision": "bf16" if amp is not None else "fp32", "world_size": info.world_size}
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_orphans(path.parent)  # .NAME.tmpPID.npz of killed writers
        tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.npz")
        np.savez(tmp, images=images, info=json.dumps(sample_info))
        os.replace(tmp, path)
        save_grid(path.with_suffix(".png"), images[:100], ncols=10, scale=2)


def list_samples(layout: RunLayout | str | Path, width: int) -> list[dict]:
    """Every sample set of one width as dicts (kimg, num_images, seed, num_steps, path), oldest snapshot first."""
    layout = layout if isinstance(layout, RunLayout) else RunLayout(layout)
    out = []
    for p in sorted(layout.samples(width).glob("kimg*-n*-seed*-steps*.npz")):
        kimg, n, seed, steps = p.stem.split("-")
        out.append({"kimg": float(kimg[4:]), "num_images": int(n[1:]), "seed": int(seed[4:]),
                    "num_steps": int(steps[5:]), "path": p})
    return sorted(out, key=lambda r: (r["kimg"], r["num_images"]))


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


def cli_configure(parser) -> None:
    parser.add_argument("--params", required=True, help="profile YAML (params/*.yaml)")
    parser.add_argument("--checkpoint", default=None,
                        help="EMA snapshot or checkpoint (default: the latest EMA snapshot of every width)")
    # not --num: under torchrun that prefix is taken by torchrun's own --numa-binding (`--num` still abbreviates this)
    parser.add_argument("--num-images", type=int, default=None, help="images to draw (default: sample.num_images)")
    parser.add_argument("--out", default=None, help="run folder (default outputs/<profile name>)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (default: the profile's seed)")


def cli_main(args) -> int:
    """Sample from EMA snapshots into the run's samples/w<width>/ folder, holding the run folder's lock."""
    from emojidiff.config import load_config
    from emojidiff.training import distributed as dist
    from emojidiff.training.checkpoint import latest_good_snapshot, read_meta

    cfg = load_config(args.params)
    layout = RunLayout(args.out if args.out is not None else Path("outputs") / cfg.name)
    if args.checkpoint:
        jobs = [(int(read_meta(args.checkpoint)["width"]), Path(args.checkpoint))]
    else:
        jobs = []
        for w in cfg.model.widths:
            snap = latest_good_snapshot(layout.train(w))  # a damaged newest one is named and skipped
            if snap is None:
                raise FileNotFoundError(f"no usable EMA snapshot in {layout.train(w)}: train first (emojidiff train)")
            jobs.append((w, snap[1]))
    s = cfg.sample
    main = dist.setup(cfg.device).is_main  # under torchrun rank 0 holds the lock for all
    with run_lock(layout.root, "sampling") if main else contextlib.nullcontext():
        for w, ckpt in jobs:
            path = sample_checkpoint(ckpt, layout.samples(w), args.num_images or s.num_images,
                                     cfg.seed if args.seed is None else args.seed, s.num_steps, s.batch_size,
                                     cfg.device, cfg.train.precision, s.S_churn, s.S_min, s.S_max, s.S_noise)
            print(f"w{w}: {path}")
    return 0


def gallery_vs_training(layout: RunLayout | str | Path, width: int, train_images: np.ndarray, kimg: float | None = None,
                        n: int = 40, seed: int = 0, path: str | Path | None = None):
    """A figure: n samples (upscaled 4x to 128 px) beside n random training images at the same scale."""
    import matplotlib.pyplot as plt

    from emojidiff.images import make_grid

    images, info = load_samples(layout, width, kimg)
    pick = np.random.default_rng(seed).choice(len(train_images), min(n, len(train_images)), replace=False)
    fig, axes = plt.subplots(1, 2, figsize=(14, 6.5))
    for ax, ims, title in [(axes[0], images[:n], f"samples, width {width}, {info['kimg']:g} kimg"),
                           (axes[1], train_images[pick], "random training fusions")]:
        ax.imshow(make_grid(ims, ncols=8, scale=128 // ims.shape[1]))
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=80)
    return fig


def gallery_over_training(layout: RunLayout | str | Path, width: int, n: int = 10, path: str | Path | None = None):
    """A figure: one row of the same n seeds per snapshot, so each image's evolution over training reads down."""
    import matplotlib.pyplot as plt

    from emojidiff.images import make_grid

    sets = {s["kimg"]: s for s in list_samples(layout, width)}  # one set per snapshot (the largest)
    rows = [load_samples(layout, width, k)[0][:n] for k in sets]
    fig, ax = plt.subplots(figsize=(n * 1.3, 1.4 * len(rows) + 0.6))
    ax.imshow(make_grid(np.concatenate(rows), ncols=n, scale=128 // rows[0].shape[1]))
    ax.set_yticks([(i + 0.5) * ax.get_ylim()[0] / len(rows) for i in range(len(rows))], [f"{k:g} kimg" for k in sets])
    ax.set_xticks([])
    ax.set_title(f"width {width}: the same seeds at each snapshot")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=80)
    return fig
