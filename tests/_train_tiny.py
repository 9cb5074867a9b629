"""Helper for the training tests (not a test): train a tiny net on synthetic faces; run directly or by torchrun."""

from __future__ import annotations

import json
import sys

import numpy as np
import torch

from emojidiff.config import config_from_dict
from emojidiff.layout import RunLayout
from emojidiff.training import distributed
from emojidiff.training.train import train_width


def tiny_config(**train) -> dict:
    """A profile small enough for a test: width 8, one block per level, 16 px stays 32 px (data.size)."""
    return {"seed": 3, "device": "cpu",
            "model": {"widths": [8], "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [],
                      "sigma_data": 0.6},
            "train": {"batch_size": 8, "lr": 2e-3, "lr_rampup_kimg": 0.1, "duration_kimg": 0.4,
                      "ema_halflife_kimg": 0.1, "snapshot_kimg": 0.2, "checkpoint_kimg": 0.04,
                      "precision": "fp32", **train},
            "sample": {"num_steps": 2}}


def synthetic_images(n: int = 24, size: int = 32, seed: int = 0) -> np.ndarray:
    """Yellow discs with two dark eyes at random heights on white: uint8 NHWC."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    imgs = np.full((n, size, size, 3), 255, np.uint8)
    for i in range(n):
        disc = (yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.16
        imgs[i][disc] = (250, 200, 40)
        ey = rng.uniform(0.3, 0.5)
        for ex in (0.35, 0.65):
            imgs[i][(yy - ey) ** 2 + (xx - ex) ** 2 < 0.004] = (60, 40, 20)
    return imgs


if __name__ == "__main__":  # _train_tiny.py CONFIG_JSON OUT_DIR [RESULT_JSON]
    torch.set_num_threads(1)
    cfg = config_from_dict(json.loads(sys.argv[1]))
    summary = train_width(cfg, RunLayout(sys.argv[2]), cfg.model.widths[0], images=synthetic_images(),
                          progress=False)
    if len(sys.argv) > 3:
        rank = distributed.setup(cfg.device).rank
        with open(f"{sys.argv[3]}.{rank}", "w") as f:
            json.dump(summary, f)
    distributed.cleanup(distributed.setup(cfg.device))
