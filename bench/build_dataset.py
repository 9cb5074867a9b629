"""Time the dataset build: fused Noto core faces at 32 px, then the 128-px gallery, in a fresh cache.

Usage: python bench/build_dataset.py [--faces core|all] [--style noto] [--workers N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from emojidiff.data.dataset import build_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", default="core")
    parser.add_argument("--style", default="noto")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    workers = args.workers or len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as cache:
        kw = dict(style=args.style, faces=args.faces, cache_dir=cache, workers=workers, progress=False)
        c0 = os.times()
        t0 = time.perf_counter()
        ds = build_dataset(size=32, **kw)
        t32 = time.perf_counter() - t0
        build_dataset(size=128, **kw)
        t128 = time.perf_counter() - t0 - t32
        c1 = os.times()
        cpu = sum(c1[i] - c0[i] for i in range(4))  # user + system, this process and its workers
        t1 = time.perf_counter()
        build_dataset(size=32, **kw)
        cached = time.perf_counter() - t1
    print(f"{args.style} {args.faces}: {ds.info['pairs']} pairs, {len(ds)} distinct at 32 px, {workers} workers, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"build 32 px: {t32:.1f} s; 128 px gallery (same rows): {t128:.1f} s; total {t32 + t128:.1f} s; "
          f"cached reload: {cached:.2f} s; CPU time (both sizes, all processes): {cpu:.1f} s")


if __name__ == "__main__":
    main()
