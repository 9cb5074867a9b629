"""Tests for the pair split: part-twin classes, units closed over twins, and the split of a real small build."""

import numpy as np
import pytest

import emojidiff
from emojidiff.data import pairs as pm


def toy_grid(uppers: np.ndarray, lowers: np.ndarray) -> np.ndarray:
    """grid[a, x] = upper half of face a over lower half of face x (uint8 (n, n, 8, 8, 3))."""
    n = len(uppers)
    grid = np.zeros((n, n, 8, 8, 3), np.uint8)
    for a in range(n):
        for x in range(n):
            grid[a, x, :4], grid[a, x, 4:] = uppers[a], lowers[x]
    return grid


def symmetric(rng, n):
    half = rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    return np.concatenate([half, half[:, :, ::-1]], 2)  # left-right symmetric halves


def test_part_distances_find_upper_twins_and_mirror_twins():
    rng = np.random.default_rng(0)
    uppers = rng.integers(0, 256, (5, 4, 8, 3), dtype=np.uint8)
    uppers[1] = uppers[0]  # 0 and 1: the same eyes
    uppers[3] = uppers[2][:, ::-1]  # 3: the mirror of 2's eyes (mouths are symmetric, so the fusions mirror)
    grid = toy_grid(uppers, symmetric(rng, 5))
    up = pm.part_distances(grid, mirrors=True)
    assert up[0, 1] == 0 and up[2, 3] < 1e-9 and up[0, 2] > 0.1
    assert np.allclose(up, up.T)
    cls = pm.twin_classes(up, 0.003)
    assert cls[0] == cls[1] and cls[2] == cls[3] and len(set(cls)) == 3
    plain = pm.twin_classes(pm.part_distances(grid, mirrors=False), 0.003)
    assert plain[0] == plain[1] and plain[2] != plain[3]  # without mirrors the mirror twin is not one
    low = pm.twin_classes(pm.part_distances(grid.transpose(1, 0, 2, 3, 4)), 0.003)
    assert len(set(low)) == 5  # every mouth differs


def test_a_twin_on_only_some_partners_is_not_a_twin():
    rng = np.random.default_rng(1)
    uppers = rng.integers(0, 256, (4, 4, 8, 3), dtype=np.uint8)
    uppers[1] = uppers[0]
    grid = toy_grid(uppers, symmetric(rng, 4))
    grid[1, 3] = 255 - grid[0, 3]  # with partner 3, faces 0 and 1 differ: "for all x" fails
    assert pm.part_distances(grid)[0, 1] > 0.1
    with pytest.raises(ValueError, match="grid"):
        pm.part_distances(grid[:, :3])


def test_units_close_combinations_over_rows_and_twin_groups():
    upper, lower = np.array([0, 0, 1]), np.array([0, 1, 2])  # faces 0 and 1 are upper-twins
    fa = np.array([0, 1, 0, 2, 2, 1])
    fb = np.array([1, 0, 2, 0, 1, 2])
    row_of = np.array([0, 1, 2, 3, 4, 5])
    groups = np.array([0, 1, 2, 3, 3, 4])  # rows 3 and 4 are image twins
    unit, combo = pm.pair_units(fa, fb, row_of, upper, lower, groups)
    assert combo[2] == combo[5]  # (0, 2) and (1, 2): the same combination through the upper-twin
    assert unit[2] == unit[5] and unit[3] == unit[4]  # ...and twin rows share a unit
    assert len(set(unit)) == 4


def tiny(tmp_path, **kw):
    args = dict(size=16, dedup_size=16, max_faces=8, holdout=0.25, seed=3, cache_dir=tmp_path, progress=False,
                workers=1, split="pairs")
    args.update(kw)
    return emojidiff.build_dataset(**args)


def _min_mse_to(a, b):
    x = a.reshape(len(a), -1).astype(np.float64) / 127.5 - 1
    y = b.reshape(len(b), -1).astype(np.float64) / 127.5 - 1
    return ((x[:, None] - y[None]) ** 2).mean(-1).min(1)


