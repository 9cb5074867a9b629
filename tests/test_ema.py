"""EMA of the weights: EDM's half-life in images with ramp-up, the update rule, and the frozen copy."""

import math

import pytest
import torch

from emojidiff.training.ema import ema_beta, make_ema, power_beta, power_gamma, power_std, update_ema


def test_beta_halves_the_old_weights_every_half_life_of_images():
    beta = ema_beta(10**9, 64, 10.0, 0.05)
    assert beta == pytest.approx(0.5 ** (64 / 10_000), rel=1e-12)
    assert beta ** (10_000 / 64) == pytest.approx(0.5, rel=1e-9)  # 10 kimg of steps forget half


def test_rampup_caps_the_half_life_at_a_share_of_the_images_seen():
    assert ema_beta(20_000, 64, 10.0, 0.05) == pytest.approx(0.5 ** (64 / 1_000), rel=1e-12)  # 5% of 20k
    assert ema_beta(400_000, 64, 10.0, 0.05) == pytest.approx(0.5 ** (64 / 10_000), rel=1e-12)  # cap inactive
    assert ema_beta(0, 64, 10.0, 0.05) == 0.0  # the first step copies the net
    assert ema_beta(0, 64, 10.0, None) == pytest.approx(0.5 ** (64 / 10_000), rel=1e-12)  # no ramp-up
    assert ema_beta(100, 64, 10.0, 0.05) == pytest.approx(0.5 ** (64 / 5), rel=1e-12)  # early: almost a copy
    assert ema_beta(10**9, 1, 0.0, None) == 0.0  # zero half-life: the EMA is the net
    betas = [ema_beta(n, 64, 10.0, 0.05) for n in range(0, 400_000, 6_400)]
    assert betas == sorted(betas) and all(0 <= b < 1 for b in betas)  # the memory only grows


def _pair():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    return net, make_ema(net)


def test_make_ema_is_a_frozen_independent_copy_in_eval_mode():
    net, ema = _pair()
    assert not ema.training and net.training
    assert all(not p.requires_grad for p in ema.parameters()) and all(p.requires_grad for p in net.parameters())
    for a, b in zip(ema.state_dict().values(), net.state_dict().values(), strict=True):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
    with torch.no_grad():
        net[0].weight.add_(1.0)
    assert not torch.equal(ema[0].weight, net[0].weight)


@pytest.mark.parametrize("beta", [0.0, 0.25, 0.9, 1.0])
def test_update_is_beta_old_plus_one_minus_beta_new_and_copies_buffers(beta):
    net, ema = _pair()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(3.0).add_(0.5)
    net(torch.randn(8, 3))  # training-mode batch norm moves its running statistics (buffers)
    old = {k: v.clone() for k, v in ema.named_parameters()}
    update_ema(ema, net, beta)
    for (k, p_ema), p_net in zip(ema.named_parameters(), net.parameters(), strict=True):
        torch.testing.assert_close(p_ema, beta * old[k] + (1 - beta) * p_net.detach(), rtol=1e-6, atol=1e-7)
        assert not p_ema.requires_grad
    for b_ema, b_net in zip(ema.buffers(), net.buffers(), strict=True):
        assert torch.equal(b_ema, b_net)  # running statistics are copied, not averaged
    assert not math.isclose(float(ema[1].running_mean.abs().sum()), 0.0)


def test_power_gamma_matches_edm2_values_and_inverts_power_std():
    # Karras et al. 2024, Sec. 3.1: sigma_rel 0.10 and 0.05 are gamma 6.94 and 16.97
    assert power_gamma(0.10) == pytest.approx(6.94, abs=0.01)
    assert power_gamma(0.05) == pytest.approx(16.97, abs=0.01)
    for std in (0.01, 0.05, 0.2, 0.28):
        assert power_std(power_gamma(std)) == pytest.approx(std, rel=1e-9)
    with pytest.raises(ValueError, match="0.3"):
        power_gamma(0.3)


def test_power_beta_copies_at_the_first_step_and_averages_in_proportion_to_t_to_the_gamma():
    assert power_beta(1, 6.94) == 0.0
    # gamma = 0 is the plain running mean: beta_t = 1 - 1/t
    values, ema = [3.0, 5.0, 10.0, -2.0], 0.0
    for t, v in enumerate(values, start=1):
        ema = power_beta(t, 0.0) * ema + (1 - power_beta(t, 0.0)) * v
    assert ema == pytest.approx(sum(values) / len(values))
