"""The kitchen: kitchen() and the CLI on a tiny conditional smoke model, the widget state, the evaluation's parts."""

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import emojidiff
from emojidiff.evaluation import kitchen as ek
from emojidiff.evaluation.copies import rate_interval, reference_set
from emojidiff.study.kitchen import KitchenState, KitchenWidget, kitchen


def tiny_cfg(repo):
    cfg = emojidiff.load_config(repo / "params" / "smoke.yaml")
    train = dataclasses.replace(cfg.train, duration_kimg=0.064, snapshot_kimg=0.032, checkpoint_kimg=0.032)
    kc = dataclasses.replace(cfg.kitchen, samples=2, max_pairs=2, sweep=[0.0, 2.0], sweep_pairs=2)
    return dataclasses.replace(cfg, device="cpu", train=train, kitchen=kc,
                               sample=dataclasses.replace(cfg.sample, num_steps=3))


@pytest.fixture(scope="module")
def run(repo, tmp_path_factory):
    """A conditional smoke net trained for 64 images (two EMA snapshots)."""
    cfg = tiny_cfg(repo)
    assert cfg.model.conditional and cfg.data.split == "pairs"
    out = tmp_path_factory.mktemp("kitchen") / "smoke"
    emojidiff.train(cfg, out, progress=False)
    return cfg, emojidiff.RunLayout(out)


def test_kitchen_returns_seeded_uint8_fusions(run):
    cfg, layout = run
    w = layout.train(16)
    x = kitchen(w, "grinning face", "😄", n=3, guidance=2.0, seed=5, num_steps=3)
    assert x.shape == (3, 32, 32, 3) and x.dtype == np.uint8
    assert np.array_equal(x, kitchen(w, "grinning-face", 2, n=3, guidance=2.0, seed=5, num_steps=3))  # same face
    assert not np.array_equal(x, kitchen(w, 0, 2, n=3, guidance=2.0, seed=6, num_steps=3))
    assert not np.array_equal(x, kitchen(w, 0, 3, n=3, guidance=2.0, seed=5, num_steps=3))  # the label matters
    assert emojidiff.kitchen is kitchen


def test_kitchen_errors_name_the_problem(run, tmp_path):
    cfg, layout = run
    with pytest.raises(emojidiff.EmojiSourceError, match="unknown face 'no such face'.*grinning-face"):
        kitchen(layout.train(16), "no such face", 0, n=1, num_steps=2)
    with pytest.raises(emojidiff.EmojiSourceError, match="unknown face 99"):
        kitchen(layout.train(16), 0, 99, n=1, num_steps=2)
    plain = emojidiff.build_denoiser(dataclasses.replace(cfg.model, conditional=False, label_dim=0), 8, 32, 0.5)
    faces = emojidiff.build_dataset(max_faces=8, progress=False).faces
    with pytest.raises(ValueError, match="unconditional"):
        ek.Kitchen(plain, faces)


