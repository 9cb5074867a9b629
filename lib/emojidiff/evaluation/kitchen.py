"""Held-out-pair evaluation of a conditional model: does its image of an unseen pair land on the true fusion?

For every held-out pair and as many training pairs (seeded choice), k samples each at the chosen guidance. Per sample:
the MSE to the pair's true fusion (or its mirror, when training mirrors), the MSE to the nearest *other* training
image (not the pair's own image or its mirror), whether its nearest training image is another pair's fusion within
the copy threshold (a copy), and the parents named by the domain classifier. Groups get Wilson intervals (rates) and
a bootstrap interval (median truth MSE). Every plot_* returns a Figure and never saves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from emojidiff.data.dataset import dataset_from_config, face_index, face_table
from emojidiff.data.emoji_sources import render_face, select_faces
from emojidiff.evaluation.copies import Reference, choose_thresholds, rate_interval, reference_set, with_noise
from emojidiff.evaluation.domain import domain_net_for_run
from emojidiff.evaluation.metrics import nearest_k
from emojidiff.images import from_uint8, save_grid, to_unit_range
from emojidiff.model.sampler import generate
from emojidiff.training import checkpoint as ckpt
from emojidiff.training.checkpoint import list_snapshots, pick_snapshots
from emojidiff.training.distributed import resolve_precision

GROUPS = ("held-out", "training")
FAR_GAP = 0.005  # a truth farther than this (MSE) from every other training image and mirror is no near-copy


class Kitchen:
    """A loaded conditional denoiser with its face list: cook(a, b) draws fusions of a with b."""
    def __init__(self, denoiser, faces: pd.DataFrame, num_steps: int = 18, solver: str = "heun",
                 device="cpu", source: str = "the denoiser", autocast: bool = False):
        self.denoiser, self.faces, self.num_steps, self.solver, self.device = denoiser, faces, num_steps, solver, device
        self.autocast = autocast  # bf16 autocast, as sampling does where training used it
        label_dim = getattr(getattr(denoiser, "net", denoiser), "label_dim", 0)
        if not label_dim:
            raise ValueError(f"{source} is unconditional (label_dim 0): the kitchen needs a net trained with "
                             "model.conditional: true")
        if label_dim != len(faces):
            raise ValueError(f"{source} has {label_dim} label classes but its face list has {len(faces)} faces")

    @classmethod
    def load(cls, checkpoint, device="cpu", num_steps: int | None = None, solver: str | None = None,
             precision: str = "fp32") -> Kitchen:
        """From an EMA snapshot, a checkpoint or a training folder; the face list comes from its data settings.

        precision: the profile's train.precision; bf16 (also "auto" where native) samples under bf16 autocast."""

        path = Path(checkpoint)
        denoiser = ckpt.load_denoiser(path, device=device)
        meta_path = path
        if path.is_dir():
            snap = ckpt.latest_good_snapshot(path)
            meta_path = snap[1] if snap else Path(ckpt.latest_good(path)[1]["_json"])
        meta = ckpt.read_meta(meta_path)
        data = meta["data"]
        faces = face_table(data["styles"], data["faces"], data["max_faces"])
        sample = meta.get("sample", {})
        return cls(denoiser, faces, num_steps or sample.get("num_steps", 18), solver or sample.get("solver", "heun"),
                   device, source=str(meta_path),
                   autocast=resolve_precision(precision, torch.device(device)) == torch.bfloat16)

    def index(self, face) -> int:
        """A face's label index (by index, name, emoji character or codepoint)."""
        return face_index(self.faces, face)

    def cook(self, a, b, n: int = 8, guidance: float = 3.0, seed: int = 0) -> np.ndarray:
        """n samples of the fusion (a, b): uint8 (n, H, W, 3); image i's noise is seeded by (seed, i)."""


        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if guidance < 0:
            raise ValueError(f"guidance must be >= 0, got {guidance}")
        labels = torch.tensor([[self.index(a), self.index(b)]], dtype=torch.int64).repeat(n, 1)
        return generate(self.denoiser, n, seed, batch_size=n, num_steps=self.num_steps, device=self.device,
                        solver=self.solver, labels=labels, guidance=float(guidance), dtype=torch.float32,
                        autocast=self.autocast, uint8=True, progress=False)


