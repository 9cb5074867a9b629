"""Print sha256 digests of a smoke study's dataset, checkpoint tensors and samples, to prove a refactor changes nothing.

Usage: .venv/bin/python scripts/run_digest.py [--params params/smoke.yaml] [--set model.conditional=true]
Metadata (config, paths, timings) is left out: only the dataset arrays, the safetensors tensors and sample arrays.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import inspect
import tempfile
from pathlib import Path

import numpy as np
import yaml
from safetensors.numpy import load_file

import emojidiff
from emojidiff.config import config_from_dict, load_config


def sha(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def tensors_sha(path: Path) -> str:
    """Digest of a safetensors file's tensors (names, dtypes, shapes, bytes), not its header's metadata."""
    h = hashlib.sha256()
    for name, value in sorted(load_file(str(path)).items()):
        h.update(f"{name}:{value.dtype}:{value.shape}".encode())
        h.update(np.ascontiguousarray(value).tobytes())
    return h.hexdigest()


def with_overrides(cfg, overrides: list[str]):
    """The config with `section.key=yaml-value` overrides applied."""
    d = cfg.to_dict()
    for item in overrides:
        key, value = item.split("=", 1)
        section, name = key.split(".")
        d[section][name] = yaml.safe_load(value)
    return config_from_dict(d)


def sample(snapshot: Path, folder: Path, cfg) -> Path:
    """Sample a snapshot with sample_checkpoint, whichever of its two signatures (fields or the config section)."""
    params = inspect.signature(emojidiff.sample_checkpoint).parameters
    if "num_images" in params:
        s = cfg.sample
        return emojidiff.sample_checkpoint(snapshot, folder, num_images=s.num_images, seed=0, num_steps=s.num_steps,
                                           batch_size=s.batch_size, device="cpu", progress=False)
    return emojidiff.sample_checkpoint(snapshot, folder, dataclasses.replace(cfg.sample), progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params/smoke.yaml")
    parser.add_argument("--set", action="append", default=[], help="section.key=value override")
    args = parser.parse_args()
    cfg = with_overrides(load_config(args.params), args.set)
    ds = emojidiff.dataset_from_config(cfg, progress=False)
    print(f"dataset images {sha(ds.images)}")
    print(f"dataset train {sha(ds.train_images())}")
    with tempfile.TemporaryDirectory() as tmp:
        emojidiff.train(cfg, tmp, progress=False)
        for folder in sorted(Path(tmp, "train").iterdir()):
            for path in sorted(folder.glob("*.safetensors")):
                print(f"{folder.name}/{path.name} {tensors_sha(path)}")
            for kimg, snapshot in emojidiff.list_snapshots(folder):
                out = sample(snapshot, Path(tmp, "samples", folder.name), cfg)
                with np.load(out) as f:
                    print(f"samples {folder.name} kimg {kimg:g} {sha(f['images'])}")


if __name__ == "__main__":
    main()
