"""Tests for the nearest-neighbour browser, driven without a browser: set a value, check what it shows."""

import numpy as np
import pandas as pd
import pytest

from emojidiff.images import png_bytes
from emojidiff.study.browser import BrowserWidget, NeighbourBrowser


def _setup(seed=0):
    rng = np.random.default_rng(seed)
    train = rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
    holdout = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    noise = rng.integers(-20, 21, (6, 8, 8, 3))
    samples = np.clip(np.concatenate([train[:4], holdout[:2]]).astype(int) + noise * np.arange(6)[:, None, None, None]
                      // 5, 0, 255).astype(np.uint8)  # sample i: a copy with noise growing with i
    tm = pd.DataFrame({"name_a": [f"a{i}" for i in range(12)], "name_b": [f"b{i}" for i in range(12)]})
    hm = pd.DataFrame({"name_a": [f"ha{i}" for i in range(4)], "name_b": [f"hb{i}" for i in range(4)]})
    widths = np.array([32, 64, 32, 64, 32, 64])
    return samples, train, tm, holdout, hm, widths


def _brute(s, r):
    return ((s[:, None].astype(float) / 127.5 - r[None].astype(float) / 127.5) ** 2).mean((2, 3, 4))


def test_browser_state_follows_filters_and_selection():
    samples, train, tm, holdout, hm, widths = _setup()
    b = NeighbourBrowser(samples, train, tm, holdout, hm, widths=widths, k=3)
    d = _brute(samples, train)
    np.testing.assert_allclose(b.min_mse, d.min(1), rtol=1e-5)
    assert list(b.candidates) == list(np.argsort(d.min(1), kind="stable"))  # walks from copies to novel
    assert b.selected == 0 and b.view()["train"][0][0] == 0  # sample 0 is an exact copy of training image 0
    v = b.view()
    assert [n for n, _, _ in v["train"]] == list(np.argsort(d[0])[:3])
    assert v["train"][0][2] == "a0 + b0" and v["train"][0][1] == 0.0
    assert len(v["holdout"]) == 3 and v["holdout"][0][2].startswith("ha")
    b.set_width(64)
    assert set(b.candidates) == {1, 3, 5}
    b.select(2)
    assert b.selected == b.candidates[2] and "width 64" in b.view()["caption"]
    b.set_mse_range(0.0, b.min_mse[1])  # only samples at least as close as sample 1; the position is clamped
    expected = sorted((i for i in (1, 3, 5) if b.min_mse[i] <= b.min_mse[1]), key=lambda i: b.min_mse[i])
    assert list(b.candidates) == expected and b.selected == expected[-1]
    b.set_mse_range(10.0, 20.0)
    assert b.selected is None and b.view()["caption"] == "no sample in this filter"
    with pytest.raises(ValueError, match="no samples of width 128"):
        b.set_width(128)
    with pytest.raises(ValueError, match="empty MSE range"):
        b.set_mse_range(1.0, 0.0)


def test_browser_without_holdout_and_errors():
    samples, train, tm, *_ = _setup()
    b = NeighbourBrowser(samples, train, tm, k=20)
    assert b.k == 12 and b.view()["holdout"] == [] and b.available_widths == [0]
    with pytest.raises(IndexError):
        b.select(6)
    with pytest.raises(ValueError, match="widths"):
        NeighbourBrowser(samples, train, widths=[32])


def _tile_caption(box, k=0):
    html = box.children[k].children[1].value
    return html[html.index(">") + 1: html.rindex("</div>")]  # the text inside the caption's <div>


def test_widget_drives_the_browser():
    samples, train, tm, holdout, hm, widths = _setup()
    w = BrowserWidget(NeighbourBrowser(samples, train, tm, holdout, hm, widths=widths, k=3))
    assert len(w.train_box.children) == 3 and len(w.holdout_box.children) == 3
    assert (w.slider.min, w.slider.max, w.slider.value) == (1, 6, 1)  # counts from 1, like the caption
    assert w.caption.value.startswith("sample 1 of 6 ")
    first = w.sample_box.children[0].children[0].value
    w.slider.value = 6  # the most novel sample
    assert w.b.selected == w.b.candidates[5]
    assert w.sample_box.children[0].children[0].value != first
    assert w.caption.value.startswith("sample 6 of 6 ") and f"image {w.b.selected} " in w.caption.value
    w.width.value = "32"
    assert w.slider.max == 3 and w.b.width == 32 and set(w.b.candidates) == {0, 2, 4}
    assert w.caption.value.startswith(f"sample {w.slider.value} of 3 ")  # the slider and caption agree
    w.mse.value = (w.mse.max, w.mse.max)  # the single most novel sample
    assert list(w.b.candidates) == [int(np.argmax(w.b.min_mse))] and w.slider.max == 1 and w.slider.value == 1
    w.width.value = "64"  # ... which is not of width 64: nothing to show
    assert w.caption.value == "no sample in this filter" and w.train_box.children == ()
    w.width.value = "all"
    assert len(w.train_box.children) == 3


def test_slider_is_wide_and_every_tile_has_a_real_caption():
    samples, train, tm, holdout, hm, widths = _setup()
    w = BrowserWidget(NeighbourBrowser(samples, train, tm, holdout, hm, widths=widths, k=3))
    width = w.slider.layout.width
    assert width == "100%" or (width.endswith("px") and int(width[:-2]) >= 600)
    w.slider.value = 4
    i, v = w.b.selected, w.b.view()
    cap = _tile_caption(w.sample_box)
    assert "sample 4 of 6" in cap and f"image {i}," in cap and f"min MSE {w.b.min_mse[i]:.4f}" in cap
    for box, found in [(w.train_box, v["train"]), (w.holdout_box, v["holdout"])]:
        for rank, (_, mse, parents) in enumerate(found, 1):
            cap = _tile_caption(box, rank - 1)
            assert cap.startswith(f"#{rank}: {parents}<br>") and f"MSE {mse:.4f}" in cap
            assert " + " in parents  # the parents, from the manifest
    no_manifest = BrowserWidget(NeighbourBrowser(samples, train, k=2))
    assert _tile_caption(no_manifest.train_box).startswith("#1: image 0<br>")


def test_png_bytes_upscales():
    from io import BytesIO

    from PIL import Image

    img = Image.open(BytesIO(png_bytes(np.zeros((8, 8, 3), np.uint8), scale=3)))
    assert img.size == (24, 24)
