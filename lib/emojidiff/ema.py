"""Exponential moving average of the weights by half-life in images, with EDM's ramp-up (training_loop.py)."""

from __future__ import annotations

import copy

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


@torch.no_grad()
def update_ema(ema: torch.nn.Module, net: torch.nn.Module, beta: float) -> None:
    """ema <- beta * ema + (1 - beta) * net for parameters; buffers are copied."""
    for p_ema, p_net in zip(ema.parameters(), net.parameters(), strict=True):
        p_ema.copy_(p_net.detach().lerp(p_ema, beta))
    for b_ema, b_net in zip(ema.buffers(), net.buffers(), strict=True):
        b_ema.copy_(b_net)