def _flat(images: np.ndarray) -> np.ndarray:
    return from_uint8(np.asarray(images).reshape(len(images), -1), np.float64)


def pair_mse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row MSE ([-1, 1] scale) of two uint8 NHWC stacks of equal length."""
    return ((_flat(a) - _flat(b)) ** 2).mean(1)


def choose_pairs(dataset, max_pairs: int = 0, seed: int = 0) -> pd.DataFrame:
    """Held-out pairs (all, or a seeded max_pairs) and as many training pairs: group, a, b (face indices), row."""
    p = dataset.pairs
    index = {u: i for i, u in enumerate(dataset.faces["unified"])}
    rng = np.random.default_rng([seed, 0x4B17])
    held = np.flatnonzero((p["split"] == "holdout").to_numpy())
    if max_pairs and len(held) > max_pairs:
        held = np.sort(rng.choice(held, max_pairs, replace=False))
    train = np.flatnonzero((p["split"] == "train").to_numpy())
    train = np.sort(rng.choice(train, min(len(held), len(train)), replace=False))
    out = []
    for group, rows in zip(GROUPS, (held, train)):
        sub = p.iloc[rows]
        out.append(pd.DataFrame({"group": group, "a": sub["parent_a"].map(index).to_numpy(np.int64),
                                 "b": sub["parent_b"].map(index).to_numpy(np.int64),
                                 "row": sub["row"].to_numpy(np.int64), "parent_a": sub["parent_a"].to_numpy(),
                                 "parent_b": sub["parent_b"].to_numpy()}))
    return pd.concat(out, ignore_index=True)


def score_samples(samples: np.ndarray, truth_rows: np.ndarray, images: np.ndarray, reference: Reference,
                  train_rows: np.ndarray, copy_mse: float, xflip: bool = True,
                  twin_group: np.ndarray | None = None) -> pd.DataFrame:
    """One row per sample: truth_mse, other_mse (nearest training image other than the pair's own, mirrors as the
    reference has them), nearest_row, nearest_mse, closer_to_truth, copied.

    `images` are the dataset's rows, `truth_rows` each sample's true-fusion row, `reference` the training images
    (reference.index into `train_rows`, the dataset rows of the training images). With `twin_group` (per dataset row,
    the manifest's column), the truth's near-twins count as the pair's own image too: neither "other" nor a copy."""
    truth_rows = np.asarray(truth_rows, np.int64)
    if len(truth_rows) != len(samples):
        raise ValueError(f"{len(truth_rows)} truth rows for {len(samples)} samples")
    group = np.arange(len(images)) if twin_group is None else np.asarray(twin_group)
    truth = images[truth_rows]
    truth_mse = pair_mse(samples, truth)
    if xflip:  # a model trained on mirrors may draw the mirror of the truth: as right as the truth
        truth_mse = np.minimum(truth_mse, pair_mse(samples, truth[:, :, ::-1]))
    largest = np.bincount(group[train_rows]).max() if len(train_rows) else 1
    k = min(2 * int(largest) + 1, len(reference.images))  # the own group, mirrored, and one more: the first "other"
    mse, j = nearest_k(samples, reference.images, k=k)
    rows = np.asarray(train_rows, np.int64)[reference.index[j]]  # (N, k) dataset rows
    own = group[rows] == group[truth_rows][:, None]
    first_other = np.argmax(~own, axis=1)
    has_other = (~own).any(1)
    other_mse = np.where(has_other, mse[np.arange(len(samples)), first_other], np.inf)
    nearest_row, nearest_mse = rows[:, 0], mse[:, 0]
    return pd.DataFrame({"truth_mse": truth_mse, "other_mse": other_mse, "nearest_row": nearest_row,
                         "nearest_mse": nearest_mse, "nearest_mirrored": reference.mirrored[j[:, 0]],
                         "closer_to_truth": truth_mse < other_mse,
                         "copied": ~own[:, 0] & (nearest_mse < copy_mse)})


def bootstrap_median(x, n_boot: int = 1000, seed: int = 0, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the median."""
    x = np.asarray(x, np.float64)
    if len(x) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    meds = np.median(x[rng.integers(0, len(x), (n_boot, len(x)))], axis=1)
    a = (1 - confidence) / 2
    return float(np.quantile(meds, a)), float(np.quantile(meds, 1 - a))


def group_table(scores: pd.DataFrame, by: list[str] | None = None) -> pd.DataFrame:
    """Per group (and `by`, e.g. kimg): rates with 95% Wilson intervals, median truth MSE with a bootstrap interval."""
    keys = ["group"] + list(by or [])
    rows = []
    for key, g in scores.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        n = len(g)
        rec = dict(zip(keys, key), samples=n, pairs=g["pair"].nunique() if "pair" in g else None)
        cols = [("closer_to_truth", "closer"), ("copied", "copied")]
        if "parents_ok" in g:
            cols += [("parents_ok", "parent_acc"), ("parent_a_ok", "parent_a_acc"), ("parent_b_ok", "parent_b_acc")]
        for col, name in cols:
            hits = int(g[col].sum())
            lo, hi = rate_interval(hits, n)
            rec.update({name: hits / n if n else float("nan"), f"{name}_lo": lo, f"{name}_hi": hi})
        lo, hi = bootstrap_median(g["truth_mse"])
        rec.update(truth_mse_median=float(g["truth_mse"].median()), truth_mse_lo=lo, truth_mse_hi=hi)
        rows.append(rec)
    return pd.DataFrame(rows)


def diversity(samples: np.ndarray, groups: np.ndarray) -> float:
    """Mean over groups (pairs) of the mean pairwise MSE among that group's samples."""
    out = []
    for g in np.unique(groups):
        x = _flat(samples[groups == g])
        if len(x) < 2:
            continue
        d = ((x[:, None] - x[None]) ** 2).mean(-1)
        out.append(d[np.triu_indices(len(x), 1)].mean())
    return float(np.mean(out)) if out else float("nan")


def predict_parents(net, images: np.ndarray, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The domain classifier's parent A and parent B (unified codepoints) of uint8 NHWC images."""


    net.eval()
    pa, pb = [], []
    with torch.no_grad():
        x = to_unit_range(images)
        for s in range(0, len(x), 512):
            a, b = net(x[s:s + 512])
            pa.append(a.argmax(1))
            pb.append(b.argmax(1))
    names = np.asarray(classes, dtype=object)
    return names[torch.cat(pa).numpy()], names[torch.cat(pb).numpy()]


def cook_pairs(kitchen_, pairs: pd.DataFrame, k: int, guidance: float, seed: int, progress: bool = False) -> np.ndarray:
    """k samples per pair (uint8 (len(pairs) * k, H, W, 3), pair-major); pair i's noise is seeded by (seed, i*k+j)."""


    labels = torch.from_numpy(np.repeat(pairs[["a", "b"]].to_numpy(np.int64), k, axis=0))
    return generate(kitchen_.denoiser, len(labels), seed, batch_size=256, num_steps=kitchen_.num_steps,
                    device=kitchen_.device, solver=kitchen_.solver, labels=labels, guidance=float(guidance),
                    dtype=torch.float32, autocast=kitchen_.autocast, uint8=True, progress=progress)


def evaluate_pairs(kitchen_, dataset, pairs: pd.DataFrame, k: int, guidance: float, seed: int, copy_mse: float,
                   xflip: bool = True, parent_net=None, parent_classes=None, reference=None):
    """Sample and score: (scores one row per sample, samples)."""
    train_rows = np.flatnonzero((dataset.manifest["split"] == "train").to_numpy())
    reference = reference or reference_set(dataset.images[train_rows], xflip)
    samples = cook_pairs(kitchen_, pairs, k, guidance, seed)
    pair_id = np.repeat(np.arange(len(pairs)), k)
    scores = score_samples(samples, pairs["row"].to_numpy()[pair_id], dataset.images, reference, train_rows,
                           copy_mse, xflip, dataset.manifest["twin_group"].to_numpy())
    scores.insert(0, "pair", pair_id)
    scores.insert(0, "group", pairs["group"].to_numpy()[pair_id])
    scores["guidance"] = guidance
    if "truth_gap" in pairs:
        scores["truth_gap"] = pairs["truth_gap"].to_numpy()[pair_id]
    if parent_net is not None:
        pa, pb = predict_parents(parent_net, samples, parent_classes)
        scores["parent_a_ok"] = pa == pairs["parent_a"].to_numpy()[pair_id]
        scores["parent_b_ok"] = pb == pairs["parent_b"].to_numpy()[pair_id]
        scores["parents_ok"] = scores["parent_a_ok"] & scores["parent_b_ok"]
    return scores, samples


def truth_gaps(dataset, pairs: pd.DataFrame, reference: Reference, xflip: bool = True) -> np.ndarray:
    """Per pair, the MSE from its true fusion to the nearest other training image (twins and mirrors as scored)."""
    train_rows = np.flatnonzero((dataset.manifest["split"] == "train").to_numpy())
    rows = pairs["row"].to_numpy()
    scored = score_samples(dataset.images[rows], rows, dataset.images, reference, train_rows, 0.0, xflip,
                           dataset.manifest["twin_group"].to_numpy())
    return scored["other_mse"].to_numpy()


def control_scores(dataset, pairs: pd.DataFrame, k: int, copy_mse: float, xflip: bool = True,
                   noise_mse: float = 0.001, seed: int = 0, reference=None) -> pd.DataFrame:
    """Scores of two controls whose answer is known, k per pair: a *composer* draws the pair's true fusion and a
    *copier* the training image nearest to it other than its own, both plus noise of MSE noise_mse."""

    train_rows = np.flatnonzero((dataset.manifest["split"] == "train").to_numpy())
    reference = reference or reference_set(dataset.images[train_rows], xflip)
    pair_id = np.repeat(np.arange(len(pairs)), k)
    truth_rows = pairs["row"].to_numpy()[pair_id]
    group = dataset.manifest["twin_group"].to_numpy()
    # the nearest training image of each truth outside its twin group (a mirror, if nearer, is as good a copy)
    largest = int(np.bincount(group[train_rows]).max())
    _, j = nearest_k(dataset.images[truth_rows], reference.images, k=min(2 * largest + 1, len(reference.images)))
    own = group[train_rows[reference.index[j]]] == group[truth_rows][:, None]
    pick = j[np.arange(len(j)), np.argmax(~own, axis=1)]
    rng = np.random.default_rng([seed, 0xC0])
    out = []
    for name, x in (("composer", dataset.images[truth_rows]), ("copier", reference.images[pick])):
        s = score_samples(with_noise(x, noise_mse, rng), truth_rows, dataset.images, reference, train_rows,
                          copy_mse, xflip, group)
        s.insert(0, "pair", pair_id)
        s.insert(0, "group", [f"{g} ({name})" for g in pairs["group"].to_numpy()[pair_id]])
        out.append(s)
    return pd.concat(out, ignore_index=True)


def run_kitchen(cfg, layout, width: int, dataset=None, progress: bool = True) -> dict:
    """The whole evaluation of one conditional width: tables (per snapshot, sweep) and the last snapshot's samples."""
    kc, xflip = cfg.kitchen, cfg.train.xflip
    ds = dataset if dataset is not None else dataset_from_config(cfg, progress=progress)
    snaps = pick_snapshots(list_snapshots(layout.train(width)), "all", kc.max_snapshots)
    if not snaps:
        raise FileNotFoundError(f"no EMA snapshot in {layout.train(width)}: train first")
    pairs = choose_pairs(ds, kc.max_pairs, cfg.seed)
    copy_mse = choose_thresholds(ds, xflip).copy_mse
    net, info = domain_net_for_run(cfg, layout, ds, progress=progress) if cfg.eval.domain_features else (None, {})
    classes = info.get("classes")
    train_rows = np.flatnonzero((ds.manifest["split"] == "train").to_numpy())
    reference = reference_set(ds.images[train_rows], xflip)
    pairs["truth_gap"] = truth_gaps(ds, pairs, reference, xflip)
    tables, samples = [], None
    for kimg, path in tqdm(snaps, desc=f"kitchen w{width}", disable=not progress):
        kit = Kitchen.load(path, num_steps=kc.num_steps or cfg.sample.num_steps, solver=kc.solver or cfg.sample.solver,
                           precision=cfg.train.precision)
        scores, samples = evaluate_pairs(kit, ds, pairs, kc.samples, kc.guidance, cfg.seed, copy_mse, xflip, net,
                                         classes, reference)
        tables.append(scores.assign(kimg=kimg))
    scores = pd.concat(tables, ignore_index=True)
    sweep_pairs = pairs[pairs.group == GROUPS[0]].head(kc.sweep_pairs)
    sweep = []
    for w in tqdm(kc.sweep, desc="guidance sweep", disable=not progress):
        s, x = evaluate_pairs(kit, ds, sweep_pairs, kc.samples, w, cfg.seed, copy_mse, xflip, net, classes, reference)
        row = group_table(s).iloc[0].to_dict()
        sweep.append({**row, "guidance": w, "diversity": diversity(x, s["pair"].to_numpy())})
    last = scores[scores.kimg == scores.kimg.max()]
    controls = control_scores(ds, pairs, kc.samples, copy_mse, xflip, seed=cfg.seed, reference=reference)
    far = last[last.truth_gap > FAR_GAP]  # pairs whose truth is no near-copy of a training image
    return {"pairs": pairs, "scores": scores, "summary": group_table(last), "controls": group_table(controls),
            "summary_far": group_table(far) if len(far) else group_table(last).iloc[:0],
            "gap": group_table(scores, by=["kimg"]), "sweep": pd.DataFrame(sweep), "samples": samples,
            "last_scores": last.reset_index(drop=True), "copy_mse": copy_mse, "kimg": float(snaps[-1][0]),
            "classifier_holdout": info.get("holdout")}


def parent_images(dataset, size: int) -> np.ndarray:
    """Every face of the dataset's face list rendered alone (first style), uint8 (faces, size, size, 3)."""
    style = dataset.info.get("styles", ["noto"])[0]
    faces = {f.unified: f for f in select_faces("all", style)}
    return np.stack([render_face(style, faces[u], size) for u in dataset.faces["unified"]])


def plot_gallery(result: dict, dataset, group: str = GROUPS[0], rows: int = 8, faces: np.ndarray | None = None):
    """Rows [A, B, true fusion, k samples, nearest training image of the first sample]: a Figure, not saved."""
    import matplotlib.pyplot as plt

    pairs, scores, samples = result["pairs"], result["last_scores"], result["samples"]
    k = int(scores.groupby("pair").size().iloc[0])
    chosen = pairs.index[pairs.group == group][:rows]
    faces = parent_images(dataset, dataset.size) if faces is None else faces
    cols = 3 + k + 1
    fig, axes = plt.subplots(max(len(chosen), 1), cols, figsize=(1.1 * cols, 1.2 * max(len(chosen), 1)),
                             squeeze=False)
    for r, p in enumerate(chosen):
        s = scores[scores.pair == p]
        near = dataset.images[int(s.nearest_row.iloc[0])]
        tiles = [faces[pairs.a[p]], faces[pairs.b[p]], dataset.images[pairs.row[p]],
                 *samples[s.index.to_numpy()], near[:, ::-1] if s.nearest_mirrored.iloc[0] else near]
        titles = ["A", "B", "truth", *[f"{m:.3f}" for m in s.truth_mse], f"near {s.nearest_mse.iloc[0]:.3f}"]
        for c, (im, t) in enumerate(zip(tiles, titles)):
            axes[r, c].imshow(im)
            axes[r, c].set_title(t, fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(f"{group} pairs at {result['kimg']:g} kimg: sample titles are MSE to the truth", fontsize=9)
    fig.tight_layout()
    return fig


def plot_gap(gap: pd.DataFrame):
    """Share closer to the truth than to any other training image, held-out vs training, over snapshots."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for group, g in gap.groupby("group", sort=False):
        axes[0].errorbar(g.kimg, g.closer, yerr=[g.closer - g.closer_lo, g.closer_hi - g.closer], marker="o",
                         capsize=3, label=group)
        axes[1].errorbar(g.kimg, g.truth_mse_median, yerr=[g.truth_mse_median - g.truth_mse_lo,
                                                           g.truth_mse_hi - g.truth_mse_median],
                         marker="o", capsize=3, label=group)
    axes[0].set(xlabel="kimg", ylabel="closer to the true fusion", ylim=(0, 1), title="generalisation gap")
    axes[1].set(xlabel="kimg", ylabel="median MSE to the truth", title="distance to the true fusion")
    axes[0].legend()
    fig.tight_layout()
    return fig


def plot_sweep(sweep: pd.DataFrame):
    """Guidance trade-off: truth MSE and parent accuracy against diversity, one point per w."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    axes[0].plot(sweep.diversity, sweep.truth_mse_median, marker="o")
    has_parents = "parent_acc" in sweep
    if has_parents:
        axes[1].plot(sweep.diversity, sweep.parent_acc, marker="o")
    for _, r in sweep.iterrows():
        axes[0].annotate(f"w={r.guidance:g}", (r.diversity, r.truth_mse_median), fontsize=8)
        if has_parents:
            axes[1].annotate(f"w={r.guidance:g}", (r.diversity, r.parent_acc), fontsize=8)
    axes[0].set(xlabel="diversity (mean pairwise MSE)", ylabel="median MSE to the truth")
    axes[1].set(xlabel="diversity (mean pairwise MSE)", ylabel="parents named right", ylim=(0, 1))
    fig.suptitle("guidance sweep (held-out pairs)", fontsize=9)
    fig.tight_layout()
    return fig


def write_pair(checkpoint, out_dir, a, b, n: int = 8, guidance: float = 3.0, seed: int = 0, device="cpu",
               num_steps: int | None = None, solver: str | None = None) -> Path:
    """`emojidiff sample --pair A B`: n samples of one fusion as <out_dir>/<A>+<B>-w<W>-s<seed>.png and .npz."""
    kit = Kitchen.load(checkpoint, device=device, num_steps=num_steps, solver=solver)
    ia, ib = kit.index(a), kit.index(b)
    images = kit.cook(ia, ib, n=n, guidance=guidance, seed=seed)
    names = kit.faces["name"]
    stem = Path(out_dir) / f"{names.iloc[ia]}+{names.iloc[ib]}-w{guidance:g}-s{seed}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    np.savez(stem.with_suffix(".npz"), images=images, labels=np.array([ia, ib]), guidance=guidance, seed=seed,
             checkpoint=str(checkpoint))
    save_grid(stem.with_suffix(".png"), images, ncols=min(n, 8), scale=2)
    return stem.with_suffix(".png")
