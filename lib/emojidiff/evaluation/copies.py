"""Create or copy? One nearest-neighbour reference (mirrors included), a copy rule calibrated by controls, intervals.

Every sample is compared with the training images and, when training flips images left-right, their mirrors (a
mirrored training image is as much a copy as the image itself), and with the held-out images (and mirrors) the
model never saw. Verdicts: "copy" (nearest training image closer than `copy_mse`), "unseen_fusion" (not a copy,
and a held-out image closer than `hit_mse`), "neither". The thresholds sit between the memoriser control's noise
(MSE 0.001) and the data's nearest held-out-to-training distance, which the twin-aware split keeps >= twin_mse.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from emojidiff.data.dataset import describe, twin_pairs
from emojidiff.evaluation.metrics import nearest_k
from emojidiff.images import from_uint8

VERDICTS = ("copy", "unseen_fusion", "neither")


@dataclass(frozen=True)
class Reference:
    """Images to search (N or 2N), each with the index of its source image and whether it is that image's mirror."""

    images: np.ndarray
    index: np.ndarray
    mirrored: np.ndarray

    def nearest(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per sample: MSE to the nearest reference image, that image's source index, and whether it was a mirror."""
        mse, idx = nearest_k(samples, self.images, k=1)
        return mse[:, 0], self.index[idx[:, 0]], self.mirrored[idx[:, 0]]


def reference_set(train_images: np.ndarray, xflip: bool = True) -> Reference:
    """The training images plus, when the run mirrors (x-flip augmentation), their left-right mirrors."""
    images = np.asarray(train_images)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"reference images must be uint8 NHWC, got {images.dtype} {images.shape}")
    n = len(images)
    if not xflip:
        return Reference(images, np.arange(n), np.zeros(n, bool))
    return Reference(np.concatenate([images, images[:, :, ::-1]]), np.tile(np.arange(n), 2),
                     np.repeat([False, True], n))


@dataclass(frozen=True)
class Thresholds:
    """The copy rule, chosen from the data; written beside the metrics."""

    copy_mse: float  # nearest training image (or mirror) closer than this: a copy
    hit_mse: float  # else a held-out image (or mirror) closer than this: an unseen fusion
    noise_mse: float  # the memoriser control's noise (a copy made imperfectly)
    heldout_gap_mse: float  # smallest MSE between a held-out image and a training image or mirror, in the data
    twin_mse: float | None  # the split's twin threshold (dataset.info["split_rule"])

    def as_dict(self) -> dict:
        return asdict(self)


def choose_thresholds(dataset, xflip: bool = True, noise_mse: float = 0.001) -> Thresholds:
    """Geometric midpoint between the copy noise and the data's held-out-to-training gap (capped at the split's twin
    threshold), both MSE."""
    train, held = dataset.train_images(), dataset.holdout_images()
    twin = (dataset.info.get("split_rule") or {}).get("twin_mse")
    gap = float(reference_set(train, xflip).nearest(held)[0].min()) if len(held) else float(twin or 0.003)
    if min(gap, twin or gap) <= 1.5 * noise_mse:
        raise ValueError(f"a held-out image lies at MSE {gap:.5f} from a training image (or mirror), twin threshold "
                         f"{twin}: too close to the copy noise {noise_mse} for a copy threshold to separate them "
                         "(build with the twin-aware split, twin_mse >= 0.002)")
    # below the twin distance too: a sample nearer a training image than two images the split calls distinct
    cut = math.sqrt(noise_mse * min(gap, twin or gap))
    return Thresholds(copy_mse=cut, hit_mse=cut, noise_mse=noise_mse, heldout_gap_mse=gap, twin_mse=twin)


