"""Tests for the minimum-MSE inspection and the held-out probe."""

import matplotlib
import numpy as np
import pandas as pd
import pytest

from emojidiff.study.memorisation import (
    close_mask,
    describe,
    heldout_probe,
    nearest_k,
    plot_min_mse_histograms,
    plot_probe,
    plot_quantile_examples,
    probe_shares,
    probe_table,
    quantile_picks,
    split_images,
)

matplotlib.use("Agg")


def _imgs(rng, n, size=8):
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _brute(samples, ref):
    s = samples.astype(np.float64) / 127.5 - 1
    r = ref.astype(np.float64) / 127.5 - 1
    return ((s[:, None] - r[None]) ** 2).mean((2, 3, 4))


def test_nearest_k_matches_brute_force():
    rng = np.random.default_rng(0)
    s, r = _imgs(rng, 7), _imgs(rng, 20)
    mse, idx = nearest_k(s, r, k=3)
    d = _brute(s, r)
    np.testing.assert_array_equal(idx, np.argsort(d, 1)[:, :3])
    np.testing.assert_allclose(mse, np.sort(d, 1)[:, :3], rtol=1e-5)
    assert nearest_k(s, r, k=1)[0].shape == (7, 1)
    with pytest.raises(ValueError, match="differ in size"):
        nearest_k(s, _imgs(rng, 5, size=4))


def _probe_setup():
    rng = np.random.default_rng(1)
    train, holdout = _imgs(rng, 30), _imgs(rng, 10)
    noisy = np.clip(holdout[:3].astype(int) + rng.integers(-2, 3, holdout[:3].shape), 0, 255).astype(np.uint8)
    samples = np.concatenate([train[:5], noisy, _imgs(rng, 4)])
    return train, holdout, samples


def test_heldout_probe_outcomes_and_shares():
    train, holdout, samples = _probe_setup()
    probe = heldout_probe(samples, train, holdout, copy_mse=0.005)
    assert list(probe["outcome"]) == ["copies_train"] * 5 + ["hits_holdout"] * 3 + ["neither"] * 4
    assert list(probe["nearest_index"][:8]) == [0, 1, 2, 3, 4, 0, 1, 2]
    assert (probe["min_mse"][:5] == 0).all()
    np.testing.assert_allclose(probe["ratio"], np.sqrt(probe["min_mse"] / probe["second_mse"]))
    sh = probe_shares(probe, len(train), len(holdout))
    assert sh["copies_train"] == pytest.approx(5 / 12)
    assert sh["hits_holdout"] == pytest.approx(3 / 12)
    assert sh["neither"] == pytest.approx(4 / 12)
    assert sh["holdout_of_close"] == pytest.approx(3 / 8)
    assert sh["holdout_share"] == pytest.approx(10 / 40)
    # the ratio rule agrees here: copies are infinitely closer to their source than to anything else
    by_ratio = heldout_probe(samples, train, holdout, rule="ratio")
    assert (by_ratio["outcome"][:8] != "neither").all()


def test_probe_errors_and_rules():
    train, holdout, samples = _probe_setup()
    with pytest.raises(ValueError, match="held-out"):
        heldout_probe(samples, train, holdout[:0])
    with pytest.raises(ValueError, match="unknown copy rule"):
        close_mask([0.1], [0.1], 0.005, 1 / 3, rule="nope")
    m, r = np.array([0.001, 0.001, 0.1, 0.1]), np.array([0.1, 0.9, 0.1, 0.9])
    assert list(close_mask(m, r, 0.005, 1 / 3, "both")) == [True, False, False, False]
    assert list(close_mask(m, r, 0.005, 1 / 3, "either")) == [True, True, True, False]


def test_probe_table_rows():
    train, holdout, samples = _probe_setup()
    t = probe_table([(32, 10.0, samples), (32, 20.0, samples[:5]), (64, 20.0, samples[5:])], train, holdout)
    assert list(t["width"]) == [32, 32, 64]
    assert t.loc[1, "copies_train"] == 1.0 and t.loc[2, "copies_train"] == 0.0
    fig = plot_probe(t)
    assert len(fig.axes) == 2


