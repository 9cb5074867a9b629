"""EDM samplers: the Karras schedule (eq. 5), Heun (Algorithm 2), Euler, DPM-Solver++(2M); classifier-free guidance."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
from tqdm.auto import tqdm


def karras_sigmas(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0,
                  rho: float = 7.0) -> torch.Tensor:
    """EDM eq. 5: sigma_i = (s_max^(1/rho) + i/(N-1) (s_min^(1/rho) - s_max^(1/rho)))^rho; sigma_N = 0."""
    if num_steps < 1 or not 0 < sigma_min <= sigma_max or rho <= 0:
        raise ValueError(f"need num_steps >= 1, 0 < sigma_min <= sigma_max, rho > 0; got {num_steps=}, "
                         f"{sigma_min=}, {sigma_max=}, {rho=}")
    i = torch.arange(num_steps, dtype=torch.float64)
    ramp = i / max(num_steps - 1, 1)
    sigmas = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])


def _randn_like(x: torch.Tensor, generator) -> torch.Tensor:
    """Standard normal noise shaped like x from one generator, or from one generator per image (a list)."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != x.shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {x.shape[0]} images")
        eps = torch.stack([torch.randn(x.shape[1:], generator=g, device=g.device) for g in generator])
    else:
        device = generator.device if generator is not None else x.device
        eps = torch.randn(x.shape, generator=generator, device=device)
    return eps.to(x.device, x.dtype)


@torch.no_grad()
def heun_sample(denoiser, noise: torch.Tensor, sigmas: torch.Tensor, S_churn: float = 0.0, S_min: float = 0.0,
                S_max: float = float("inf"), S_noise: float = 1.0, generator=None,
                dtype: torch.dtype | None = None, progress: bool = False) -> torch.Tensor:
    """EDM Algorithm 2: Heun's 2nd-order sampler with optional churn, in `dtype` (default: noise's)."""
    dtype = dtype or noise.dtype
    sigmas = torch.as_tensor(sigmas, dtype=dtype, device=noise.device)
    num_steps = len(sigmas) - 1
    x_next = noise.to(dtype) * sigmas[0]
    for i in tqdm(range(num_steps), desc="heun", disable=not progress, leave=False):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        x_cur = x_next

        # Increase noise temporarily: gamma_i = min(S_churn / N, sqrt(2) - 1) if t_i in [S_min, S_max].
        gamma = min(S_churn / num_steps, math.sqrt(2) - 1) if S_min <= t_cur <= S_max else 0.0
        t_hat = t_cur + gamma * t_cur
        x_hat = x_cur
        if gamma > 0:
            x_hat = x_cur + (t_hat**2 - t_cur**2).sqrt() * S_noise * _randn_like(x_cur, generator)

        # Euler step from t_hat to t_next.
        d_cur = (x_hat - denoiser(x_hat, t_hat).to(dtype)) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur

        # Apply 2nd-order correction, except for the last step to sigma = 0.
        if t_next != 0:
            d_prime = (x_next - denoiser(x_next, t_next).to(dtype)) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next


@torch.no_grad()
def euler_sample(denoiser, noise: torch.Tensor, sigmas: torch.Tensor, dtype: torch.dtype | None = None,
                 progress: bool = False) -> torch.Tensor:
    """Euler's method on the probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma (EDM eq. 4)."""
    dtype = dtype or noise.dtype
    sigmas = torch.as_tensor(sigmas, dtype=dtype, device=noise.device)
    x = noise.to(dtype) * sigmas[0]
    for i in tqdm(range(len(sigmas) - 1), desc="euler", disable=not progress, leave=False):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        d = (x - denoiser(x, t_cur).to(dtype)) / t_cur
        x = x + (t_next - t_cur) * d
    return x


@torch.no_grad()
def dpmpp2m_sample(denoiser, noise: torch.Tensor, sigmas: torch.Tensor, dtype: torch.dtype | None = None,
                   progress: bool = False) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) in data prediction, one network evaluation per step.

    EDM's x = y + sigma n is the paper's alpha_t = 1, sigma_t = sigma: lambda = -log sigma, h_i = log(s_i-1 / s_i).
    """
    dtype = dtype or noise.dtype
    sigmas = torch.as_tensor(sigmas, dtype=dtype, device=noise.device)
    x = noise.to(dtype) * sigmas[0]
    d_prev, h_prev = None, None
    for i in tqdm(range(len(sigmas) - 1), desc="dpm++2m", disable=not progress, leave=False):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        d = denoiser(x, t_cur).to(dtype)
        if t_next == 0:  # lambda = inf: the exponential integrator lands on the (first-order) denoised estimate
            x = d
            break
        h = (t_cur / t_next).log()
        d_hat = d
        if d_prev is not None:  # multistep: D_i = (1 + 1/(2r)) D(x_i-1) - 1/(2r) D(x_i-2), r = h_i-1 / h_i
            r = h_prev / h
            d_hat = (1 + 1 / (2 * r)) * d - (1 / (2 * r)) * d_prev
        # x_i = (sigma_i / sigma_i-1) x_i-1 - alpha_i (e^{-h_i} - 1) D_i, with alpha = 1
        x = (t_next / t_cur) * x - torch.expm1(-h) * d_hat
        d_prev, h_prev = d, h
    return x


SOLVERS = ("heun", "euler", "dpmpp2m")


def network_evaluations(solver: str, num_steps: int, guidance: float = 1.0, conditional: bool = False) -> int:
    """Network evaluations per image: Heun 2N - 1, Euler and DPM-Solver++(2M) N; guided (w not 0 or 1) twice that."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    nfe = 2 * num_steps - 1 if solver == "heun" else num_steps
    return 2 * nfe if conditional and guidance not in (0.0, 1.0) else nfe


