"""EDM preconditioning and training loss (Karras et al. 2022, Table 1 and eq. 8)."""

from __future__ import annotations

import torch
from torch import nn

from emojidiff.model.edm2_unet import EDM2UNet
from emojidiff.model.unet import UNet


class EDMPrecond(nn.Module):
    """D(x; sigma) = c_skip x + c_out F(c_in x; c_noise), EDM eq. 7 with the coefficients of Table 1."""

    def __init__(self, net: nn.Module, sigma_data: float = 0.5):
        super().__init__()
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be positive, got {sigma_data!r}")
        self.net = net
        self.sigma_data = float(sigma_data)
        self.img_resolution = getattr(net, "img_resolution", None)
        self.img_channels = getattr(net, "img_channels", None)

    def forward(self, x: torch.Tensor, sigma, labels: torch.Tensor | None = None) -> torch.Tensor:
        # Preconditioning in x's precision (float32, or float64 from the sampler); F in the network's.
        dtype = x.dtype if x.dtype == torch.float64 else torch.float32
        x = x.to(dtype)
        sigma = torch.as_tensor(sigma, dtype=dtype, device=x.device).reshape(-1, 1, 1, 1)
        sd = self.sigma_data

        # Table 1
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1 / (sd**2 + sigma**2).sqrt()
        c_noise = sigma.log() / 4

        param = next(self.net.parameters(), None)
        net_dtype = param.dtype if param is not None else torch.float32
        F_x = self.net((c_in * x).to(net_dtype), c_noise.flatten().to(net_dtype), labels)
        D_x = c_skip * x + c_out * F_x.to(dtype)
        return D_x


def denoiser_sigma_data(denoiser) -> float:
    """The sigma_data of an EDMPrecond, also inside DDP (.module) or torch.compile (._orig_mod); 0.5 for a function."""
    while not hasattr(denoiser, "sigma_data"):
        inner = getattr(denoiser, "_orig_mod", None) or getattr(denoiser, "module", None)
        if inner is None:
            break
        denoiser = inner
    return float(getattr(denoiser, "sigma_data", 0.5))  # EDM's default, for a bare denoising function


def edm_loss(denoiser, images: torch.Tensor, P_mean: float = -1.2, P_std: float = 1.2,
             sigma_data: float | None = None, generator: torch.Generator | None = None,
             labels: torch.Tensor | None = None, rnd_normal: torch.Tensor | None = None,
             noise: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image EDM loss, eq. 8: lambda(sigma) |D(y + n; sigma) - y|^2 averaged over pixels.

    `sigma_data` defaults to the denoiser's own (EDMPrecond.sigma_data). `rnd_normal` (N,1,1,1) and `noise` (like
    images) are standard normals drawn by the caller (e.g. one global draw shared by data-parallel ranks); otherwise
    they are drawn from `generator`.
    """
    if sigma_data is None:
        sigma_data = denoiser_sigma_data(denoiser)
    y = images
    n_img = y.shape[0]
    gen_device = generator.device if generator is not None else y.device  # CPU generator: same numbers anywhere
    if rnd_normal is None:
        rnd_normal = torch.randn(n_img, 1, 1, 1, generator=generator, device=gen_device)
    if noise is None:
        noise = torch.randn(y.shape, generator=generator, device=gen_device)
    # Table 1, training: ln(sigma) ~ N(P_mean, P_std^2),
    # lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2
    sigma = (rnd_normal.reshape(-1, 1, 1, 1) * P_std + P_mean).exp().to(y.device, torch.float32)
    weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    n = noise.to(y.device, y.dtype) * sigma
    args = (y + n, sigma.flatten()) if labels is None else (y + n, sigma.flatten(), labels)
    D_yn = denoiser(*args)
    return (weight * (D_yn.float() - y.float()) ** 2).mean(dim=(1, 2, 3))


def build_denoiser(model_cfg, width: int, img_resolution: int, sigma_data: float | None = None) -> EDMPrecond:
    """The EDM denoiser for one UNet width of a `ModelConfig` section (sigma_data: argument, else config)."""
    sigma_data = sigma_data if sigma_data is not None else model_cfg.sigma_data
    if sigma_data is None:
        raise ValueError("sigma_data is None as argument and in the model config: measure it on the data")
    shared = dict(img_resolution=img_resolution, model_channels=width, channel_mult=tuple(model_cfg.channel_mult),
                  num_blocks=model_cfg.num_blocks, attn_resolutions=tuple(model_cfg.attn_resolutions),
                  dropout=model_cfg.dropout, label_dim=model_cfg.label_dim, label_slots=model_cfg.label_slots,
                  label_dropout=model_cfg.label_dropout)
    architecture = getattr(model_cfg, "architecture", "ddpmpp")
    if architecture == "edm2":  # EDM2's magnitude-preserving net; its c_noise embedding is always Fourier
        net = EDM2UNet(**shared)
    elif architecture == "ddpmpp":
        net = UNet(embedding=model_cfg.embedding, **shared)
    else:
        raise ValueError(f"model.architecture must be 'ddpmpp' or 'edm2', got {architecture!r}")
    return EDMPrecond(net, sigma_data=sigma_data)
