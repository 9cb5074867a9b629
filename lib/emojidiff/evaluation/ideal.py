"""The ideal memoriser: the exact denoiser of the empirical training distribution, a perfect copier to compare with."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from emojidiff.images import from_uint8


class IdealMemoriser(nn.Module):
    """D(x; sigma) = sum_i softmax_i(-|x - y_i|^2 / (2 sigma^2)) y_i over the training images y_i (and their mirrors).

    The posterior mean E[y | x] when y is drawn uniformly from the training set and x = y + sigma n (Karras et al.
    2022, eq. 3 with a Dirac-mixture data distribution; Gu et al. 2023; Kadkhodaie et al. 2024). Called like
    EDMPrecond, (x, sigma, labels=None) on [-1, 1] NCHW tensors, so it plugs into heun_sample and generate.
    """

    def __init__(self, train_images, xflip: bool = True, chunk: int = 2048):
        super().__init__()
        train_images = np.asarray(train_images.cpu() if torch.is_tensor(train_images) else train_images)
        if train_images.dtype != np.uint8 or train_images.ndim != 4 or train_images.shape[-1] not in (1, 3, 4):
            raise ValueError(f"train_images must be uint8 NHWC like dataset.images, got {train_images.dtype} "
                             f"{train_images.shape}")
        y = torch.from_numpy(np.ascontiguousarray(train_images)).permute(0, 3, 1, 2)  # NCHW, kept as uint8
        if len(y) == 0:
            raise ValueError("the ideal memoriser needs at least one training image, got none")
        if chunk < 1:
            raise ValueError(f"chunk must be positive, got {chunk}")
        if xflip:  # training flips left-right, so the training distribution holds the mirrors too
            y = torch.cat([y, y.flip(-1)])
        self.img_channels, self.img_resolution = int(y.shape[1]), int(y.shape[2])
        self.xflip, self.chunk = bool(xflip), int(chunk)
        # uint8 in memory, mapped to [-1, 1] per chunk in the caller's dtype: exact in float64, 8x smaller
        self.register_buffer("y", y.flatten(1).contiguous(), persistent=False)

    def extra_repr(self) -> str:
        return f"images={len(self.y)}, xflip={self.xflip}, resolution={self.img_resolution}"

    @torch.no_grad()
    def forward(self, x: torch.Tensor, sigma, labels: torch.Tensor | None = None) -> torch.Tensor:
        if labels is not None:
            raise ValueError("the ideal memoriser is unconditional: got labels; pass labels=None")
        if x.ndim != 4 or x[0].numel() != self.y.shape[1]:
            raise ValueError(f"x must be NCHW of shape (N, {self.img_channels}, {self.img_resolution}, "
                             f"{self.img_resolution}), got {tuple(x.shape)}")
        dtype = x.dtype if x.dtype == torch.float64 else torch.float32
        xf = x.to(dtype).flatten(1)
        sigma = torch.as_tensor(sigma, dtype=dtype, device=x.device).reshape(-1, 1).expand(len(xf), 1)
        if not (sigma > 0).all():
            raise ValueError(f"sigma must be positive, got min {sigma.min().item():g}")
        inv = 1.0 / (2.0 * sigma**2)
        # Online softmax over chunks of the training set (running max m, normaliser s, weighted sum acc):
        # logit_i = -(|x|^2 - 2 x.y_i + |y_i|^2) / (2 sigma^2); |x|^2 is the same for every i and cancels.
        m = torch.full((len(xf), 1), -torch.inf, dtype=dtype, device=x.device)
        s = torch.zeros((len(xf), 1), dtype=dtype, device=x.device)
        acc = torch.zeros_like(xf)
        for start in range(0, len(self.y), self.chunk):
            yc = from_uint8(self.y[start:start + self.chunk], dtype)
            logits = (2.0 * (xf @ yc.T) - (yc * yc).sum(1)[None]) * inv
            m_new = torch.maximum(m, logits.amax(1, keepdim=True))
            scale = torch.exp(m - m_new)  # rescale what was summed under the old maximum (exp(-inf) = 0 at first)
            w = torch.exp(logits - m_new)
            s = s * scale + w.sum(1, keepdim=True)
            acc = acc * scale + w @ yc
            m = m_new
        return (acc / s).reshape(x.shape)


def ideal_memoriser(train_images, xflip: bool = True, chunk: int = 2048) -> IdealMemoriser:
    """The exact denoiser of the training images (uint8 NHWC), mirrors included when `xflip`; see IdealMemoriser."""
    return IdealMemoriser(train_images, xflip=xflip, chunk=chunk)
