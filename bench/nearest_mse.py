"""Time emojidiff.nearest_mse for 10,000 samples against 15,000 training images at 3x32x32 on this machine."""

import argparse
import time

import numpy as np
import torch

from emojidiff.evaluation.metrics import best_device, nearest_mse


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--samples", type=int, default=10_000)
    p.add_argument("--train", type=int, default=15_000)
    p.add_argument("--sklearn", action="store_true", help="also time scikit-learn's brute-force search")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (args.samples, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 256, (args.train, 32, 32, 3), dtype=np.uint8)
    print(f"device {best_device()}, {torch.get_num_threads()} threads, {args.samples} x {args.train} at 3x32x32")
    nearest_mse(x[:64], y[:64])  # warm-up
    t = time.perf_counter()
    mse, idx = nearest_mse(x, y, k=2)
    print(f"nearest_mse (k=2, exact): {time.perf_counter() - t:.2f} s")
    if args.sklearn:
        from sklearn.neighbors import NearestNeighbors

        xf = x.reshape(len(x), -1).astype(np.float32) / 127.5 - 1
        yf = y.reshape(len(y), -1).astype(np.float32) / 127.5 - 1
        t = time.perf_counter()
        _, sk_idx = NearestNeighbors(n_neighbors=1, algorithm="brute").fit(yf).kneighbors(xf)
        print(f"sklearn brute force (k=1): {time.perf_counter() - t:.2f} s, "
              f"same nearest for {(sk_idx[:, 0] == idx[:, 0]).mean():.4%}")


if __name__ == "__main__":
    main()
