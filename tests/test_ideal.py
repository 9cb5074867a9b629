"""The ideal memoriser: the closed-form denoiser against brute force, its limits, and its samples being copies."""

import numpy as np
import pytest
import torch

import emojidiff
from emojidiff.evaluation.ideal import IdealMemoriser


def _unit(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).double() / 127.5 - 1


def _brute(x: torch.Tensor, y: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The formula as written: softmax over -|x - y_i|^2 / (2 sigma^2), then the weighted sum, all in float64."""
    d2 = ((x.flatten(1)[:, None] - y.flatten(1)[None]) ** 2).sum(2)
    w = torch.softmax(-d2 / (2 * sigma.reshape(-1, 1) ** 2), dim=1)
    return (w @ y.flatten(1)).reshape(x.shape)


@pytest.fixture
def tiny():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (7, 4, 4, 3), dtype=np.uint8)


@pytest.mark.parametrize("xflip", [False, True])
def test_agrees_with_brute_force_softmax(tiny, xflip):
    y = _unit(tiny)
    ref = torch.cat([y, y.flip(-1)]) if xflip else y
    mem = emojidiff.ideal_memoriser(tiny, xflip=xflip, chunk=3)  # chunks of 3: the online softmax spans chunks
    assert len(mem.y) == len(ref) and (mem.img_channels, mem.img_resolution) == (3, 4)
    gen = torch.Generator().manual_seed(1)
    for s in (0.02, 0.3, 1.0, 5.0, 80.0):
        x = y[[0, 3, 5, 6]] + s * torch.randn(4, 3, 4, 4, generator=gen, dtype=torch.float64)
        sigma = torch.tensor(s, dtype=torch.float64)
        got = mem(x, sigma)
        assert got.dtype == torch.float64 and got.shape == x.shape
        torch.testing.assert_close(got, _brute(x, ref, sigma.expand(4)), rtol=1e-10, atol=1e-10)
    # one sigma per image, as EDMPrecond accepts
    sig = torch.tensor([0.05, 0.5, 2.0, 20.0], dtype=torch.float64)
    x = y[:4] + sig.reshape(-1, 1, 1, 1) * torch.randn(4, 3, 4, 4, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(mem(x, sig), _brute(x, ref, sig), rtol=1e-10, atol=1e-10)


def test_small_sigma_gives_the_nearest_image_and_large_sigma_the_mean(tiny):
    mem = emojidiff.ideal_memoriser(tiny, xflip=True)
    y = _unit(tiny)
    ref = torch.cat([y, y.flip(-1)])
    gen = torch.Generator().manual_seed(2)
    # a mirrored training image plus a little noise: at small sigma D returns that mirror, not the unflipped image
    x = y[[2, 4]].flip(-1) + 0.05 * torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(mem(x, 1e-3), y[[2, 4]].flip(-1), rtol=0, atol=1e-12)
    # a point far from all images: still the nearest one, with no overflow at tiny sigma
    x = torch.randn(3, 3, 4, 4, generator=gen, dtype=torch.float64)
    nearest = ((x.flatten(1)[:, None] - ref.flatten(1)[None]) ** 2).sum(2).argmin(1)
    out = mem(x, 1e-4)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref[nearest], rtol=0, atol=1e-12)
    # sigma -> inf: the mean of the training images and their mirrors
    x = 1e4 * torch.randn(3, 3, 4, 4, generator=gen, dtype=torch.float64)
    mean = ref.mean(0, keepdim=True).expand(3, -1, -1, -1)
    torch.testing.assert_close(mem(x, 1e4), mean, rtol=0, atol=2e-3)
    assert (mem(x, 1e4) - mean).abs().max() < (mem(x, 10.0) - mean).abs().max()  # and it gets there as sigma grows


def test_float32_input_stays_float32_and_matches(tiny):
    mem = emojidiff.ideal_memoriser(tiny, xflip=True)
    x = torch.randn(5, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    got = mem(x, torch.tensor(0.7))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), mem(x.double(), 0.7), rtol=0, atol=1e-5)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="uint8"):
        emojidiff.ideal_memoriser(np.zeros((2, 4, 4, 3), np.float32))
    mem = IdealMemoriser(np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        mem(torch.zeros(1, 3, 8, 8), 1.0)
    with pytest.raises(ValueError, match="sigma must be positive"):
        mem(torch.zeros(1, 3, 4, 4), 0.0)
    with pytest.raises(ValueError, match="unconditional"):
        mem(torch.zeros(1, 3, 4, 4), 1.0, torch.zeros(1, 2))


def test_generate_with_the_memoriser_gives_copies(tmp_path):
    from emojidiff.evaluation.copies import classify_samples

    ds = emojidiff.build_dataset(size=16, max_faces=6, cache_dir=tmp_path, progress=False, dedup_size=16, workers=1)
    train = ds.train_images()
    mem = emojidiff.ideal_memoriser(train, xflip=True)
    samples = emojidiff.generate(mem, 100, seed=0, batch_size=50, num_steps=12, dtype=torch.float32, uint8=True,
                                 progress=False)
    assert samples.shape == (100, 16, 16, 3) and samples.dtype == np.uint8
    table = classify_samples(samples, ds, xflip=True)
    assert (table.verdict == "copy").mean() >= 0.99  # copies of a training image or of its mirror, by construction
    assert (table.nearest_train_mse < 1e-4).mean() >= 0.99  # and exact ones, not merely within the copy threshold
    assert table.mirrored.any() and not table.mirrored.all()  # both the images and their mirrors come out
    assert table.nearest_train_index.nunique() > 10  # and not one image over and over
    # same seeds, same samples: the noise is the generate seeding, whatever the batch size
    again = emojidiff.generate(mem, 10, seed=0, batch_size=7, num_steps=12, dtype=torch.float32, uint8=True,
                               progress=False)
    np.testing.assert_array_equal(again, samples[:10])
