"""Inception-V3 (the TensorFlow FID network, through torch-fidelity) pool features for FID and KID."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

INCEPTION_NAME = "inception-v3-compat"  # torch-fidelity's port of the TF FID Inception-V3
INCEPTION_FEATURE = "2048"  # pool3 features, as FID and KID use

HOW_TO_SUPPLY = (
    "Inception FID/KID are unavailable (reported as NaN; MeanMSE and the domain-space FID/KID still run). "
    "To enable them, download torch-fidelity's weights file on a machine with internet, "
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth "
    "(about 92 MB), copy it here, and set eval.inception_weights in the profile to its path "
    "(or put it in $TORCH_HOME/hub/checkpoints/ where torch-fidelity looks first)."
)


class InceptionUnavailable(RuntimeError):
    """The Inception weights could not be had (offline with no local file, or a bad file)."""


def load_inception(weights_path: str | Path | None = None, device=None) -> torch.nn.Module:
    """torch-fidelity's FID Inception-V3 from a local weights file, or downloaded (cached) when `weights_path` is None.

    Raises InceptionUnavailable with a message that says how to supply the file when neither works.
    """
    from torch_fidelity.utils import create_feature_extractor

    device = torch.device(device) if device is not None else torch.device("cpu")
    if weights_path is not None:
        weights_path = Path(weights_path).expanduser()
        if not weights_path.is_file():
            raise InceptionUnavailable(f"Inception weights file not found: {weights_path}. {HOW_TO_SUPPLY}")
    try:
        path = None if weights_path is None else str(weights_path)
        net = create_feature_extractor(INCEPTION_NAME, [INCEPTION_FEATURE], cuda=False, verbose=False,
                                       feature_extractor_weights_path=path)
    except Exception as e:  # no network (URLError, OSError...) or an unreadable/mismatched file
        where = f"from {weights_path}" if weights_path else "by download (no eval.inception_weights given)"
        raise InceptionUnavailable(f"could not load Inception weights {where}: {type(e).__name__}: {e}. "
                                   f"{HOW_TO_SUPPLY}") from e
    return net.to(device)


@torch.no_grad()
def inception_features(images, net: torch.nn.Module, batch_size: int = 64, progress: bool = True) -> np.ndarray:
    """(N, 2048) float64 pool features of uint8 NHWC (or float NCHW [-1, 1]) images, resized to 299 px inside."""
    if torch.is_tensor(images) and images.is_floating_point() or (
            isinstance(images, np.ndarray) and images.dtype != np.uint8):
        from emojidiff.grids import to_uint8

        images = to_uint8(images)
    images = torch.as_tensor(np.asarray(images))
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 NHWC RGB images, got shape {tuple(images.shape)}")
    device = next(net.parameters()).device
    out = []
    for start in tqdm(range(0, len(images), batch_size), desc="inception", disable=not progress, leave=False):
        batch = images[start:start + batch_size].permute(0, 3, 1, 2).contiguous().to(device)
        (feats,) = net(batch)
        out.append(feats.double().cpu())
    return torch.cat(out).numpy()
