"""Tests for the copy verdicts: one reference with mirrors, calibrated thresholds, controls, intervals, the verdict."""

import numpy as np
import pytest

import emojidiff
from emojidiff.evaluation import copies as cp


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small real build: 8 Noto faces at 16 px, a fifth held out by twin groups."""
    return emojidiff.build_dataset(size=16, dedup_size=16, max_faces=8, holdout=0.2, seed=0, progress=False,
                                   workers=1, cache_dir=tmp_path_factory.mktemp("cache"))


def _brute_nearest(a, b):
    x = a.reshape(len(a), -1).astype(np.float64) / 127.5 - 1
    y = b.reshape(len(b), -1).astype(np.float64) / 127.5 - 1
    d = ((x[:, None] - y[None]) ** 2).mean(-1)
    return d.min(1), d.argmin(1)


def test_reference_set_holds_images_and_mirrors():
    imgs = np.random.default_rng(0).integers(0, 256, (3, 4, 5, 3), dtype=np.uint8)
    ref = cp.reference_set(imgs)
    assert len(ref.images) == 6 and list(ref.index) == [0, 1, 2, 0, 1, 2] and ref.mirrored.sum() == 3
    np.testing.assert_array_equal(ref.images[4], imgs[1][:, ::-1])
    plain = cp.reference_set(imgs, xflip=False)
    assert len(plain.images) == 3 and not plain.mirrored.any()
    with pytest.raises(ValueError, match="uint8"):
        cp.reference_set(imgs.astype(np.float32))


def test_thresholds_sit_between_the_copy_noise_and_the_heldout_gap(small):
    th = cp.choose_thresholds(small)
    gap, _ = _brute_nearest(small.holdout_images(), np.concatenate([small.train_images(),
                                                                     small.train_images()[:, :, ::-1]]))
    assert th.heldout_gap_mse == pytest.approx(gap.min(), rel=1e-4)
    assert th.twin_mse == small.info["split_rule"]["twin_mse"] <= th.heldout_gap_mse
    assert th.noise_mse < th.copy_mse < th.twin_mse
    assert th.copy_mse == pytest.approx(np.sqrt(th.noise_mse * min(th.twin_mse, th.heldout_gap_mse)))
    assert set(th.as_dict()) >= {"copy_mse", "hit_mse", "noise_mse", "heldout_gap_mse", "twin_mse"}


def test_classify_samples_columns_and_indices(small):
    train, held = small.train_images(), small.holdout_images()
    samples = np.concatenate([train[[3]], held[[1]], train[[2]][:, :, ::-1]])
    t = cp.classify_samples(samples, small)
    assert list(t["verdict"]) == ["copy", "unseen_fusion", "copy"]
    assert list(t["nearest_train_index"][[0, 2]]) == [3, 2] and list(t["mirrored"]) == [False, False, True]
    assert t.loc[1, "nearest_heldout_index"] == 1 and t.loc[1, "nearest_heldout_mse"] == 0
    rows = t["nearest_train_row"].to_numpy()
    assert (small.manifest["split"].to_numpy()[rows] == "train").all()
    np.testing.assert_array_equal(small.images[rows[0]], train[3])
    mse, _ = _brute_nearest(samples[1:2], train)
    assert t.loc[1, "nearest_train_mse"] <= mse[0] + 1e-6  # mirrors can only bring the nearest closer
    assert t.attrs["thresholds"]["copy_mse"] == cp.choose_thresholds(small).copy_mse
    with pytest.raises(ValueError, match="uint8"):
        cp.classify_samples(samples.astype(np.float32), small)


def test_mirrors_count_as_copies(small):
    train = small.train_images()
    mirrors = train[:, :, ::-1]
    asym = _brute_nearest(mirrors, train)[0] > 0.01  # mirrors that are far from every unflipped training image
    assert asym.sum() >= 5
    with_mirrors = cp.classify_samples(mirrors, small)
    assert (with_mirrors["verdict"] == "copy").all()
    th = cp.choose_thresholds(small)
    without = cp.classify_samples(mirrors[asym], small, xflip=False, thresholds=th)
    assert (without["verdict"] != "copy").all()  # the old reference would call these new


def test_controls_score_as_calibrated(small):
    share = cp.holdout_share(small)
    th = cp.choose_thresholds(small)
    mem = cp.summarise(cp.classify_samples(cp.memoriser_control(small), small, thresholds=th), share)
    assert mem["copy_rate"] >= 0.95 and 0.2 < mem["mirrored_copy_rate"] < 0.8
    gen = cp.summarise(cp.classify_samples(cp.generaliser_control(small), small, thresholds=th), share)
    assert gen["copy_rate"] <= 0.05 and gen["unseen_fusion_rate"] >= 0.95
    non = cp.summarise(cp.classify_samples(cp.nonsense_control(small, n=60), small, thresholds=th), share)
    assert non["copy_rate"] == 0 and non["unseen_fusion_rate"] == 0 and non["n"] == 60
    table = cp.control_table(small, thresholds=th)
    assert list(table["set"]) == ["memoriser", "generaliser", "ideal generaliser", "nonsense"]
    assert (table["copy_lo"] <= table["copy_rate"]).all() and (table["copy_rate"] <= table["copy_hi"]).all()


def test_memoriser_noise_has_the_asked_mse(small):
    x = cp.memoriser_control(small, n=40, noise_mse=0.001, seed=1)
    t = cp.classify_samples(x, small)
    # clipping at white lowers the noise on the background, rounding adds 1/12 grey level^2
    assert 0.0003 < t["nearest_train_mse"].mean() < 0.0011


def test_rate_interval_known_wilson_values():
    # Wilson 95% (z = 1.959964): 0/10 -> [0, z^2 / (n + z^2)]; 5/10 -> 0.5 -/+ z sqrt(n/4 + z^2/4) / (n + z^2)
    z = 1.959963984540054
    lo, hi = cp.rate_interval(0, 10)
    assert lo == 0 and hi == pytest.approx(z * z / (10 + z * z), abs=1e-9) and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = cp.rate_interval(5, 10)
    half = z * np.sqrt(10 / 4 + z * z / 4) / (10 + z * z)
    assert (lo, hi) == pytest.approx((0.5 - half, 0.5 + half), abs=1e-9)
    assert (lo, hi) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert cp.rate_interval(10, 10)[1] == 1.0 and cp.rate_interval(0, 0) == (0.0, 1.0)
    lo99, hi99 = cp.rate_interval(5, 10, confidence=0.99)
    assert lo99 < lo and hi99 > hi
    with pytest.raises(ValueError, match="k=11"):
        cp.rate_interval(11, 10)


def test_probe_verdict_line():
    assert cp.probe_verdict(50, 500, 0.1).startswith("consistent with a generaliser")
    assert cp.probe_verdict(0, 500, 0.1).startswith("consistent with a memoriser")
    assert cp.probe_verdict(0, 5, 0.1).startswith("undecided at this sample count")
    assert "no sample lands" in cp.probe_verdict(0, 0, 0.1)
    assert cp.probe_verdict(1, 20, 0.1).startswith("undecided at this sample count")  # CI [0.9%, 23.6%]
    assert cp.probe_verdict(60, 100, 0.1).startswith("not a draw of the data")
    assert cp.probe_verdict(10, 500, 0.1).startswith("between a memoriser and a generaliser")
    assert "[95% CI" in cp.probe_verdict(50, 500, 0.1)


def test_controls_give_the_right_verdict_lines(small):
    share = cp.holdout_share(small)
    th = cp.choose_thresholds(small)
    gen = cp.ideal_generaliser_control(small, n=600, seed=2)
    line = cp.summarise(cp.classify_samples(gen, small, thresholds=th), share)["verdict_line"]
    assert line.startswith("consistent with a generaliser"), line
    mem = cp.memoriser_control(small, seed=2)
    line = cp.summarise(cp.classify_samples(mem, small, thresholds=th), share)["verdict_line"]
    assert line.startswith("consistent with a memoriser"), line


def test_verdict_table_and_figures(small):
    import matplotlib

    matplotlib.use("Agg")
    mem = cp.memoriser_control(small, n=20, seed=3)
    held = cp.generaliser_control(small)
    t = cp.verdict_table([(16, 1.0, mem), (16, 2.0, held), (32, 2.0, np.concatenate([mem, held]))], small)
    assert list(t["width"]) == [16, 16, 32] and list(t["n"]) == [20, len(held), 20 + len(held)]
    assert t.loc[0, "copy_rate"] == 1 and t.loc[1, "unseen_fusion_rate"] == 1
    assert t.loc[2, "holdout_of_close"] == pytest.approx(len(held) / (20 + len(held)))
    assert len(cp.plot_rates(t).axes) == 1 and len(cp.plot_holdout_of_close(t).axes) == 1


def test_twin_distances_and_threshold_pairs(small):
    import matplotlib

    matplotlib.use("Agg")
    twin = small.info["split_rule"]["twin_mse"]
    d = cp.twin_distances(small)
    assert len(d) == len(small.holdout_images()) and (d["mse"] >= twin).all()
    pairs = cp.threshold_pairs(small, n=3)
    assert (pairs.loc[pairs.linked, "mse"] < twin).all() and (pairs.loc[~pairs.linked, "mse"] >= twin).all()
    groups = small.manifest["twin_group"].to_numpy()
    linked = pairs[pairs.linked]
    assert (groups[linked["a"]] == groups[linked["b"]]).all()  # pairs under the threshold share a group
    x = small.images.astype(np.float64) / 127.5 - 1
    r = pairs.iloc[0]
    other = x[r.b][:, ::-1] if r.mirrored else x[r.b]
    assert ((x[r.a] - other) ** 2).mean() == pytest.approx(r.mse)
    assert cp.plot_twin_distances(d, twin).axes and cp.plot_threshold_pairs(pairs, small.images, small.manifest)
