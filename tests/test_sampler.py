"""Sampler tests: schedule, Algorithm 2 against the exact ODE of Gaussian data, determinism, per-image seeds."""

import math

import numpy as np
import pytest
import torch

import emojidiff
from emojidiff import euler_sample, generate, heun_sample, karras_sigmas
from emojidiff.model.sampler import dpmpp2m_sample

MU, S = 0.3, 0.5  # data ~ N(MU, S^2 I)


def gaussian_denoiser(x, sigma):
    """The ideal denoiser for N(MU, S^2 I) data: E[y | y + n = x]."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype)
    return MU + S**2 / (S**2 + sigma**2) * (x - MU)


def exact_flow(noise, sigmas):
    """Probability-flow ODE solution for Gaussian data: x - MU scales as sqrt(S^2 + sigma^2)."""
    s0, s1 = float(sigmas[0]), float(sigmas[-1])
    return MU + (noise * s0 - MU) * math.sqrt((S**2 + s1**2) / (S**2 + s0**2))


def test_karras_sigmas_endpoints_and_monotone():
    sig = karras_sigmas(18)
    assert sig.shape == (19,) and sig.dtype == torch.float64
    assert sig[0].item() == pytest.approx(80.0) and sig[-2].item() == pytest.approx(0.002) and sig[-1] == 0
    assert (sig[1:] < sig[:-1]).all()
    # eq. 5 at the midpoint of the ramp, computed independently
    mid = karras_sigmas(3, sigma_min=1.0, sigma_max=16.0, rho=2.0)[1].item()
    assert mid == pytest.approx(((16**0.5 + 1) / 2) ** 2)
    assert karras_sigmas(1).tolist() == [80.0, 0.0]
    with pytest.raises(ValueError, match="num_steps"):
        karras_sigmas(0)


def test_heun_matches_gaussian_mean_and_variance():
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(8192, 1, 2, 2, generator=g, dtype=torch.float64)
    x = heun_sample(gaussian_denoiser, noise, karras_sigmas(64))
    # Exact endpoint of the ODE from sigma_max: mean MU (1 - r), std S sigma_max / sqrt(S^2 + sigma_max^2).
    r = S / math.sqrt(S**2 + 80.0**2)
    se = S / math.sqrt(noise.numel())
    assert x.mean().item() == pytest.approx(MU * (1 - r) + noise.mean().item() * 80 * r, abs=2e-3)
    assert abs(x.mean().item() - MU) < 4 * se + MU * r
    assert x.std().item() == pytest.approx(S, rel=0.02)


def test_heun_with_churn_keeps_the_distribution():
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(8192, 1, 2, 2, generator=g, dtype=torch.float64)
    x = heun_sample(gaussian_denoiser, noise, karras_sigmas(64), S_churn=30, S_min=0.01, S_max=50,
                    S_noise=1.0, generator=g)
    assert abs(x.mean().item() - MU) < 0.02
    assert x.std().item() == pytest.approx(S, rel=0.03)
    # churn noise really was drawn: the result differs from the deterministic sampler
    assert not torch.allclose(x, heun_sample(gaussian_denoiser, noise, karras_sigmas(64)))


def _slope(steps, errors):
    return np.polyfit(np.log(steps), np.log(errors), 1)[0]


def test_convergence_orders_heun_2_euler_1():
    noise = torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    steps = [16, 32, 64, 128]
    err_heun, err_euler = [], []
    for n in steps:
        sig = karras_sigmas(n)[:-1]  # stop at sigma_min: pure discretisation error, no final jump to 0
        exact = exact_flow(noise, sig)
        err_heun.append((heun_sample(gaussian_denoiser, noise, sig) - exact).abs().max().item())
        err_euler.append((euler_sample(gaussian_denoiser, noise, sig) - exact).abs().max().item())
    assert _slope(steps, err_heun) == pytest.approx(-2.0, abs=0.25)
    assert _slope(steps, err_euler) == pytest.approx(-1.0, abs=0.15)


def test_last_step_is_plain_euler():
    calls = []

    def D(x, sigma):
        calls.append(float(sigma))
        return gaussian_denoiser(x, sigma)

    noise = torch.randn(4, 1, 2, 2, dtype=torch.float64)
    heun_sample(D, noise, karras_sigmas(5))
    assert len(calls) == 2 * 5 - 1 and 0.0 not in calls  # 2 evaluations per step but one at the end
    calls.clear()
    euler_sample(D, noise, karras_sigmas(5))
    assert len(calls) == 5


def test_heun_deterministic_and_generator_drives_churn():
    noise = torch.randn(3, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    sig = karras_sigmas(6)
    kw = dict(S_churn=10.0, S_min=0.0, S_max=float("inf"))
    a = heun_sample(gaussian_denoiser, noise, sig, generator=torch.Generator().manual_seed(5), **kw)
    b = heun_sample(gaussian_denoiser, noise, sig, generator=torch.Generator().manual_seed(5), **kw)
    c = heun_sample(gaussian_denoiser, noise, sig, generator=torch.Generator().manual_seed(6), **kw)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert a.dtype == torch.float32
    assert heun_sample(gaussian_denoiser, noise, sig, dtype=torch.float64).dtype == torch.float64


@pytest.fixture(scope="module")
def tiny_denoiser():
    torch.manual_seed(0)
    net = emojidiff.UNet(img_resolution=8, model_channels=16, channel_mult=(1, 2), num_blocks=1,
                         attn_resolutions=(4,), dropout=0.0)
    return emojidiff.EDMPrecond(net, sigma_data=0.5).eval()


@pytest.mark.parametrize("churn", [{}, {"S_churn": 5.0}])
def test_generate_per_image_reproducible_across_batch_sizes(tiny_denoiser, churn):
    a = generate(tiny_denoiser, 5, seed=7, batch_size=5, num_steps=3, progress=False, **churn)
    b = generate(tiny_denoiser, 5, seed=7, batch_size=2, num_steps=3, progress=False, **churn)
    c = generate(tiny_denoiser, 2, seed=7, batch_size=4, num_steps=3, start_index=3, progress=False, **churn)
    assert a.shape == (5, 3, 8, 8) and a.dtype == torch.float32
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a[3:], c, atol=1e-5)
    d = generate(tiny_denoiser, 5, seed=8, batch_size=5, num_steps=3, progress=False, **churn)
    assert not torch.allclose(a, d)
    assert a.min() >= -1 and a.max() <= 1


def test_generate_uint8_and_errors(tiny_denoiser):
    u = generate(tiny_denoiser, 2, seed=0, batch_size=2, num_steps=2, uint8=True, progress=False)
    assert u.dtype == np.uint8 and u.shape == (2, 8, 8, 3)
    with pytest.raises(ValueError, match="sampler"):
        generate(tiny_denoiser, 2, seed=0, solver="dpm", progress=False)
    with pytest.raises(ValueError, match="shape"):
        generate(gaussian_denoiser, 2, seed=0, progress=False)
    e = generate(gaussian_denoiser, 3, seed=0, num_steps=2, sampler="euler", shape=(1, 2, 2), progress=False)
    assert e.shape == (3, 1, 2, 2)


def test_karras_schedule_edges_that_are_valid_and_those_that_are_not():
    # two steps: exactly sigma_max then sigma_min (the ramp divides by N - 1), then 0
    assert torch.allclose(karras_sigmas(2, 0.5, 4.0, 7.0), torch.tensor([4.0, 0.5, 0.0], dtype=torch.float64))
    assert torch.allclose(karras_sigmas(3, 1.0, 1.0), torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64))
    # 0 < rho <= 1 is valid: with rho = 0.5 the midpoint is ((1 + 0.25^2) / 2)^0.5
    expected = torch.tensor([1.0, 0.53125**0.5, 0.25, 0.0], dtype=torch.float64)
    assert torch.allclose(karras_sigmas(3, 0.25, 1.0, rho=0.5), expected)
    for bad in ({"sigma_min": 0.0}, {"rho": 0.0}, {"sigma_min": 2.0, "sigma_max": 1.0}, {"num_steps": 0}):
        kwargs = {"num_steps": 3, "sigma_min": 0.1, "sigma_max": 1.0, **bad}
        with pytest.raises(ValueError, match="need num_steps >= 1"):
            karras_sigmas(**kwargs)


@pytest.fixture(scope="module")
def cond_denoiser():
    torch.manual_seed(1)
    net = emojidiff.UNet(img_resolution=8, model_channels=16, channel_mult=(1, 2), num_blocks=1,
                         attn_resolutions=(4,), dropout=0.0, label_dim=5, label_slots=2)
    with torch.no_grad():  # EDM's near-zero init (conv_out, each block's conv1) would hide the label's effect
        for w in net.parameters():
            if w.dim() > 1 and w.abs().max() < 1e-3:
                w.normal_(0, 0.05)
    return emojidiff.EDMPrecond(net, sigma_data=0.5).eval()


class CountingDenoiser(torch.nn.Module):
    """Wraps a denoiser and records the batch size of each call."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, []
        self.img_resolution, self.img_channels = inner.img_resolution, inner.img_channels

    def forward(self, x, sigma, labels=None):
        self.calls.append(x.shape[0])
        return self.inner(x, sigma) if labels is None else self.inner(x, sigma, labels)


