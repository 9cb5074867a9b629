"""A domain feature space for FID/KID that needs no download: a small CNN trained to name both parents of a fusion.

Inception-V3 was trained on natural photos; a 32 px emoji is far from them. The parents classifier instead learns
exactly the parts this dataset is made of (face A's eyes and brows, face B's mouth), so its penultimate features
separate a fusion's upper and lower parts. It trains on the training split only, in seconds, and is cached per run;
its accuracy on held-out pairs (never seen together) is reported to show the features carry the parts, not the pairs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from emojidiff.data.dataset import dataset_from_config
from emojidiff.images import to_unit_range

DOMAIN_VERSION = "1"  # bump when the network or its training changes


class ParentClassifier(nn.Module):
    """CNN with a `feature_dim` bottleneck and two heads: parent A (eyes/brows) and parent B (mouth)."""

    def __init__(self, num_classes: int, feature_dim: int = 128, width: int = 16):
        super().__init__()

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU()]

        w = width
        # a strided stem (32 -> 16 px) keeps training to seconds on a CPU; eyes and mouths survive at 16 px
        self.body = nn.Sequential(nn.Conv2d(3, w, 4, stride=2, padding=1), nn.SiLU(), *block(w, 2 * w),
                                  nn.AvgPool2d(2), *block(2 * w, 4 * w), nn.AvgPool2d(2), *block(4 * w, 4 * w),
                                  nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(4 * w * 16, feature_dim))
        self.head_a = nn.Linear(feature_dim, num_classes)
        self.head_b = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The bottleneck features used for FID/KID (before the heads' nonlinearity)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.silu(self.features(x))
        return self.head_a(h), self.head_b(h)


def parent_labels(manifest, classes: list[str] | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Integer labels of parent_a and parent_b (one class list for both)."""
    if classes is None:
        classes = sorted(set(manifest["parent_a"]) | set(manifest["parent_b"]))
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(manifest["parent_a"]) - index.keys() | set(manifest["parent_b"]) - index.keys())
    if unknown:
        raise ValueError(f"parents not in the classifier's classes: {unknown[:5]}")
    return (np.array([index[c] for c in manifest["parent_a"]]), np.array([index[c] for c in manifest["parent_b"]]),
            classes)


@torch.no_grad()
def parent_accuracy(net: ParentClassifier, images, la: np.ndarray, lb: np.ndarray) -> dict:
    """Share of images whose parent A, parent B, and both are named right."""
    net.eval()
    pa, pb = [], []
    x = to_unit_range(images)
    for start in range(0, len(x), 512):
        a, b = net(x[start:start + 512])
        pa.append(a.argmax(1))
        pb.append(b.argmax(1))
    ok_a = torch.cat(pa).numpy() == la
    ok_b = torch.cat(pb).numpy() == lb
    return {"acc_a": float(ok_a.mean()), "acc_b": float(ok_b.mean()), "acc_both": float((ok_a & ok_b).mean())}


def train_domain_net(images, manifest, epochs: int = 15, seed: int = 0, batch_size: int = 128, lr: float = 2e-3,
                     feature_dim: int = 128, progress: bool = True) -> tuple[ParentClassifier, dict]:
    """Train the parents classifier on uint8 NHWC `images` with their `manifest` rows; returns (net, info)."""
    la, lb, classes = parent_labels(manifest)
    x = to_unit_range(images)
    ya, yb = torch.from_numpy(la), torch.from_numpy(lb)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = ParentClassifier(len(classes), feature_dim)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * max(1, -(-len(x) // batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    net.train()
    bar = tqdm(total=steps, desc="domain net", disable=not progress, leave=False)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            xb = x[idx]
            # light noise: samples carry some residual noise, the features should not hinge on it
            xb = xb + 0.05 * torch.randn(xb.shape, generator=gen)
            logit_a, logit_b = net(xb)
            loss = F.cross_entropy(logit_a, ya[idx]) + F.cross_entropy(logit_b, yb[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    net.eval().requires_grad_(False)
    info = {"classes": classes, "epochs": epochs, "seed": seed, "feature_dim": feature_dim,
            "final_loss": float(loss.item()), "train": parent_accuracy(net, images, la, lb)}
    return net, info


@torch.no_grad()
def domain_features(net: ParentClassifier, images, batch_size: int = 512) -> np.ndarray:
    """(N, feature_dim) float64 bottleneck features of uint8 NHWC (or float NCHW [-1, 1]) images."""
    net.eval()
    x = to_unit_range(images)
    return torch.cat([net.features(x[s:s + batch_size]) for s in range(0, len(x), batch_size)]).double().numpy()


def domain_net_for_run(cfg, layout, dataset=None, progress: bool = True) -> tuple[ParentClassifier, dict]:
    """The run's parents classifier: loaded from layout.metrics/domain/ when its key matches, else trained there."""
    ds = dataset if dataset is not None else dataset_from_config(cfg, progress=progress)
    params = {"version": DOMAIN_VERSION, "data": ds.info.get("cache_key"), "seed": cfg.seed,
              "epochs": cfg.eval.domain_epochs}
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(layout.metrics) / "domain"
    weights, meta_path = folder / f"parents-{key}.safetensors", folder / f"parents-{key}.json"
    if weights.is_file() and meta_path.is_file():
        info = json.loads(meta_path.read_text())
        net = ParentClassifier(len(info["classes"]), info["feature_dim"])
        net.load_state_dict(load_file(weights))
        return net.eval().requires_grad_(False), info
    train = (ds.manifest["split"] == "train").to_numpy()
    net, info = train_domain_net(ds.images[train], ds.manifest[train], epochs=cfg.eval.domain_epochs, seed=cfg.seed,
                                 progress=progress)
    if (~train).any():
        la, lb, _ = parent_labels(ds.manifest[~train], info["classes"])
        info["holdout"] = parent_accuracy(net, ds.images[~train], la, lb)
    info["key"] = key
    folder.mkdir(parents=True, exist_ok=True)
    save_file(net.state_dict(), str(weights) + ".tmp")
    Path(str(weights) + ".tmp").replace(weights)
    meta_path.write_text(json.dumps(info, indent=1))
    return net, info