def test_quantile_picks_and_plots():
    mse = np.array([0.5, 0.1, 0.3, 0.2, 0.4])
    assert list(quantile_picks(mse, (0, 0.5, 1))) == [1, 2, 0]
    rng = np.random.default_rng(2)
    s, t = _imgs(rng, 5), _imgs(rng, 6)
    man = pd.DataFrame({"name_a": list("abcdef"), "name_b": list("uvwxyz")})
    fig = plot_quantile_examples(s, t, mse, np.arange(5), man, quantiles=(0, 0.5, 1))
    # bottom row, first column: the q=0 sample is index 1, whose nearest training image is 1
    assert fig.axes[3].get_title() == "b + v"
    mirrored = np.zeros(5, bool)
    mirrored[1] = True
    fig = plot_quantile_examples(s, t, mse, np.arange(5), man, quantiles=(0, 0.5, 1), mirrored=mirrored)
    assert fig.axes[3].get_title() == "b + v (mirror)"
    np.testing.assert_array_equal(fig.axes[3].get_images()[0].get_array(), t[1][:, ::-1])
    fig = plot_min_mse_histograms({32: mse, 64: mse * 2}, copy_mse=0.005)
    assert "width 32: median 0.3000 (n=5)" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    with pytest.raises(ValueError):
        plot_min_mse_histograms({})


def test_split_and_describe():
    images = np.zeros((4, 2, 2, 3), np.uint8) + np.arange(4, dtype=np.uint8)[:, None, None, None]
    man = pd.DataFrame({"split": ["train", "holdout", "train", "holdout"], "parent_a": ["1", "2", "3", "4"],
                        "parent_b": ["5", "6", "7", "8"]})
    parts = split_images(images, man)
    assert parts["train"][0][:, 0, 0, 0].tolist() == [0, 2]
    assert describe(parts["holdout"][1], 1) == "4 + 8"
    assert describe(None, 3) == "#3"
    with pytest.raises(ValueError):
        split_images(images[:3], man)


def test_load_sample_sets_reads_every_snapshot_and_says_what_to_run(tmp_path):
    import json

    from emojidiff.evaluation.sampling import samples_name
    from emojidiff.layout import RunLayout
    from emojidiff.study.memorisation import load_sample_sets

    layout = RunLayout(tmp_path)
    with pytest.raises(FileNotFoundError, match="02_training"):
        load_sample_sets(layout, [32])
    layout.samples(32).mkdir(parents=True)
    for kimg in (20.0, 10.0):
        imgs = np.full((3, 4, 4, 3), int(kimg), np.uint8)
        np.savez(layout.samples(32) / f"{samples_name(kimg, 3, 0, 18)}.npz", images=imgs, info=json.dumps({}))
    sets = load_sample_sets(layout, [32])
    assert [(w, k, s[0, 0, 0, 0]) for w, k, s in sets] == [(32, 10.0, 10), (32, 20.0, 20)]
    assert [k for _, k, _ in load_sample_sets(layout, [32], snapshots="last")] == [20.0]
    with pytest.warns(UserWarning, match=r"width\(s\) \[64\]"):
        assert len(load_sample_sets(layout, [32, 64])) == 2


def test_heldout_probe_counts_mirrors_as_copies_and_hits():
    train, holdout, _ = _probe_setup()
    samples = np.concatenate([train[:4, :, ::-1], holdout[:2, :, ::-1]])  # mirrors of training and held-out images
    probe = heldout_probe(samples, train, holdout, copy_mse=0.005)
    assert list(probe["outcome"]) == ["copies_train"] * 4 + ["hits_holdout"] * 2
    assert list(probe["nearest_index"]) == [0, 1, 2, 3, 0, 1] and probe["mirrored"].all()
    assert np.isfinite(probe["second_mse"]).all() and (probe["ratio"] == 0).all()
    plain = heldout_probe(samples, train, holdout, copy_mse=0.005, xflip=False)
    assert (plain["outcome"] == "neither").all()  # random images are far from their own mirrors
    # a left-right symmetric image: its mirror is itself, so the second nearest must be another image
    sym = np.concatenate([train[:1, :, :4], train[:1, :, :4][:, :, ::-1]], axis=2)
    t2 = np.concatenate([sym, train[1:]])
    p2 = heldout_probe(sym, t2, holdout, copy_mse=0.005)
    assert p2["nearest_index"][0] == 0 and p2["second_mse"][0] > 0.01


def test_last_snapshot_keeps_each_widths_latest_set_whatever_the_order():
    from emojidiff.study.memorisation import last_snapshot

    a, b, c, d = (np.full((2, 4, 4, 3), v, np.uint8) for v in (1, 2, 3, 4))
    last = last_snapshot([(32, 2.0, b), (32, 1.0, a), (64, 0.5, c), (32, 1.5, d)])
    assert sorted(last) == [32, 64]
    assert last[32] is b and last[64] is c
    assert last_snapshot([]) == {}