def test_pair_split_has_no_twin_across_it(tmp_path):
    ds = tiny(tmp_path)
    m, p = ds.manifest, ds.pairs
    assert set(m.split) == {"train", "holdout"} and len(ds.train_images()) + len(ds.holdout_images()) == len(ds)
    assert (p.groupby("combination")["split"].nunique() == 1).all()  # a combination is on one side only
    assert (m.groupby("twin_group")["split"].nunique() == 1).all()  # so is an image twin group
    assert (m.groupby("unit")["split"].nunique() == 1).all()
    assert (p.split.to_numpy() == m.split.to_numpy()[p.row.to_numpy()]).all()
    # no held-out (upper class, lower class) is shown in training through any pair
    held = set(zip(p[p.split == "holdout"].upper_class, p[p.split == "holdout"].lower_class))
    seen = set(zip(p[p.split == "train"].upper_class, p[p.split == "train"].lower_class))
    assert held and not held & seen
    thr = ds.info["split_rule"]["twin_mse"]
    train = ds.train_images()
    assert _min_mse_to(ds.holdout_images(), np.concatenate([train, train[:, :, ::-1]])).min() >= thr
    assert abs((m.split == "holdout").mean() - 0.25) < 0.08
    assert ds.info["split_rule"]["mode"] == "pairs" and ds.info["upper_classes"] <= 8


def test_upper_twin_classes_are_twins_on_the_real_faces(tmp_path):
    ds = tiny(tmp_path)
    p, thr = ds.pairs, ds.info["split_rule"]["twin_mse"]
    assert ds.info["upper_classes"] < 8  # some of the first 8 Noto faces share their eyes

    def fusion_mse(a, a2, x):
        ra = p[(p.parent_a == a) & (p.parent_b == x)].row.iloc[0]
        rb = p[(p.parent_a == a2) & (p.parent_b == x)].row.iloc[0]
        pair = ds.images[[ra, rb]]
        return min(_min_mse_to(pair[:1], pair[1:])[0], _min_mse_to(pair[:1], pair[1:, :, ::-1])[0])

    classes = p.groupby("upper_class")["parent_a"].agg(lambda s: sorted(set(s)))
    for faces in classes[classes.map(len) > 1]:
        for a in faces:  # union-find: every member is a twin of some other member, with every common partner
            partners = {a2: set(p[p.parent_a == a].parent_b) & set(p[p.parent_a == a2].parent_b) for a2 in faces}
            twins = [a2 for a2 in faces if a2 != a and all(fusion_mse(a, a2, x) < thr for x in partners[a2])]
            assert twins, (a, faces)


def test_pair_split_is_seeded_and_cached_apart(tmp_path):
    a = tiny(tmp_path / "a", use_cache=False)
    b = tiny(tmp_path / "b", use_cache=False, workers=2)
    assert a.manifest.equals(b.manifest) and a.pairs.equals(b.pairs)
    other = [tiny(tmp_path / "c", seed=s).manifest.split for s in (4, 5, 6)]
    assert any(not o.equals(a.manifest.split) for o in other)
    twins = tiny(tmp_path / "a", split="twins")
    assert twins.info["cache_key"] != a.info["cache_key"] and "unit" not in twins.manifest
    with pytest.raises(ValueError, match="split must be one of twins, pairs, got 'halves'"):
        tiny(tmp_path, split="halves")


def test_labels_align_with_images_and_parents(tmp_path):
    ds = tiny(tmp_path)
    assert ds.num_faces == 8 and ds.labels.dtype == np.int64 and ds.labels.shape == (len(ds), 2)
    faces = list(ds.faces.unified)
    for i in (0, len(ds) // 2, len(ds) - 1):
        row = ds.manifest.iloc[i]
        assert tuple(ds.labels[i]) == (faces.index(row.parent_a), faces.index(row.parent_b))
    td = ds.torch_dataset("train")
    assert len(td.labels) == len(td) and np.array_equal(td.labels.numpy(), ds.train_labels())
    train_rows = np.nonzero((ds.manifest.split == "train").to_numpy())[0]
    assert np.array_equal(ds.train_labels(), ds.labels[train_rows])
    rows, labels = ds.pair_labels("train")
    assert len(rows) == (ds.pairs.split == "train").sum() and set(rows) == set(train_rows)
    assert (labels[:, 0] != labels[:, 1]).all()
    assert ds.summary()["face_list"][0] == list(ds.faces.iloc[0][["unified", "name", "char"]])


def test_two_styles_hold_out_a_pair_in_both(tmp_path):
    ds = tiny(tmp_path, style=["noto", "twemoji"], max_faces=5, holdout=0.3, seed=0)
    p, m = ds.pairs, ds.manifest
    per_pair = p.groupby(["parent_a", "parent_b"])["split"].nunique()
    assert (per_pair == 1).all()  # the label (a, b) names no style: one side for both styles
    assert set(p.split) == {"train", "holdout"} and (m.groupby("twin_group")["split"].nunique() == 1).all()
    for style in ("noto", "twemoji"):  # still no combination of parts across the split within a style
        q = p[p["style"] == style]
        assert (q.groupby("combination")["split"].nunique() == 1).all()
    assert abs((m.split == "holdout").mean() - 0.3) < 0.1