def test_sample_cli_pair_writes_png_and_npz(run, repo):
    cfg, layout = run
    exe = shutil.which("emojidiff", path=str(Path(sys.executable).parent)) or "emojidiff"
    cmd = [exe, "sample", "--params", str(repo / "params" / "smoke.yaml"), "--out", str(layout.root), "--pair",
           "grinning face", "😄", "--guidance", "2", "--num-images", "2", "--seed", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    png = layout.root / "kitchen" / "w16" / "grinning-face+grinning-face-with-smiling-eyes-w2-s1.png"
    assert png.is_file() and str(png) in proc.stdout
    saved = np.load(png.with_suffix(".npz"))
    assert saved["images"].shape == (2, 32, 32, 3) and list(saved["labels"]) == [0, 2]
    bad = subprocess.run(cmd[:6] + ["--pair", "klingon", "0"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "unknown face 'klingon'" in bad.stderr


def test_widget_state_shows_truth_split_and_neighbours(run):
    cfg, layout = run
    ds = emojidiff.dataset_from_config(cfg, progress=False)
    state = KitchenState(ek.Kitchen.load(layout.train(16), num_steps=2), ds, n=2, k=2)
    assert state.options[0][0].startswith("😀 grinning-face")
    held = ds.pairs[ds.pairs.split == "holdout"].iloc[0]
    state.set(a=ds.face_index(held.parent_a), b=ds.face_index(held.parent_b), guidance=1.5, seed=3)
    v = state.view()
    assert v["truth_row"] == held.row and v["truth_split"] == "holdout" and "held-out" in v["caption"]
    assert v["samples"].shape == (2, 32, 32, 3) and len(v["nearest"]) == 2 and len(v["nearest"][0]) == 2
    train_rows = set(np.flatnonzero(ds.manifest.split == "train"))
    assert all(r in train_rows for near in v["nearest"] for r, *_ in near)
    state.set(a=0, b=0)
    assert state.view()["truth_row"] is None
    with pytest.raises(ValueError, match="guidance"):
        state.set(guidance=-1)
    w = KitchenWidget(state)
    w.b.value = 1  # a dropdown change redraws: samples and the true fusion of (0, 1)
    assert state.b == 1 and len(w.sample_box.children) == 2 and len(w.truth_box.children) == 1


def toy_images(n=5, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)


def test_score_samples_known_answers():
    images = toy_images()
    train_rows = np.array([0, 1, 2])  # rows 3, 4 are held out
    ref = reference_set(images[train_rows], xflip=True)
    samples = np.stack([images[3], images[1], images[0], images[3][:, ::-1], images[4]])
    truth = np.array([3, 3, 0, 3, 3])
    s = ek.score_samples(samples, truth, images, ref, train_rows, copy_mse=0.001)
    assert list(s.closer_to_truth) == [True, False, True, True, False]  # equal to the truth / to another pair
    assert list(s["copied"]) == [False, True, False, False, False]  # sample 1 is training pair 1's image: a copy
    assert s.truth_mse[0] == 0 and s.truth_mse[3] == 0  # the mirror of the truth counts as the truth
    assert s.other_mse[2] > 0 and s.nearest_row[2] == 0  # a training pair's own image is not "another" image
    twins = np.array([0, 0, 1, 2, 3])  # rows 0 and 1 are near-twins: one image to the split
    t = ek.score_samples(samples[1:3], np.array([0, 0]), images, ref, train_rows, 0.001, twin_group=twins)
    assert list(t["copied"]) == [False, False]  # the truth's twin is the pair's own image, not another pair's
    assert t.other_mse[0] == pytest.approx(ek.pair_mse(images[1:2], images[2:3])[0], abs=0.2)  # row 2 or mirror
    assert t.other_mse[0] > 0 and t.other_mse[1] > 0
    plain = ek.score_samples(samples[3:4], truth[3:4], images, reference_set(images[train_rows], False), train_rows,
                             0.001, xflip=False)
    assert plain.truth_mse[0] > 0.01


def test_group_table_intervals_and_diversity():
    scores = pd.DataFrame({"group": ["held-out"] * 4 + ["training"] * 2, "pair": [0, 0, 1, 1, 2, 2],
                           "closer_to_truth": [True, False, False, False, True, True],
                           "copied": [False, False, True, False, False, False],
                           "truth_mse": [0.1, 0.2, 0.3, 0.4, 0.05, 0.05]})
    t = ek.group_table(scores).set_index("group")
    assert t.loc["held-out", "closer"] == 0.25 and t.loc["training", "closer"] == 1.0
    assert t.loc["held-out", "copied"] == 0.25 and t.loc["training", "copied"] == 0.0
    assert (t.loc["held-out", "closer_lo"], t.loc["held-out", "closer_hi"]) == pytest.approx(rate_interval(1, 4))
    assert t.loc["held-out", "truth_mse_median"] == pytest.approx(0.25)
    assert t.loc["training", "truth_mse_lo"] == t.loc["training", "truth_mse_hi"] == 0.05
    assert t.loc["held-out", "pairs"] == 2
    same = np.repeat(toy_images(1), 3, axis=0)
    assert ek.diversity(same, np.zeros(3)) == 0.0
    two = np.stack([np.zeros((2, 2, 3), np.uint8), np.full((2, 2, 3), 255, np.uint8)])
    assert ek.diversity(two, np.zeros(2)) == pytest.approx(4.0)  # -1 against 1 on the [-1, 1] scale
    assert np.isnan(ek.diversity(two, np.arange(2)))  # one sample per pair: no pairwise distance


def test_choose_pairs_balanced_and_seeded(run):
    cfg, _ = run
    ds = emojidiff.dataset_from_config(cfg, progress=False)
    p = ek.choose_pairs(ds, max_pairs=3, seed=0)
    held, train = p[p.group == "held-out"], p[p.group == "training"]
    assert len(held) == len(train) == 3
    assert (ds.manifest.split.to_numpy()[held.row] == "holdout").all()
    assert (ds.manifest.split.to_numpy()[train.row] == "train").all()
    assert tuple(ds.labels[held.row.iloc[0]]) == (held.a.iloc[0], held.b.iloc[0]) or ds.manifest.n_pairs[
        held.row.iloc[0]] > 1  # a deduplicated row keeps its first pair's parents
    assert p.equals(ek.choose_pairs(ds, max_pairs=3, seed=0))
    every = ek.choose_pairs(ds)
    assert (every.group == "held-out").sum() == (ds.pairs.split == "holdout").sum()


def test_run_kitchen_tables_and_figures(run):
    import matplotlib.figure

    cfg, layout = run
    ds = emojidiff.dataset_from_config(cfg, progress=False)
    r = ek.run_kitchen(cfg, layout, 16, dataset=ds, progress=False)
    assert set(r["summary"].group) == {"held-out", "training"}
    assert r["summary"].samples.tolist() == [4, 4] and "parent_acc_lo" in r["summary"]
    assert len(r["gap"]) == 2 * 2  # two groups x two snapshots
    assert list(r["sweep"].guidance) == [0.0, 2.0] and (r["sweep"].diversity > 0).all()
    assert r["samples"].shape == (8, 32, 32, 3)  # 4 pairs x 2 samples, of the last snapshot
    last = r["last_scores"]
    assert (r["summary_far"].samples.sum() if len(r["summary_far"]) else 0) == (last.truth_gap > ek.FAR_GAP).sum()
    for fig in (ek.plot_gallery(r, ds, rows=2), ek.plot_gap(r["gap"]), ek.plot_sweep(r["sweep"])):
        assert isinstance(fig, matplotlib.figure.Figure)
    assert not any(layout.figures.glob("*.png"))  # plots never save


def test_controls_composer_composes_and_copier_copies(run):
    from emojidiff.evaluation.copies import choose_thresholds

    cfg, _ = run
    ds = emojidiff.dataset_from_config(cfg, progress=False)
    pairs = ek.choose_pairs(ds, seed=0)
    t = ek.group_table(ek.control_scores(ds, pairs, 3, choose_thresholds(ds).copy_mse, seed=1)).set_index("group")
    for g in ("held-out", "training"):
        assert t.loc[f"{g} (composer)", "closer"] == 1.0 and t.loc[f"{g} (composer)", "copied"] == 0.0
        assert t.loc[f"{g} (copier)", "copied"] == 1.0
    assert t.loc["held-out (copier)", "closer"] == 0.0  # a held-out truth is >= twin_mse from every training image


def test_truth_gap_is_the_nearest_other_training_image_or_mirror(run):
    """Brute force: per pair, the smallest MSE from its truth to a training image (or mirror) outside its twin group."""
    cfg, _ = run
    ds = emojidiff.dataset_from_config(cfg, progress=False)
    pairs = ek.choose_pairs(ds, seed=0)
    train_rows = np.flatnonzero((ds.manifest["split"] == "train").to_numpy())
    gaps = ek.truth_gaps(ds, pairs, reference_set(ds.images[train_rows], True), xflip=True)
    group = ds.manifest["twin_group"].to_numpy()
    x = ds.images.astype(np.float64) / 127.5 - 1.0
    for gap, row in zip(gaps, pairs["row"]):
        others = train_rows[group[train_rows] != group[row]]
        d = [min(((x[row] - x[o]) ** 2).mean(), ((x[row] - x[o][:, ::-1]) ** 2).mean()) for o in others]
        assert gap == pytest.approx(min(d), rel=1e-6)
    assert (gaps[pairs.group.to_numpy() == "held-out"] >= 0.003).all()  # the split's twin threshold
