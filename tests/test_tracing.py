"""Tests for component tracing: regions of a new fusion trace back to the right parents."""

import time

import matplotlib
import numpy as np
import pandas as pd
import pytest

from emojidiff.study.tracing import patch_mse_maps, plot_trace, trace_sample

matplotlib.use("Agg")


def _faces(n=5, size=16, seed=0):
    """Toy fusions: image A+B has face A's top half and face B's bottom half."""
    rng = np.random.default_rng(seed)
    faces = rng.integers(0, 200, (n, size, size, 3), dtype=np.uint8)  # never white: all foreground
    half = size // 2
    pairs = [(a, b) for a in range(n) for b in range(n) if a != b]
    images = np.stack([np.concatenate([faces[a, :half], faces[b, half:]]) for a, b in pairs])
    man = pd.DataFrame({"name_a": [f"F{a}" for a, _ in pairs], "name_b": [f"F{b}" for _, b in pairs],
                        "parent_a": [a for a, _ in pairs], "parent_b": [b for _, b in pairs]})
    return faces, images, man, pairs


def test_patch_mse_maps_matches_a_direct_loop():
    rng = np.random.default_rng(1)
    sample, train = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8), rng.integers(0, 256, (4, 6, 6, 3), np.uint8)
    maps = patch_mse_maps(sample, train, patch=3).numpy()
    x, t = sample / 127.5 - 1, train / 127.5 - 1
    for n, y, xx in [(0, 0, 0), (2, 3, 4), (3, 5, 5)]:
        ys, xs = slice(max(y - 1, 0), y + 2), slice(max(xx - 1, 0), xx + 2)  # border patches are clipped
        assert maps[n, y, xx] == pytest.approx(((x[ys, xs] - t[n, ys, xs]) ** 2).mean(), rel=1e-5)
    with pytest.raises(ValueError, match="odd"):
        patch_mse_maps(sample, train, patch=4)
    with pytest.raises(ValueError, match="differ in size"):
        patch_mse_maps(sample[:4], train)


def test_trace_finds_the_parents_of_an_unseen_fusion():
    faces, images, man, pairs = _faces()
    keep = [i for i, p in enumerate(pairs) if p != (0, 1)]  # 0+1 is never seen
    train, man = images[keep], man.iloc[keep].reset_index(drop=True)
    sample = np.concatenate([faces[0, :8], faces[1, 8:]])
    tr = trace_sample(sample, train, man, patch=3)
    top, bottom = tr.labels[:6], tr.labels[10:]  # away from the seam, where patches straddle both halves
    assert (man["parent_a"].to_numpy()[top] == 0).all()
    assert (man["parent_b"].to_numpy()[bottom] == 1).all()
    assert len(tr.regions) == 2 and tr.regions["share"].sum() == pytest.approx(1.0)
    assert tr.regions["caption"].str.startswith("F0 +").any() and tr.regions["caption"].str.endswith("+ F1").any()
    assert set(tr.regions["source"]) == {"F0 (face, eyes)", "F1 (mouth)"}  # what the tied candidates share
    assert tr.patch_mse[:6].max() < 1e-6 and tr.patch_mse[10:].max() < 1e-6
    fig = plot_trace(sample, tr, train)
    assert len(fig.axes) == 3 + 2 + 1  # sample, overlay, MSE map, two sources, colour bar


def test_white_background_is_not_traced():
    faces, images, man, _ = _faces(n=3)
    sample = images[0].copy()
    sample[:, :3] = 255
    tr = trace_sample(sample, images, man, patch=3)
    assert (tr.labels[:, :3] == -1).all() and (tr.labels[:, 3:] >= 0).all()
    assert tr.regions.loc[0, "index"] == 0  # the whole face is one copy of training image 0


def test_trace_is_fast_at_dataset_scale():
    rng = np.random.default_rng(3)
    train = rng.integers(0, 256, (4000, 32, 32, 3), dtype=np.uint8)
    t0 = time.perf_counter()
    trace_sample(train[7], train, patch=5)
    assert time.perf_counter() - t0 < 10  # ~0.5 s on a shared 2-core CPU


def test_trace_uses_mirrors_and_plots_them_mirrored():
    faces, images, man, _ = _faces(n=4)
    sample = images[5][:, ::-1].copy()  # a training image's mirror: a copy under x-flip training
    tr = trace_sample(sample, images, man, patch=3)
    assert len(tr.regions) == 1 and tr.regions.loc[0, "index"] == 5 and tr.regions.loc[0, "mirrored"]
    assert tr.regions.loc[0, "caption"].endswith("(mirror)") and (tr.labels == 5).all()
    assert tr.patch_mse.max() < 1e-6
    fig = plot_trace(sample, tr, images)
    np.testing.assert_array_equal(fig.axes[-1].get_images()[0].get_array(), sample)  # the source, shown mirrored
    plain = trace_sample(sample, images, man, patch=3, xflip=False)
    assert not plain.regions["mirrored"].any() and plain.patch_mse.max() > 0.01


def test_trace_figure_fits_a_notebook_with_six_sources():
    rng = np.random.default_rng(4)
    train = rng.integers(0, 200, (12, 16, 16, 3), dtype=np.uint8)
    sample = np.concatenate([t[:, 2 * i:2 * i + 2] for i, t in enumerate(train[:8])], axis=1)  # 8 strips
    tr = trace_sample(sample, train, patch=1, min_share=0.01, xflip=False)
    assert len(tr.regions) == 6
    fig = plot_trace(sample, tr, train)
    width_px = fig.get_size_inches()[0] * fig.dpi
    assert width_px <= 1000 and len(fig.axes) == 3 + 6 + 1  # wrapped into rows, not one 2,000-px strip
    assert min(ax.title.get_fontsize() for ax in fig.axes[3:9]) >= 8
