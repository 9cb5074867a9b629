"""Training images/s per UNet width on the machine at hand, fp32 and bf16 autocast (+ channels_last).

    .venv/bin/python bench/train_throughput.py [--params params/cpu.yaml] [--widths 32 64] [--batch 64]
Numbers are for the training step only (forward, backward, Adam); on a shared machine they are noisy.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from emojidiff.config import load_config
from emojidiff.distributed import resolve_device
from emojidiff.edm import build_denoiser
from emojidiff.train import batch_loss, resolve_precision
from emojidiff.unet import count_parameters


def images_per_second(model_cfg, width: int, batch: int, precision: str, device: torch.device, steps: int,
                      warmup: int = 2) -> float:
    """Time `steps` training steps after `warmup`; returns images/s."""
    torch.manual_seed(0)
    net = build_denoiser(model_cfg, width, 32, 0.67).to(device).train()
    amp = torch.bfloat16 if precision == "bf16" else None
    fmt = torch.channels_last if amp is not None or device.type == "cuda" else torch.contiguous_format
    net = net.to(memory_format=fmt)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    y = (torch.rand(batch, 3, 32, 32, device=device) * 2 - 1).contiguous(memory_format=fmt)
    ctx = torch.autocast(device.type, amp) if amp is not None else contextlib.nullcontext()
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        rnd, noise = torch.randn(batch, 1, 1, 1, device=device), torch.randn_like(y)
        with ctx:
            loss = batch_loss(net, y, rnd, noise, -1.2, 1.2, 0.67).mean()
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params/cpu.yaml", help="profile whose model section is measured")
    ap.add_argument("--widths", type=int, nargs="*", default=None, help="default: the profile's widths")
    ap.add_argument("--batch", type=int, default=None, help="default: the profile's batch size")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per setting")
    ap.add_argument("--device", default=None, help="default: the profile's device")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's, one per core)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.params)
    device = resolve_device(args.device or cfg.device)
    batch = args.batch or cfg.train.batch_size
    auto = "bf16" if resolve_precision("auto", device) is not None else "fp32"
    print(f"device {device}, {torch.get_num_threads()} threads, cpu capability "
          f"{torch.backends.cpu.get_cpu_capability()}, batch {batch}, precision auto -> {auto}")
    for width in args.widths or cfg.model.widths:
        n = count_parameters(build_denoiser(cfg.model, width, 32, 0.67))
        for precision in ("fp32", "bf16"):
            ips = images_per_second(cfg.model, width, batch, precision, device, args.steps)
            print(f"width {width:4d} ({n / 1e6:5.2f} M params)  {precision}: {ips:7.1f} img/s", flush=True)


if __name__ == "__main__":
    main()
