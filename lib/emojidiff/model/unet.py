"""The network F of EDM: a DDPM++-style UNet (Song et al. 2021, as configured in EDM Appendix F.2)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _init(layer: nn.Module, scale: float = 1.0) -> nn.Module:
    """Xavier-uniform weights times `scale`, zero bias (EDM's init; scale 1e-5 is its "init_zero")."""
    nn.init.xavier_uniform_(layer.weight)
    with torch.no_grad():
        layer.weight.mul_(scale)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with at most 32 groups of at least 4 channels, so that widths like 16 work too."""
    return nn.GroupNorm(num_groups=min(32, max(channels // 4, 1)), num_channels=channels, eps=1e-6)


def one_hot_labels(labels: torch.Tensor, label_dim: int, label_slots: int) -> torch.Tensor:
    """Integer labels (N,) or (N, label_slots), -1 = null, to concatenated one-hots; floats pass as is."""
    if labels.is_floating_point():
        return labels
    labels = labels.reshape(labels.shape[0], -1)
    if labels.shape[1] != label_slots or labels.max() >= label_dim or labels.min() < -1:
        raise ValueError(f"labels must be (N, {label_slots}) ints in [-1, {label_dim}), "
                         f"got shape {tuple(labels.shape)} range [{labels.min()}, {labels.max()}]")
    onehot = F.one_hot(labels.clamp(min=0), label_dim) * (labels >= 0)[..., None]
    return onehot.reshape(labels.shape[0], -1).float()


class PositionalEmbedding(nn.Module):
    """Transformer sinusoidal embedding of the scalar c_noise (DDPM++'s "positional" embedding)."""

    def __init__(self, num_channels: int, max_positions: int = 10000):
        super().__init__()
        freqs = torch.arange(num_channels // 2, dtype=torch.float32) / (num_channels // 2 - 1)
        self.register_buffer("freqs", (1 / max_positions) ** freqs, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().outer(self.freqs)
        return torch.cat([x.cos(), x.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features of c_noise (NCSN++'s embedding), a fixed buffer."""

    def __init__(self, num_channels: int, scale: float = 16.0):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().outer((2 * math.pi) * self.freqs)
        return torch.cat([x.cos(), x.sin()], dim=1)


class Attention(nn.Module):
    """Single-head self-attention over the pixels of a feature map, residual."""

    def __init__(self, channels: int, skip_scale: float):
        super().__init__()
        self.norm = group_norm(channels)
        self.qkv = _init(nn.Conv2d(channels, channels * 3, 1), math.sqrt(0.2))
        self.proj = _init(nn.Conv2d(channels, channels, 1), 1e-5)
        self.skip_scale = skip_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, c, h * w).transpose(2, 3).unbind(1)
        a = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        a = a.transpose(1, 2).reshape(n, c, h, w)
        return (x + self.proj(a)) * self.skip_scale


class ResBlock(nn.Module):
    """(GroupNorm, SiLU, conv) twice with the embedding added between; optional resampling and attention."""

    def __init__(self, cin: int, cout: int, emb_channels: int, dropout: float = 0.0,
                 resample: str | None = None, attention: bool = False, skip_scale: float = math.sqrt(0.5)):
        super().__init__()
        self.resample = resample  # None, "down" (2x2 average) or "up" (nearest): DDPM++'s [1, 1] filter
        self.norm0 = group_norm(cin)
        self.conv0 = _init(nn.Conv2d(cin, cout, 3, padding=1))
        self.affine = _init(nn.Linear(emb_channels, cout))
        self.norm1 = group_norm(cout)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = _init(nn.Conv2d(cout, cout, 3, padding=1), 1e-5)
        self.skip = _init(nn.Conv2d(cin, cout, 1)) if cin != cout or resample else None
        self.attn = Attention(cout, skip_scale) if attention else None
        self.skip_scale = skip_scale

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv0(self._resample(F.silu(self.norm0(x))))
        h = h + self.affine(emb)[:, :, None, None].to(h.dtype)
        h = self.conv1(self.dropout(F.silu(self.norm1(h))))
        skip = self.skip(self._resample(x)) if self.skip is not None else x
        x = (h + skip) * self.skip_scale
        return self.attn(x) if self.attn is not None else x


class UNet(nn.Module):
    """DDPM++ UNet F(x; c_noise, labels); `model_channels` is the base width (the seed's "embedding dim")."""

    def __init__(self, img_resolution: int = 32, in_channels: int = 3, out_channels: int = 3,
                 model_channels: int = 128, channel_mult: tuple[int, ...] = (2, 2, 2), num_blocks: int = 4,
                 attn_resolutions: tuple[int, ...] = (16,), dropout: float = 0.10,
                 embedding: str = "positional", channel_mult_emb: int = 4, label_dim: int = 0,
                 label_slots: int = 1, label_dropout: float = 0.0):
        super().__init__()
        if img_resolution % (2 ** (len(channel_mult) - 1)):
            raise ValueError(f"img_resolution {img_resolution} is not divisible by 2^{len(channel_mult) - 1}")
        if embedding not in ("positional", "fourier"):
            raise ValueError(f"embedding must be 'positional' or 'fourier', got {embedding!r}")
        self.img_resolution, self.img_channels = img_resolution, in_channels
        self.label_dim, self.label_slots, self.label_dropout = label_dim, label_slots, label_dropout
        noise_channels, emb_channels = model_channels, model_channels * channel_mult_emb

        # Mapping: c_noise (+ labels) -> embedding fed to every block.
        embed = PositionalEmbedding if embedding == "positional" else FourierEmbedding
        self.map_noise = embed(noise_channels)
        self.map_label = None
        if label_dim:  # one-hot per slot -> added to the noise embedding; all-zero is the null label
            self.map_label = _init(nn.Linear(label_dim * label_slots, noise_channels, bias=False))
        self.map_layer0 = _init(nn.Linear(noise_channels, emb_channels))
        self.map_layer1 = _init(nn.Linear(emb_channels, emb_channels))

        # Encoder: a 3x3 conv in, then per resolution a down-sampling block and num_blocks blocks.
        block = dict(emb_channels=emb_channels, dropout=dropout)
        self.conv_in = _init(nn.Conv2d(in_channels, model_channels, 3, padding=1))
        self.enc = nn.ModuleList()
        skips, cout = [model_channels], model_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level > 0:
                self.enc.append(ResBlock(cout, cout, resample="down", **block))
                skips.append(cout)
            for _ in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc.append(ResBlock(cin, cout, attention=res in attn_resolutions, **block))
                skips.append(cout)

        # Decoder: two middle blocks (the first with attention), then per resolution num_blocks + 1 blocks
        # that each take one encoder skip, and an up-sampling block between resolutions.
        self.dec = nn.ModuleList()
        self.dec_takes_skip = []
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec.append(ResBlock(cout, cout, attention=True, **block))
                self.dec.append(ResBlock(cout, cout, **block))
                self.dec_takes_skip += [False, False]
            else:
                self.dec.append(ResBlock(cout, cout, resample="up", **block))
                self.dec_takes_skip.append(False)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                attn = idx == num_blocks and res in attn_resolutions
                self.dec.append(ResBlock(cin, cout, attention=attn, **block))
                self.dec_takes_skip.append(True)
        self.norm_out = group_norm(cout)
        self.conv_out = _init(nn.Conv2d(cout, out_channels, 3, padding=1), 1e-5)

    def embed_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Integer labels (N,) or (N, label_slots), -1 = null, to concatenated one-hots; floats pass as is."""
        return one_hot_labels(labels, self.label_dim, self.label_slots)

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, labels: torch.Tensor | None = None):
        emb = self.map_noise(noise_labels.reshape(-1).expand(x.shape[0]))
        if self.map_label is not None and labels is not None:
            onehot = self.embed_labels(labels).to(emb.device)
            if self.training and self.label_dropout:  # drop to the null label, for classifier-free guidance
                keep = torch.rand(x.shape[0], 1, device=emb.device) >= self.label_dropout
                onehot = onehot * keep
            # NVlabs/edm SongUNet: scale by sqrt(in_features) so the label term is O(1) beside the noise embedding
            # (fed as is, one hot of 2 x 67 barely moved the embedding and w = 1 nearly ignored the label, issue 18).
            emb = emb + self.map_label(onehot * math.sqrt(self.map_label.in_features))
        emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))

        x = self.conv_in(x)
        skips = [x]
        for blk in self.enc:
            x = blk(x, emb)
            skips.append(x)
        for blk, takes_skip in zip(self.dec, self.dec_takes_skip):
            if takes_skip:
                x = torch.cat([x, skips.pop()], dim=1)
            x = blk(x, emb)
        return self.conv_out(F.silu(self.norm_out(x)))


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
