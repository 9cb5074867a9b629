"""Train the EDM denoiser: Adam with lr ramp-up, EMA, resumable checkpoints, bf16/fp16, accumulation, torchrun."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from emojidiff.config import Config, ConfigError, TrainConfig, load_config, save_resolved
from emojidiff.data.dataset import measure_sigma_data
from emojidiff.images import from_uint8, save_grid
from emojidiff.layout import RunLayout
from emojidiff.model.compiled import CompiledOrEager
from emojidiff.model.edm import build_denoiser, edm_loss
from emojidiff.model.edm2_unet import force_weight_norm
from emojidiff.model.sampler import generate
from emojidiff.runlock import run_lock
from emojidiff.training import checkpoint as ckpt
from emojidiff.training import distributed as dist
from emojidiff.training.batches import TrainingData, conditioned, next_indices, seed_ints, training_data
from emojidiff.training.ema import ema_beta, make_ema, power_beta, power_gamma, update_ema

GRID_IMAGES = 64  # EMA samples drawn at each snapshot, fixed seeds
GRID_SEED = 123456
LOG_EVERY = 10  # steps between metrics lines
CHECK_EVERY_CUDA = 10  # steps between finiteness checks on CUDA (each one syncs the host)
CHECK_EVERY_CPU = 1  # on CPU a check costs nothing: every step, as always


class TrainingDiverged(RuntimeError):
    """The loss or gradient became NaN/inf; the last good checkpoint is kept."""


def memory_format(choice: str, amp_dtype: torch.dtype | None, device: torch.device) -> torch.memory_format:
    """train.channels_last: 'auto' keeps the CPU rule (with bf16 autocast) and is off on CUDA until a GPU shows
    it pays (ATen's GroupNorm makes its inputs NCHW-contiguous again: bench/gpu_check.py measures both)."""
    if choice == "on" or (choice == "auto" and device.type != "cuda" and amp_dtype is not None):
        return torch.channels_last
    return torch.contiguous_format


def accumulation(batch: int, batch_gpu: int, info: dist.DistInfo) -> tuple[int, int]:
    """(images per forward/backward, rounds per step) for this process's share of the global batch."""
    per = batch // info.world_size
    chunk = batch_gpu or per
    if per % chunk:
        raise ConfigError(f"train.batch_gpu={batch_gpu} must divide each process's share ({per} = {batch} / "
                          f"{info.world_size} processes)")
    return chunk, per // chunk


def _trim_metrics(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from (they would be repeated)."""
    if path.is_file():
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")  # temp file + rename: a kill keeps the old log
        tmp.write_text("".join(json.dumps(r) + "\n" for r in ckpt.read_log(path) if r["step"] <= step))
        os.replace(tmp, path)


def _clear(train_dir: Path) -> None:
    for p in train_dir.glob("*"):
        if p.is_file() and re.match(r"(ckpt|p?ema)-\d+\.(json|safetensors|png)$|metrics\.jsonl$", p.name):
            p.unlink()


def _check_resumable(meta: dict, cfg: Config, width: int) -> None:
    """Refuse to resume with another architecture, dataset or seed; note changed training settings."""
    now = cfg.to_dict()
    added = {"model": {"architecture": "ddpmpp"}}  # keys added since older checkpoints, at their defaults then
    for key in ("model", "data"):
        ignore = ("widths", "gallery_size")  # what does not change this width's training
        old, new = ({k: v for k, v in d.items() if k not in ignore}
                    for d in ({**added.get(key, {}), **meta.get(key)}, now[key]))
        if old != new:
            diff = sorted(k for k in new if old.get(k) != new[k])
            raise ckpt.CheckpointError(f"{meta['_json']}: trained with other {key} settings ({', '.join(diff)}); "
                                       "resume=False (--no-resume) to start over")
    if meta["width"] != width or meta["seed"] != cfg.seed:
        raise ckpt.CheckpointError(f"{meta['_json']}: trained with width {meta['width']}, seed {meta['seed']}")
    defaults = TrainConfig().__dict__  # keys added since that checkpoint count as their defaults
    extra_then = meta["train"].get("ema_std_extra", 0.0)
    if cfg.train.ema_std_extra > 0 and extra_then != cfg.train.ema_std_extra:  # its profile would be unknown
        raise ckpt.CheckpointError(f"{meta['_json']}: trained with train.ema_std_extra {extra_then}, not "
                                   f"{cfg.train.ema_std_extra}; resume=False (--no-resume) to start over")
    changed = sorted(k for k, v in now["train"].items() if meta["train"].get(k, defaults[k]) != v)
    if changed:
        warnings.warn(f"resuming {meta['_json']} with changed train settings: {', '.join(changed)}", stacklevel=3)


@dataclass
class Trainer:
    """What one width's training holds fixed: profile, folder, process, data and the modules it updates."""

    cfg: Config
    width: int
    out: Path
    info: dist.DistInfo
    images: torch.Tensor  # uint8 NCHW, on the GPU when training there
    labels: torch.Tensor | None  # (N, 2) int64 parents, conditional models only
    net: torch.nn.Module
    ema: torch.nn.Module
    model: torch.nn.Module  # net as called: wrapped by DDP, compiled
    ddp: torch.nn.Module
    optimizer: torch.optim.Optimizer
    noise_rng: torch.Generator  # flips, sigmas and noise: one global draw, the same on every rank
    scaler: torch.amp.GradScaler | None  # fp16 only
    amp_dtype: torch.dtype | None
    fmt: torch.memory_format
    shard: slice  # this rank's part of every global batch
    chunk: int  # images per forward/backward
    rounds: int  # forward/backward rounds per step (gradient accumulation)
    ema_extra: torch.nn.Module | None = None  # the second power EMA (train.ema_std_extra), for post-hoc EMA only

    @property
    def batch_size(self) -> int:
        return self.cfg.train.batch_size

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.info.device.type, self.amp_dtype)


@dataclass
class LoopState:
    """Where the loop stands: the counters a checkpoint saves, and this session's bookkeeping."""

    step: int = 0
    nimg: int = 0
    epoch: int = 0  # data order: epoch and position in its permutation
    pos: int = 0
    wall_s: float = 0.0  # training time over all sessions
    loss_window: list[float] = field(default_factory=list)  # losses since the last log line (saved: resume logs same)
    pending: list = field(default_factory=list)  # (loss, gradient finite) of steps not yet checked
    last_checkpoint: str | None = None
    t_log: float = 0.0
    n_log: int = 0

    SAVED = ("step", "nimg", "epoch", "pos", "wall_s")

    def saved(self) -> dict:
        return {k: getattr(self, k) for k in self.SAVED}


def find_resume_point(cfg: Config, out: Path, info: dist.DistInfo, resume: bool) -> tuple[dict, dict] | None:
    """The checkpoint to resume from, chosen by rank 0 (which first tidies the folder), loaded on every rank."""
    found, choice = None, None
    if info.is_main:  # the writer tidies first: temp files of killed writes, unreadable checkpoints to bad/
        ckpt.remove_orphans(out)
        had = sorted(out.glob("ckpt-*.json"))
        found = ckpt.latest_good(out, move_bad=True) if resume else None
        if resume and found is None and had:
            raise ckpt.CheckpointError(
                f"{out}: no usable checkpoint (the unreadable ones are in {out / 'bad'}); to start this width over, "
                "erasing its checkpoints and metrics.jsonl, pass --no-resume (resume=False)")
        choice = Path(found[1]["_json"]).name if found else None
    choice = dist.broadcast(choice, info)  # rank 0 chooses: every rank resumes from the same checkpoint
    if choice is not None and not info.is_main:
        if not (out / choice).is_file():
            raise ckpt.CheckpointError(f"rank {info.rank}: {out / choice}, chosen by rank 0 to resume from, is not "
                                       "on this node's disk; several nodes need a shared run folder")
        found = ckpt.load(out / choice)
    return found


def load_data(cfg: Config, info: dist.DistInfo, data: TrainingData | None) -> TrainingData:
    """The training data: rank 0 builds (or loads) the dataset cache; the others wait, then load it."""
    if data is not None:
        return data
    data = training_data(cfg) if info.is_main else None
    dist.barrier(info)
    return training_data(cfg) if data is None else data


def configure_backends(cfg: Config, info: dist.DistInfo, amp_dtype: torch.dtype | None) -> None:
    """Refuse fp16 off CUDA; on CUDA, cuDNN autotuning or, with train.deterministic, repeatable kernels."""
    if amp_dtype == torch.float16 and info.device.type != "cuda":
        raise NotImplementedError(f"train.precision=fp16 needs CUDA (device {info.device}); use bf16 or fp32")
    if info.device.type == "cuda":
        torch.backends.cudnn.benchmark = not cfg.train.deterministic  # fixed shapes: cuDNN picks the fastest
        torch.backends.cudnn.deterministic = cfg.train.deterministic
        if cfg.train.deterministic:  # no atomics-based kernels where torch has others (cuBLAS: fixed workspace)
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)


