"""UNet tests: shapes, golden parameter counts per profile and width, gradients, conditioning, overfitting."""

from pathlib import Path

import pytest
import torch

import emojidiff
from emojidiff import UNet, build_denoiser, count_parameters, edm_loss
from emojidiff.model.unet import group_norm

PARAMS = Path(__file__).parents[1] / "params"
SMOKE = dict(model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(8,), dropout=0.0)

# Trainable parameters of the UNet per profile architecture and base width (the README's table). These are not our
# implementation's own output: every figure equals NVlabs' SongUNet (github.com/NVlabs/edm, training/networks.py)
# built with the same options (img_resolution 32, 3 channels, DDPM++ defaults, label_dim 0, augment_dim 0), counted
# with sum(p.numel() for p in net.parameters()). EDM reports 55.73M for its CIFAR-10 DDPM++ (the paper row at width
# 128), which is this count plus its 9-input augmentation-label mapping (9 x 128 = 1152 weights) that we do not have.
GOLDEN = {
    "cpu": {32: 1_754_147, 64: 6_989_891, 128: 27_906_179},
    "paper": {32: 3_500_675, 64: 13_956_355, 128: 55_732_739},
}
NVLABS_SONGUNET_CPU_W32 = 1_754_147  # SongUNet(32, 3, 3, model_channels=32, channel_mult=[1,2,2], num_blocks=2,
#                                      attn_resolutions=[8]): the independent anchor of the cpu profile


@pytest.mark.parametrize("profile", ["cpu", "paper"])
@pytest.mark.parametrize("width", [32, 64, 128])
def test_parameter_counts_golden(profile, width):
    cfg = emojidiff.load_config(PARAMS / f"{profile}.yaml")
    with torch.device("meta"):  # count without allocating
        den = build_denoiser(cfg.model, width, img_resolution=32, sigma_data=0.5)
    assert count_parameters(den) == GOLDEN[profile][width]


def test_parameter_counts_match_nvlabs_songunet_and_the_edm_paper():
    cpu, paper = (emojidiff.load_config(PARAMS / f"{p}.yaml") for p in ("cpu", "paper"))
    with torch.device("meta"):
        assert count_parameters(build_denoiser(cpu.model, 32, 32, 0.5)) == NVLABS_SONGUNET_CPU_W32
        edm_cifar10 = count_parameters(build_denoiser(paper.model, 128, 32, 0.5)) + 9 * 128
    assert round(edm_cifar10 / 1e6, 2) == 55.73  # as EDM reports for DDPM++ on CIFAR-10


def test_group_norm_works_at_small_widths():
    assert group_norm(16).num_groups == 4 and group_norm(8).num_groups == 2 and group_norm(256).num_groups == 32


@pytest.mark.parametrize("res", [32, 64])
def test_shapes(res):
    net = UNet(img_resolution=res, **SMOKE)
    x = torch.randn(2, 3, res, res)
    assert net(x, torch.randn(2)).shape == (2, 3, res, res)
    assert net(x, torch.tensor(0.3)).shape == (2, 3, res, res)  # one c_noise for the batch


def test_scalar_noise_label_broadcasts():
    net = UNet(img_resolution=16, **SMOKE).eval()
    x = torch.randn(3, 3, 16, 16)
    assert torch.allclose(net(x, torch.tensor(0.3)), net(x, torch.full((3,), 0.3)), atol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="img_resolution"):
        UNet(img_resolution=30, channel_mult=(1, 2, 2))
    with pytest.raises(ValueError, match="embedding"):
        UNet(img_resolution=32, embedding="learned")


def _perturb_output(net):
    with torch.no_grad():  # the output layer starts near zero (EDM init); make F non-trivial
        net.conv_out.weight.normal_(0, 0.1)
    return net


@pytest.mark.parametrize("embedding", ["positional", "fourier"])
def test_gradient_reaches_every_parameter(embedding):
    torch.manual_seed(0)
    net = UNet(img_resolution=16, embedding=embedding, label_dim=5, label_slots=2, **SMOKE)
    den = emojidiff.EDMPrecond(net)
    labels = torch.tensor([[0, 1], [2, -1], [4, 3], [-1, -1]])
    edm_loss(den, torch.randn(4, 3, 16, 16), labels=labels).mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_labels_condition_the_output():
    torch.manual_seed(0)
    net = _perturb_output(UNet(img_resolution=16, label_dim=4, label_slots=2, **SMOKE)).eval()
    x, c = torch.randn(2, 3, 16, 16), torch.zeros(2)
    null = torch.full((2, 2), -1)
    assert torch.allclose(net(x, c), net(x, c, null))  # the null label is "no label"
    ab, ba = torch.tensor([[0, 1], [0, 1]]), torch.tensor([[1, 0], [1, 0]])
    assert not torch.allclose(net(x, c, ab), net(x, c, null))
    assert not torch.allclose(net(x, c, ab), net(x, c, ba))  # ordered pairs
    onehot = torch.zeros(2, 8)
    onehot[:, 0] = onehot[:, 5] = 1  # slot 0 = class 0, slot 1 = class 1
    assert torch.allclose(net(x, c, ab), net(x, c, onehot))
    with pytest.raises(ValueError, match="labels"):
        net(x, c, torch.tensor([[0, 4], [0, 1]]))
    net.train()
    net.label_dropout = 1.0  # training with all labels dropped equals the null label
    assert torch.allclose(net(x, c, ab), net(x, c, null))