LABELS = torch.tensor([[0, 1], [2, 3], [4, 0], [1, -1]])
NULL = torch.full_like(LABELS, -1)


@pytest.mark.parametrize("solver", ["heun", "euler", "dpmpp2m"])
def test_guidance_0_is_unconditional_and_1_conditional_with_one_branch(cond_denoiser, solver):
    kw = dict(seed=3, batch_size=4, num_steps=4, solver=solver, progress=False)
    counted = CountingDenoiser(cond_denoiser)
    w1 = generate(counted, 4, labels=LABELS, guidance=1.0, **kw)
    w0 = generate(counted, 4, labels=LABELS, guidance=0.0, **kw)
    nfe = emojidiff.model.sampler.network_evaluations(solver, 4)
    assert counted.calls == [4] * (2 * nfe)  # one branch each: no wasted evaluation, no doubled batch
    cond = generate(cond_denoiser, 4, labels=LABELS, **kw)
    null = generate(cond_denoiser, 4, labels=NULL, **kw)
    assert torch.allclose(w1, cond, atol=1e-6) and torch.allclose(w0, null, atol=1e-6)
    assert not torch.allclose(cond, null, atol=1e-3)  # the labels do matter for this net
    # guidance is continuous in w: the batched two-branch path near 0 and 1 meets the single-branch ones
    assert torch.allclose(generate(cond_denoiser, 4, labels=LABELS, guidance=1e-7, **kw), w0, atol=1e-5)
    assert torch.allclose(generate(cond_denoiser, 4, labels=LABELS, guidance=1 + 1e-7, **kw), w1, atol=1e-5)


