"""Images: the [-1, 1] <-> uint8 conversions, PNG bytes and contact-sheet grids."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def to_uint8(images) -> np.ndarray:
    """Images in [-1, 1], NCHW tensor or array, to uint8 NHWC."""
    if hasattr(images, "detach"):
        images = images.detach().float().cpu().numpy()
    images = np.asarray(images, dtype=np.float32)
    images = np.clip((images + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return images.transpose(0, 2, 3, 1)


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
