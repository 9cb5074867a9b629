"""torch.compile with an eager fallback, for the training step and for sampling."""

from __future__ import annotations

import warnings

import torch


class CompiledOrEager(torch.nn.Module):
    """torch.compile(module), or `module` itself with one warning when the first compile fails (no C++ compiler)."""

    def __init__(self, module: torch.nn.Module, option: str = "train.compile", what: str = "training", **compile_kw):
        super().__init__()
        self.module = module  # the eager module: parameters, state_dict and sigma_data as before
        self.__dict__["compiled"] = torch.compile(module, **compile_kw)  # not a submodule: parameters registered once
        self.option, self.what = option, what  # named in the fallback warning
        self.works: bool | None = None  # unknown until the first call

    def forward(self, *args, **kwargs):
        if self.works is False:
            return self.module(*args, **kwargs)
        try:
            out = self.compiled(*args, **kwargs)
        except Exception as exc:  # a failed first compile leaves no state behind: run that call eagerly
            if self.works:
                raise
            self.works = False
            warnings.warn(f"{self.option}: torch.compile failed ({type(exc).__name__}: {str(exc)[:300]}); "
                          f"{self.what} runs eagerly (slower, same maths)", stacklevel=2)
            return self.module(*args, **kwargs)
        self.works = True
        return out


def compile_for_sampling(denoiser: torch.nn.Module, memory_format: torch.memory_format) -> torch.nn.Module:
    """The denoiser with its UNet compiled (static shapes: one graph per batch size) in `memory_format`, in place."""
    denoiser.to(memory_format=memory_format)
    denoiser.net = CompiledOrEager(denoiser.net, "sample.compile", "sampling", dynamic=False)
    return denoiser
