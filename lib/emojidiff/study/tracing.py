"""Component tracing: which training emoji each region of a sample is nearest to (patch-wise MSE)."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from emojidiff.data.dataset import describe
from emojidiff.evaluation.copies import reference_set
from emojidiff.images import to_unit_range


@dataclass
class Trace:
    """A sample's component map: per pixel the chosen training emoji (-1: background) and the patch MSE."""

    labels: np.ndarray  # (H, W) training-image index per pixel, -1 for background
    patch_mse: np.ndarray  # (H, W) best patch MSE at each pixel ([-1, 1] scale)
    regions: pd.DataFrame  # one row per chosen emoji: index, mirrored, ref, area share, region MSE, caption
    ref_labels: np.ndarray | None = None  # (H, W) reference entry per pixel (mirrors are entries N..2N-1), -1 bg


def patch_mse_maps(sample: np.ndarray, train: np.ndarray, patch: int = 5) -> torch.Tensor:
    """MSE of the patch centred on each pixel against the same patch of every training image: (N, H, W)."""
    if patch < 1 or patch % 2 == 0:
        raise ValueError(f"patch must be a positive odd number, got {patch}")
    if sample.shape != train.shape[1:]:
        raise ValueError(f"sample {sample.shape} and training images {train.shape[1:]} differ in size")
    x = to_unit_range(sample[None])
    t = to_unit_range(train)
    d = (t - x).square().mean(1, keepdim=True)  # per-pixel squared error, averaged over channels
    return F.avg_pool2d(d, patch, stride=1, padding=patch // 2, count_include_pad=False)[:, 0]


def trace_sample(sample: np.ndarray, train: np.ndarray, manifest: pd.DataFrame | None = None, patch: int = 5,
                 max_regions: int = 6, min_share: float = 0.03, tol: float = 0.005,
                 background: int = 245, xflip: bool = True) -> Trace:
    """Explain a sample with few training emoji: greedily pick the one nearest (within tol) on the most pixels.

    Candidates are the reference of copies.reference_set: the training images and, with xflip, their
    mirrors. Stops after max_regions emoji or when the next would explain less than min_share of the face.
    """
    ref = reference_set(train, xflip)
    maps = patch_mse_maps(sample, ref.images, patch)  # (R, H, W)
    h, w = maps.shape[1:]
    best, _ = maps.min(0)
    fg = torch.from_numpy(~(sample >= background).all(-1))  # white background is explained by any emoji
    # a training emoji is a candidate at a pixel when its patch is as near as the best, up to tol (ties are common:
    # every fusion A+* shares A's eyes); greedy set cover gives coherent regions instead of arbitrary tie-breaks
    cand = (maps <= best + tol + 0.1 * best) & fg
    labels = torch.full((h, w), -1, dtype=torch.long)
    left = fg.clone()
    chosen = []
    min_pixels = max(1, int(min_share * int(fg.sum())))
    for _ in range(max_regions):
        cover = (cand & left).flatten(1).sum(1)
        n = int(cover.argmax())
        if cover[n] < min_pixels and chosen:
            break
        if cover[n] == 0:
            break
        labels[cand[n] & left] = n
        left &= ~cand[n]
        chosen.append(n)
    if left.any() and chosen:  # seams and leftovers go to the chosen emoji that is nearest there
        sub = torch.tensor(chosen)
        labels[left] = sub[maps[sub].argmin(0)][left]
    rows = [{"ref": n, "index": int(ref.index[n]), "mirrored": bool(ref.mirrored[n]),
             "pixels": int((labels == n).sum()), "mse": float(maps[n][labels == n].mean())} for n in chosen]
    regions = pd.DataFrame(rows, columns=["ref", "index", "mirrored", "pixels", "mse"])
    regions = regions[regions["pixels"] > 0].sort_values("pixels", ascending=False, ignore_index=True)
    regions["share"] = regions["pixels"] / max(int(fg.sum()), 1)
    regions["caption"] = [describe(manifest, i) + (" (mirror)" if m else "")
                          for i, m in zip(regions["index"], regions["mirrored"])]
    regions["source"] = [_attribute(cand[:, labels == n], manifest, n, ref.index) for n in regions["ref"]]
    ref_labels = labels.numpy()
    src_labels = np.where(ref_labels >= 0, ref.index[np.maximum(ref_labels, 0)], -1)
    return Trace(src_labels, best.numpy(), regions, ref_labels)


def _attribute(cand_region: torch.Tensor, manifest: pd.DataFrame | None, n: int, source: np.ndarray,
               support: float = 0.9) -> str:
    """Name the parent face a region comes from: what all emoji nearly as near over the region have in common."""
    if manifest is None or "parent_a" not in manifest:
        return describe(manifest, int(source[n]))
    near = cand_region.float().mean(1) >= support  # emoji that explain (almost) the whole region equally well
    near[n] = True
    rows = manifest.iloc[np.unique(source[near.nonzero()[:, 0].numpy()])]
    a = rows["name_a"] if "name_a" in rows else rows["parent_a"]
    b = rows["name_b"] if "name_b" in rows else rows["parent_b"]
    if len(rows) > 1 and a.nunique() == 1 and b.nunique() > 1:
        return f"{a.iloc[0]} (face, eyes)"  # fusions A+* share A's base and upper pieces
    if len(rows) > 1 and b.nunique() == 1 and a.nunique() > 1:
        return f"{b.iloc[0]} (mouth)"  # fusions *+B share B's lower pieces
    return describe(manifest, int(source[n]))


def plot_trace(sample: np.ndarray, trace: Trace, train: np.ndarray, max_legend: int = 6, title: str | None = None):
    """The sample, its coloured region map with a legend naming the training emoji, the patch-MSE map, the sources.

    Sized for ~1000 px: the three maps on top, the source emoji below in rows of three (mirrors shown mirrored).
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    shown = trace.regions.head(max_legend)
    refs = shown["ref"] if "ref" in shown and trace.ref_labels is not None else shown["index"]
    labels = trace.ref_labels if "ref" in shown and trace.ref_labels is not None else trace.labels
    colours = plt.get_cmap("tab10")(np.arange(len(shown)))
    overlay = np.full(trace.labels.shape + (4,), 0.0)
    for c, n in zip(colours, refs):
        overlay[labels == n] = [*c[:3], 0.6]
    other = (trace.labels >= 0) & (overlay[..., 3] == 0)
    overlay[other] = [0.5, 0.5, 0.5, 0.6]
    grey = sample.mean(-1, keepdims=True).repeat(3, -1).astype(np.uint8)

    k = len(shown)
    rows = 1 + (k + 2) // 3
    fig = plt.figure(figsize=(9.0, 3.0 + 2.9 * (rows - 1)))
    grid = fig.add_gridspec(rows, 3, height_ratios=[3.0] + [2.9] * (rows - 1))
    top = [fig.add_subplot(grid[0, j]) for j in range(3)]
    top[0].imshow(sample, interpolation="nearest")
    top[0].set_title("sample", fontsize=10)
    top[1].imshow(grey, interpolation="nearest")
    top[1].imshow(overlay, interpolation="nearest")
    top[1].set_title("nearest emoji per region", fontsize=10)
    im = top[2].imshow(trace.patch_mse, cmap="magma", interpolation="nearest")
    top[2].set_title("patch MSE (bright: new)", fontsize=10)
    fig.colorbar(im, ax=top[2], fraction=0.046)
    sources = [fig.add_subplot(grid[1 + j // 3, j % 3]) for j in range(k)]
    for ax, c, (_, r) in zip(sources, colours, shown.iterrows()):
        img = train[int(r["index"])]
        ax.imshow(img[:, ::-1] if r.get("mirrored", False) else img, interpolation="nearest")
        ax.set_title(textwrap.fill(str(r["caption"]), 34) + f"\n{r['share']:.0%} of face, MSE {r['mse']:.3f}",
                     fontsize=8, color=c)
        for s in ax.spines.values():
            s.set_edgecolor(c)
            s.set_linewidth(4)
    for ax in top + sources:
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Patch(color=c, label=src) for c, src in zip(colours, shown["source"])]
    if other.any():
        handles.append(Patch(color="grey", label="other emoji"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 3), fontsize=9, frameon=False,
               title="comes from", title_fontsize=9)
    fig.suptitle(title or "Component tracing: where each part of the sample comes from", fontsize=10)
    fig.tight_layout(rect=(0, 0.1 if rows > 1 else 0.14, 1, 1))
    return fig
