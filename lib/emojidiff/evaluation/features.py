"""Inception-V3 (the TensorFlow FID network, as torch-fidelity runs it) pool features for FID and KID; no pickles."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import numpy as np
import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from emojidiff.evaluation.inception_weights import (
    UNAVAILABLE,
    WeightsHashMismatch,
    installed_weights,
    is_torchscript,
    load_torchscript_state,
    torchscript_to_fidelity,
)
from emojidiff.images import to_uint8

INCEPTION_NAME = "inception-v3-compat"  # torch-fidelity's port of the TF FID Inception-V3
INCEPTION_FEATURE = "2048"  # pool3 features, as FID and KID use
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol 2+ and torch.save's zip container


class InceptionUnavailable(RuntimeError):
    """The Inception weights could not be had (not installed, or a refused / unreadable file)."""


def _no_download(url, *args, **kwargs):
    raise RuntimeError(f"emojidiff never lets torch-fidelity download or torch.load its weights ({url})")


def build_fidelity_inception(state_dict: dict[str, torch.Tensor] | None) -> torch.nn.Module:
    """torch-fidelity's FeatureExtractorInceptionV3 with `state_dict` loaded (None: untrained), never via torch.load.

    Its constructor either downloads or unpickles a path (torch's load, weights_only=False); here it gets neither: the
    download hook is replaced by one that hands over `state_dict`, which the constructor then loads strictly.
    """
    import torch_fidelity.feature_extractor_inceptionv3 as fi  # heavy, and only when Inception is wanted

    if state_dict is None:  # names and shapes only: skip the constructor's load
        class _Untrained(fi.FeatureExtractorInceptionV3):
            def load_state_dict(self, *args, **kwargs):
                return None

        cls, give = _Untrained, {}
    else:
        cls, give = fi.FeatureExtractorInceptionV3, state_dict
    with mock.patch.object(fi, "load_state_dict_from_url", lambda *a, **k: give), \
            mock.patch.object(fi.torch, "load", _no_download):
        net = cls(INCEPTION_NAME, [INCEPTION_FEATURE])
    return net


def _sniff(path: Path) -> str:
    """'safetensors', 'torchscript', or 'pickle' / 'unknown' (both refused), from the first bytes and the zip index."""
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: u64 little-endian header length, then "{"; its first byte may be 0x80, so test this first
    if len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < path.stat().st_size:
        return "safetensors"
    if is_torchscript(path):
        return "torchscript"
    return "pickle" if head.startswith(_PICKLE_MAGIC) else "unknown"


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors or TorchScript file; a pickle or unknown file is refused without being opened."""
    kind = _sniff(path)
    if kind == "safetensors":
        return load_file(str(path))
    if kind == "torchscript":
        try:
            return load_torchscript_state(path)
        except (RuntimeError, ValueError, OSError) as e:
            raise InceptionUnavailable(f"Inception weights {path}: unreadable TorchScript: {str(e)[:300]}") from e
    what = "a pickle / torch.save file" if kind == "pickle" else "neither safetensors nor TorchScript"
    raise InceptionUnavailable(
        f"Inception weights {path} refused: {what}. emojidiff never unpickles a file (unpickling can run arbitrary "
        "code); give the weights as safetensors or TorchScript (a torch-fidelity .pth state dict converts with "
        "safetensors.torch.save_file(torch.load(pth, weights_only=True), out)).")


def _as_fidelity(sd: dict[str, torch.Tensor], template: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`sd` in torch-fidelity's names: TorchScript (`net.layers.*`) tensors mapped; missing logits layer set to NaN."""
    if any(k.startswith("net.layers.") for k in sd):
        sd = torchscript_to_fidelity(sd, template)
    sd = dict(sd)
    for k in ("fc.weight", "fc.bias"):  # the 1008-way logits are not in the FID TorchScript; only '2048' is used
        sd.setdefault(k, torch.full_like(template[k], float("nan")))
    return sd


def load_inception(weights_path: str | Path | None = None, device=None) -> torch.nn.Module:
    """torch-fidelity's FID Inception-V3 from the installed weights (None) or a user's safetensors / TorchScript file.

    Raises InceptionUnavailable, saying how to supply the weights, when they are missing, refused or unreadable.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    if weights_path is None:
        try:
            path = installed_weights()
        except WeightsHashMismatch as e:
            raise InceptionUnavailable(f"installed Inception weights are damaged: {e}. {UNAVAILABLE}") from e
        if path is None:
            raise InceptionUnavailable(UNAVAILABLE)
    else:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise InceptionUnavailable(f"Inception weights file not found: {path} (eval.inception_weights). "
                                       f"{UNAVAILABLE}")
    sd = _read_state_dict(path)
    try:
        net = build_fidelity_inception(_as_fidelity(sd, build_fidelity_inception(None).state_dict()))
    except (RuntimeError, ValueError, KeyError) as e:  # wrong names or shapes: not this network
        raise InceptionUnavailable(f"Inception weights {path} do not fit torch-fidelity's FID Inception-V3: "
                                   f"{type(e).__name__}: {str(e)[:300]}") from e
    # channels_last: 1.5x faster on CPU (oneDNN), features equal to float32 rounding (~1e-6 relative)
    return net.to(device, memory_format=torch.channels_last)


@torch.no_grad()
def inception_features(images, net: torch.nn.Module, batch_size: int = 64, progress: bool = True) -> np.ndarray:
    """(N, 2048) float64 pool features of uint8 NHWC (or float NCHW [-1, 1]) images, resized to 299 px inside."""
    if torch.is_tensor(images) and images.is_floating_point() or (
            isinstance(images, np.ndarray) and images.dtype != np.uint8):
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