def build_trainer(cfg: Config, width: int, out: Path, info: dist.DistInfo, data: TrainingData,
                  found: tuple[dict, dict] | None) -> tuple[Trainer, LoopState]:
    """Net, EMA, optimiser and noise generator, seeded by (seed, width) and restored from `found` if given."""
    train_cfg = cfg.train
    chunk, rounds = accumulation(train_cfg.batch_size, train_cfg.batch_gpu, info)
    images = torch.from_numpy(np.ascontiguousarray(data.images)).permute(0, 3, 1, 2)  # uint8 NCHW
    labels = torch.from_numpy(data.labels) if data.labels is not None else None
    if info.device.type == "cuda":  # uint8 on the GPU: a batch is gathered there, no host copy per step
        images = images.to(info.device)
        labels = labels.to(info.device) if labels is not None else None
    sigma_data = found[1]["sigma_data"] if found else cfg.model.sigma_data or measure_sigma_data(data.images)

    torch.manual_seed(seed_ints(cfg.seed, width, 1))  # init and dropout; numpy/python seeded for any user code
    np.random.seed(seed_ints(cfg.seed, width, 3) % 2**32)
    random.seed(seed_ints(cfg.seed, width, 4))
    net = build_denoiser(cfg.model, width, images.shape[-1], sigma_data).to(info.device).train()
    if info.active:  # same initial weights everywhere, then each rank its own dropout masks
        torch.manual_seed(seed_ints(cfg.seed, width, 5, info.rank))
    amp_dtype = dist.resolve_precision(train_cfg.precision, info.device)
    configure_backends(cfg, info, amp_dtype)
    fmt = memory_format(train_cfg.channels_last, amp_dtype, info.device)
    net = net.to(memory_format=fmt)
    ema = make_ema(net)
    extras = {"ema_extra": make_ema(net)} if train_cfg.ema_std_extra > 0 else {}
    fused = {"fused": True} if info.device.type == "cuda" else {}  # one kernel for the whole Adam update
    optimizer = torch.optim.Adam(net.parameters(), lr=train_cfg.lr, betas=(0.9, train_cfg.adam_beta2), eps=1e-8,
                                 **fused)
    # noise, sigma and flips: a CPU generator on CPU (as always, bitwise), drawn on the GPU there
    noise_rng = torch.Generator(info.device if info.device.type == "cuda" else "cpu")
    noise_rng.manual_seed(seed_ints(cfg.seed, width, 2))
    state = LoopState()
    if found is not None:
        ckpt.restore_state(found[0], found[1], net, ema, optimizer, {"noise": noise_rng}, info.rank, info.world_size,
                           extras=extras)
        state = LoopState(**{k: found[1][k] for k in LoopState.SAVED}, last_checkpoint=found[1]["_json"],
                          loss_window=list(found[1].get("loss_window", [])))
        if info.is_main:
            print(f"resuming {out} from {Path(found[1]['_json']).name} at {state.nimg / 1000:g} kimg")
    scaler = None  # fp16 only: loss scaling, its scale carried across resumes
    if amp_dtype == torch.float16:
        scale = float((found[1] if found else {}).get("grad_scale", 2**16))
        scaler = torch.amp.GradScaler("cuda", init_scale=scale)
    ddp = dist.wrap(net, info)
    model = CompiledOrEager(ddp) if train_cfg.compile else ddp
    trainer = Trainer(cfg, width, out, info, images, labels, net, ema, model, ddp, optimizer, noise_rng, scaler,
                      amp_dtype, fmt, dist.shard(train_cfg.batch_size, info), chunk, rounds,
                      ema_extra=extras.get("ema_extra"))
    return trainer, state


