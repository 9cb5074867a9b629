"""The transition study: disjoint twin-group subsets, two-model scores on toy cases, the driver and its profiles."""

import json
from dataclasses import replace

import matplotlib
import numpy as np
import pandas as pd
import pytest

from emojidiff.config import ConfigError, config_from_dict, load_config
from emojidiff.evaluation import transition as tr
from emojidiff.study import transition as st

matplotlib.use("Agg")


def _groups(seed=0, n_groups=300):
    """Twin-group labels of a toy training split: mostly singletons, some groups of 2-6 images, shuffled."""
    rng = np.random.default_rng(seed)
    sizes = np.where(rng.random(n_groups) < 0.7, 1, rng.integers(2, 7, n_groups))
    return rng.permutation(np.repeat(np.arange(n_groups), sizes))


@pytest.mark.parametrize("n", [1, 16, 64, 150])
def test_subsets_are_exact_disjoint_and_share_no_twin_group(n):
    groups = _groups()
    a, b = tr.disjoint_subsets(groups, n, seed=3)
    assert len(a) == len(b) == n
    assert len(np.unique(a)) == n and len(np.unique(b)) == n
    assert not set(a) & set(b)
    assert not set(groups[a]) & set(groups[b])  # no near-twin on both sides
    for side in (a, b):  # whole groups only: every group drawn comes with all its images
        for g in np.unique(groups[side]):
            assert set(np.flatnonzero(groups == g)) <= set(side)


def test_subsets_are_seeded():
    groups = _groups()
    first = tr.disjoint_subsets(groups, 64, seed=1)
    again = tr.disjoint_subsets(groups, 64, seed=1)
    other = tr.disjoint_subsets(groups, 64, seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(first, again))
    assert not np.array_equal(np.sort(first[0]), np.sort(other[0]))


def test_halves_balance_whole_groups_and_the_largest_size_fits_both():
    groups = _groups()
    a, b = tr.disjoint_halves(groups, seed=0)
    assert len(a) + len(b) == len(groups) and not set(groups[a]) & set(groups[b])
    assert abs(len(a) - len(b)) <= 6  # at most one group's size apart
    top = tr.largest_size(groups, seed=0)
    assert top <= min(len(a), len(b)) and top >= min(len(a), len(b)) - 6
    assert tr.resolve_ladder([64, 0, 16], groups, seed=0) == [16, 64, top]
    with pytest.raises(ValueError, match=rf"\[{top + 1}\] above the largest N .*\({top}\)"):
        tr.resolve_ladder([16, top + 1], groups, seed=0)


def test_a_size_whole_groups_cannot_make_is_refused():
    groups = np.repeat([0, 1, 2, 3], 4)  # four groups of four: subsets of 4 or 8 only
    assert [len(s) for s in tr.disjoint_subsets(groups, 8, seed=0)] == [8, 8]
    with pytest.raises(ValueError, match="cannot make two disjoint subsets of 3 images"):
        tr.disjoint_subsets(groups, 3, seed=0)


def _toy_images(n, seed):
    """n distinct random uint8 images (3x8x8)."""
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)


def test_random_pair_mse_has_the_known_answer():
    images = np.stack([np.zeros((4, 4, 3), np.uint8), np.full((4, 4, 3), 255, np.uint8)])
    assert tr.random_pair_mse(images, pairs=50) == pytest.approx(4.0)  # -1 vs +1 on every pixel, never i with i
    with pytest.raises(ValueError, match="at least 2 images"):
        tr.random_pair_mse(images[:1])


def test_two_identical_models_disagree_by_zero():
    own_a, own_b = _toy_images(20, 0), _toy_images(20, 1)
    samples = _toy_images(32, 2)  # the same samples from both models: neither copies
    row = tr.compare_models(samples, samples.copy(), own_a, own_b, copy_mse=0.002,
                            random_mse=tr.random_pair_mse(np.concatenate([own_a, own_b])), xflip=True)
    assert row["disagreement"] == 0.0 and row["disagreement_ratio"] == 0.0
    assert row["copy_own"] == 0.0 and row["copy_other"] == 0.0
    assert min(row["mean_mse_a"], row["mean_mse_b"]) > 0.1  # far from either subset