def guided(denoiser, labels: torch.Tensor | None, guidance: float = 1.0):
    """D_w(x) = D(x, null) + w (D(x, labels) - D(x, null)) (classifier-free guidance, Ho & Salimans 2022).

    w = 1 calls D with the labels, w = 0 with the null label, each once; any other w batches both in one pass.
    labels None calls D(x, sigma) as an unconditional net.
    """
    if labels is None:
        if guidance != 1.0:
            raise ValueError(f"guidance {guidance} needs labels: an unconditional call has no null branch")
        return denoiser
    null = torch.zeros_like(labels) if labels.is_floating_point() else torch.full_like(labels, -1)
    if guidance == 1.0:
        return lambda x, sigma: denoiser(x, sigma, labels)
    if guidance == 0.0:
        return lambda x, sigma: denoiser(x, sigma, null)
    both = torch.cat([labels, null])

    def D(x, sigma):
        d_cond, d_null = denoiser(torch.cat([x, x]), sigma, both).chunk(2)
        return d_null + guidance * (d_cond - d_null)

    return D


def image_generator(seed: int, index: int) -> torch.Generator:
    """A CPU generator for image `index` of a run with `seed`: same noise whatever the batching or device."""
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def generate(denoiser, num_images: int, seed: int, batch_size: int = 256, num_steps: int = 18,
             start_index: int = 0, device: str | torch.device = "cpu", solver: str = "heun", sigma_min: float = 0.002,
             sigma_max: float = 80.0, rho: float = 7.0, shape: tuple[int, int, int] | None = None,
             labels: torch.Tensor | None = None, guidance: float = 1.0, dtype: torch.dtype = torch.float64,
             autocast: bool = False, uint8: bool = False, progress: bool = True, **churn):
    """Draw images start_index .. start_index + num_images - 1; [-1, 1] NCHW float (CPU) or uint8 NHWC numpy.

    Image i's noise (and churn noise) comes from its own generator seeded by (seed, i), so it is identical
    for any batch size or guidance. `churn` takes S_churn, S_min, S_max, S_noise (Heun only, Algorithm 2).
    `labels`: one row per image (int64 (num_images, label_slots), -1 = null); `guidance` w as in `guided`.
    """
    if "sampler" in churn:  # the argument's earlier name
        solver = churn.pop("sampler")
    if solver not in SOLVERS:
        raise ValueError(f"solver (sampler) must be one of {SOLVERS}, got {solver!r}")
    if solver != "heun" and churn:
        raise ValueError(f"the {solver} solver takes no churn arguments, got {sorted(churn)}")
    unknown = set(churn) - {"S_churn", "S_min", "S_max", "S_noise"}
    if unknown:
        raise ValueError(f"unknown sampler arguments {sorted(unknown)}")
    if not (math.isfinite(guidance) and guidance >= 0):
        raise ValueError(f"guidance must be a finite number >= 0, got {guidance}")
    if labels is None and guidance != 1.0:
        raise ValueError(f"guidance {guidance} needs labels (the net is sampled unconditionally without them)")
    if labels is not None and len(labels) != num_images:
        raise ValueError(f"labels has {len(labels)} rows for {num_images} images")
    if shape is None:
        res, ch = getattr(denoiser, "img_resolution", None), getattr(denoiser, "img_channels", None)
        if res is None or ch is None:
            raise ValueError("pass shape=(C, H, W): the denoiser has no img_resolution/img_channels")
        shape = (ch, res, res)
    device = torch.device(device)
    sigmas = karras_sigmas(num_steps, sigma_min, sigma_max, rho)
    was_training = getattr(denoiser, "training", False)
    if was_training:
        denoiser.eval()  # no dropout while sampling
    out = []
    try:
        for start in tqdm(range(0, num_images, batch_size), desc="sampling", disable=not progress):
            idx = range(start_index + start, start_index + min(start + batch_size, num_images))
            gens = [image_generator(seed, i) for i in idx]
            noise = torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device)
            batch_labels = None if labels is None else labels[start:start + len(idx)].to(device)
            D = guided(denoiser, batch_labels, guidance)
            amp = torch.autocast(device.type, torch.bfloat16) if autocast else contextlib.nullcontext()
            with amp:
                if solver == "heun":
                    x = heun_sample(D, noise, sigmas, generator=gens, dtype=dtype, **churn)
                elif solver == "euler":
                    x = euler_sample(D, noise, sigmas, dtype=dtype)
                else:
                    x = dpmpp2m_sample(D, noise, sigmas, dtype=dtype)
            out.append(x.float().clamp(-1, 1).cpu())
    finally:
        if was_training:
            denoiser.train()
    images = torch.cat(out) if out else torch.empty(0, *shape)
    if uint8:
        from emojidiff.images import to_uint8

        return to_uint8(images)
    return images