def classify_samples(samples: np.ndarray, dataset, xflip: bool = True,
                     thresholds: Thresholds | dict | None = None) -> pd.DataFrame:
    """One row per sample: its nearest training and held-out images (mirrors included when xflip) and its verdict.

    Indices are into dataset.train_images() / holdout_images(); *_row are the dataset's manifest rows. The
    thresholds used are in the frame's attrs["thresholds"].
    """
    if thresholds is None:
        thresholds = choose_thresholds(dataset, xflip)
    elif isinstance(thresholds, dict):
        thresholds = Thresholds(**thresholds)
    samples = np.asarray(samples)
    if samples.shape[1:] != dataset.images.shape[1:] or samples.dtype != np.uint8:
        raise ValueError(f"samples must be uint8 {dataset.images.shape[1:]} like dataset.images, got "
                         f"{samples.dtype} {samples.shape[1:]}")
    rows = {s: np.flatnonzero((dataset.manifest["split"] == s).to_numpy()) for s in ("train", "holdout")}
    t_mse, t_idx, t_mir = reference_set(dataset.images[rows["train"]], xflip).nearest(samples)
    out = pd.DataFrame({"nearest_train_mse": t_mse, "nearest_train_index": t_idx,
                        "nearest_train_row": rows["train"][t_idx], "mirrored": t_mir})
    if len(rows["holdout"]):
        h_mse, h_idx, h_mir = reference_set(dataset.images[rows["holdout"]], xflip).nearest(samples)
        out = out.assign(nearest_heldout_mse=h_mse, nearest_heldout_index=h_idx,
                         nearest_heldout_row=rows["holdout"][h_idx], heldout_mirrored=h_mir)
    else:
        out = out.assign(nearest_heldout_mse=np.inf, nearest_heldout_index=-1, nearest_heldout_row=-1,
                         heldout_mirrored=False)
    copy = out["nearest_train_mse"].to_numpy() < thresholds.copy_mse
    hit = ~copy & (out["nearest_heldout_mse"].to_numpy() < thresholds.hit_mse)
    out["verdict"] = np.where(copy, VERDICTS[0], np.where(hit, VERDICTS[1], VERDICTS[2]))
    out.attrs["thresholds"] = thresholds.as_dict()
    return out


def rate_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion k/n (Wilson 1927); (0, 1) when n is 0."""
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + confidence / 2))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    return (0.0 if k == 0 else lo), (1.0 if k == n else hi)  # exact ends, free of rounding


def probe_verdict(hits: int, close: int, holdout_share: float, memoriser_fraction: float = 0.1) -> str:
    """One line from the interval of the held-out share among samples on a real fusion (hits / close).

    A generaliser lands on held-out fusions as often as they occur in the data (holdout_share); a memoriser at most
    memoriser_fraction of that (it copies training images, which the split keeps away from held-out ones).
    """
    if close == 0:
        return f"undecided at this sample count: no sample lands on a real fusion ({holdout_share:.1%} held out)"
    lo, hi = rate_interval(hits, close)
    gen = lo <= holdout_share <= hi
    mem = lo <= memoriser_fraction * holdout_share
    what = (f"held-out share of the {close} samples on a real fusion {hits / close:.1%} "
            f"[95% CI {lo:.1%}, {hi:.1%}] vs {holdout_share:.1%} of the data")
    if gen and not mem:
        return f"consistent with a generaliser: {what}"
    if mem and not gen:
        return f"consistent with a memoriser: {what}"
    if gen and mem:
        return f"undecided at this sample count: {what}"
    if lo > holdout_share:
        return f"not a draw of the data: more held-out hits than a generaliser would make: {what}"
    return f"between a memoriser and a generaliser: {what}"


def summarise(table: pd.DataFrame, holdout_share: float) -> dict:
    """Flat rates with Wilson intervals for metrics.csv: n, <verdict>_rate/_lo/_hi, held-out share of hits, verdict."""
    n = len(table)
    counts = table["verdict"].value_counts()
    out: dict = {"n": n}
    for v in VERDICTS:
        k = int(counts.get(v, 0))
        lo, hi = rate_interval(k, n)
        out.update({f"{v}_rate": k / n if n else float("nan"), f"{v}_lo": lo, f"{v}_hi": hi})
    hits, close = int(counts.get("unseen_fusion", 0)), int(counts.get("copy", 0) + counts.get("unseen_fusion", 0))
    lo, hi = rate_interval(hits, close)
    out.update({"holdout_of_close": hits / close if close else float("nan"), "holdout_of_close_lo": lo,
                "holdout_of_close_hi": hi, "holdout_share": holdout_share,
                "mirrored_copy_rate": float((table["mirrored"] & (table["verdict"] == "copy")).mean()) if n else 0.0,
                "mean_mse": float(table["nearest_train_mse"].mean()) if n else float("nan"),
                "verdict_line": probe_verdict(hits, close, holdout_share)})
    return out


def holdout_share(dataset) -> float:
    """Share of the dataset's images that are held out."""
    return float((dataset.manifest["split"] == "holdout").mean())


# --- controls: sample sets whose right answer is known ---