def test_guided_batches_both_branches_and_extrapolates(cond_denoiser):
    counted = CountingDenoiser(cond_denoiser)
    kw = dict(seed=5, batch_size=4, num_steps=3, progress=False, labels=LABELS)
    w3 = generate(counted, 4, guidance=3.0, **kw)
    assert counted.calls == [8] * 5  # Heun 2N - 1 evaluations, each of cond and null in one batch
    # the same sampler with D_w built by hand from two separate calls, same seeds
    noise = torch.stack([torch.randn(3, 8, 8, generator=emojidiff.model.sampler.image_generator(5, i))
                         for i in range(4)])

    def by_hand(x, s):
        d_c, d_n = cond_denoiser(x, s, LABELS), cond_denoiser(x, s, NULL)
        return d_n + 3.0 * (d_c - d_n)

    ref = heun_sample(by_hand, noise, karras_sigmas(3), dtype=torch.float64).float().clamp(-1, 1)
    assert torch.allclose(w3, ref, atol=1e-5)
    assert not torch.allclose(w3, generate(cond_denoiser, 4, guidance=1.0, **kw), atol=1e-3)
    # image i's noise is its own: other batch sizes and a later start give the same guided images
    again = generate(cond_denoiser, 4, guidance=3.0, **{**kw, "batch_size": 3})
    tail = generate(cond_denoiser, 2, guidance=3.0, start_index=2, **{**kw, "labels": LABELS[2:]})
    # (float32 convolutions differ in the last bits between batch sizes; w = 3 amplifies that)
    assert torch.allclose(w3, again, atol=1e-4) and torch.allclose(w3[2:], tail, atol=1e-4)


