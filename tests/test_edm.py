"""EDM preconditioning and loss tests: Table 1 coefficients and eq. 8 against its raw-output form."""

import math
from pathlib import Path

import pytest
import torch
from torch import nn

import emojidiff
from emojidiff import EDMPrecond, build_denoiser, edm_loss


class Probe(nn.Module):
    """A fake F that returns a fixed output and records what it was given."""

    def __init__(self, out: float):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.out = out

    def forward(self, x, c_noise, labels=None):
        self.x_in, self.c_noise, self.labels = x, c_noise, labels
        return torch.full_like(x, self.out) + 0 * self.w


def table1(sigma, sd):
    """Table 1 of EDM, written out independently of the module."""
    return dict(c_skip=sd**2 / (sigma**2 + sd**2), c_out=sigma * sd / math.sqrt(sigma**2 + sd**2),
                c_in=1 / math.sqrt(sigma**2 + sd**2), c_noise=0.25 * math.log(sigma))


@pytest.mark.parametrize("sigma", [0.002, 0.1, 0.5, 1.0, 7.3, 80.0])
@pytest.mark.parametrize("sd", [0.5, 0.37])
def test_precond_coefficients_table1(sigma, sd):
    ref = table1(sigma, sd)
    x = torch.full((2, 3, 4, 4), 1.5, dtype=torch.float64)
    # F = 0: D = c_skip x; F = 1 and x = 0: D = c_out; the net sees c_in x and c_noise.
    d_skip = EDMPrecond(Probe(0.0), sigma_data=sd)(x, sigma)
    assert d_skip.dtype == torch.float64
    assert torch.allclose(d_skip, torch.full_like(x, 1.5 * ref["c_skip"]), rtol=1e-12)
    probe = Probe(1.0)
    d_out = EDMPrecond(probe, sigma_data=sd)(torch.zeros_like(x), torch.tensor(sigma))
    assert torch.allclose(d_out, torch.full_like(x, ref["c_out"]), rtol=1e-6)
    EDMPrecond(probe, sigma_data=sd)(x, sigma)
    assert torch.allclose(probe.x_in.double(), torch.full_like(x, 1.5 * ref["c_in"]), rtol=1e-6)
    assert probe.c_noise.flatten()[0].item() == pytest.approx(ref["c_noise"], rel=1e-6)
    # Unit variance of the effective training target, from the module's own coefficients (not the helper's):
    # D(x) = c_skip x + c_out F, so c_skip = d_skip / x and c_out = d_out; c_skip + (c_out / sigma_data)^2 = 1.
    c_skip, c_out = d_skip.flatten()[0].item() / 1.5, d_out.flatten()[0].item()
    assert c_skip + (c_out / sd) ** 2 == pytest.approx(1.0, rel=1e-5)


def test_precond_golden_numbers_and_per_image_sigma():
    # sigma = sigma_data = 0.5: c_skip 1/2, c_out 0.5/sqrt(2), c_in sqrt(2), c_noise ln(0.5)/4.
    probe = Probe(1.0)
    x = torch.ones(3, 1, 2, 2)
    sigma = torch.tensor([0.5, 2.0, 0.01])
    d = EDMPrecond(probe, 0.5)(x, sigma)
    assert d[0, 0, 0, 0].item() == pytest.approx(0.5 + 0.5 / math.sqrt(2), rel=1e-6)
    assert probe.x_in[0, 0, 0, 0].item() == pytest.approx(math.sqrt(2), rel=1e-6)
    assert probe.c_noise.tolist() == pytest.approx([math.log(s) / 4 for s in sigma.tolist()], rel=1e-6)
    for i, s in enumerate(sigma.tolist()):
        ref = table1(s, 0.5)
        assert d[i].flatten()[0].item() == pytest.approx(ref["c_skip"] + ref["c_out"], rel=1e-5)
    with pytest.raises(ValueError, match="sigma_data"):
        EDMPrecond(probe, 0.0)


@pytest.fixture
def tiny_net():
    torch.manual_seed(0)
    return emojidiff.UNet(img_resolution=8, model_channels=16, channel_mult=(1, 2), num_blocks=1,
                          attn_resolutions=(4,), dropout=0.0)


