"""Train the EDM denoiser: Adam with lr ramp-up, EMA, resumable checkpoints, bf16/fp16, accumulation, torchrun."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from emojidiff.config import Config, TrainConfig, load_config, save_resolved
from emojidiff.images import save_grid
from emojidiff.layout import RunLayout
from emojidiff.model.edm import edm_loss
from emojidiff.runlock import run_lock
from emojidiff.training import checkpoint as ckpt
from emojidiff.training import distributed as dist
from emojidiff.training.ema import ema_beta, make_ema, update_ema

GRID_IMAGES = 64  # EMA samples drawn at each snapshot, fixed seeds
GRID_SEED = 123456
LOG_EVERY = 10  # steps between metrics lines
CHECK_EVERY_CUDA = 10  # steps between finiteness checks on CUDA (each one syncs the host)
CHECK_EVERY_CPU = 1  # on CPU a check costs nothing: every step, as always


class TrainingDiverged(RuntimeError):
    """The loss or gradient became NaN/inf; the last good checkpoint is kept."""


def _seed_ints(*words: int) -> int:
    return int(np.random.SeedSequence([int(w) for w in words]).generate_state(1, np.uint64)[0] >> 1)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The data order of one epoch: a permutation fixed by (seed, epoch), so a resume finds its place."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(_seed_ints(seed, 0xDA7A, epoch)))


def next_indices(n: int, batch: int, seed: int, epoch: int, pos: int) -> tuple[torch.Tensor, int, int]:
    """The next global batch of image indices from position `pos` of `epoch`, running into the next epochs."""
    parts = []
    while batch > 0:
        order = epoch_order(n, seed, epoch)
        take = order[pos:pos + batch]
        parts.append(take)
        batch -= len(take)
        pos += len(take)
        if pos >= n:
            epoch, pos = epoch + 1, 0
    return torch.cat(parts), epoch, pos


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: bf16 where the hardware does it natively ('auto'), else fp32 (None); fp16 only if asked."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":  # CUDA: trained with a GradScaler; sampled in fp32
        return torch.float16
    if device.type == "cuda":  # not counting emulation: V100/T4 would run bf16 slower than fp32
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else None
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    fast = ("avx512_bf16" in flags or "amx_bf16" in flags) and "AVX512" in torch.backends.cpu.get_cpu_capability()
    return torch.bfloat16 if fast else None


def precision_name(amp: torch.dtype | None) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp]


def memory_format(choice: str, amp: torch.dtype | None, device: torch.device) -> torch.memory_format:
    """train.channels_last: 'auto' keeps the CPU rule (with bf16 autocast) and is off on CUDA until a GPU shows
    it pays (ATen's GroupNorm makes its inputs NCHW-contiguous again: bench/gpu_check.py measures both)."""
    if choice == "on" or (choice == "auto" and device.type != "cuda" and amp is not None):
        return torch.channels_last
    return torch.contiguous_format


def accumulation(batch: int, batch_gpu: int, info) -> tuple[int, int]:
    """(images per forward/backward, rounds per step) for this process's share of the global batch."""
    per = batch // info.world_size
    chunk = batch_gpu or per
    if per % chunk:
        from emojidiff.config import ConfigError

        raise ConfigError(f"train.batch_gpu={batch_gpu} must divide each process's share ({per} = {batch} / "
                          f"{info.world_size} processes)")
    return chunk, per // chunk


def batch_loss(net, y: torch.Tensor, rnd_normal: torch.Tensor, noise: torch.Tensor, P_mean: float, P_std: float,
               sigma_data: float) -> torch.Tensor:
    """EDM eq. 8 with pre-drawn ln(sigma) normals and noise, so ranks can share one global draw."""
    return edm_loss(net, y, P_mean, P_std, sigma_data, rnd_normal=rnd_normal, noise=noise)


def training_images(cfg: Config) -> np.ndarray:
    """The training split of the profile's dataset, uint8 NHWC."""
    from emojidiff.data.dataset import dataset_from_config

    return np.asarray(dataset_from_config(cfg).train_images())


def measured_sigma_data(images: np.ndarray) -> float:
    from emojidiff.data.dataset import measure_sigma_data

    return float(measure_sigma_data(images))


def read_metrics(train_dir: str | Path):
    """The metrics log of a training folder as a DataFrame (one row per logged step)."""
    import pandas as pd

    path = Path(train_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics log at {path}: train first (notebook 02_training or emojidiff train)")
    return pd.DataFrame(_read_log(path))


def _read_log(path: Path) -> list[dict]:
    """The records of a metrics log; lines that do not parse (a torn write) are skipped with a warning."""
    records, torn = [], []
    for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            rec = None
        if isinstance(rec, dict) and "step" in rec:
            records.append(rec)
        else:
            torn.append(i)
    if torn:
        warnings.warn(f"{path}: skipped unreadable line(s) {', '.join(map(str, torn))} (a torn write?)", stacklevel=3)
    return records


def sample_grids(train_dir: str | Path) -> list[tuple[float, Path]]:
    """The EMA sample grids saved at each snapshot, as (kimg, png path), oldest first."""
    out = [(float(json.loads(p.with_suffix(".json").read_text())["kimg"]), p.with_suffix(".png"))
           for p in Path(train_dir).glob("ema-*.json") if p.with_suffix(".png").is_file()]
    return sorted(out)


def _trim_metrics(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from (they would be repeated)."""
    if path.is_file():
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")  # temp file + rename: a kill keeps the old log
        tmp.write_text("".join(json.dumps(r) + "\n" for r in _read_log(path) if r["step"] <= step))
        os.replace(tmp, path)


def _clear(train_dir: Path) -> None:
    for p in train_dir.glob("*"):
        if p.is_file() and re.match(r"(ckpt|ema)-\d+\.(json|safetensors|png)$|metrics\.jsonl$", p.name):
            p.unlink()


def _check_resumable(meta: dict, cfg: Config, width: int) -> None:
    """Refuse to resume with another architecture, dataset or seed; note changed training settings."""
    now = cfg.to_dict()
    for key in ("model", "data"):
        ignore = ("widths", "gallery_size")  # what does not change this width's training
        old, new = ({k: v for k, v in d.items() if k not in ignore} for d in (meta.get(key), now[key]))
        if old != new:
            diff = sorted(k for k in new if old.get(k) != new[k])
            raise ckpt.CheckpointError(f"{meta['_json']}: trained with other {key} settings ({', '.join(diff)}); "
                                       "resume=False (--no-resume) to start over")
    if meta["width"] != width or meta["seed"] != cfg.seed:
        raise ckpt.CheckpointError(f"{meta['_json']}: trained with width {meta['width']}, seed {meta['seed']}")
    defaults = TrainConfig().__dict__  # keys added since that checkpoint count as their defaults
    changed = sorted(k for k, v in now["train"].items() if meta["train"].get(k, defaults[k]) != v)
    if changed:
        warnings.warn(f"resuming {meta['_json']} with changed train settings: {', '.join(changed)}", stacklevel=3)


def train_width(cfg: Config, layout: RunLayout, width: int, resume: bool = True, images: np.ndarray | None = None,
                progress: bool = True) -> dict:
    """Train one UNet width into layout.train(width), holding the run folder's lock; returns a summary."""
    if cfg.model.label_dim:
        raise NotImplementedError(f"model.label_dim={cfg.model.label_dim}: conditional training is not supported")
    main = dist.setup(cfg.device).is_main  # ranks of one torchrun share the folder; rank 0 holds the lock
    with run_lock(layout.root, "training") if main else contextlib.nullcontext():
        return _train_width(cfg, layout, width, resume, images, progress)


def _train_width(cfg: Config, layout: RunLayout, width: int, resume: bool, images: np.ndarray | None,
                 progress: bool) -> dict:
    from emojidiff.model.edm import build_denoiser
    from emojidiff.model.sampler import generate

    tc, info = cfg.train, dist.setup(cfg.device)
    out = layout.train(width)
    out.mkdir(parents=True, exist_ok=True)
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
    if images is None:  # rank 0 builds (or loads) the dataset cache; the others wait, then load it
        images = training_images(cfg) if info.is_main else None
        dist.barrier(info)
        images = training_images(cfg) if images is None else images
    n, total_nimg = len(images), int(round(tc.duration_kimg * 1000))
    B = tc.batch_size
    sl = dist.shard(B, info)  # this rank's part of every global batch
    chunk, rounds = accumulation(B, tc.batch_gpu, info)
    data = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)  # uint8 NCHW
    if info.device.type == "cuda":
        data = data.to(info.device)  # uint8 on the GPU: a batch is gathered there, no host copy per step

    if not resume and info.is_main:
        _clear(out)
    dist.barrier(info)
    if found is not None:
        _check_resumable(found[1], cfg, width)
    sigma_data = found[1]["sigma_data"] if found else cfg.model.sigma_data or measured_sigma_data(images)

    torch.manual_seed(_seed_ints(cfg.seed, width, 1))  # init and dropout; numpy/python seeded for any user code
    np.random.seed(_seed_ints(cfg.seed, width, 3) % 2**32)
    random.seed(_seed_ints(cfg.seed, width, 4))
    net = build_denoiser(cfg.model, width, data.shape[-1], sigma_data).to(info.device).train()
    if info.active:  # same initial weights everywhere, then each rank its own dropout masks
        torch.manual_seed(_seed_ints(cfg.seed, width, 5, info.rank))
    amp = resolve_precision(tc.precision, info.device)
    if amp == torch.float16 and info.device.type != "cuda":
        raise NotImplementedError(f"train.precision=fp16 needs CUDA (device {info.device}); use bf16 or fp32")
    if info.device.type == "cuda":
        torch.backends.cudnn.benchmark = not tc.deterministic  # fixed shapes: let cuDNN pick the fastest kernels
        torch.backends.cudnn.deterministic = tc.deterministic
        if tc.deterministic:  # no atomics-based kernels where torch has others (cuBLAS needs its workspace fixed)
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
    fmt = memory_format(tc.channels_last, amp, info.device)
    net = net.to(memory_format=fmt)
    ema = make_ema(net)
    fused = {"fused": True} if info.device.type == "cuda" else {}  # one kernel for the whole Adam update
    opt = torch.optim.Adam(net.parameters(), lr=tc.lr, betas=(0.9, 0.999), eps=1e-8, **fused)
    # noise, sigma and flips: a CPU generator on CPU (as always, bitwise), drawn on the GPU there
    gen = torch.Generator(info.device if info.device.type == "cuda" else "cpu")
    gen.manual_seed(_seed_ints(cfg.seed, width, 2))
    state = {"step": 0, "nimg": 0, "epoch": 0, "pos": 0, "wall_s": 0.0}
    if found is not None:
        ckpt.restore_state(found[0], found[1], net, ema, opt, {"noise": gen}, info.rank, info.world_size)
        state = {k: found[1][k] for k in state}
        if info.is_main:
            print(f"resuming {out} from {Path(found[1]['_json']).name} at {state['nimg'] / 1000:g} kimg")
    scaler = None  # fp16 only: loss scaling, its scale carried across resumes
    if amp == torch.float16:
        scaler = torch.amp.GradScaler("cuda", init_scale=float((found[1] if found else {}).get("grad_scale", 2**16)))
    if info.is_main and (info.device.type == "cuda" or tc.batch_gpu):
        print(f"train w{width}: {precision_name(amp)}{' + GradScaler' if scaler else ''} (precision: {tc.precision}) "
              f"on {info.device}, {'channels_last' if fmt == torch.channels_last else 'NCHW'}, {rounds} x {chunk} "
              f"images per step and process{', deterministic' if tc.deterministic else ''}")
    metrics_path = out / "metrics.jsonl"
    if info.is_main:
        _trim_metrics(metrics_path, state["step"])
    ddp = dist.wrap(net, info)
    model = torch.compile(ddp) if tc.compile else ddp
    autocast = torch.autocast(info.device.type, amp) if amp is not None else contextlib.nullcontext()

    def meta(kind: str) -> dict:
        return {**state, "kind": kind, "kimg": state["nimg"] / 1000, "width": width, "img_resolution": data.shape[-1],
                "sigma_data": sigma_data, **{k: cfg.to_dict()[k] for k in ("model", "data", "train")},
                "seed": cfg.seed, "world_size": info.world_size, "torch": torch.__version__,
                **({"grad_scale": scaler.get_scale()} if scaler is not None else {}),
                "loss_window": list(losses)}  # losses since the last log line, so a resume logs the same mean

    def snapshot(full: bool, ema_snap: bool, rank_states: list[dict]) -> None:
        """EMA snapshot and its sample grid first, then the resume checkpoint that commits them."""
        stem = f"{state['step']:08d}"
        if ema_snap:
            ckpt.save(out / f"ema-{stem}", {f"ema.{k}": v for k, v in ema.state_dict().items()}, meta("ema"),
                      fmt=ckpt.EMA_FORMAT)
            with torch.random.fork_rng(devices=[]):
                grid = generate(ema, GRID_IMAGES, GRID_SEED, batch_size=GRID_IMAGES,
                                num_steps=min(cfg.sample.num_steps, 18), device=info.device,
                                dtype=torch.float32, autocast=amp == torch.bfloat16, uint8=True, progress=False)
            save_grid(out / f"ema-{stem}.png", grid, ncols=8, scale=2)
            snaps = [(round(kimg * 1000) // snap_n, p.with_suffix(".json")) for kimg, p in ckpt.list_snapshots(out)]
            keep = ckpt.thin([k for k, _ in snaps], tc.max_snapshots)
            for k, old in snaps:
                if k not in keep:
                    ckpt.remove(old)
                    old.with_suffix(".png").unlink(missing_ok=True)
        if full:
            tensors, extra = ckpt.pack_state(net, ema, opt, {"noise": gen}, rank_states)
            saved = ckpt.save(out / f"ckpt-{stem}", tensors, {**meta("checkpoint"), **extra})
            ckpt.prune(out, keep=2, just_saved=saved)  # the latest good, and one before in case it is damaged

    snap_n = max(int(tc.snapshot_kimg * 1000), 1)
    ckpt_n = max(int((tc.checkpoint_kimg or tc.snapshot_kimg) * 1000), 1)
    check_every = CHECK_EVERY_CUDA if info.device.type == "cuda" else CHECK_EVERY_CPU
    bar = tqdm(total=total_nimg, initial=state["nimg"], unit="img", unit_scale=True, desc=f"train w{width}",
               disable=not (progress and info.is_main), smoothing=0.1)
    t_log, n_log, session_t0, session_n0 = time.perf_counter(), state["nimg"], time.perf_counter(), state["nimg"]
    losses = list(found[1].get("loss_window", [])) if found else []
    pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # (loss, gradient finite) of steps not yet checked
    last_json = found[1]["_json"] if found else None
    gdev = gen.device
    while state["nimg"] < total_nimg:
        t_step = time.perf_counter()
        idx, state["epoch"], state["pos"] = next_indices(n, B, cfg.seed, state["epoch"], state["pos"])
        idx = idx.to(data.device)
        flip = (torch.rand(B, generator=gen, device=gdev) < 0.5 if tc.xflip
                else torch.zeros(B, dtype=torch.bool, device=gdev))
        rnd_normal = torch.randn(B, 1, 1, 1, generator=gen, device=gdev)  # same draws on every rank: one global batch
        noise = torch.randn(B, *data.shape[1:], generator=gen, device=gdev)
        opt.zero_grad(set_to_none=True)
        loss_sum = None
        for r in range(rounds):  # gradient accumulation: `rounds` chunks of this rank's share, one all-reduce
            part = slice(sl.start + r * chunk, sl.start + (r + 1) * chunk)
            y = data[idx[part]].float() / 127.5 - 1
            y = torch.where(flip[part, None, None, None], y.flip(3), y)
            y = y.to(info.device, memory_format=fmt)
            sync = ddp.no_sync() if info.active and r < rounds - 1 else contextlib.nullcontext()
            with sync:
                with autocast:
                    loss = batch_loss(model, y, rnd_normal[part].to(info.device),
                                      noise[part].to(info.device, memory_format=fmt), tc.P_mean, tc.P_std,
                                      sigma_data).mean()
                scaled = loss if rounds == 1 else loss / rounds  # equal chunks: the mean of means is the mean
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
            loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
        for g in opt.param_groups:  # linear lr ramp-up over lr_rampup_kimg
            g["lr"] = tc.lr * min((state["nimg"] + B) / max(tc.lr_rampup_kimg * 1000, 1e-8), 1)
        if scaler is not None:
            scaler.unscale_(opt)
        grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), tc.grad_clip if tc.grad_clip > 0 else float("inf"))
        prev = state["nimg"]
        done = prev + B >= total_nimg
        logs = (state["step"] + 1) % LOG_EVERY == 0 or done
        full = done or (prev + B) // ckpt_n > prev // ckpt_n or (prev + B) // snap_n > prev // snap_n
        # fp16: an inf gradient is the GradScaler's business (it skips the step), not a divergence
        finite = torch.isfinite(grad_norm) if scaler is None else torch.ones((), device=grad_norm.device)
        pending.append((loss_sum if rounds == 1 else loss_sum / rounds, finite))
        if logs or full or (state["step"] + 1) % check_every == 0:
            # One all-reduce for the pending steps' losses and gradient flags. On CUDA a non-finite step found here
            # was applied up to check_every - 1 steps ago; it is still caught before any log line or checkpoint,
            # so the last good checkpoint is never overwritten by a diverged one.
            t = torch.stack([torch.stack([lo.float() for lo, _ in pending]).double(),
                             torch.stack([f.double() for _, f in pending])])
            t = dist.sum_tensor(t, info).cpu()
            vals = [v / info.world_size for v in t[0].tolist()]
            pending.clear()
            bad = [i for i, (v, f) in enumerate(zip(vals, t[1].tolist())) if not np.isfinite(v) or f != info.world_size]
            if bad:
                bar.close()
                back = len(vals) - 1 - bad[0]  # steps since the first bad one
                where = (f"the last good checkpoint {last_json} is kept" if last_json
                         else "no checkpoint was written yet")
                raise TrainingDiverged(f"non-finite loss ({vals[bad[0]]}) or gradient at step "
                                       f"{state['step'] + 1 - back} ({prev - back * B} images seen), width {width}; "
                                       f"stopped, {where}")
            losses.extend(vals)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        update_ema(ema, net, ema_beta(state["nimg"], B, tc.ema_halflife_kimg, tc.ema_rampup_ratio))
        state["step"] += 1
        state["nimg"] += B
        state["wall_s"] += time.perf_counter() - t_step
        bar.update(B)
        if info.is_main and logs:
            now = time.perf_counter()
            rec = {"step": state["step"], "kimg": state["nimg"] / 1000, "loss": float(np.mean(losses)),
                   "lr": opt.param_groups[0]["lr"], "img_per_s": (state["nimg"] - n_log) / (now - t_log),
                   "grad_norm": float(grad_norm), "wall_s": state["wall_s"]}
            with open(metrics_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            bar.set_postfix(loss=f"{rec['loss']:.4f}", ips=f"{rec['img_per_s']:.0f}")
            t_log, n_log, losses = now, state["nimg"], []
        elif logs:
            losses = []
        if full:
            rank_states = dist.gather(ckpt.rank_rng_state(), info)  # each rank's own CPU/CUDA RNG states
        if full and info.is_main:
            t_snap = time.perf_counter()
            snapshot(True, done or state["nimg"] // snap_n > prev // snap_n, rank_states)
            last_json = str(sorted(out.glob("ckpt-*.json"))[-1])
            t_log += time.perf_counter() - t_snap  # keep img/s about training
        if full:
            dist.barrier(info)
    bar.close()
    session_s = time.perf_counter() - session_t0
    summary = {"width": width, "train_dir": str(out), "steps": state["step"], "kimg": state["nimg"] / 1000,
               "wall_s": state["wall_s"], "session_s": session_s,
               "img_per_s": (state["nimg"] - session_n0) / max(session_s, 1e-9) if state["nimg"] > session_n0 else None,
               "sigma_data": sigma_data, "precision": precision_name(amp), "batch_gpu": chunk, "rounds": rounds,
               "device": str(info.device), "world_size": info.world_size,
               "params": sum(p.numel() for p in net.parameters()), "resumed_from": found[1]["_json"] if found else None,
               "final_loss": float(read_metrics(out)["loss"].tail(10).mean()) if info.is_main else None,
               "snapshots": [str(p) for _, p in ckpt.list_snapshots(out)],
               "net_sha256": ckpt.weights_sha256(net), "ema_sha256": ckpt.weights_sha256(ema)}
    return summary


def train(cfg: Config, out_dir: str | Path | None = None, width: int | None = None, resume: bool = True,
          progress: bool = True) -> dict:
    """Train every width of cfg.model.widths (or just `width`) into RunLayout(out_dir).train(width)."""
    layout = RunLayout(out_dir if out_dir is not None else Path("outputs") / cfg.name)
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
    import sys

    from emojidiff.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