def test_two_memorisers_of_disjoint_sets_disagree_like_random_images():
    own_a, own_b = _toy_images(20, 0), _toy_images(20, 1)
    seeds = np.arange(40) % 20  # each model returns its own training images
    a, b = own_a[seeds], own_b[seeds][:, :, ::-1]  # model B returns mirrors: still copies with xflip
    random_mse = tr.random_pair_mse(np.concatenate([own_a, own_b]))
    row = tr.compare_models(a, b, own_a, own_b, copy_mse=0.002, random_mse=random_mse, xflip=True)
    assert row["disagreement_ratio"] == pytest.approx(1.0, abs=0.1)
    assert row["copy_own_a"] == row["copy_own_b"] == 1.0
    assert row["copy_other_a"] == row["copy_other_b"] == 0.0
    assert row["mean_mse_a"] == row["mean_mse_b"] == 0.0
    no_flip = tr.compare_models(a, b, own_a, own_b, copy_mse=0.002, random_mse=random_mse, xflip=False)
    assert no_flip["copy_own_b"] == 0.0 and no_flip["copy_own_a"] == 1.0  # mirrors count only with xflip


def test_pair_mse_pairs_seed_by_seed():
    a = np.zeros((3, 2, 2, 3), np.uint8)
    b = a.copy()
    b[1] = 255
    assert tr.pair_mse(a, b).tolist() == [0.0, 4.0, 0.0]
    with pytest.raises(ValueError, match="pair up seed by seed"):
        tr.pair_mse(a, b[:2])


# --- configuration and profiles ---