def test_loss_equals_raw_output_form(tiny_net):
    sd = 0.45
    with torch.no_grad():  # a non-trivial F: the zero-initialised output layer would make F ~ 0
        tiny_net.conv_out.weight.normal_(0, 0.1)
    den = EDMPrecond(tiny_net, sd)
    seen = {}

    def recording(x, sigma):
        seen["x"], seen["sigma"] = x, sigma
        return den(x, sigma)

    y = torch.rand(6, 3, 8, 8) * 2 - 1
    loss = edm_loss(recording, y, sigma_data=sd, generator=torch.Generator().manual_seed(0))
    assert loss.shape == (6,)
    # Raw form (EDM eq. 8 rearranged): lambda c_out^2 |F(c_in x; c_noise) - (y - c_skip x) / c_out|^2,
    # and lambda c_out^2 = 1 for Table 1's lambda.
    x, sigma = seen["x"], seen["sigma"].double().reshape(-1, 1, 1, 1)
    c_skip = sd**2 / (sigma**2 + sd**2)
    c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
    c_in = 1 / (sigma**2 + sd**2).sqrt()
    lam = (sigma**2 + sd**2) / (sigma * sd) ** 2
    assert torch.allclose(lam * c_out**2, torch.ones_like(lam))
    with torch.no_grad():
        F_x = tiny_net((c_in * x).float(), (sigma.log() / 4).flatten().float()).double()
    target = (y.double() - c_skip * x.double()) / c_out
    raw = ((F_x - target) ** 2).mean(dim=(1, 2, 3))
    assert torch.allclose(loss.double(), raw, rtol=1e-4)


def test_loss_noise_distribution_and_determinism():
    seen = []

    def identity(x, sigma):
        seen.append(sigma)
        return x

    y = torch.zeros(20000, 1, 1, 1)
    loss = edm_loss(identity, y, P_mean=-1.2, P_std=1.2, generator=torch.Generator().manual_seed(0))
    log_sigma = seen[0].log()
    assert log_sigma.mean().item() == pytest.approx(-1.2, abs=0.05)
    assert log_sigma.std().item() == pytest.approx(1.2, abs=0.05)
    # D(x) = x on y = 0: loss = lambda n^2 with n ~ N(0, sigma^2), so loss / (lambda sigma^2) ~ chi^2_1
    lam = (seen[0] ** 2 + 0.25) / (seen[0] * 0.5) ** 2
    assert (loss / (lam * seen[0] ** 2)).mean().item() == pytest.approx(1.0, abs=0.05)
    again = edm_loss(identity, y, generator=torch.Generator().manual_seed(0))
    assert torch.equal(loss, again)


def test_loss_passes_labels():
    got = {}

    def den(x, sigma, labels):
        got["labels"] = labels
        return x

    edm_loss(den, torch.zeros(2, 1, 2, 2), labels=torch.tensor([1, 2]))
    assert got["labels"].tolist() == [1, 2]


def test_build_denoiser_from_profiles():
    cfg = emojidiff.load_config(Path(__file__).parents[1] / "params" / "smoke.yaml")
    den = build_denoiser(cfg.model, width=16, img_resolution=32, sigma_data=0.41)
    assert isinstance(den, EDMPrecond) and den.sigma_data == pytest.approx(0.41)
    assert den.img_resolution == 32 and den.img_channels == 3
    out = den(torch.randn(2, 3, 32, 32), 1.0)
    assert out.shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="sigma_data"):
        build_denoiser(cfg.model, 16, 32, None)


class NoParams(nn.Module):
    """A parameterless F (F = 0)."""

    def forward(self, x, c_noise, labels=None):
        self.x_in = x
        return torch.zeros_like(x)


