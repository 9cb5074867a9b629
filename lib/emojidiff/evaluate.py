"""Evaluation over training: for each width and EMA snapshot, a fixed set of samples scored by FID, KID, MeanMSE."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from emojidiff.layout import RunLayout
from emojidiff.metrics import fid_from_features, kid_from_features, memorisation_rates, nearest_mse

FID_NOTE = "FID/KID compared only at a fixed sample count (N = {n}); FID is biased upward at small N"


def pick_snapshots(snaps: list, which: str = "all", max_snapshots: int = 0) -> list:
    """The snapshots to evaluate: all or the last; capped to `max_snapshots` evenly spaced, the last always kept."""
    if not snaps or which == "last":
        return snaps[-1:]
    if max_snapshots and len(snaps) > max_snapshots:
        idx = np.unique(np.round(np.linspace(0, len(snaps) - 1, max_snapshots)).astype(int))
        return [snaps[i] for i in idx]
    return list(snaps)


def _feature_metrics(prefix: str, ref: np.ndarray, feats: np.ndarray, cfg) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # subset-size clipping is expected for small profiles
        kid_mean, kid_std = kid_from_features(feats, ref, cfg.eval.kid_subsets, cfg.eval.kid_subset_size)
    return {f"fid_{prefix}": fid_from_features(feats, ref), f"kid_{prefix}_mean": kid_mean,
            f"kid_{prefix}_std": kid_std}


def sample_snapshots(cfg, layout: RunLayout, width: int, progress: bool = True) -> list[tuple[float, Path]]:
    """Sample every snapshot that evaluation scores (cfg.eval) with the profile's fixed N and seed; reuses files."""
    from emojidiff.checkpoint import list_snapshots
    from emojidiff.sampling import sample_checkpoint

    snaps = list_snapshots(layout.train(width))
    if not snaps:
        raise FileNotFoundError(f"no EMA snapshots in {layout.train(width)}: run notebook 02_training "
                                f"(or emojidiff train) first")
    s = cfg.sample
    return [(kimg, sample_checkpoint(path, layout.samples(width), s.num_images, cfg.seed, s.num_steps, s.batch_size,
                                     cfg.device, cfg.train.precision, s.S_churn, s.S_min, s.S_max, s.S_noise,
                                     progress=progress))
            for kimg, path in pick_snapshots(snaps, cfg.eval.snapshots, cfg.eval.max_snapshots)]


def evaluate(cfg, out_dir: str | Path, progress: bool = True) -> pd.DataFrame:
    """Sample each chosen snapshot of each width (reusing existing samples), score it, write metrics/metrics.csv."""
    from emojidiff.checkpoint import list_snapshots
    from emojidiff.dataset import dataset_from_config
    from emojidiff.domain import domain_features, domain_net_for_run
    from emojidiff.features import InceptionUnavailable, inception_features, load_inception
    from emojidiff.metrics import best_device

    layout = RunLayout(out_dir)
    for width in cfg.model.widths:  # fail before the costly parts when training has not run
        if not list_snapshots(layout.train(width)):
            raise FileNotFoundError(f"no EMA snapshots in {layout.train(width)}: run notebook 02_training "
                                    f"(or emojidiff train) first")
    ds = dataset_from_config(cfg, progress=progress)
    train = ds.train_images()
    s, e = cfg.sample, cfg.eval
    notes = {"num_images": s.num_images, "inception": "not requested (eval.inception: false)"}
    ref_domain = ref_inception = inception = dom = None
    if e.domain_features:
        dom, dom_info = domain_net_for_run(cfg, layout, ds, progress=progress)
        ref_domain = domain_features(dom, train)
        notes["domain_net"] = {k: v for k, v in dom_info.items() if k != "classes"}
    if e.inception:
        try:
            inception = load_inception(e.inception_weights, best_device())
            ref_inception = inception_features(train, inception, progress=progress)
            notes["inception"] = "available"
        except InceptionUnavailable as err:
            notes["inception"] = str(err)
            warnings.warn(str(err), stacklevel=2)
    rows = []
    for width in cfg.model.widths:
        for kimg, spath in sample_snapshots(cfg, layout, width, progress):
            with np.load(spath) as f:
                images = f["images"]
            mse2, idx2 = nearest_mse(images, train, k=2)
            row = {"width": width, "kimg": kimg, "num_samples": len(images),
                   **memorisation_rates(mse2, e.copy_ratio, e.copy_mse),
                   "distinct_nearest": int(len(np.unique(idx2[:, 0])))}
            if ref_domain is not None:
                row |= _feature_metrics("domain", ref_domain, domain_features(dom, images), cfg)
            if ref_inception is not None:
                row |= _feature_metrics("inception", ref_inception,
                                        inception_features(images, inception, progress=progress), cfg)
            else:
                row |= {"fid_inception": math.nan, "kid_inception_mean": math.nan, "kid_inception_std": math.nan}
            rows.append(row)
    df = pd.DataFrame(rows)
    layout.metrics.mkdir(parents=True, exist_ok=True)
    df.to_csv(layout.metrics / "metrics.csv", index=False)
    (layout.metrics / "metrics_notes.json").write_text(json.dumps(notes, indent=1))
    plot_over_training(df, layout, s.num_images)
    return df


