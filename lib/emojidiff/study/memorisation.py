"""Does it create or copy? Minimum-MSE histograms, quantile examples and the held-out probe."""

from __future__ import annotations

import textwrap
import warnings
from collections.abc import Iterable

import numpy as np
import pandas as pd

from emojidiff.data.dataset import describe
from emojidiff.evaluation.copies import reference_set
from emojidiff.evaluation.metrics import nearest_k
from emojidiff.evaluation.sampling import list_samples, load_samples

OUTCOMES = ("copies_train", "hits_holdout", "neither")




def load_sample_sets(layout, widths, snapshots: str = "all") -> list[tuple[int, float, np.ndarray]]:
    """(width, kimg, uint8 samples) of each width's sample sets on disk, oldest snapshot first ("all" or "last")."""
    if snapshots not in ("all", "last"):
        raise ValueError(f"snapshots must be 'all' or 'last', got {snapshots!r}")
    out, missing = [], []
    for w in widths:
        kimgs = sorted({s["kimg"] for s in list_samples(layout, w)})
        if not kimgs:
            missing.append(w)
        for k in kimgs if snapshots == "all" else kimgs[-1:]:
            out.append((w, k, load_samples(layout, w, k)[0]))
    if missing:
        msg = (f"no samples for width(s) {missing} under {layout.root / 'samples'}: run notebooks 02_training and "
               f"03_samples/04_metrics first (or `emojidiff train` then `emojidiff sample` with the same profile)")
        if not out:
            raise FileNotFoundError(msg)
        warnings.warn(msg, stacklevel=2)
    return out


def split_images(images: np.ndarray, manifest: pd.DataFrame) -> dict[str, tuple[np.ndarray, pd.DataFrame]]:
    """Split a dataset's images and manifest rows into {"train": ..., "holdout": ...}, manifests re-indexed 0..n-1."""
    if len(images) != len(manifest):
        raise ValueError(f"{len(images)} images but {len(manifest)} manifest rows")
    out = {}
    for split in ("train", "holdout"):
        mask = (manifest["split"] == split).to_numpy()
        out[split] = (images[mask], manifest[mask].reset_index(drop=True))
    return out




def close_mask(min_mse, ratio, copy_mse: float, copy_ratio: float, rule: str = "mse") -> np.ndarray:
    """Which samples sit on a real image: MSE under copy_mse, distance ratio under copy_ratio, or both/either."""
    by_mse = np.asarray(min_mse) < copy_mse  # strict, as metrics.memorisation_rates
    by_ratio = np.asarray(ratio) < copy_ratio
    rules = {"mse": by_mse, "ratio": by_ratio, "both": by_mse & by_ratio, "either": by_mse | by_ratio}
    if rule not in rules:
        raise ValueError(f"unknown copy rule {rule!r} (use one of {', '.join(rules)})")
    return rules[rule]


def heldout_probe(samples: np.ndarray, train: np.ndarray, holdout: np.ndarray, copy_mse: float = 0.005,
                  copy_ratio: float = 1 / 3, rule: str = "mse", xflip: bool = True) -> pd.DataFrame:
    """Per sample: its nearest image among training and held-out fusions together (and, with xflip, their mirrors:
    the reference of emojidiff.evaluation.copies.reference_set), and the outcome."""
    if len(holdout) == 0:
        raise ValueError("the held-out probe needs held-out fusions (data.holdout is 0)")
    ref = reference_set(np.concatenate([train, holdout]), xflip)
    mse, idx = nearest_k(samples, ref.images, k=min(3, len(ref.images)))
    src = ref.index[idx]
    # second nearest: the nearest *other* image (an image's own mirror is no second candidate); k=3 suffices since
    # at most two entries (an image and its mirror) share a source
    other = src != src[:, :1]
    other[:, 0] = False
    has = other.any(1)
    second = np.where(has, mse[np.arange(len(mse)), other.argmax(1)], np.inf)
    # Gu et al. 2023: L2 distance ratio nearest / second nearest (sqrt of the MSE ratio)
    ratio = np.sqrt(mse[:, 0] / np.maximum(second, 1e-12))
    in_train = src[:, 0] < len(train)
    close = close_mask(mse[:, 0], ratio, copy_mse, copy_ratio, rule)
    outcome = np.where(close & in_train, OUTCOMES[0], np.where(close, OUTCOMES[1], OUTCOMES[2]))
    return pd.DataFrame({
        "nearest_set": np.where(in_train, "train", "holdout"),
        "nearest_index": np.where(in_train, src[:, 0], src[:, 0] - len(train)),
        "mirrored": ref.mirrored[idx[:, 0]],
        "min_mse": mse[:, 0], "second_mse": second, "ratio": ratio, "close": close, "outcome": outcome,
    })


def probe_shares(probe: pd.DataFrame, n_train: int, n_holdout: int) -> dict:
    """The probe's three shares, plus the held-out share among samples that land on a real fusion vs the data's."""
    n = len(probe)
    counts = probe["outcome"].value_counts()
    shares = {o: counts.get(o, 0) / n for o in OUTCOMES}
    close = counts.get(OUTCOMES[0], 0) + counts.get(OUTCOMES[1], 0)
    return {
        "n": n, **{k: float(v) for k, v in shares.items()},
        # a model that learnt the data distribution lands on held-out fusions as often as they occur in the data;
        # a memoriser (almost) never does
        "holdout_of_close": float(counts.get(OUTCOMES[1], 0) / close) if close else float("nan"),
        "nearest_holdout": float((probe["nearest_set"] == "holdout").mean()),
        "holdout_share": n_holdout / (n_train + n_holdout),
        "mean_mse": float(probe["min_mse"].mean()),
    }


