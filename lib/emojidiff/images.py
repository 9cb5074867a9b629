"""Images: the [-1, 1] <-> uint8 conversions, PNG bytes, contact-sheet grids and the one way figures are saved."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from emojidiff.layout import RunLayout


def to_uint8(images) -> np.ndarray:
    """Images in [-1, 1], NCHW tensor or array, to uint8 NHWC."""
    if hasattr(images, "detach"):
        images = images.detach().float().cpu().numpy()
    images = np.asarray(images, dtype=np.float32)
    images = np.clip((images + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return images.transpose(0, 2, 3, 1)


def from_uint8(images, dtype=None):
    """uint8 values (array or tensor, any layout) to floats in [-1, 1], layout kept; dtype defaults to float32."""
    if torch.is_tensor(images):
        return images.to(torch.float32 if dtype is None else dtype) / 127.5 - 1.0
    return np.asarray(images).astype(np.float32 if dtype is None else dtype) / 127.5 - 1.0


def to_unit_range(images) -> torch.Tensor:
    """uint8 NHWC (0..255) or float NCHW in [-1, 1], array or tensor, to a float32 NCHW tensor in [-1, 1]."""
    if not torch.is_tensor(images):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if images.ndim != 4:
        raise ValueError(f"expected a batch of images (4-D), got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        if images.shape[-1] not in (1, 3, 4):
            raise ValueError(f"uint8 images must be NHWC, got shape {tuple(images.shape)}")
        return from_uint8(images.permute(0, 3, 1, 2))
    if not images.is_floating_point():
        raise ValueError(f"images must be uint8 NHWC or float NCHW, got {images.dtype}")
    return images.float()


def make_grid(images: np.ndarray, ncols: int | None = None, pad: int = 2, scale: int = 1,
              background: int = 255) -> np.ndarray:
    """Tile uint8 NHWC images into one HWC image, nearest-neighbour upscaled by `scale`."""
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"make_grid expects uint8 NHWC images, got {images.dtype} {images.shape}")
    n, h, w, c = images.shape
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
        h, w = h * scale, w * scale
    ncols = ncols or int(np.ceil(np.sqrt(max(n, 1))))
    nrows = int(np.ceil(n / ncols)) if n else 1
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), background, np.uint8)
    for i in range(n):
        r, q = divmod(i, ncols)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        grid[y:y + h, x:x + w] = images[i]
    return grid


def save_grid(path: str | Path, images: np.ndarray, **kwargs) -> Path:
    """Write a grid of uint8 NHWC images as a PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(make_grid(images, **kwargs)).save(path)
    return path


def png_bytes(image: np.ndarray, scale: int = 4) -> bytes:
    """One uint8 HWC image as PNG bytes, nearest-neighbour upscaled."""
    buf = io.BytesIO()
    Image.fromarray(image.repeat(scale, 0).repeat(scale, 1)).save(buf, format="PNG")
    return buf.getvalue()


def save_figure(fig, layout: RunLayout | str | Path, name: str, dpi: int = 120) -> Path:
    """Save a matplotlib figure as <run>/figures/<name> (the one place figures are written; plot_* never save)."""
    if not name.endswith((".png", ".pdf", ".svg")):
        raise ValueError(f"figure name needs a .png, .pdf or .svg suffix, got {name!r}")
    layout = layout if isinstance(layout, RunLayout) else RunLayout(layout)
    path = layout.figure(name)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path
