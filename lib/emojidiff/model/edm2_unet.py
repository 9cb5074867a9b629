"""EDM2's magnitude-preserving UNet (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion
Models", config G): no biases or group norms, forced weight normalisation, MP sums/concatenations, cosine attention.

A profile option beside the DDPM++ UNet (`model.architecture: edm2`); same call F(x; c_noise, labels).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emojidiff.model.unet import one_hot_labels


def normalize(x: torch.Tensor, dim=None, eps: float = 1e-4) -> torch.Tensor:
    """x scaled to unit RMS over `dim` (default: all but the first, i.e. per output channel of a weight)."""
    if dim is None:
        dim = list(range(1, x.ndim))
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    norm = eps + norm * math.sqrt(norm.numel() / x.numel())
    return x / norm.to(x.dtype)


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU divided by its output RMS for unit-normal input (eq. 81)."""
    return F.silu(x) / 0.596


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    """(1 - t) a + t b, rescaled to unit magnitude for unit-magnitude uncorrelated inputs (eq. 88)."""
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t**2)


def mp_cat(a: torch.Tensor, b: torch.Tensor, dim: int = 1, t: float = 0.5) -> torch.Tensor:
    """Channel concatenation weighting the two parts (1 - t) : t, magnitude-preserving (eq. 103)."""
    na, nb = a.shape[dim], b.shape[dim]
    c = math.sqrt((na + nb) / ((1 - t) ** 2 + t**2))
    return torch.cat([a * (c / math.sqrt(na) * (1 - t)), b * (c / math.sqrt(nb) * t)], dim=dim)