@pytest.mark.parametrize("section, key", [
    ({"ladder": [16, 64], "duration_kimg": [1.0]}, "transition.duration_kimg"),
    ({"ladder": [16, -1], "duration_kimg": [1.0, 1.0]}, "transition.ladder"),
    ({"ladder": [16, 16], "duration_kimg": [1.0, 1.0]}, "transition.ladder"),
    ({"ladder": [16], "duration_kimg": [0.0]}, "transition.duration_kimg"),
    ({"snapshots": 0}, "transition.snapshots"),
    ({"samples": 0}, "transition.samples"),
])
def test_bad_transition_sections_are_refused_naming_the_key(section, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config_from_dict({"transition": section}, "t.yaml")


def test_notebooks_must_be_number_prefixes():
    with pytest.raises(ConfigError, match="notebooks must list notebook number prefixes"):
        config_from_dict({"notebooks": ["transition"]}, "t.yaml")
    assert config_from_dict({"notebooks": ["08"]}).notebooks == ["08"]



def test_the_transition_profile_runs_the_ladder_and_only_notebook_08(repo):
    t = load_config(repo / "params/transition.yaml")
    assert t.notebooks == ["08"]
    assert t.transition.ladder == [16, 64, 256, 1024, 0]
    assert t.transition.duration_kimg == sorted(t.transition.duration_kimg)  # larger N train at least as long
    widths = load_config(repo / "params/widths.yaml")
    cpu = load_config(repo / "params/cpu.yaml")
    assert widths.model.widths == [32, 64, 128]
    assert (widths.model.channel_mult, widths.model.num_blocks) == (cpu.model.channel_mult, cpu.model.num_blocks)
    assert not widths.transition.ladder and not cpu.transition.ladder  # their 08 skips



@pytest.mark.parametrize("profile, ladder", [("transition-small-n", [16, 64]), ("transition-n64-long", [64]),
                                              ("transition-n128", [128]), ("transition-n256", [256])])
def test_the_longer_transition_profiles_differ_from_the_ladder_only_in_their_sizes_and_budgets(repo, profile, ladder):
    full, small = (load_config(repo / f"params/{n}.yaml").to_dict() for n in ("transition", profile))
    # a longer-trained small end is comparable with the full ladder only if nothing else changed
    for cfg in (full, small):
        cfg.pop("name")
        cfg["transition"].pop("ladder"), cfg["transition"].pop("duration_kimg")
    assert small == full
    assert load_config(repo / f"params/{profile}.yaml").transition.ladder == ladder


# --- the driver, on the smoke dataset ---


@pytest.fixture(scope="module")
def smoke(repo):
    from emojidiff.data.dataset import dataset_from_config

    cfg = load_config(repo / "params/smoke.yaml")
    cfg = replace(cfg, transition=replace(cfg.transition, ladder=[2, 0], duration_kimg=[0.032, 0.032], width=8,
                                          snapshots=2, samples=4),
                  sample=replace(cfg.sample, num_steps=2), model=replace(cfg.model, attn_resolutions=[]))
    return cfg, dataset_from_config(cfg)


def test_smoke_subsets_keep_near_twins_apart(smoke):
    from emojidiff.evaluation.copies import reference_set
    from emojidiff.study.transition import train_groups

    cfg, ds = smoke
    images, groups = ds.train_images(), train_groups(ds)
    top = tr.largest_size(groups, cfg.seed)
    a, b = tr.disjoint_subsets(groups, top, cfg.seed)
    twin_mse = ds.info["split_rule"]["twin_mse"]
    # the twin grouping links images closer than twin_mse (mirrors included): none may sit across the two sides
    assert reference_set(images[a], xflip=True).nearest(images[b])[0].min() >= twin_mse


def test_run_transition_trains_samples_scores_and_resumes(smoke, tmp_path):
    from emojidiff.data.dataset import measure_sigma_data
    from emojidiff.layout import RunLayout

    cfg, ds = smoke
    layout = RunLayout(tmp_path)
    table = st.run_transition(cfg, layout, ds, progress=False)
    top = tr.largest_size(st.train_groups(ds), cfg.seed)
    assert sorted(set(table["N"])) == [2, top]
    assert table.groupby("N").size().tolist() == [2, 2]  # two snapshots per N, both models
    assert (table["samples"] == 4).all() and table["disagreement"].between(0, 4).all()
    assert pd.read_csv(layout.metrics / "transition.csv").shape == table.shape
    # the known answer: two ideal memorisers copy their own subsets, never the other's (twins kept apart)
    assert (table["memoriser_copy_own"] == 1.0).all() and (table["memoriser_copy_other"] == 0.0).all()
    assert (table.groupby("N")["memoriser_disagreement_ratio"].nunique() == 1).all()  # one control per N
    assert (table["memoriser_disagreement_ratio"] > 0).all()
    sub_a, sub_b = (np.load(st.model_layout(layout, top, s).root / "subset.npy") for s in "ab")
    assert len(sub_a) == len(sub_b) == top and not set(sub_a) & set(sub_b)
    for n in (2, top):  # both models of an N: every setting and seed the same (sigma_data too), only the data differ
        meta_a, meta_b = (json.loads(sorted(st.model_layout(layout, n, s).root.rglob("ema-*.json"))[-1].read_text())
                          for s in "ab")
        for key in ("model", "data", "train", "seed", "width", "sigma_data", "kimg"):
            assert meta_a[key] == meta_b[key], key
        assert meta_a["sigma_data"] == pytest.approx(measure_sigma_data(ds.train_images()))
    snaps = sorted((tmp_path / "transition").rglob("ema-*.json"))
    stamps = [p.stat().st_mtime_ns for p in snaps]
    again = st.run_transition(cfg, layout, ds, progress=False)  # resumes: nothing retrained, same scores
    assert [p.stat().st_mtime_ns for p in sorted((tmp_path / "transition").rglob("ema-*.json"))] == stamps
    pd.testing.assert_frame_equal(again, table)
    samples = st.load_samples(layout, cfg, 2)
    assert samples["a"].shape == samples["b"].shape == (4, 32, 32, 3)
    assert "critical N" in st.critical(table)["text"] or "no transition" in st.critical(table)["text"]
    for fig in (st.plot_transition(table), st.plot_mean_mse(table), st.plot_by_epochs(table),
                st.plot_galleries({2: samples, top: st.load_samples(layout, cfg, top)}, seeds=4)):
        assert fig.axes


def test_model_config_is_unconditional_with_the_requested_snapshots(smoke):
    from emojidiff.study.transition import model_config

    cfg, _ = smoke
    m = model_config(replace(cfg, transition=replace(cfg.transition, snapshots=5)), 10.0)
    assert m.model.widths == [cfg.transition.width] and not m.model.conditional
    assert m.train.duration_kimg == 10.0 and m.train.snapshot_kimg == pytest.approx(2.0)
    assert m.train.max_snapshots > 5  # no snapshot thinned away
    assert m.seed == cfg.seed and m.train.lr == cfg.train.lr  # same hyper-parameters for both models


def test_by_epochs_orders_snapshots_and_scales_by_each_ns_memorisers():
    table = pd.DataFrame({"N": [128, 64, 64, 128], "kimg": [144.0, 72.0, 36.0, 72.0],
                          "epochs": [1125.0, 1125.0, 563.0, 563.0], "disagreement_ratio": [0.3, 0.5, 0.3, 0.2],
                          "disagreement_se": [0.01, 0.02, 0.03, 0.04], "random_pair_mse": [0.1] * 4,
                          "copy_own": [0.0, 0.05, 0.0, 0.0], "copy_other": [0.0] * 4, "mean_mse": [0.03] * 4,
                          "memoriser_disagreement_ratio": [0.75, 0.84, 0.84, 0.75]})
    rows = st.by_epochs(table)
    assert rows[["N", "epochs"]].values.tolist() == [[64, 563], [64, 1125], [128, 563], [128, 1125]]
    assert rows["ratio_se"].tolist() == pytest.approx([0.3, 0.2, 0.4, 0.1])  # s.e. of the ratio: se / random MSE
    assert rows["of_memoriser"].tolist() == pytest.approx([0.3 / 0.84, 0.5 / 0.84, 0.2 / 0.75, 0.3 / 0.75])
    assert "of_memoriser" not in st.by_epochs(table.drop(columns="memoriser_disagreement_ratio"))


def test_critical_measures_the_ratio_against_the_perfect_copiers_at_each_n():
    ns = [16, 64, 256, 1708]
    mem = np.array([0.94, 0.84, 0.69, 0.46])  # the ideal memorisers' ratio falls with N (measured on Noto core)
    table = pd.DataFrame({"N": ns, "kimg": 1.0, "random_pair_mse": 0.15, "disagreement_se": 0.0,
                          "memoriser_disagreement_ratio": mem})
    copier = table.assign(disagreement=0.15 * mem)  # a model that copies as the memorisers do
    assert np.isinf(st.critical(copier)["estimate"])  # never a generaliser, though its raw ratio ends below 0.5
    assert np.isfinite(st.critical(copier.drop(columns="memoriser_disagreement_ratio"))["estimate"])  # the old trap
    mixed = table.assign(disagreement=0.15 * mem * np.array([1.0, 0.9, 0.3, 0.1]))
    found = st.critical(mixed)
    assert found["estimate"] == pytest.approx(64 * 4 ** (2 / 3)) and "ideal memorisers" in found["text"]


def test_critical_size_interpolates_in_log_n_and_says_when_there_is_none():
    ns = [1024, 16, 256, 64]  # any order
    found = tr.critical_size(ns, [0.1, 1.0, 0.3, 0.9])
    assert found["estimate"] == pytest.approx(64 * 4 ** (2 / 3))  # 0.9 -> 0.3 crosses 0.5 two thirds of the way
    assert found["low"] == found["high"] == found["estimate"] and "critical N ~ 161" in found["text"]
    wide = tr.critical_size(ns, [0.1, 1.0, 0.3, 0.9], ses=[0.0, 0.0, 0.15, 0.0])
    assert wide["low"] < wide["estimate"] < wide["high"] == pytest.approx(256 * 4 ** 0.2)  # 0.6 at 256, 0.1 at 1024
    none = tr.critical_size([16, 64], [1.0, 0.8])
    assert np.isinf(none["estimate"]) and "above the largest" in none["text"]
    assert "at or below the smallest" in tr.critical_size([16, 64], [0.2, 0.1])["text"]
