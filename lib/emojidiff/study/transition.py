"""The transition study (notebook 08): for each N of the ladder, two models on disjoint subsets, scored and plotted.

Both models of an N share every hyper-parameter and seed (initial weights, noise, data order): only their images
differ. They train through `train_width` (so a killed run resumes), are sampled at every EMA snapshot from the same
noise seeds (`sample_checkpoint`, which reuses finished sets), and scored by evaluation/transition.py. The known
answer beside them: the ideal memorisers of the two subsets, sampled from the same seeds and scored alike.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from emojidiff.config import Config
from emojidiff.data.dataset import measure_sigma_data
from emojidiff.evaluation import transition as tr
from emojidiff.evaluation.copies import choose_thresholds
from emojidiff.evaluation.evaluate import memoriser_samples
from emojidiff.evaluation.sampling import list_samples, sample_checkpoint
from emojidiff.images import make_grid
from emojidiff.layout import RunLayout
from emojidiff.training.batches import TrainingData
from emojidiff.training.checkpoint import list_snapshots
from emojidiff.training.train import train_width

SIDES = ("a", "b")


def model_config(cfg: Config, duration_kimg: float, sigma_data: float | None = None) -> Config:
    """The profile for one transition model: unconditional, width transition.width, `duration_kimg` long, with
    transition.snapshots evenly spaced EMA snapshots (none thinned away); `sigma_data` fixes EDM's sigma_data, so
    both models of an N use the same value rather than each measuring its own subset."""
    t = cfg.transition
    snap = duration_kimg / t.snapshots
    model = replace(cfg.model, widths=[t.width], conditional=False, label_dim=0,  # the test is unconditional
                    sigma_data=cfg.model.sigma_data if sigma_data is None else sigma_data)
    train = replace(cfg.train, duration_kimg=duration_kimg, snapshot_kimg=snap,
                    checkpoint_kimg=min(cfg.train.checkpoint_kimg or snap, snap),
                    max_snapshots=max(cfg.train.max_snapshots, t.snapshots + 1))
    return replace(cfg, model=model, train=train)


def model_layout(layout: RunLayout, n: int, side: str) -> RunLayout:
    """The run folder of model `side` ("a" or "b") at size n: <run>/transition/N<n>/<side>/."""
    return RunLayout(layout.root / "transition" / f"N{n}" / side)


def plan(cfg: Config, train_groups: np.ndarray) -> list[tuple[int, float]]:
    """(N, training kimg) per ladder entry, 0 resolved to the largest size, in increasing N."""
    t = cfg.transition
    tr.resolve_ladder(t.ladder, train_groups, cfg.seed)  # refuses sizes above the largest
    top = tr.largest_size(train_groups, cfg.seed)
    kimg = {}
    for n, k in zip(t.ladder, t.duration_kimg):
        kimg.setdefault(n or top, k)  # 0 is the largest; an explicit size equal to it wins if listed first
    return sorted(kimg.items())


def train_groups(ds) -> np.ndarray:
    """The twin group of each training image, aligned with ds.train_images()."""
    return ds.manifest.loc[ds.manifest["split"] == "train", "twin_group"].to_numpy()


def run_transition(cfg: Config, layout: RunLayout, ds, progress: bool = True) -> pd.DataFrame:
    """Train, sample and score both models of every N; returns (and writes metrics/transition.csv) one row per N
    and snapshot. Finished models and sample sets are reused, so a killed run continues where it stopped."""
    if not cfg.transition.ladder:
        raise ValueError("transition.ladder is empty: this profile runs no transition study (see "
                         "params/transition.yaml)")
    images, groups, xflip = ds.train_images(), train_groups(ds), cfg.train.xflip
    copy_mse = choose_thresholds(ds, xflip).copy_mse
    random_mse = tr.random_pair_mse(images, seed=cfg.seed)
    sigma_data = cfg.model.sigma_data or measure_sigma_data(images)  # the whole training split's, for every model
    sample_cfg = replace(cfg.sample, num_images=cfg.transition.samples, guidance=1.0)
    width, rows = cfg.transition.width, []
    steps = plan(cfg, groups)
    for n, kimg in tqdm(steps, desc="transition N", disable=not progress):
        subsets = tr.disjoint_subsets(groups, n, cfg.seed)
        mcfg = model_config(cfg, kimg, sigma_data)
        sets = {}
        for side, idx in zip(SIDES, subsets):
            sub = model_layout(layout, n, side)
            sub.root.mkdir(parents=True, exist_ok=True)
            np.save(sub.root / "subset.npy", idx)  # which training images (indices into ds.train_images())
            train_width(mcfg, sub, width, data=TrainingData(images[idx]), progress=progress)
            sets[side] = {k: sample_checkpoint(p, sub.samples(width), sample_cfg, cfg.seed, cfg.device,
                                               cfg.train.precision, progress=False)
                          for k, p in list_snapshots(sub.train(width))}
        control = memoriser_control(replace(cfg, sample=sample_cfg), layout, n, images, subsets, copy_mse, random_mse)
        for k in sorted(set(sets["a"]) & set(sets["b"])):
            a, b = (_load(sets[s][k]) for s in SIDES)
            row = tr.compare_models(a, b, images[subsets[0]], images[subsets[1]], copy_mse, random_mse, xflip)
            rows.append({"N": n, "kimg": k, "epochs": k * 1000 / n, **row, **control})
    table = pd.DataFrame(rows)
    layout.metrics.mkdir(parents=True, exist_ok=True)
    table.to_csv(layout.metrics / "transition.csv", index=False)
    return table


def memoriser_control(cfg: Config, layout: RunLayout, n: int, images: np.ndarray, subsets, copy_mse: float,
                      random_mse: float) -> dict:
    """The perfect-copier pair at size n: the two subsets' ideal memorisers sampled from the models' noise seeds
    (cfg.sample) and scored like the models, as `memoriser_<score>` columns; drawn once, kept beside each model."""
    a, b = (memoriser_samples(cfg, model_layout(layout, n, side), images[idx], progress=False)[0]
            for side, idx in zip(SIDES, subsets))
    row = tr.compare_models(a, b, images[subsets[0]], images[subsets[1]], copy_mse, random_mse, cfg.train.xflip)
    return {f"memoriser_{key}": row[key] for key in ("disagreement_ratio", "copy_own", "copy_other")}


def _load(path: Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as f:
        return f["images"]


def load_samples(layout: RunLayout, cfg: Config, n: int, kimg: float | None = None) -> dict[str, np.ndarray]:
    """Both models' samples at size n and snapshot kimg (None: the last), keyed "a" and "b"."""
    out = {}
    for side in SIDES:
        sets = [s for s in list_samples(model_layout(layout, n, side), cfg.transition.width)
                if kimg is None or abs(s["kimg"] - kimg) < 1e-6]
        if not sets:
            raise FileNotFoundError(f"no samples of model {side} at N={n}" + (f", {kimg} kimg" if kimg else "")
                                    + ": run run_transition first")
        out[side] = _load(sets[-1]["path"])
    return out