def probe_table(sample_sets: Iterable[tuple[int, float | None, np.ndarray]], train: np.ndarray,
                holdout: np.ndarray, **probe_kwargs) -> pd.DataFrame:
    """The probe's shares for each (width, kimg, samples) set: one row per width and snapshot (mirrors: xflip)."""
    from tqdm.auto import tqdm

    rows = []
    for width, kimg, samples in tqdm(list(sample_sets), desc="held-out probe"):
        probe = heldout_probe(samples, train, holdout, **probe_kwargs)
        rows.append({"width": width, "kimg": kimg, **probe_shares(probe, len(train), len(holdout))})
    return pd.DataFrame(rows)


def plot_min_mse_histograms(min_mse: dict, bins: int = 40, copy_mse: float | None = None, ax=None):
    """Seed Figure 6: the distribution of each sample's minimum MSE to the training set, one histogram per width."""
    import matplotlib.pyplot as plt

    if not min_mse:
        raise ValueError("no minimum-MSE values to plot")
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.5))
    hi = max(float(np.max(v)) for v in min_mse.values())
    edges = np.linspace(0, hi * 1.02 + 1e-9, bins + 1)
    for label, values in min_mse.items():
        values = np.asarray(values)
        ax.hist(values, bins=edges, histtype="step", lw=2, density=True,
                label=f"width {label}: median {np.median(values):.4f} (n={len(values)})")
    if copy_mse is not None:
        ax.axvline(copy_mse, color="k", ls="--", lw=1, label=f"copy threshold {copy_mse:g}")
    ax.set_xlabel("minimum MSE to the training set ([-1, 1] scale)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    ax.set_title("How far is each sample from its nearest training emoji?")
    ax.figure.tight_layout()
    return ax.figure


def last_snapshot(sets: Iterable[tuple[int, float, np.ndarray]]) -> dict[int, np.ndarray]:
    """Each width's samples at its last snapshot, from load_sample_sets' (width, kimg, samples) triples."""
    last: dict[int, tuple[float, np.ndarray]] = {}
    for w, kimg, samples in sets:
        if w not in last or kimg > last[w][0]:
            last[w] = (kimg, samples)
    return {w: s for w, (_, s) in last.items()}


def quantile_picks(min_mse, quantiles=(0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)) -> np.ndarray:
    """Indices of the samples at the given quantiles of the minimum MSE (nearest rank)."""
    order = np.argsort(np.asarray(min_mse), kind="stable")
    ranks = np.round(np.asarray(quantiles) * (len(order) - 1)).astype(int)
    return order[ranks]


def plot_quantile_examples(samples, train, min_mse, nearest_idx, manifest=None,
                           quantiles=(0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0), title: str | None = None,
                           mirrored=None):
    """Samples at quantiles of the minimum MSE (top row) above their nearest training emoji (bottom row; shown
    mirrored where the nearest reference image was a mirror)."""
    import matplotlib.pyplot as plt

    picks = quantile_picks(min_mse, quantiles)
    # sized for ~1000 px at notebook width, so 9-pt parent names stay readable
    fig, axes = plt.subplots(2, len(picks), figsize=(1.45 * len(picks), 4.4), squeeze=False)
    for j, (q, i) in enumerate(zip(quantiles, picks)):
        nn = int(np.asarray(nearest_idx)[i])
        flip = bool(np.asarray(mirrored)[i]) if mirrored is not None else False
        axes[0, j].imshow(samples[i], interpolation="nearest")
        axes[0, j].set_title(f"q={q:g}\nMSE {min_mse[i]:.4f}", fontsize=9)
        axes[1, j].imshow(train[nn][:, ::-1] if flip else train[nn], interpolation="nearest")
        caption = describe(manifest, nn, sep=" + ") + (" (mirror)" if flip else "")
        axes[1, j].set_title(textwrap.fill(caption, 16), fontsize=8, va="top", y=-0.08)
        for ax in axes[:, j]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("sample", fontsize=9)
    axes[1, 0].set_ylabel("nearest train", fontsize=9)
    fig.suptitle(title or "Samples at quantiles of the minimum MSE, above their nearest training emoji", fontsize=10)
    fig.tight_layout()
    return fig


def plot_probe(table: pd.DataFrame):
    """The probe's three shares per width (last snapshot) and over training, with the held-out share of the data."""
    import matplotlib.pyplot as plt

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 3.6))
    last = table.sort_values("kimg", na_position="first").groupby("width").tail(1).set_index("width")
    last[list(OUTCOMES)].plot.bar(stacked=True, ax=ax0, color=["tab:red", "tab:green", "tab:gray"], rot=0)
    ax0.set_ylabel("share of samples")
    ax0.set_title("nearest real fusion: copied, held-out hit, or neither")
    for (w, row), c in zip(table.groupby("width"), plt.get_cmap("tab10").colors):
        ax1.plot(row["kimg"], row["holdout_of_close"], "o-", color=c, label=f"width {w}: held-out share of hits")
        ax1.plot(row["kimg"], row["nearest_holdout"], "x:", color=c, label=f"width {w}: nearest is held-out")
    ax1.axhline(table["holdout_share"].iloc[0], color="k", ls="--", label="held-out share of the data")
    ax1.set_xlabel("training progress (kimg)")
    ax1.set_ylabel("share")
    ax1.set_title("Do samples land on fusions the model never saw?")
    ax1.legend(fontsize=7)
    fig.tight_layout()
    return fig
