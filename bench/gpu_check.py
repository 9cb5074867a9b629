"""The paper profile's GPU check, about ten minutes on one GPU: precision, accumulation, host overhead, channels_last.

    .venv/bin/python bench/gpu_check.py [--params params/paper.yaml] [--steps 200] [--out outputs/gpu_check]

Confirms what the CPU could not (issue 16): item 4 (auto precision is bf16 only where native, not emulated),
item 6 (batch_gpu accumulation: the same gradient as one batch, and its peak memory), item 7 (host overhead per step
with the data on the GPU, CUDA noise, fused Adam, foreach EMA, a finiteness check every 10 steps) and item 9
(channels_last on and off per width; a deterministic resume). It trains the profile's widths for --steps steps on
synthetic 32 px faces (the throughput does not depend on the pictures; no dataset build), resumes each once, samples,
and writes every figure with the GPU's name to <out>/gpu_check-<gpu>.json. Sections past --budget-s are skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from _train_tiny import synthetic_images  # noqa: E402
from train_throughput import describe, measure_step  # noqa: E402

from emojidiff.config import config_from_dict, load_config  # noqa: E402
from emojidiff.layout import RunLayout  # noqa: E402
from emojidiff.model.edm import build_denoiser, edm_loss  # noqa: E402
from emojidiff.training.distributed import precision_name, resolve_precision  # noqa: E402
from emojidiff.training.train import train_width  # noqa: E402


def gradient_gap(model_cfg, width: int, batch: int, batch_gpu: int, device: torch.device) -> float:
    """Max |g_accumulated - g_whole| / max |g_whole| for one fp32 batch, dropout off (item 6)."""
    torch.manual_seed(0)
    net = build_denoiser(model_cfg, width, 32, 0.5).to(device).eval()
    y = torch.rand(batch, 3, 32, 32, device=device) * 2 - 1
    rnd, noise = torch.randn(batch, 1, 1, 1, device=device), torch.randn_like(y)
    grads = []
    for chunk in (batch, batch_gpu):
        net.zero_grad(set_to_none=True)
        for r in range(batch // chunk):
            s = slice(r * chunk, (r + 1) * chunk)
            (edm_loss(net, y[s], rnd_normal=rnd[s], noise=noise[s]).mean() / (batch // chunk)).backward()
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    return float((grads[1] - grads[0]).abs().max() / grads[0].abs().max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params/paper.yaml")
    ap.add_argument("--steps", type=int, default=200, help="training steps per width (then a resume of 20 more)")
    ap.add_argument("--bench-steps", type=int, default=20, help="timed steps per throughput setting")
    ap.add_argument("--out", default="outputs/gpu_check")
    ap.add_argument("--budget-s", type=float, default=540.0, help="skip the sections that start after this")
    ap.add_argument("--device", default="cuda:0", help="cpu: a dry run of the script itself (with a small profile)")
    args = ap.parse_args()
    t_start = time.perf_counter()
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device here; this script is for a GPU machine (--device cpu: a dry run)")
    base = load_config(args.params)
    base.device = str(dev)
    gpu = torch.cuda.get_device_name(dev) if cuda else f"cpu-dry-run-{torch.backends.cpu.get_cpu_capability()}"

    def peak_mib() -> float | None:
        return torch.cuda.max_memory_allocated(dev) / 2**20 if cuda else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res: dict = {"gpu": gpu, "torch": torch.__version__, "cuda": torch.version.cuda, "params": args.params,
                 "capability": list(torch.cuda.get_device_capability(dev)) if cuda else None, "skipped": []}
    report = out / f"gpu_check-{re.sub(r'[^A-Za-z0-9]+', '_', gpu)}.json"

    def save() -> None:
        res["elapsed_s"] = time.perf_counter() - t_start
        report.write_text(json.dumps(res, indent=1))

    def budget(section: str) -> bool:
        if time.perf_counter() - t_start < args.budget_s:
            print(f"\n== {section} ({time.perf_counter() - t_start:.0f} s in)", flush=True)
            return True
        res["skipped"].append(section)
        print(f"\n== {section}: skipped, past --budget-s {args.budget_s:g}", flush=True)
        return False

    # item 4: auto precision counts native bf16 only
    native = torch.cuda.is_bf16_supported(including_emulation=False) if cuda else None
    auto = precision_name(resolve_precision("auto", dev))
    res["precision"] = {"bf16_native": native, "bf16_with_emulation": torch.cuda.is_bf16_supported() if cuda else None,
                        "auto": auto}
    print(f"{gpu} (capability {res['capability']}), torch {torch.__version__}: bf16 native {native}, "
          f"with emulation {res['precision']['bf16_with_emulation']} -> precision auto = {auto}")
    save()

    # items 6, 7, 9: img/s, host ms and peak memory per width, channels_last off/on, with and without batch_gpu
    B, bg = base.train.batch_size, base.train.batch_gpu
    res["throughput"] = []
    if budget("throughput (training step)"):
        for w in base.model.widths:
            for cl in ("off", "on"):
                r = measure_step(base.model, w, B, auto, dev, args.bench_steps, bg, cl)
                res["throughput"].append(r)
                print("  " + describe(r), flush=True)
            if cuda:
                torch.cuda.empty_cache()
        w = max(base.model.widths)
        try:  # the whole batch in one pass: the memory that batch_gpu saves (may not fit a small card)
            r = measure_step(base.model, w, B, auto, dev, max(args.bench_steps // 2, 3), 0, "off")
            res["throughput"].append(r)
            print("  " + describe(r), flush=True)
        except torch.cuda.OutOfMemoryError as e:
            res["throughput"].append({"width": w, "batch_gpu": B, "error": f"out of memory: {e}"[:300]})
            print(f"  width {w} without accumulation: out of memory (batch_gpu {bg} is needed on this card)")
        if cuda:
            torch.cuda.empty_cache()
        save()
    if budget("accumulation equals one batch (fp32 gradient)"):
        res["accumulation_gap"] = gradient_gap(base.model, min(base.model.widths), B, bg or B // 4, dev)
        print(f"  max relative gradient gap, 1 x {B} vs {B // (bg or B // 4)} x {bg or B // 4}: "
              f"{res['accumulation_gap']:.2e} (float32 rounding: < 1e-4)")
        save()

    # the real training loop per width: a run, a resume, its img/s and precision, then sampling
    images = np.concatenate([synthetic_images(512, 32, seed=s) for s in range(8)])
    base_d = base.to_dict()

    def profile(steps: int, every: int | None = None, **train) -> object:
        """The profile for `steps` steps: a snapshot every `every` steps (default: at the end), checkpoints at half."""
        d = json.loads(json.dumps(base_d))
        kimg, every_kimg = steps * B / 1000, (every or steps) * B / 1000
        d["train"].update(duration_kimg=kimg, snapshot_kimg=every_kimg, checkpoint_kimg=every_kimg / 2,
                          lr_rampup_kimg=args.steps * B / 4000, **train)  # one ramp for every run: resumable
        d["sample"]["num_steps"] = 18
        return config_from_dict(d, "gpu_check")

    res["training"] = []
    for w in base.model.widths:
        if not budget(f"train width {w}: {args.steps} steps, then resume for 20 more"):
            continue
        layout = RunLayout(out / "run")
        first = train_width(profile(args.steps), layout, w, resume=False, images=images, progress=False)
        again = train_width(profile(args.steps + 20, args.steps), layout, w, resume=True, images=images,
                            progress=False)
        row = {k: first[k] for k in ("width", "params", "precision", "img_per_s", "batch_gpu", "rounds",
                                     "final_loss", "steps")}
        row |= {"resumed_from": again["resumed_from"], "resume_img_per_s": again["img_per_s"],
                "peak_mib": peak_mib()}
        res["training"].append(row)
        print(f"  {row}", flush=True)
        if cuda:
            torch.cuda.reset_peak_memory_stats(dev)
        save()

    if budget("deterministic resume, smallest width (per-rank CUDA RNG, CUDA noise generator)"):
        w, n = min(base.model.widths), 40
        straight = train_width(profile(n, n // 2, deterministic=True), RunLayout(out / "det_a"), w, resume=False,
                               images=images, progress=False)
        train_width(profile(n // 2, n // 2, deterministic=True), RunLayout(out / "det_b"), w, resume=False,
                    images=images, progress=False)
        resumed = train_width(profile(n, n // 2, deterministic=True), RunLayout(out / "det_b"), w, resume=True,
                              images=images, progress=False)
        res["deterministic_resume_bitwise"] = straight["net_sha256"] == resumed["net_sha256"]
        print(f"  {n} steps straight == {n // 2} + resume {n // 2}: {res['deterministic_resume_bitwise']} "
              "(False: atomics in some backward kernels; the resume itself worked)")
        save()

    if cuda and budget("fp16 + GradScaler (the fallback for GPUs without native bf16): 20 steps and a resume"):
        w = min(base.model.widths)
        layout = RunLayout(out / "fp16")
        a = train_width(profile(20, 10, precision="fp16"), layout, w, resume=False, images=images, progress=False)
        b = train_width(profile(30, 10, precision="fp16"), layout, w, resume=True, images=images, progress=False)
        res["fp16"] = {"img_per_s": a["img_per_s"], "final_loss": b["final_loss"], "resumed_from": b["resumed_from"]}
        print(f"  {res['fp16']}")
        save()

    if budget("sampling img/s (widest width, 18 Heun steps)"):
        from emojidiff.evaluation.sampling import sample_checkpoint
        from emojidiff.training.checkpoint import list_snapshots

        w = max(base.model.widths)
        snaps = list_snapshots(RunLayout(out / "run").train(w))
        if snaps:
            n = 2 * base.sample.batch_size
            t0 = time.perf_counter()
            sample = dataclasses.replace(base.sample, num_images=n, num_steps=18)
            sample_checkpoint(snaps[-1][1], out / "samples", sample, seed=0, device=str(dev),
                              precision=base.train.precision, overwrite=True, progress=False)
            res["sampling_img_per_s"] = n / (time.perf_counter() - t0)
            print(f"  width {w}: {res['sampling_img_per_s']:.0f} img/s ({n} images, load and write included)")
        save()
    save()
    print(f"\nwrote {report} ({res['elapsed_s']:.0f} s)")


if __name__ == "__main__":
    main()