def final_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Each N's row at its last snapshot."""
    return table.sort_values("kimg").groupby("N").tail(1).sort_values("N")


def plot_transition(table: pd.DataFrame):
    """Two-model disagreement (ratio to random training pairs, +-2 s.e.) and copy rates against N, last snapshots."""
    import matplotlib.pyplot as plt

    last = final_rows(table)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ratio_se = 2 * last["disagreement_se"] / last["random_pair_mse"]
    ax.errorbar(last["N"], last["disagreement_ratio"], yerr=ratio_se, marker="o", capsize=3)
    ax.axhline(1.0, color="grey", ls="--", lw=1, label="two random training images")
    if "memoriser_disagreement_ratio" in last:  # tables written before the control have no such column
        ax.plot(last["N"], last["memoriser_disagreement_ratio"], color="black", ls=":", marker="x",
                label="two ideal memorisers (perfect copiers)")
    ax.set(xscale="log", xlabel="training images per model (N)", ylabel="MSE(model A, model B) / random pairs",
           title="Same noise, disjoint data: disagreement", ylim=(0, None))
    ax.legend(fontsize=8)
    for key, label in (("copy_own", "copies of its own subset"), ("copy_other", "copies of the other's subset")):
        ax2.plot(last["N"], last[key], marker="o", label=label)
    if "memoriser_copy_own" in last:
        ax2.plot(last["N"], last["memoriser_copy_own"], color="black", ls=":", marker="x",
                 label="ideal memorisers, own subset")
    ax2.set(xscale="log", xlabel="training images per model (N)", ylabel="share of samples", ylim=(-0.02, 1.02),
            title="Copy rates (mean of the two models)")
    ax2.legend(fontsize=8)
    for a in (ax, ax2):  # the ladder's own sizes as ticks, not powers of ten
        a.set_xticks(last["N"].tolist(), [str(n) for n in last["N"]])
        a.minorticks_off()
    fig.tight_layout()
    return fig


