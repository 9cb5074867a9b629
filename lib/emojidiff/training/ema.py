"""Exponential moving averages of the weights: by half-life in images with EDM's ramp-up (training_loop.py), or
EDM2's power function of training time."""

from __future__ import annotations

import copy

import numpy as np
import torch


def ema_beta(cur_nimg: int, batch_size: int, halflife_kimg: float, rampup_ratio: float | None) -> float:
    """Per-step decay: the EMA forgets half its value every `halflife` images, halflife <= rampup_ratio * nimg."""
    halflife_nimg = halflife_kimg * 1000
    if rampup_ratio is not None:
        halflife_nimg = min(halflife_nimg, cur_nimg * rampup_ratio)
    return 0.5 ** (batch_size / max(halflife_nimg, 1e-8))


def make_ema(net: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of `net` in eval mode to hold the averaged weights."""
    return copy.deepcopy(net).eval().requires_grad_(False)


def lerp_foreach(ema_params: list[torch.Tensor], net_params: list[torch.Tensor], beta: float) -> None:
    """ema <- ema + (1 - beta) (net - ema) in one fused launch per list (the CUDA path: ~830 kernels at width 128)."""
    torch._foreach_lerp_(ema_params, net_params, 1.0 - beta)


@torch.no_grad()
def update_ema(ema: torch.nn.Module, net: torch.nn.Module, beta: float) -> None:
    """ema <- beta * ema + (1 - beta) * net for parameters; buffers are copied."""
    ema_p, net_p = list(ema.parameters()), [p.detach() for p in net.parameters()]
    if len(ema_p) != len(net_p):
        raise ValueError(f"EMA has {len(ema_p)} parameters, the network {len(net_p)}")
    if ema_p and ema_p[0].device.type == "cuda":
        lerp_foreach(ema_p, net_p, beta)
    else:  # CPU: the per-tensor update as always (bitwise; torch's CPU foreach was 4x slower at width 128)
        for p_ema, p_net in zip(ema_p, net_p, strict=True):
            p_ema.copy_(p_net.lerp(p_ema, beta))
    for b_ema, b_net in zip(ema.buffers(), net.buffers(), strict=True):
        b_ema.copy_(b_net)


# EDM2's power-function EMA (Karras et al. 2024, Sec. 3.1): theta_hat(t) averages theta over [0, t] with weight
# proportional to tau^gamma, so its length scales with training time; its relative std names it.

def power_std(gamma: float) -> float:
    """The relative std sigma_rel of the power-function EMA profile of exponent gamma (eq. 3)."""
    return float(np.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3))))


def power_gamma(std: float) -> float:
    """The exponent gamma >= 0 whose profile has relative std `std`: the cubic sigma^2 (g+2)^2 (g+3) = g+1."""
    if not 0 < std < power_std(0.0):
        raise ValueError(f"power-function EMA std must be in (0, {power_std(0.0):.4f}), got {std!r}")
    s2 = std**2
    roots = np.roots([1.0, 7.0, 16.0 - 1 / s2, 12.0 - 1 / s2])
    return float(max(r.real for r in roots if abs(r.imag) < 1e-9))


def power_beta(step: int, gamma: float) -> float:
    """Per-step decay after update number `step` (1-based): beta_t = (1 - 1/t)^(gamma + 1) (Algorithm 2 of EDM2)."""
    return (1 - 1 / step) ** (gamma + 1)
