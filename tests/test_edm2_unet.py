"""EDM2's magnitude-preserving UNet: each MP layer keeps unit magnitude, forced weight norm, the net trains."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _train_tiny import synthetic_images

from emojidiff.config import ConfigError, config_from_dict
from emojidiff.model.edm import build_denoiser, edm_loss
from emojidiff.model.edm2_unet import EDM2UNet, MPConv, force_weight_norm, mp_cat, mp_silu, mp_sum, normalize
from emojidiff.model.unet import UNet, count_parameters


def _rms(x: torch.Tensor) -> float:
    return float(x.detach().pow(2).mean().sqrt())


def test_normalize_gives_unit_rms_per_output_channel_and_per_pixel():
    w = torch.randn(16, 8, 3, 3) * 7
    assert torch.allclose(normalize(w).pow(2).mean(dim=(1, 2, 3)), torch.ones(16), atol=1e-4)
    x = torch.randn(2, 12, 5, 5) * 3
    assert torch.allclose(normalize(x, dim=1).pow(2).mean(dim=1), torch.ones(2, 5, 5), atol=1e-3)  # eps 1e-4


def test_mp_operations_keep_unit_magnitude_of_unit_normal_inputs():
    torch.manual_seed(0)
    a, b = torch.randn(64, 48, 8, 8), torch.randn(64, 16, 8, 8)
    assert _rms(mp_silu(a)) == pytest.approx(1.0, abs=0.02)
    assert _rms(mp_sum(a, torch.randn_like(a), t=0.3)) == pytest.approx(1.0, abs=0.02)
    cat = mp_cat(a, b, t=0.3)
    assert cat.shape[1] == 64 and _rms(cat) == pytest.approx(1.0, abs=0.02)
    # the parts' total magnitudes stand (1 - t) : t, whatever their channel counts (eq. 103)
    ratio = (math.sqrt(48) * _rms(cat[:, :48])) / (math.sqrt(16) * _rms(cat[:, 48:]))
    assert ratio == pytest.approx(0.7 / 0.3, rel=0.03)
    assert torch.equal(mp_sum(a, a, t=0.0), a)


def test_mpconv_output_has_the_input_magnitude_whatever_the_raw_weight_scale():
    torch.manual_seed(1)
    conv, lin = MPConv(32, 64, (3, 3)), MPConv(32, 64, ())
    with torch.no_grad():
        conv.weight.mul_(50.0)  # the raw scale does not matter: the weight is used normalised
    x = torch.randn(16, 32, 16, 16)
    assert _rms(conv(x)[:, :, 1:-1, 1:-1]) == pytest.approx(1.0, abs=0.1)  # inside: zero padding aside
    assert _rms(lin(torch.randn(512, 32))) == pytest.approx(1.0, abs=0.1)
    assert torch.equal(conv(x, gain=0.0), torch.zeros(16, 64, 16, 16))


def test_forced_weight_norm_restores_unit_rows_after_an_optimiser_step():
    torch.manual_seed(2)
    net = EDM2UNet(img_resolution=16, model_channels=8, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(8,))
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    net.out_gain.data.fill_(1.0)
    net(torch.randn(4, 3, 16, 16), torch.zeros(4)).pow(2).mean().backward()
    opt.step()
    convs = [m for m in net.modules() if isinstance(m, MPConv)]
    assert any(not torch.allclose(m.weight.pow(2).mean(dim=tuple(range(1, m.weight.ndim))), torch.ones(1),
                                  atol=1e-3) for m in convs)  # the step moved them off the sphere
    force_weight_norm(net)
    for m in convs:
        assert torch.allclose(m.weight.pow(2).mean(dim=tuple(range(1, m.weight.ndim))),
                              torch.ones(m.weight.shape[0]), atol=1e-3)
    ddpm = UNet(img_resolution=16, model_channels=8, channel_mult=(1, 2))
    before = [p.clone() for p in ddpm.parameters()]
    force_weight_norm(ddpm)  # no MPConv: nothing changes
    assert all(torch.equal(a, b) for a, b in zip(before, ddpm.parameters()))


def _edm2_model(**model):
    cfg = config_from_dict({"model": {"architecture": "edm2", "widths": [32], "label_dim": 67, **model}})
    return build_denoiser(cfg.model, 32, 32, 0.5)


def test_profile_builds_the_edm2_net_which_starts_as_the_skip_path_and_uses_labels():
    den = _edm2_model()
    assert isinstance(den.net, EDM2UNet)
    ddpm = build_denoiser(config_from_dict({"model": {"widths": [32], "label_dim": 67}}).model, 32, 32, 0.5)
    assert 0.9 < count_parameters(den) / count_parameters(ddpm) < 1.0  # no biases or norms, same layout
    x, sigma = torch.randn(4, 3, 32, 32), torch.full((4,), 2.0)
    labels = torch.tensor([[0, 1], [2, 3], [-1, -1], [66, -1]])
    out = den(x, sigma, labels)
    assert torch.allclose(out, x * 0.25 / (4 + 0.25), atol=1e-6)  # out_gain 0: D = c_skip x (Table 1)
    for name, p in den.net.named_parameters():  # the gains start at 0 (EDM2): the embedding acts once they move
        if name.endswith("gain"):
            p.data.fill_(1.0)
    null = den(x, sigma, torch.full((4, 2), -1))
    assert not torch.allclose(den(x, sigma, labels)[:2], null[:2]) and torch.equal(den(x, sigma, labels)[2], null[2])
    with pytest.raises(ValueError, match="labels must be"):
        den(x, sigma, torch.full((4, 2), 67))


def test_edm2_net_trains_in_bf16_and_channels_last():
    torch.manual_seed(3)
    den = _edm2_model(label_dim=0).train().to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(den.parameters(), lr=3e-2)
    images = torch.from_numpy(synthetic_images(16)).permute(0, 3, 1, 2).float() / 127.5 - 1
    losses = []
    for _ in range(40):
        with torch.autocast("cpu", torch.bfloat16):
            loss = edm_loss(den, images.to(memory_format=torch.channels_last),
                            generator=torch.Generator().manual_seed(0)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        force_weight_norm(den)
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses) and np.mean(losses[-5:]) < 0.7 * losses[0]


def test_an_unknown_architecture_is_refused_by_name():
    with pytest.raises(ConfigError, match="model.architecture.*'edm3'"):
        config_from_dict({"model": {"architecture": "edm3"}})