def test_dropout_only_in_training():
    torch.manual_seed(0)
    net = _perturb_output(UNet(img_resolution=16, **{**SMOKE, "dropout": 0.5}))
    x, c = torch.randn(2, 3, 16, 16), torch.zeros(2)
    assert not torch.allclose(net(x, c), net(x, c))
    net.eval()
    assert torch.equal(net(x, c), net(x, c))


def test_bf16_autocast_channels_last_close_to_fp32():
    torch.manual_seed(0)
    net = _perturb_output(UNet(img_resolution=16, **SMOKE)).eval()
    x, c = torch.randn(4, 3, 16, 16), torch.randn(4)
    ref = net(x, c)
    net_cl = net.to(memory_format=torch.channels_last)
    with torch.autocast("cpu", torch.bfloat16):
        out = net_cl(x.to(memory_format=torch.channels_last), c)
    rel = ((out.float() - ref).norm() / ref.norm()).item()
    assert out.shape == ref.shape and rel < 0.05


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is faster on a shared machine
    yield
    torch.set_num_threads(n)


def test_overfits_a_handful_of_images(one_thread):
    torch.manual_seed(0)
    net = UNet(img_resolution=8, model_channels=8, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,),
               dropout=0.0)
    den = emojidiff.EDMPrecond(net, 0.5)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 8), torch.linspace(-1, 1, 8), indexing="ij")
    centres = [(0.3, 0.2), (-0.4, 0.1), (0.1, -0.5), (-0.2, -0.3)]
    imgs = torch.stack([torch.stack([((xx - a) ** 2 + (yy - b) ** 2 < 0.3).float() * 2 - 1, xx * a, yy * b])
                        for a, b in centres])

    def held_loss():  # same sigmas and noise each time
        with torch.no_grad():
            return edm_loss(den, imgs.repeat(32, 1, 1, 1), generator=torch.Generator().manual_seed(1)).mean()

    before = held_loss()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        loss = edm_loss(den, imgs.repeat(4, 1, 1, 1), generator=g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = held_loss()
    assert after < 0.5 * before


def test_label_one_hot_is_scaled_by_sqrt_of_label_inputs_before_map_label():
    # NVlabs/edm SongUNet feeds map_label(one_hot * sqrt(in_features)); without the scale (2 x 4 inputs) the label
    # term is sqrt(8) times smaller and a one-hot of many classes barely moves the embedding (issue 18).
    torch.manual_seed(0)
    net = UNet(img_resolution=16, label_dim=4, label_slots=2, **SMOKE).eval()
    seen = []
    net.map_label.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].clone()))
    x, c = torch.randn(3, 3, 16, 16), torch.zeros(3)
    net(x, c, torch.tensor([[0, 1], [3, -1], [-1, -1]]))
    expected = torch.zeros(3, 8)
    expected[0, 0] = expected[0, 5] = expected[1, 3] = 8**0.5
    assert torch.equal(seen[0], expected)
    # the label term added to the noise embedding equals W @ (scaled one-hot): linear, no bias, null adds nothing
    emb_null = net.map_noise(c)
    assert torch.allclose(net.map_label(seen[0])[2], torch.zeros(net.map_label.out_features))
    assert net.map_label.bias is None and emb_null.shape == (3, 16)


def test_unconditional_net_ignores_the_label_path_entirely():
    # an unconditional net has no map_label, and a conditional net called without labels equals the null label
    torch.manual_seed(0)
    plain = _perturb_output(UNet(img_resolution=16, **SMOKE)).eval()
    assert plain.map_label is None
    torch.manual_seed(0)
    cond = _perturb_output(UNet(img_resolution=16, label_dim=4, label_slots=2, **SMOKE)).eval()
    x, c = torch.randn(2, 3, 16, 16), torch.zeros(2)
    assert torch.equal(cond(x, c), cond(x, c, torch.full((2, 2), -1)))