def test_precond_passes_labels_and_keeps_each_precision():
    assert EDMPrecond(Probe(1.0)).sigma_data == 0.5  # EDM's default for images in [-1, 1]
    x = torch.full((2, 3, 4, 4), 1.5)
    probe = Probe(1.0)
    EDMPrecond(probe, 0.5)(x, 1.0, torch.tensor([[1, 2], [3, -1]]))
    assert probe.labels.tolist() == [[1, 2], [3, -1]]  # conditioning reaches F
    # bf16 input: preconditioning in float32, D in float32
    d = EDMPrecond(Probe(1.0), 0.5)(x.bfloat16(), 1.0)
    assert d.dtype == torch.float32
    torch.testing.assert_close(d, EDMPrecond(Probe(1.0), 0.5)(x, 1.0))
    # F in the network's precision (float64 here), D in the input's (float32)
    probe64 = Probe(1.0).double()
    d = EDMPrecond(probe64, 0.5)(x, 1.0)
    assert probe64.x_in.dtype == probe64.c_noise.dtype == torch.float64 and d.dtype == torch.float32
    # a parameterless F gets float32
    flat = NoParams()
    d = EDMPrecond(flat, 0.5)(x, 1.0)
    assert flat.x_in.dtype == torch.float32
    torch.testing.assert_close(d, x * 0.25 / 1.25)  # c_skip = sd^2 / (sigma^2 + sd^2)


def test_loss_feeds_the_denoiser_y_plus_sigma_times_noise():
    seen = {}

    def den(x, sigma, labels=None):
        seen.update(x=x, sigma=sigma, labels=labels)
        return x

    y = torch.rand(3, 3, 4, 4) * 2 - 1
    rnd, noise = torch.tensor([-1.0, 0.0, 2.0]).reshape(3, 1, 1, 1), torch.randn(3, 3, 4, 4)
    for labels in (None, torch.tensor([[0, 1], [1, 0], [2, 2]])):
        edm_loss(den, y, P_mean=-1.2, P_std=1.2, labels=labels, rnd_normal=rnd, noise=noise)
        sigma = (rnd * 1.2 - 1.2).exp()
        torch.testing.assert_close(seen["sigma"], sigma.flatten())  # ln(sigma) = P_mean + P_std * normal
        torch.testing.assert_close(seen["x"], y + sigma * noise)  # y + n, n ~ N(0, sigma^2)


def test_build_denoiser_passes_every_model_option():
    from emojidiff.config import ModelConfig

    cfg = ModelConfig(widths=[8], channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8], dropout=0.3,
                      sigma_data=0.42, embedding="fourier", label_dim=5, label_slots=2, label_dropout=0.2)
    den = build_denoiser(cfg, 8, 16)  # sigma_data from the config
    net = den.net
    assert den.sigma_data == pytest.approx(0.42) and net.img_resolution == 16
    assert (net.label_dim, net.label_slots, net.label_dropout) == (5, 2, 0.2)
    assert net.map_label.in_features == 10
    assert "Fourier" in type(net.map_noise).__name__
    assert {m.p for m in net.modules() if isinstance(m, nn.Dropout)} == {0.3}
    direct = emojidiff.UNet(img_resolution=16, model_channels=8, channel_mult=(1, 2), num_blocks=1,
                            attn_resolutions=(8,), dropout=0.3, embedding="fourier", label_dim=5, label_slots=2,
                            label_dropout=0.2)
    assert emojidiff.count_parameters(den) == emojidiff.count_parameters(direct)
    assert build_denoiser(cfg, 8, 16, sigma_data=0.3).sigma_data == pytest.approx(0.3)  # the argument wins
    cfg.sigma_data = None
    with pytest.raises(ValueError, match="sigma_data is None as argument and in the model config: measure it"):
        build_denoiser(cfg, 8, 16)


def test_loss_takes_sigma_data_from_the_denoiser_also_when_wrapped():
    class Wrapper(nn.Module):  # as DistributedDataParallel: the denoiser sits in .module
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, *args):
            return self.module(*args)

    den = EDMPrecond(Probe(0.3), sigma_data=0.37)
    y = torch.rand(4, 3, 4, 4) * 2 - 1
    rnd, noise = torch.randn(4, 1, 1, 1), torch.randn(4, 3, 4, 4)
    explicit = edm_loss(den, y, rnd_normal=rnd, noise=noise, sigma_data=0.37)
    assert torch.equal(edm_loss(den, y, rnd_normal=rnd, noise=noise), explicit)
    assert torch.equal(edm_loss(Wrapper(Wrapper(den)), y, rnd_normal=rnd, noise=noise), explicit)
    assert not torch.allclose(edm_loss(den, y, rnd_normal=rnd, noise=noise, sigma_data=0.5), explicit)
    assert emojidiff.model.edm.denoiser_sigma_data(lambda x, sigma: x) == 0.5  # a bare function: EDM's default