def plot_over_training(df: pd.DataFrame, layout: RunLayout, num_images: int) -> list[Path]:
    """Seed Figure 4 (FID/KID over training per width) and Figure 5 (MeanMSE/FID/KID of the widest width)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    note = FID_NOTE.format(n=num_images)
    spaces = [sp for sp in ("domain", "inception") if f"fid_{sp}" in df and df[f"fid_{sp}"].notna().any()]
    paths = []
    fig, axes = plt.subplots(len(spaces) or 1, 2, figsize=(10, 3.4 * max(len(spaces), 1)), squeeze=False)
    for r, sp in enumerate(spaces):
        for w, g in df.groupby("width"):
            axes[r, 0].plot(g.kimg, g[f"fid_{sp}"], "o-", label=f"width {w}")
            axes[r, 1].errorbar(g.kimg, g[f"kid_{sp}_mean"], yerr=g[f"kid_{sp}_std"], fmt="o-", label=f"width {w}")
        axes[r, 0].set(title=f"FID ({sp} features)", xlabel="kimg")
        axes[r, 1].set(title=f"KID ({sp} features), mean ± std over subsets", xlabel="kimg")
        axes[r, 0].legend()
    fig.suptitle(f"Figure 4: FID and KID over training per width\n{note}", fontsize=9)
    fig.tight_layout()
    paths.append(layout.figure("fig4_fid_kid_over_training.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    width = int(df.width.max())
    g = df[df.width == width]
    cols = [("mean_mse", "MeanMSE ([-1, 1] scale)")] + [(f"fid_{sp}", f"FID ({sp})") for sp in spaces] + \
        [(f"kid_{sp}_mean", f"KID ({sp})") for sp in spaces]
    fig, axes = plt.subplots(1, len(cols), figsize=(3.4 * len(cols), 3.2), squeeze=False)
    for ax, (c, title) in zip(axes[0], cols):
        ax.plot(g.kimg, g[c], "o-")
        ax.set(title=title, xlabel="kimg")
    fig.suptitle(f"Figure 5: width {width} over training. {note}", fontsize=9)
    fig.tight_layout()
    paths.append(layout.figure("fig5_meanmse_fid_kid_width.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def _settle_kimg(g: pd.DataFrame, col: str, within: float = 0.1) -> float:
    """First kimg from which `col` stays within `within` of its total range above its final value."""
    v = g[col].to_numpy()
    tol = within * (np.nanmax(v) - np.nanmin(v)) + 1e-12
    ok = np.abs(v - v[-1]) <= tol
    first = len(v) - 1
    while first > 0 and ok[first - 1]:
        first -= 1
    return float(g.kimg.iloc[first])


def check_claims(df: pd.DataFrame) -> list[str]:
    """The seed's claims checked on the CSV, in words: FID/KID plateau early while MeanMSE falls; widest is fastest."""
    out = []
    spaces = [sp for sp in ("domain", "inception") if f"fid_{sp}" in df and df[f"fid_{sp}"].notna().all()]
    for w, g in df.sort_values("kimg").groupby("width"):
        if len(g) < 3:
            out.append(f"width {w}: only {len(g)} snapshot(s) evaluated; need 3+ to judge a plateau.")
            continue
        last = g.kimg.iloc[-1]
        for sp in spaces:
            k_fid = _settle_kimg(g, f"fid_{sp}")
            k_kid = _settle_kimg(g, f"kid_{sp}_mean")
            early = max(k_fid, k_kid) <= 0.5 * last
            out.append(f"width {w}, {sp} features: FID settles (within 10% of its range of the final value) at "
                       f"{k_fid:g} kimg and KID at {k_kid:g} of {last:g} kimg: "
                       f"{'an early plateau, as the seed says' if early else 'no early plateau'}.")
            after = g[g.kimg >= max(k_fid, k_kid)]
            drop = 1 - after.mean_mse.iloc[-1] / after.mean_mse.iloc[0]
            out.append(f"width {w}: MeanMSE goes {after.mean_mse.iloc[0]:.4f} -> {after.mean_mse.iloc[-1]:.4f} "
                       f"({drop:+.0%} fall) after FID/KID settle: "
                       f"{'it keeps falling, as the seed says' if drop > 0.05 else 'it does not keep falling'}.")
    widths = sorted(df.width.unique())
    if len(widths) < 2 or not spaces:
        out.append("Widest-converges-faster: not testable here (one width, or no FID); the paper profile has three.")
    else:
        sp = spaces[0]
        settle = {w: _settle_kimg(g.sort_values("kimg"), f"fid_{sp}") for w, g in df.groupby("width")}
        fastest = min(settle, key=settle.get)
        verdict = "the widest converges fastest, as the seed says" if fastest == max(widths) else \
            "the widest is not the fastest"
        finals = ", ".join(f"{df[df.width == w].sort_values('kimg')[f'fid_{sp}'].iloc[-1]:.2f}" for w in widths)
        out.append(f"FID ({sp}) settles at " + ", ".join(f"{settle[w]:g} kimg for width {w}" for w in widths)
                   + f": {verdict}; final FIDs {finals}.")
    return out


def cli_configure(parser) -> None:
    parser.add_argument("--params", required=True, help="profile YAML (params/*.yaml)")
    parser.add_argument("--out", default=None, help="run folder (default outputs/<profile name>)")


def cli_main(args) -> int:
    """Sample and score every chosen EMA snapshot; write metrics/metrics.csv and figures."""
    from emojidiff.config import load_config

    cfg = load_config(args.params)
    df = evaluate(cfg, args.out if args.out is not None else Path("outputs") / cfg.name)
    print(df.to_string(index=False))
    return 0