def test_unconditional_generate_is_the_plain_solver_on_per_image_noise(tiny_denoiser):
    # labels=None must call D(x, sigma) alone, once per evaluation, on image_generator(seed, i) noise
    counted = CountingDenoiser(tiny_denoiser)
    out = generate(counted, 3, seed=11, batch_size=3, num_steps=4, progress=False)
    assert counted.calls == [3] * 7
    noise = torch.stack([torch.randn(3, 8, 8, generator=emojidiff.model.sampler.image_generator(11, i))
                         for i in range(3)])
    ref = heun_sample(tiny_denoiser, noise, karras_sigmas(4), dtype=torch.float64).float().clamp(-1, 1)
    assert torch.equal(out, ref)


def test_guidance_arguments_are_checked(cond_denoiser, tiny_denoiser):
    with pytest.raises(ValueError, match="guidance 2.0 needs labels"):
        generate(tiny_denoiser, 2, seed=0, guidance=2.0, progress=False)
    with pytest.raises(ValueError, match="guidance must be"):
        generate(cond_denoiser, 4, seed=0, labels=LABELS, guidance=-1.0, progress=False)
    with pytest.raises(ValueError, match="labels has 4 rows for 3 images"):
        generate(cond_denoiser, 3, seed=0, labels=LABELS, progress=False)
    with pytest.raises(ValueError, match="no churn"):
        generate(tiny_denoiser, 2, seed=0, solver="dpmpp2m", S_churn=1.0, progress=False)
    # the argument's earlier name still works
    a = generate(tiny_denoiser, 2, seed=0, num_steps=2, sampler="euler", progress=False)
    assert torch.equal(a, generate(tiny_denoiser, 2, seed=0, num_steps=2, solver="euler", progress=False))


def test_dpmpp2m_converges_at_second_order_and_beats_euler_per_evaluation():
    noise = torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    steps = [16, 32, 64, 128]
    err_dpm, err_euler = [], []
    for n in steps:
        sig = karras_sigmas(n)[:-1]  # stop at sigma_min: pure discretisation error
        exact = exact_flow(noise, sig)
        err_dpm.append((dpmpp2m_sample(gaussian_denoiser, noise, sig) - exact).abs().max().item())
        err_euler.append((euler_sample(gaussian_denoiser, noise, sig) - exact).abs().max().item())
    assert _slope(steps, err_dpm) == pytest.approx(-2.0, abs=0.25)
    assert all(d < e / 5 for d, e in zip(err_dpm[1:], err_euler[1:]))  # same evaluations, far smaller error


def test_dpmpp2m_is_exact_for_a_single_data_point_and_lands_on_the_denoised_estimate():
    # data a single point y0: D = y0 for every x, the ODE solution x - y0 proportional to sigma, and the
    # exponential integrator is exact at any step count; the last step to sigma = 0 returns D itself.
    y0 = torch.tensor([0.3, -0.7, 0.1, 0.9], dtype=torch.float64).reshape(1, 1, 2, 2)
    calls = []

    def D(x, sigma):
        calls.append(float(sigma))
        return y0.expand_as(x)

    noise = torch.randn(5, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sig = karras_sigmas(3)
    x = dpmpp2m_sample(D, noise, sig[:-1])
    assert torch.allclose(x, y0 + (noise * 80.0 - y0) * (0.002 / 80.0), atol=1e-12)
    assert torch.allclose(dpmpp2m_sample(D, noise, sig), y0.expand_as(noise))
    assert len(calls) == 2 + 3 and 0.0 not in calls  # one evaluation per step