def critical(table: pd.DataFrame, level: float = 0.5) -> dict:
    """The critical N of the last snapshots (evaluation.transition.critical_size), with the disagreement measured
    against the two ideal memorisers' at the same N where the table has them: a perfect copier's own ratio falls
    with N (0.94 at N=16, 0.46 at 1,708 on the Noto core set), so a fixed level alone would call it a generaliser."""
    last = final_rows(table)
    scale = last["random_pair_mse"]
    if "memoriser_disagreement_ratio" in last:
        scale = scale * last["memoriser_disagreement_ratio"]
    found = tr.critical_size(last["N"], last["disagreement"] / scale, last["disagreement_se"] / scale, level)
    if "memoriser_disagreement_ratio" in last:
        found["text"] += " [ratio relative to the ideal memorisers' at each N]"
    return found


def by_epochs(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (N, snapshot) in increasing epochs: the disagreement ratio with its s.e., the same relative to the
    ideal memorisers' at that N (where the table has them), and the own-subset copy rate. Memorising is a matter of
    epochs as much as of N, so sizes are compared here at matched epochs, not at their last snapshots."""
    out = table[["N", "kimg", "epochs", "disagreement_ratio", "copy_own", "copy_other", "mean_mse"]].copy()
    out["ratio_se"] = table["disagreement_se"] / table["random_pair_mse"]
    if "memoriser_disagreement_ratio" in table:
        out["of_memoriser"] = table["disagreement_ratio"] / table["memoriser_disagreement_ratio"]
    return out.sort_values(["N", "epochs"]).reset_index(drop=True)


def plot_by_epochs(table: pd.DataFrame):
    """Disagreement ratio (+-2 s.e.) and own-subset copy rate against epochs, one line per N; dotted: each N's ideal
    memorisers (the ratio a perfect copier reaches)."""
    import matplotlib.pyplot as plt

    rows = by_epochs(table)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, (n, r) in enumerate(rows.groupby("N")):
        colour = f"C{i}"
        ax.errorbar(r["epochs"], r["disagreement_ratio"], yerr=2 * r["ratio_se"], marker="o", capsize=3,
                    color=colour, label=f"N={n}")
        if "memoriser_disagreement_ratio" in table:
            ax.axhline(table.loc[table["N"] == n, "memoriser_disagreement_ratio"].iloc[0], color=colour, ls=":",
                       lw=1)
        ax2.plot(r["epochs"], r["copy_own"], marker="o", color=colour, label=f"N={n}, own subset")
        ax2.plot(r["epochs"], r["copy_other"], marker="x", ls="--", color=colour, label=f"N={n}, other's subset")
    ax.set(xlabel="epochs (images seen / N)", ylabel="MSE(model A, model B) / random pairs", ylim=(0, None),
           title="Disagreement over training (dotted: ideal memorisers)")
    ax2.set(xlabel="epochs (images seen / N)", ylabel="share of samples", ylim=(-0.02, 1.02),
            title="Copy rates (mean of the two models)")
    for a in (ax, ax2):
        a.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_mean_mse(table: pd.DataFrame):
    """MeanMSE against its own subset over training, one line per N (mean of the two models)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for n, rows in table.sort_values("kimg").groupby("N"):
        ax.plot(rows["kimg"], rows["mean_mse"], marker="o", label=f"N={n}")
    ax.set(xlabel="kimg", ylabel="MeanMSE to its own subset", title="MeanMSE over training per N")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_galleries(samples: dict[int, dict[str, np.ndarray]], seeds: int = 8):
    """Per N, two rows: model A's and model B's sample from the same first `seeds` noise seeds."""
    import matplotlib.pyplot as plt


    ns = sorted(samples)
    fig, axes = plt.subplots(len(ns), 1, figsize=(1.1 * seeds, 2.4 * len(ns)), squeeze=False)
    for ax, n in zip(axes[:, 0], ns):
        pair = samples[n]
        k = min(seeds, len(pair["a"]), len(pair["b"]))
        ax.imshow(make_grid(np.concatenate([pair["a"][:k], pair["b"][:k]]), ncols=k, scale=2))
        ax.set_title(f"N={n}: model A (top) and model B (bottom), same seeds", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    return fig