def with_noise(images: np.ndarray, noise_mse: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise of the given MSE on the [-1, 1] scale (sigma in grey levels = sqrt(mse) * 127.5), rounded."""
    x = images.astype(np.float64) + rng.normal(0.0, math.sqrt(noise_mse) * 127.5, images.shape)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def memoriser_control(dataset, n: int | None = None, noise_mse: float = 0.001, seed: int = 0) -> np.ndarray:
    """Training images (n drawn, default all), half of them mirrored, plus Gaussian noise: all copies."""
    rng = np.random.default_rng(seed)
    train = dataset.train_images()
    pick = rng.permutation(len(train))[:n] if n else np.arange(len(train))
    x = train[pick].copy()
    flip = rng.random(len(x)) < 0.5
    x[flip] = x[flip][:, :, ::-1]
    return with_noise(x, noise_mse, rng)


def generaliser_control(dataset) -> np.ndarray:
    """The held-out images: fusions of the data distribution the model never saw (no copies, all unseen hits)."""
    return dataset.holdout_images()


def ideal_generaliser_control(dataset, n: int = 500, noise_mse: float = 0.001, seed: int = 0) -> np.ndarray:
    """A draw from the whole data distribution (training and held-out images, half mirrored, noisy): the probe's
    reference, landing on held-out fusions as often as they occur in the data."""
    rng = np.random.default_rng(seed)
    x = dataset.images[rng.integers(0, len(dataset), n)].copy()
    flip = rng.random(n) < 0.5
    x[flip] = x[flip][:, :, ::-1]
    return with_noise(x, noise_mse, rng)


def nonsense_control(dataset, n: int = 200, seed: int = 0, mix: int = 4) -> np.ndarray:
    """Half uniform noise, half blurred means of `mix` random images: neither copies nor fusions."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    shape = dataset.images.shape[1:]
    noise = rng.integers(0, 256, (n // 2, *shape), dtype=np.uint8)
    means = dataset.images[rng.integers(0, len(dataset), (n - n // 2, mix))].astype(np.float64).mean(1)
    blurred = gaussian_filter(means, sigma=(0, 1.5, 1.5, 0))
    return np.concatenate([noise, np.clip(np.round(blurred), 0, 255).astype(np.uint8)])


def control_table(dataset, xflip: bool = True, thresholds: Thresholds | None = None, seed: int = 0) -> pd.DataFrame:
    """The controls' rates with intervals (one row each), scored with the same rule as the model's samples."""
    thresholds = thresholds or choose_thresholds(dataset, xflip)
    sets = {"memoriser": memoriser_control(dataset, seed=seed), "generaliser": generaliser_control(dataset),
            "ideal generaliser": ideal_generaliser_control(dataset, seed=seed),
            "nonsense": nonsense_control(dataset, seed=seed)}
    share = holdout_share(dataset)
    rows = [{"set": name, **summarise(classify_samples(x, dataset, xflip, thresholds), share)}
            for name, x in sets.items() if len(x)]
    return pd.DataFrame(rows)


def verdict_table(sample_sets, dataset, xflip: bool = True, thresholds: Thresholds | None = None) -> pd.DataFrame:
    """Rates with intervals for each (width, kimg, samples) set: one row per width and snapshot."""
    from tqdm.auto import tqdm

    thresholds = thresholds or choose_thresholds(dataset, xflip)
    share = holdout_share(dataset)
    rows = [{"set": f"width {w}", "width": w, "kimg": k,
             **summarise(classify_samples(s, dataset, xflip, thresholds), share)}
            for w, k, s in tqdm(list(sample_sets), desc="copy verdicts")]
    return pd.DataFrame(rows)


def plot_rates(table: pd.DataFrame, title: str | None = None):
    """Copy, unseen-fusion and neither rates with 95% intervals, one group of bars per row of `table` (by `set`)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(table) + 2), 3.6))
    x = np.arange(len(table))
    for j, (v, c) in enumerate(zip(VERDICTS, ["tab:red", "tab:green", "tab:gray"])):
        rate = table[f"{v}_rate"].to_numpy()
        err = np.stack([rate - table[f"{v}_lo"].to_numpy(), table[f"{v}_hi"].to_numpy() - rate])
        ax.bar(x + (j - 1) * 0.27, rate, 0.27, yerr=err, capsize=3, color=c, label=v)
    ax.set_xticks(x, [f"{s}\n(n={n})" for s, n in zip(table["set"], table["n"])], fontsize=9)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share of samples (95% Wilson interval)")
    ax.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    ax.set_title(title or "Copies, unseen fusions, neither: controls beside the model", fontsize=10)
    fig.tight_layout()
    return fig


def plot_holdout_of_close(table: pd.DataFrame):
    """The held-out share among samples on a real fusion over training, per width, with intervals and the data's."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    for (w, rows), c in zip(table.groupby("width"), plt.get_cmap("tab10").colors):
        rows = rows.sort_values("kimg")
        ax.plot(rows["kimg"], rows["holdout_of_close"], "o-", color=c, label=f"width {w}")
        ax.fill_between(rows["kimg"], rows["holdout_of_close_lo"], rows["holdout_of_close_hi"], color=c, alpha=0.2)
    ax.axhline(table["holdout_share"].iloc[0], color="k", ls="--", label="held-out share of the data (generaliser)")
    ax.set_xlabel("training progress (kimg)")
    ax.set_ylabel("held-out share of copies + hits")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("Do samples land on fusions the model never saw? (95% intervals)", fontsize=10)
    fig.tight_layout()
    return fig


def twin_distances(dataset, xflip: bool = True) -> pd.DataFrame:
    """Each held-out image's nearest training image (mirrors included): held-out index, train index, MSE, mirror."""
    mse, idx, mir = reference_set(dataset.train_images(), xflip).nearest(dataset.holdout_images())
    return pd.DataFrame({"holdout_index": np.arange(len(mse)), "train_index": idx, "mse": mse, "mirrored": mir})


def threshold_pairs(dataset, xflip: bool = True, n: int = 4) -> pd.DataFrame:
    """Pairs of images either side of the twin threshold: the n farthest linked twins and the n nearest unlinked."""
    twin = (dataset.info.get("split_rule") or {}).get("twin_mse", 0.003)
    pairs = twin_pairs(dataset.images, 2 * twin, mirrors=xflip)
    x = from_uint8(dataset.images, np.float64)
    direct = ((x[pairs[:, 0]] - x[pairs[:, 1]]) ** 2).mean((1, 2, 3))
    mirror = ((x[pairs[:, 0]] - x[pairs[:, 1]][:, :, ::-1]) ** 2).mean((1, 2, 3)) if xflip else direct + np.inf
    t = pd.DataFrame({"a": pairs[:, 0], "b": pairs[:, 1], "mse": np.minimum(direct, mirror),
                      "mirrored": mirror < direct})
    below = t[t["mse"] < twin].nlargest(n, "mse")
    above = t[t["mse"] >= twin].nsmallest(n, "mse")
    return pd.concat([below.assign(linked=True), above.assign(linked=False)], ignore_index=True)


def plot_twin_distances(dist: pd.DataFrame, twin_mse: float, copy_mse: float | None = None, bins: int = 50):
    """Histogram of held-out images' nearest-training MSE (log scale) with the twin threshold marked."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.4))
    v = np.maximum(dist["mse"].to_numpy(), 1e-5)
    ax.hist(v, bins=np.geomspace(min(v.min(), twin_mse) * 0.9, v.max() * 1.1, bins), color="tab:blue")
    ax.axvline(twin_mse, color="k", ls="--", label=f"twin threshold {twin_mse:g}")
    if copy_mse is not None:
        ax.axvline(copy_mse, color="tab:red", ls=":", label=f"copy threshold {copy_mse:.4f}")
    ax.set_xscale("log")
    ax.set_xlabel("MSE to the nearest training image or mirror ([-1, 1] scale)")
    ax.set_ylabel("held-out images")
    ax.legend(fontsize=8)
    ax.set_title(f"How far is each held-out image from training? (n={len(v)}, median {np.median(v):.4f})",
                 fontsize=10)
    fig.tight_layout()
    return fig


def plot_threshold_pairs(pairs: pd.DataFrame, images: np.ndarray, manifest: pd.DataFrame | None = None):
    """Image pairs either side of the twin threshold, one pair per column (the second shown mirrored if matched so)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, max(len(pairs), 1), figsize=(1.3 * max(len(pairs), 1) + 0.6, 4.6), squeeze=False)
    for j, r in enumerate(pairs.itertuples()):
        b = images[r.b][:, ::-1] if r.mirrored else images[r.b]
        for i, (img, k) in enumerate([(images[r.a], r.a), (b, r.b)]):
            axes[i, j].imshow(img, interpolation="nearest")
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            axes[i, j].set_xlabel(textwrap.fill(describe(manifest, k), 18), fontsize=7)
        axes[0, j].set_title(f"{'twins' if r.linked else 'not twins'}\nMSE {r.mse:.5f}" +
                             (" (mirror)" if r.mirrored else ""), fontsize=8)
    fig.suptitle("Either side of the twin threshold", fontsize=10)
    fig.tight_layout()
    return fig
