"""What one width trains on, and in which order: the images, their parent labels, a seeded epoch order."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from emojidiff.config import Config, ConfigError
from emojidiff.data.dataset import dataset_from_config


def seed_ints(*words: int) -> int:
    """One 63-bit seed from a tuple of integers (numpy's SeedSequence), so streams never overlap."""
    return int(np.random.SeedSequence([int(w) for w in words]).generate_state(1, np.uint64)[0] >> 1)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The data order of one epoch: a permutation fixed by (seed, epoch), so a resume finds its place."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed_ints(seed, 0xDA7A, epoch)))


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


@dataclass
class TrainingData:
    """The images one width trains on (uint8 NHWC) and, for a conditional model, their (parent A, parent B) labels."""

    images: np.ndarray
    labels: np.ndarray | None = None  # (N, 2) int64 indices into the dataset's face list
    num_faces: int = 0  # the conditional net's label_dim


def training_data(cfg: Config) -> TrainingData:
    """The training split of the profile's dataset; with model.conditional, also each image's parents as labels."""
    ds = dataset_from_config(cfg)
    images = np.asarray(ds.train_images())
    if not cfg.model.conditional:
        return TrainingData(images)
    return TrainingData(images, ds.train_labels(), ds.num_faces)


def conditioned(cfg: Config, data: TrainingData) -> Config:
    """The profile with model.label_dim resolved: the number of faces when conditional, else refused if set."""
    m = cfg.model
    if not m.conditional:
        if m.label_dim:
            raise ConfigError(f"model.label_dim={m.label_dim} without model.conditional: set conditional: true "
                              "(label_dim then follows the dataset's faces) or label_dim: 0")
        return cfg
    if data.labels is None or data.labels.shape != (len(data.images), 2):
        got = None if data.labels is None else tuple(data.labels.shape)
        raise ValueError(f"model.conditional needs (N, 2) parent labels for the {len(data.images)} images, got {got}")
    if m.label_slots != 2:
        raise ConfigError(f"model.label_slots={m.label_slots}: a conditional model takes 2 labels (parents A and B)")
    if m.label_dim and m.label_dim != data.num_faces:
        raise ConfigError(f"model.label_dim={m.label_dim} but the dataset has {data.num_faces} faces; "
                          "leave label_dim at 0 for a conditional model")
    return replace(cfg, model=replace(m, label_dim=data.num_faces))