def fetch_batch(t: Trainer, state: LoopState) -> dict[str, torch.Tensor]:
    """The next global batch: image indices in the seeded epoch order, then flips, ln(sigma) normals and noise."""
    n, rng = t.batch_size, t.noise_rng
    idx, state.epoch, state.pos = next_indices(len(t.images), n, t.cfg.seed, state.epoch, state.pos)
    idx = idx.to(t.images.device)
    flip = (torch.rand(n, generator=rng, device=rng.device) < 0.5 if t.cfg.train.xflip
            else torch.zeros(n, dtype=torch.bool, device=rng.device))
    rnd_normal = torch.randn(n, 1, 1, 1, generator=rng, device=rng.device)  # same on every rank: one global batch
    noise = torch.randn(n, *t.images.shape[1:], generator=rng, device=rng.device)
    return {"idx": idx, "flip": flip, "rnd_normal": rnd_normal, "noise": noise}


def accumulate_gradients(t: Trainer, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Forward and backward over this rank's share in `rounds` chunks (one all-reduce); returns the mean loss."""
    device, loss_sum = t.info.device, None
    for r in range(t.rounds):
        part = slice(t.shard.start + r * t.chunk, t.shard.start + (r + 1) * t.chunk)
        idx = batch["idx"][part]
        y = from_uint8(t.images[idx])
        y = torch.where(batch["flip"][part, None, None, None], y.flip(3), y)
        y = y.to(device, memory_format=t.fmt)
        labels = t.labels[idx].to(device) if t.labels is not None else None
        sync = t.ddp.no_sync() if t.info.active and r < t.rounds - 1 else contextlib.nullcontext()
        with sync:
            with t.autocast():
                loss = edm_loss(t.model, y, t.cfg.train.P_mean, t.cfg.train.P_std, labels=labels,
                                rnd_normal=batch["rnd_normal"][part].to(device),
                                noise=batch["noise"][part].to(device, memory_format=t.fmt)).mean()
            scaled = loss if t.rounds == 1 else loss / t.rounds  # equal chunks: the mean of means is the mean
            (t.scaler.scale(scaled) if t.scaler is not None else scaled).backward()
        loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
    return loss_sum if t.rounds == 1 else loss_sum / t.rounds


def learning_rate(train_cfg, nimg: int) -> float:
    """Linear ramp-up over lr_rampup_kimg, then constant or EDM2's inverse square root (Karras et al. 2024, eq. 16)."""
    lr = train_cfg.lr * min(nimg / max(train_cfg.lr_rampup_kimg * 1000, 1e-8), 1)
    if train_cfg.lr_decay_kimg > 0:
        lr /= np.sqrt(max(nimg / (train_cfg.lr_decay_kimg * 1000), 1))
    return float(lr)


def update_weights(t: Trainer, state: LoopState, loss: torch.Tensor, nimg_after: int, check: bool,
                   bar) -> torch.Tensor:
    """The scheduled lr, gradient clipping, the finiteness check when due, then the Adam step; the gradient norm."""
    train_cfg = t.cfg.train
    for g in t.optimizer.param_groups:
        g["lr"] = learning_rate(train_cfg, nimg_after)
    if t.scaler is not None:
        t.scaler.unscale_(t.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(t.net.parameters(),
                                               train_cfg.grad_clip if train_cfg.grad_clip > 0 else float("inf"))
    # fp16: an inf gradient is the GradScaler's business (it skips the step), not a divergence
    finite = torch.isfinite(grad_norm) if t.scaler is None else torch.ones((), device=grad_norm.device)
    state.pending.append((loss, finite))
    if check:
        check_finite(t, state, bar)
    if t.scaler is not None:
        t.scaler.step(t.optimizer)
        t.scaler.update()
    else:
        t.optimizer.step()
    force_weight_norm(t.net)  # EDM2 nets: weights back at unit norm (eq. 67); nothing to do for DDPM++
    return grad_norm


def check_finite(t: Trainer, state: LoopState, bar) -> None:
    """One all-reduce for the pending steps' losses and gradient flags; raise if any was not finite.

    On CUDA a non-finite step found here was applied up to check_every - 1 steps ago; it is still caught before any
    log line or checkpoint, so the last good checkpoint is never overwritten by a diverged one.
    """
    flags = torch.stack([torch.stack([lo.float() for lo, _ in state.pending]).double(),
                         torch.stack([f.double() for _, f in state.pending])])
    flags = dist.sum_tensor(flags, t.info).cpu()
    losses = [v / t.info.world_size for v in flags[0].tolist()]
    state.pending.clear()
    bad = [i for i, (v, f) in enumerate(zip(losses, flags[1].tolist())) if not np.isfinite(v) or f != t.info.world_size]
    if bad:
        bar.close()
        back = len(losses) - 1 - bad[0]  # steps since the first bad one
        where = (f"the last good checkpoint {state.last_checkpoint} is kept" if state.last_checkpoint
                 else "no checkpoint was written yet")
        raise TrainingDiverged(f"non-finite loss ({losses[bad[0]]}) or gradient at step {state.step + 1 - back} "
                               f"({state.nimg - back * t.batch_size} images seen), width {t.width}; stopped, {where}")
    state.loss_window.extend(losses)


def log_metrics(t: Trainer, state: LoopState, grad_norm: torch.Tensor, bar) -> None:
    """Rank 0 appends one metrics line (mean loss since the last line); every rank starts a new loss window."""
    if t.info.is_main:
        now = time.perf_counter()
        rec = {"step": state.step, "kimg": state.nimg / 1000, "loss": float(np.mean(state.loss_window)),
               "lr": t.optimizer.param_groups[0]["lr"], "img_per_s": (state.nimg - state.n_log) / (now - state.t_log),
               "grad_norm": float(grad_norm), "wall_s": state.wall_s}
        with open(t.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        bar.set_postfix(loss=f"{rec['loss']:.4f}", ips=f"{rec['img_per_s']:.0f}")
        state.t_log, state.n_log = now, state.nimg
    state.loss_window = []


def checkpoint_meta(t: Trainer, state: LoopState, kind: str) -> dict:
    """The JSON beside a checkpoint or snapshot: counters, profile sections, sigma_data and the loss window."""
    cfg = t.cfg.to_dict()
    return {**state.saved(), "kind": kind, "kimg": state.nimg / 1000, "width": t.width,
            "img_resolution": t.images.shape[-1], "sigma_data": t.net.sigma_data,
            **{k: cfg[k] for k in ("model", "data", "train")}, "seed": t.cfg.seed,
            "world_size": t.info.world_size, "torch": torch.__version__,
            **({"grad_scale": t.scaler.get_scale()} if t.scaler is not None else {}),
            "loss_window": list(state.loss_window)}


def save_snapshot(t: Trainer, state: LoopState, ema_snapshot: bool, rank_states: list[dict]) -> None:
    """EMA snapshot and its sample grid first (thinned to max_snapshots), then the resume checkpoint that commits."""
    stem, train_cfg = f"{state.step:08d}", t.cfg.train
    if ema_snapshot:
        ckpt.save(t.out / f"ema-{stem}", {f"ema.{k}": v for k, v in t.ema.state_dict().items()},
                  checkpoint_meta(t, state, "ema"), fmt=ckpt.EMA_FORMAT)
        if t.ema_extra is not None:  # the second profile, read only by post-hoc EMA
            ckpt.save(t.out / f"pema-{stem}", {f"ema.{k}": v for k, v in t.ema_extra.state_dict().items()},
                      {**checkpoint_meta(t, state, "ema_extra"), "ema_std": train_cfg.ema_std_extra},
                      fmt=ckpt.EMA_FORMAT)
        with torch.random.fork_rng(devices=[]):
            grid = generate(t.ema, GRID_IMAGES, GRID_SEED, batch_size=GRID_IMAGES,
                            num_steps=min(t.cfg.sample.num_steps, 18), device=t.info.device, dtype=torch.float32,
                            autocast=t.amp_dtype == torch.bfloat16, uint8=True, progress=False)
        save_grid(t.out / f"ema-{stem}.png", grid, ncols=8, scale=2)
        snap_n = _every(train_cfg.snapshot_kimg)
        snaps = [(round(kimg * 1000) // snap_n, p.with_suffix(".json")) for kimg, p in ckpt.list_snapshots(t.out)]
        keep = ckpt.thin([k for k, _ in snaps], train_cfg.max_snapshots)
        for k, old in snaps:
            if k not in keep:
                ckpt.remove(old)
                ckpt.remove(old.with_name(f"p{old.name}"))  # its second-EMA twin, if any
                old.with_suffix(".png").unlink(missing_ok=True)
    extras = {"ema_extra": t.ema_extra} if t.ema_extra is not None else {}
    tensors, extra = ckpt.pack_state(t.net, t.ema, t.optimizer, {"noise": t.noise_rng}, rank_states, extras)
    saved = ckpt.save(t.out / f"ckpt-{stem}", tensors, {**checkpoint_meta(t, state, "checkpoint"), **extra})
    ckpt.prune(t.out, keep=2, just_saved=saved)  # the latest good, and one before in case it is damaged
    state.last_checkpoint = str(saved)


def snapshot(t: Trainer, state: LoopState, ema_snapshot: bool) -> None:
    """Every rank's RNG states to rank 0, which writes the snapshot and checkpoint; the others wait for it."""
    rank_states = dist.gather(ckpt.rank_rng_state(), t.info)  # each rank's own CPU/CUDA RNG states
    if t.info.is_main:
        t_snap = time.perf_counter()
        save_snapshot(t, state, ema_snapshot, rank_states)
        state.t_log += time.perf_counter() - t_snap  # keep img/s about training
    dist.barrier(t.info)


def _every(kimg: float) -> int:
    """A period in kimg as a whole number of images (at least one)."""
    return max(int(kimg * 1000), 1)


def train_width(cfg: Config, layout: RunLayout, width: int, resume: bool = True, images: np.ndarray | None = None,
                progress: bool = True, data: TrainingData | None = None) -> dict:
    """Train one UNet width into layout.train(width), holding the run folder's lock; returns a summary.

    `images` (uint8 NHWC) or `data` (with labels, for a conditional model) replace the profile's dataset.
    """
    main = dist.setup(cfg.device).is_main  # ranks of one torchrun share the folder; rank 0 holds the lock
    if data is None and images is not None:
        data = TrainingData(images)
    with run_lock(layout.root, "training") if main else contextlib.nullcontext():
        return _train_width(cfg, layout, width, resume, data, progress)


def _train_width(cfg: Config, layout: RunLayout, width: int, resume: bool, data: TrainingData | None,
                 progress: bool) -> dict:
    info = dist.setup(cfg.device)
    out = layout.train(width)
    out.mkdir(parents=True, exist_ok=True)
    found = find_resume_point(cfg, out, info, resume)
    data = load_data(cfg, info, data)
    cfg = conditioned(cfg, data)
    if not resume and info.is_main:
        _clear(out)
    dist.barrier(info)
    if found is not None:
        _check_resumable(found[1], cfg, width)
    t, state = build_trainer(cfg, width, out, info, data, found)
    train_cfg, batch_size = cfg.train, cfg.train.batch_size
    if info.is_main and (info.device.type == "cuda" or train_cfg.batch_gpu):
        print(f"train w{width}: {dist.precision_name(t.amp_dtype)}{' + GradScaler' if t.scaler else ''} (precision: "
              f"{train_cfg.precision}) on {info.device}, {'channels_last' if t.fmt == torch.channels_last else 'NCHW'}"
              f", {t.rounds} x {t.chunk} images per step and process"
              f"{', deterministic' if train_cfg.deterministic else ''}")
    if info.is_main:
        _trim_metrics(out / "metrics.jsonl", state.step)

    total_nimg = int(round(train_cfg.duration_kimg * 1000))
    snap_n, ckpt_n = _every(train_cfg.snapshot_kimg), _every(train_cfg.checkpoint_kimg or train_cfg.snapshot_kimg)
    check_every = CHECK_EVERY_CUDA if info.device.type == "cuda" else CHECK_EVERY_CPU
    bar = tqdm(total=total_nimg, initial=state.nimg, unit="img", unit_scale=True, desc=f"train w{width}",
               disable=not (progress and info.is_main), smoothing=0.1)
    session_t0, session_n0 = time.perf_counter(), state.nimg
    state.t_log, state.n_log = session_t0, state.nimg
    while state.nimg < total_nimg:
        t_step, nimg_after = time.perf_counter(), state.nimg + batch_size
        done = nimg_after >= total_nimg
        logs = (state.step + 1) % LOG_EVERY == 0 or done
        ema_snapshot = done or nimg_after // snap_n > state.nimg // snap_n
        full = ema_snapshot or nimg_after // ckpt_n > state.nimg // ckpt_n

        # Fetch a batch.
        batch = fetch_batch(t, state)

        # Accumulate gradients.
        t.optimizer.zero_grad(set_to_none=True)
        loss = accumulate_gradients(t, batch)

        # Update weights.
        check = logs or full or (state.step + 1) % check_every == 0
        grad_norm = update_weights(t, state, loss, nimg_after, check, bar)

        # Update EMA.
        if train_cfg.ema_std > 0:  # EDM2's power function of the step count
            beta = power_beta(state.step + 1, power_gamma(train_cfg.ema_std))
        else:
            beta = ema_beta(state.nimg, batch_size, train_cfg.ema_halflife_kimg, train_cfg.ema_rampup_ratio)
        update_ema(t.ema, t.net, beta)
        if t.ema_extra is not None:
            update_ema(t.ema_extra, t.net, power_beta(state.step + 1, power_gamma(train_cfg.ema_std_extra)))
        state.step, state.nimg = state.step + 1, nimg_after
        state.wall_s += time.perf_counter() - t_step
        bar.update(batch_size)

        # Log and snapshot.
        if logs:
            log_metrics(t, state, grad_norm, bar)
        if full:
            snapshot(t, state, ema_snapshot)
    bar.close()
    return summarise(t, state, found, time.perf_counter() - session_t0, session_n0)


def summarise(t: Trainer, state: LoopState, found: tuple[dict, dict] | None, session_s: float,
              session_n0: int) -> dict:
    """The summary train_width returns: counters, speed, precision, files and weight fingerprints."""
    info = t.info
    rate = (state.nimg - session_n0) / max(session_s, 1e-9) if state.nimg > session_n0 else None
    return {"width": t.width, "train_dir": str(t.out), "steps": state.step, "kimg": state.nimg / 1000,
            "wall_s": state.wall_s, "session_s": session_s, "img_per_s": rate, "sigma_data": t.net.sigma_data,
            "precision": dist.precision_name(t.amp_dtype), "batch_gpu": t.chunk, "rounds": t.rounds,
            "device": str(info.device), "world_size": info.world_size, "label_dim": t.cfg.model.label_dim,
            "params": sum(p.numel() for p in t.net.parameters()), "resumed_from": found[1]["_json"] if found else None,
            "final_loss": float(ckpt.read_metrics(t.out)["loss"].tail(10).mean()) if info.is_main else None,
            "snapshots": [str(p) for _, p in ckpt.list_snapshots(t.out)],
            "net_sha256": ckpt.weights_sha256(t.net), "ema_sha256": ckpt.weights_sha256(t.ema)}


def train(cfg: Config, out_dir: str | Path | None = None, width: int | None = None, resume: bool = True,
          progress: bool = True) -> dict:
    """Train every width of cfg.model.widths (or just `width`) into RunLayout(out_dir).train(width)."""
    layout = RunLayout.for_config(cfg, out_dir)
    info = dist.setup(cfg.device)
    widths = [width] if width is not None else list(cfg.model.widths)
    runs = {}
    try:
        with run_lock(layout.root, "training") if info.is_main else contextlib.nullcontext():
            if info.is_main:
                save_resolved(cfg, layout.root)
            for w in widths:
                runs[w] = train_width(cfg, layout, w, resume=resume, progress=progress)
    finally:
        dist.cleanup(info)
    return {"out_dir": str(layout.root), "runs": runs}


def cli_configure(parser) -> None:
    parser.add_argument("--params", required=True, help="profile YAML (params/*.yaml)")
    parser.add_argument("--out", default=None, help="run folder (default outputs/<profile name>)")
    parser.add_argument("--width", type=int, default=None, help="train only this UNet width")
    parser.add_argument("--resume", dest="resume", action="store_true", default=True,
                        help="continue from the latest good checkpoint (default)")
    parser.add_argument("--no-resume", dest="resume", action="store_false", help="start over")


def cli_main(args) -> int:
    result = train(load_config(args.params), args.out, width=args.width, resume=args.resume)
    for w, s in result["runs"].items():
        if s.get("final_loss") is not None:
            rate = f"{s['img_per_s']:.1f} img/s" if s["img_per_s"] else "already complete"
            print(f"w{w}: {s['kimg']:g} kimg, loss {s['final_loss']:.4f}, {rate}, {s['precision']} -> "
                  f"{s['train_dir']}")
    return 0


if __name__ == "__main__":  # python -m emojidiff.training.train ...; torchrun: -m emojidiff.cli train ...
    from emojidiff.cli import main  # the CLI imports this module: imported here, only when run as a script

    sys.exit(main(["train", *sys.argv[1:]]))
