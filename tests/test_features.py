"""Inception features: parity with torch_fidelity.calculate_metrics on test-made weights, and the offline message."""

import urllib.error

import numpy as np
import pytest
import torch
import torch_fidelity
import torch_fidelity.feature_extractor_inceptionv3 as tf_inception
from torch_fidelity.metric_kid import kid_features_to_metric

import emojidiff
from emojidiff.features import InceptionUnavailable, inception_features, load_inception


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    """A randomly initialised FeatureExtractorInceptionV3 state dict, saved as torch-fidelity loads it (torch.save)."""

    class Unloaded(tf_inception.FeatureExtractorInceptionV3):
        def load_state_dict(self, *args, **kwargs):  # keep the random initialisation
            return None

    original = tf_inception.load_state_dict_from_url
    tf_inception.load_state_dict_from_url = lambda *a, **k: {}  # never touch the network
    try:
        torch.manual_seed(0)
        net = Unloaded("inception-v3-compat", ["2048"])
    finally:
        tf_inception.load_state_dict_from_url = original
    for m in net.modules():  # He init keeps activations O(1) through the 90-odd layers
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    torch.save(net.state_dict(), path)
    return path


class _Uint8Dataset(torch.utils.data.Dataset):
    def __init__(self, images):
        self.images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


@pytest.fixture
def small_input(monkeypatch):
    """Resize to 75 px (Inception's smallest input), not 299, in both pipelines: same code, 16x cheaper."""
    monkeypatch.setattr(tf_inception.FeatureExtractorInceptionV3, "INPUT_IMAGE_SIZE", 75)


def test_fid_kid_parity_with_torch_fidelity(random_weights, small_input):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-60, 60, a.shape), 0, 255).astype(np.uint8)
    b[:2] = 255 - b[:2]
    ref = torch_fidelity.calculate_metrics(
        input1=_Uint8Dataset(a), input2=_Uint8Dataset(b), cuda=False, fid=True, kid=True,
        feature_extractor="inception-v3-compat", feature_extractor_weights_path=str(random_weights),
        kid_subsets=4, kid_subset_size=5, cache=False, save_cpu_ram=True, verbose=False)
    net = load_inception(random_weights)
    fa, fb = inception_features(a, net, batch_size=3), inception_features(b, net, batch_size=8)
    assert fa.shape == (8, 2048) and np.isfinite(fa).all() and fa.std() > 0
    fid = emojidiff.fid_from_features(fa, fb)
    kid_mean, kid_std = emojidiff.kid_from_features(fa, fb, subsets=4, subset_size=5)
    assert fid > 0
    assert fid == pytest.approx(ref["frechet_inception_distance"], rel=1e-3)
    # torch-fidelity evaluates the cubic kernel in float32 and KID is a small difference of large kernel sums, so
    # end to end the two agree to ~1%; on the same float64 features its KID code and ours agree to rounding.
    assert kid_mean == pytest.approx(ref["kernel_inception_distance_mean"], rel=2e-2)
    assert kid_std == pytest.approx(ref["kernel_inception_distance_std"], rel=5e-2)
    ref64 = kid_features_to_metric(torch.from_numpy(fa), torch.from_numpy(fb), kid_subsets=4, kid_subset_size=5,
                                   kid_kernel="poly", kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None,
                                   kid_kernel_poly_coef0=1, rng_seed=2020, verbose=False)
    assert kid_mean == pytest.approx(ref64["kernel_inception_distance_mean"], rel=1e-9)
    assert kid_std == pytest.approx(ref64["kernel_inception_distance_std"], rel=1e-6)
    assert kid_std > 0  # subsets differ, so the spread is real


def test_float_images_give_the_same_features(random_weights, small_input):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    net = load_inception(random_weights)
    as_float = torch.from_numpy(a).permute(0, 3, 1, 2).float() / 127.5 - 1
    np.testing.assert_allclose(inception_features(as_float, net), inception_features(a, net), rtol=1e-6)


def test_offline_without_weights_is_unavailable_with_instructions(monkeypatch, tmp_path):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("simulated: no network")

    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", no_network)
    with pytest.raises(InceptionUnavailable, match="eval.inception_weights") as err:
        load_inception(None)
    assert "no network" in str(err.value) and "weights-inception-2015-12-05" in str(err.value)
    with pytest.raises(InceptionUnavailable, match="not found: .*missing.pth"):
        load_inception(tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InceptionUnavailable, match="bad.pth"):
        load_inception(bad)