class MPFourier(nn.Module):
    """Fourier features cos(2 pi (f x + phi)) * sqrt(2) of c_noise: unit magnitude."""

    def __init__(self, num_channels: int, bandwidth: float = 1.0):
        super().__init__()
        self.register_buffer("freqs", 2 * np.pi * torch.randn(num_channels) * bandwidth)
        self.register_buffer("phases", 2 * np.pi * torch.rand(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float().outer(self.freqs) + self.phases
        return (y.cos() * math.sqrt(2)).to(x.dtype)


class MPConv(nn.Module):
    """A bias-free conv (kernel (k, k)) or linear layer (kernel ()) whose weight is used at unit norm per output
    channel, divided by sqrt(fan-in): the output keeps the input's magnitude (Sec. 2.4)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, ...]):
        super().__init__()
        self.out_channels = out_channels
        # Forced weight normalisation (eq. 67) starts from unit-norm rows; force_weight_norm keeps them there.
        self.weight = nn.Parameter(normalize(torch.randn(out_channels, in_channels, *kernel)))

    def forward(self, x: torch.Tensor, gain=1.0) -> torch.Tensor:
        w = normalize(self.weight.float())  # normalised in the graph too: the gradient is projected (Sec. 2.4)
        w = w * (gain / math.sqrt(w[0].numel()))
        if w.ndim == 2:
            return x @ w.t().to(x.dtype)
        return F.conv2d(x, w.to(x.dtype), padding=w.shape[-1] // 2)


@torch.no_grad()
def force_weight_norm(module: nn.Module) -> None:
    """Put every MPConv weight back at unit norm per output channel (after each optimiser step; a no-op elsewhere)."""
    for m in module.modules():
        if isinstance(m, MPConv):
            m.weight.copy_(normalize(m.weight))


class Block(nn.Module):
    """Encoder or decoder block (Fig. 21): MP residual branch modulated by the embedding, optional cosine attention."""

    def __init__(self, cin: int, cout: int, emb_channels: int, flavor: str, resample: str = "keep",
                 attention: bool = False, channels_per_head: int = 64, dropout: float = 0.0,
                 res_balance: float = 0.3, attn_balance: float = 0.3, clip_act: float = 256):
        super().__init__()
        self.out_channels, self.flavor, self.resample = cout, flavor, resample
        self.num_heads = cout // channels_per_head if attention else 0
        if attention and self.num_heads == 0:
            self.num_heads = 1
        self.dropout, self.res_balance, self.attn_balance, self.clip_act = dropout, res_balance, attn_balance, clip_act
        self.emb_gain = nn.Parameter(torch.zeros([]))
        self.conv_res0 = MPConv(cout if flavor == "enc" else cin, cout, (3, 3))
        self.emb_linear = MPConv(emb_channels, cout, ())
        self.conv_res1 = MPConv(cout, cout, (3, 3))
        self.conv_skip = MPConv(cin, cout, (1, 1)) if cin != cout else None
        self.attn_qkv = MPConv(cout, cout * 3, (1, 1)) if self.num_heads else None
        self.attn_proj = MPConv(cout, cout, (1, 1)) if self.num_heads else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # Main branch: resample, (encoder) skip conv and pixel norm.
        if self.resample == "down":
            x = F.avg_pool2d(x, 2)
        elif self.resample == "up":
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.flavor == "enc":
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = normalize(x, dim=1)  # pixel norm (Sec. 2.2)

        # Residual branch: conv, embedding as a multiplicative modulation, conv.
        y = self.conv_res0(mp_silu(x))
        c = self.emb_linear(emb, gain=self.emb_gain) + 1
        y = mp_silu(y * c[:, :, None, None].to(y.dtype))
        if self.training and self.dropout:
            y = F.dropout(y, p=self.dropout)
        y = self.conv_res1(y)
        if self.flavor == "dec" and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, t=self.res_balance)

        # Cosine self-attention: q, k, v normalised per head (Sec. 2.2).
        if self.num_heads:
            n, ch, h, w = x.shape
            qkv = self.attn_qkv(x).reshape(n, self.num_heads, -1, 3, h * w)
            q, k, v = normalize(qkv, dim=2).unbind(3)  # (n, heads, c, hw)
            a = F.scaled_dot_product_attention(q.transpose(2, 3), k.transpose(2, 3), v.transpose(2, 3))
            y = self.attn_proj(a.transpose(2, 3).reshape(n, ch, h, w))
            x = mp_sum(x, y, t=self.attn_balance)
        return x.clamp(-self.clip_act, self.clip_act) if self.clip_act else x


class EDM2UNet(nn.Module):
    """EDM2 UNet F(x; c_noise, labels) with the DDPM++ UNet's interface and level layout."""

    def __init__(self, img_resolution: int = 32, in_channels: int = 3, out_channels: int = 3,
                 model_channels: int = 32, channel_mult: tuple[int, ...] = (1, 2, 2), num_blocks: int = 2,
                 attn_resolutions: tuple[int, ...] = (8,), dropout: float = 0.0, label_dim: int = 0,
                 label_slots: int = 1, label_dropout: float = 0.0, label_balance: float = 0.5,
                 concat_balance: float = 0.5):
        super().__init__()
        if img_resolution % (2 ** (len(channel_mult) - 1)):
            raise ValueError(f"img_resolution {img_resolution} is not divisible by 2^{len(channel_mult) - 1}")
        self.img_resolution, self.img_channels = img_resolution, in_channels
        self.label_dim, self.label_slots, self.label_dropout = label_dim, label_slots, label_dropout
        self.label_balance, self.concat_balance = label_balance, concat_balance
        widths = [model_channels * m for m in channel_mult]
        emb_channels = model_channels * max(channel_mult)
        self.out_gain = nn.Parameter(torch.zeros([]))  # the output starts at zero: D = c_skip x at init

        # Embedding: Fourier features of c_noise (+ labels), an MP linear layer, MP SiLU.
        self.emb_fourier = MPFourier(model_channels)
        self.emb_noise = MPConv(model_channels, emb_channels, ())
        self.emb_label = MPConv(label_dim * label_slots, emb_channels, ()) if label_dim else None

        # Encoder: a conv in (with a constant channel so the layer can make a bias), then blocks per resolution.
        block = dict(emb_channels=emb_channels, dropout=dropout)
        self.enc = nn.ModuleList()
        self.enc_is_conv = []
        cout = in_channels + 1
        for level, ch in enumerate(widths):
            res = img_resolution >> level
            if level == 0:
                self.enc.append(MPConv(cout, ch, (3, 3)))
                cout = ch
            else:
                self.enc.append(Block(cout, cout, flavor="enc", resample="down", **block))
            self.enc_is_conv.append(level == 0)
            for _ in range(num_blocks):
                cin, cout = cout, ch
                self.enc.append(Block(cin, cout, flavor="enc", attention=res in attn_resolutions, **block))
                self.enc_is_conv.append(False)
        skips = [m.out_channels for m in self.enc]

        # Decoder: two middle blocks, then per resolution an up block and num_blocks + 1 blocks taking a skip.
        self.dec = nn.ModuleList()
        self.dec_takes_skip = []
        for level, ch in reversed(list(enumerate(widths))):
            res = img_resolution >> level
            if level == len(widths) - 1:
                self.dec.append(Block(cout, cout, flavor="dec", attention=True, **block))
                self.dec.append(Block(cout, cout, flavor="dec", **block))
                self.dec_takes_skip += [False, False]
            else:
                self.dec.append(Block(cout, cout, flavor="dec", resample="up", **block))
                self.dec_takes_skip.append(False)
            for _ in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), ch
                self.dec.append(Block(cin, cout, flavor="dec", attention=res in attn_resolutions, **block))
                self.dec_takes_skip.append(True)
        self.conv_out = MPConv(cout, out_channels, (3, 3))

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, labels: torch.Tensor | None = None):
        emb = self.emb_noise(self.emb_fourier(noise_labels.reshape(-1).expand(x.shape[0])))
        if self.emb_label is not None and labels is not None:
            onehot = one_hot_labels(labels, self.label_dim, self.label_slots).to(emb.device)
            if self.training and self.label_dropout:  # drop to the null label, for classifier-free guidance
                onehot = onehot * (torch.rand(x.shape[0], 1, device=emb.device) >= self.label_dropout)
            label_emb = self.emb_label(onehot * math.sqrt(self.emb_label.weight.shape[1] / self.label_slots))
            emb = mp_sum(emb, label_emb.to(emb.dtype), t=self.label_balance)
        emb = mp_silu(emb)

        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        skips = []
        for blk, is_conv in zip(self.enc, self.enc_is_conv):
            x = blk(x) if is_conv else blk(x, emb)
            skips.append(x)
        for blk, takes_skip in zip(self.dec, self.dec_takes_skip):
            if takes_skip:
                x = mp_cat(x, skips.pop(), t=self.concat_balance)
            x = blk(x, emb)
        return self.conv_out(x, gain=self.out_gain)
