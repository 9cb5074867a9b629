"""Training images/s per UNet width on the machine at hand: fp32 and bf16, accumulation, per-step host overhead.

    .venv/bin/python bench/train_throughput.py [--params params/cpu.yaml] [--widths 32 64] [--batch 64]
        [--batch-gpu 16] [--channels-last auto|on|off|both] [--precisions fp32 bf16]
The step is the training loop's (training/train.py): uint8 images gathered (on the GPU there), noise drawn (a CUDA
generator there), `batch / batch_gpu` forward/backward rounds, gradient clipping, Adam (fused on CUDA), the EMA update
and a finiteness check (every step on CPU, every 10th on CUDA). `host ms` is the time the Python thread spends per
step issuing it (on CUDA without waiting for the GPU): when it nears `step ms`, the GPU waits on the host. Of it,
the data gather + noise draw and the EMA update are shown apart (on CPU: the overhead around the model's compute).
On a shared machine the numbers are noisy.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from emojidiff.config import load_config
from emojidiff.model.edm import build_denoiser, edm_loss
from emojidiff.model.unet import count_parameters
from emojidiff.training.distributed import resolve_device, resolve_precision
from emojidiff.training.ema import make_ema, update_ema
from emojidiff.training.train import CHECK_EVERY_CPU, CHECK_EVERY_CUDA, memory_format


def measure_step(model_cfg, width: int, batch: int, precision: str, device: torch.device, steps: int,
                 batch_gpu: int = 0, channels_last: str = "auto", warmup: int = 2, n_data: int = 4096,
                 compile: bool = False) -> dict:
    """Time `steps` training steps after `warmup`: img/s, step and host ms, rounds, peak GPU memory (MiB)."""
    torch.manual_seed(0)
    cuda = device.type == "cuda"
    net = build_denoiser(model_cfg, width, 32, 0.67).to(device).train()
    amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    fmt = memory_format(channels_last, amp, device)
    net = net.to(memory_format=fmt)
    ema = make_ema(net)
    model = torch.compile(net) if compile else net  # as train.compile does; warm-up steps absorb the compile
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, **({"fused": True} if cuda else {}))
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    data = torch.randint(0, 256, (n_data, 3, 32, 32), dtype=torch.uint8, device=device if cuda else "cpu")
    gen = torch.Generator(device if cuda else "cpu").manual_seed(0)
    chunk = batch_gpu or batch
    if batch % chunk:
        raise ValueError(f"--batch-gpu {batch_gpu} must divide --batch {batch}")
    rounds = batch // chunk
    ctx = torch.autocast(device.type, amp) if amp is not None else contextlib.nullcontext()
    check_every = CHECK_EVERY_CUDA if cuda else CHECK_EVERY_CPU
    host = prep = ema_t = 0.0
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(warmup + steps):
        if i == warmup:
            if cuda:
                torch.cuda.synchronize(device)
            t0, host, prep, ema_t = time.perf_counter(), 0.0, 0.0, 0.0
        th = time.perf_counter()
        idx = torch.randint(0, n_data, (batch,)).to(data.device)
        rnd = torch.randn(batch, 1, 1, 1, generator=gen, device=gen.device)
        noise = torch.randn(batch, 3, 32, 32, generator=gen, device=gen.device)
        opt.zero_grad(set_to_none=True)
        prep += time.perf_counter() - th
        for r in range(rounds):
            part = slice(r * chunk, (r + 1) * chunk)
            tp = time.perf_counter()
            y = (data[idx[part]].float() / 127.5 - 1).to(device, memory_format=fmt)
            prep += time.perf_counter() - tp
            with ctx:
                loss = edm_loss(model, y, rnd_normal=rnd[part].to(device),
                                noise=noise[part].to(device, memory_format=fmt)).mean()
            scaled = loss / rounds if rounds > 1 else loss
            (scaler.scale(scaled) if scaler else scaled).backward()
        if scaler:
            scaler.unscale_(opt)
        norm = torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        if (i + 1) % check_every == 0 and not bool(torch.isfinite(norm) & torch.isfinite(loss)):  # syncs on CUDA
            raise RuntimeError("non-finite loss or gradient in the benchmark")
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        te = time.perf_counter()
        update_ema(ema, net, 0.999)
        ema_t += time.perf_counter() - te
        host += time.perf_counter() - th
    if cuda:
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - t0
    return {"width": width, "precision": precision, "batch": batch, "batch_gpu": chunk, "rounds": rounds,
            "channels_last": fmt == torch.channels_last, "compile": compile, "img_per_s": batch * steps / wall,
            "step_ms": 1000 * wall / steps, "host_ms": 1000 * host / steps, "prep_ms": 1000 * prep / steps,
            "ema_ms": 1000 * ema_t / steps,
            "peak_mib": torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None}


def describe(r: dict) -> str:
    mem = f", peak {r['peak_mib']:7.0f} MiB" if r["peak_mib"] is not None else ""
    return (f"width {r['width']:4d} {r['precision']}{' channels_last' if r['channels_last'] else ' NCHW'}"
            f"{' compiled' if r['compile'] else ''}"
            f" {r['rounds']} x {r['batch_gpu']}: {r['img_per_s']:8.1f} img/s, step {r['step_ms']:7.1f} ms, "
            f"host {r['host_ms']:7.1f} ms (data+noise {r['prep_ms']:.2f}, EMA {r['ema_ms']:.2f}){mem}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params/cpu.yaml", help="profile whose model section is measured")
    ap.add_argument("--widths", type=int, nargs="*", default=None, help="default: the profile's widths")
    ap.add_argument("--batch", type=int, default=None, help="default: the profile's batch size")
    ap.add_argument("--batch-gpu", type=int, default=None, help="images per forward/backward (default: the "
                    "profile's train.batch_gpu; 0: the whole batch)")
    ap.add_argument("--channels-last", default="auto", choices=["auto", "on", "off", "both"])
    ap.add_argument("--precisions", nargs="*", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--steps", type=int, default=10, help="timed steps per setting")
    ap.add_argument("--device", default=None, help="default: the profile's device")
    ap.add_argument("--compile", default="off", choices=["off", "on", "both"], help="torch.compile the net")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (compiling needs 3 or more)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's, one per core)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.params)
    device = resolve_device(args.device or cfg.device)
    batch = args.batch or cfg.train.batch_size
    batch_gpu = cfg.train.batch_gpu if args.batch_gpu is None else args.batch_gpu
    auto = resolve_precision("auto", device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else torch.backends.cpu.get_cpu_capability()
    print(f"device {device} ({name}), {torch.get_num_threads()} threads, batch {batch}, batch_gpu {batch_gpu}, "
          f"precision auto -> {'bf16' if auto is not None else 'fp32'}")
    layouts = ["off", "on"] if args.channels_last == "both" else [args.channels_last]
    for width in args.widths or cfg.model.widths:
        n = count_parameters(build_denoiser(cfg.model, width, 32, 0.67))
        print(f"width {width}: {n / 1e6:.2f} M params")
        for precision in args.precisions:
            for cl in layouts:
                for comp in {"off": [False], "on": [True], "both": [False, True]}[args.compile]:
                    r = measure_step(cfg.model, width, batch, precision, device, args.steps, batch_gpu, cl,
                                     warmup=args.warmup, compile=comp)
                    print("  " + describe(r), flush=True)


if __name__ == "__main__":
    main()
