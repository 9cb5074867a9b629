"""Evaluation over training: per width and EMA snapshot, FID/KID with their floors, copy rates, memoriser distance."""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from emojidiff.config import Config, load_config
from emojidiff.data.dataset import dataset_from_config
from emojidiff.evaluation.copies import (
    VERDICTS,
    choose_thresholds,
    classify_samples,
    holdout_share,
    rate_interval,
    summarise,
)
from emojidiff.evaluation.domain import domain_features, domain_net_for_run
from emojidiff.evaluation.features import InceptionUnavailable, inception_features, load_inception
from emojidiff.evaluation.ideal import ideal_memoriser
from emojidiff.evaluation.metrics import best_device, fid_from_features, fid_kid_floors, kid_from_features, paired_mse
from emojidiff.evaluation.sampling import DEFAULT_SOLVER, sample_snapshots, sampler_options
from emojidiff.layout import RunLayout
from emojidiff.model.sampler import generate
from emojidiff.training.checkpoint import list_snapshots
from emojidiff.training.distributed import resolve_device

FID_NOTE = "FID/KID compared only at a fixed sample count (N = {n}); FID is biased upward at small N"


def _feature_metrics(prefix: str, ref: np.ndarray, feats: np.ndarray, cfg) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # clipping is recorded in kid_subset_size and warned once by evaluate()
        kid_mean, kid_std, used = kid_from_features(feats, ref, cfg.eval.kid_subsets, cfg.eval.kid_subset_size,
                                                    return_subset_size=True)
    return {f"fid_{prefix}": fid_from_features(feats, ref), f"kid_{prefix}_mean": kid_mean,
            f"kid_{prefix}_std": kid_std, "kid_subset_size": used}


def _floor_columns(prefix: str, floors: dict) -> dict:
    """fid_kid_floors' output as metrics.csv columns: fid_<space>_floor_train, kid_<space>_floor_holdout, ..."""
    out = {f"{m}_{prefix}_floor_{w}": floors.get(f"{m}_floor_{w}", math.nan)
           for m in ("fid", "kid") for w in ("train", "holdout")}
    out["floor_holdout_n"] = floors.get("floor_holdout_n", 0)
    out["floor_holdout_kid_subset_size"] = floors.get("floor_holdout_kid_subset_size", 0)
    return out


def _nan_feature_columns(prefix: str) -> dict:
    return {f"fid_{prefix}": math.nan, f"kid_{prefix}_mean": math.nan, f"kid_{prefix}_std": math.nan,
            **{f"{m}_{prefix}_floor_{w}": math.nan for m in ("fid", "kid") for w in ("train", "holdout")}}


def copy_columns(table: pd.DataFrame, holdout_share: float | None = None) -> dict:
    """metrics.csv's memorisation columns from classify_samples' table: MeanMSE and each verdict's rate with its
    Wilson 95% interval (<verdict>_rate, _lo, _hi), mirrors included in the nearest-neighbour reference."""
    n = len(table)
    out = {"mean_mse": float(table.nearest_train_mse.mean()), "median_mse": float(table.nearest_train_mse.median())}
    for v in VERDICTS:
        k = int((table.verdict == v).sum())
        lo, hi = rate_interval(k, n)
        out |= {f"{v}_rate": k / n, f"{v}_lo": lo, f"{v}_hi": hi}
    out["mirrored_copy_rate"] = float((table.mirrored & (table.verdict == "copy")).mean())
    out["distinct_nearest"] = int(table.nearest_train_index.nunique())
    if holdout_share is not None:  # the held-out probe: share of unseen fusions among samples on a real fusion
        probe = summarise(table, holdout_share)
        out |= {k: probe[k] for k in ("holdout_of_close", "holdout_of_close_lo", "holdout_of_close_hi",
                                      "holdout_share")}
        out["probe_verdict"] = probe["verdict_line"]
    return out


def memoriser_path(layout: RunLayout, cfg: Config, train: np.ndarray) -> Path:
    """Where the ideal memoriser's samples of this run live: keyed by count, seed, steps, mirrors and training set."""
    s = cfg.sample
    key = hashlib.sha256(np.ascontiguousarray(train).tobytes()).hexdigest()[:12]
    churn = "" if s.S_churn == 0 else f"-churn{s.S_churn:g}-{s.S_min:g}-{s.S_max:g}-{s.S_noise:g}"
    solver = "" if s.solver == DEFAULT_SOLVER else f"-{s.solver}"
    name = (f"memoriser-n{s.num_images}-seed{cfg.seed}-steps{s.num_steps}{solver}{churn}-xflip{int(cfg.train.xflip)}"
            f"-{key}")
    return layout.root / "samples" / "memoriser" / f"{name}.npz"


def memoriser_samples(cfg: Config, layout: RunLayout, train: np.ndarray,
                      progress: bool = True) -> tuple[np.ndarray, dict]:
    """The ideal memoriser's samples from the seeds of every snapshot's samples (same noise); drawn once per run."""
    path = memoriser_path(layout, cfg, train)
    if path.is_file():
        with np.load(path) as f:
            return f["images"], json.loads(str(f["info"]))
    s = cfg.sample
    device = resolve_device(cfg.device)
    mem = ideal_memoriser(train, xflip=cfg.train.xflip).to(device)
    t0 = time.perf_counter()
    options = {k: v for k, v in sampler_options(s).items() if k != "guidance"}  # no labels: nothing to guide
    # float32 like sample_checkpoint, but never bf16: the softmax logits need the precision
    images = generate(mem, s.num_images, cfg.seed, batch_size=s.batch_size, num_steps=s.num_steps, device=device,
                      dtype=torch.float32, uint8=True, progress=progress, **options)
    info = {"num_images": s.num_images, "seed": cfg.seed, "num_steps": s.num_steps, "solver": s.solver,
            "xflip": cfg.train.xflip,
            "train_images": len(train), "device": str(device), "seconds": round(time.perf_counter() - t0, 2)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.npz")
    np.savez(tmp, images=images, info=json.dumps(info))
    os.replace(tmp, path)
    return images, info


def memoriser_columns(samples: np.ndarray, memoriser: np.ndarray, copy_mse: float) -> dict:
    """Distance to the perfect copier: per-sample MSE between a model sample and the memoriser's from the same noise."""
    d = paired_mse(samples, memoriser[:len(samples)])
    return {"memoriser_mse": float(d.mean()), "memoriser_mse_median": float(np.median(d)),
            "memoriser_match_rate": float((d < copy_mse).mean())}


def evaluate(cfg: Config, out_dir: str | Path, progress: bool = True) -> pd.DataFrame:
    """Sample each chosen snapshot of each width (reusing samples), score it, write metrics/metrics.csv; no figures."""
    layout = RunLayout(out_dir)
    for width in cfg.model.widths:  # fail before the costly parts when training has not run
        if not list_snapshots(layout.train(width)):
            raise FileNotFoundError(f"no EMA snapshots in {layout.train(width)}: run notebook 02_training "
                                    f"(or emojidiff train) first")
    ds = dataset_from_config(cfg, progress=progress)
    train, held = ds.train_images(), ds.holdout_images()
    s, e = cfg.sample, cfg.eval
    notes = {"num_images": s.num_images, "inception": "not requested (eval.inception: false)",
             "kid_subset_size_requested": e.kid_subset_size}
    spaces = {}  # name -> (features of a uint8 batch, training features, held-out features)
    if e.domain_features:
        dom, dom_info = domain_net_for_run(cfg, layout, ds, progress=progress)
        spaces["domain"] = (lambda x, dom=dom: domain_features(dom, x), domain_features(dom, train),
                            domain_features(dom, held) if len(held) >= 2 else None)
        notes["domain_net"] = {k: v for k, v in dom_info.items() if k != "classes"}
    if e.inception:
        try:
            inception = load_inception(e.inception_weights, best_device())
            feats = lambda x, net=inception: inception_features(x, net, progress=progress)  # noqa: E731
            spaces["inception"] = (feats, feats(train), feats(held) if len(held) >= 2 else None)
            notes["inception"] = "available"
        except InceptionUnavailable as err:
            notes["inception"] = str(err)
            warnings.warn(str(err), stacklevel=2)
    memoriser, mem_info = memoriser_samples(cfg, layout, train, progress)
    notes["memoriser"] = mem_info
    floors: dict = {}  # (space, n) -> floor columns: they depend on the sample count only
    rows, thresholds = [], choose_thresholds(ds, cfg.train.xflip)  # one copy rule for every snapshot
    for width in cfg.model.widths:
        for kimg, spath in sample_snapshots(cfg, layout, width, progress):
            with np.load(spath) as f:
                images = f["images"]
            table = classify_samples(images, ds, xflip=cfg.train.xflip, thresholds=thresholds)
            row = {"width": width, "kimg": kimg, "num_samples": len(images), **copy_columns(table, holdout_share(ds)),
                   **memoriser_columns(images, memoriser, thresholds.copy_mse)}
            for sp in ("domain", "inception"):
                if sp not in spaces:
                    row |= _nan_feature_columns(sp)
                    continue
                feats, ref, ref_held = spaces[sp]
                row |= _feature_metrics(sp, ref, feats(images), cfg)
                if (sp, len(images)) not in floors:
                    floors[sp, len(images)] = _floor_columns(sp, fid_kid_floors(
                        ref, ref_held, len(images), e.kid_subsets, e.kid_subset_size, seed=cfg.seed))
                row |= floors[sp, len(images)]
            rows.append(row)
    df = pd.DataFrame(rows)
    notes["thresholds"] = thresholds.as_dict()
    if "kid_subset_size" in df and (df.kid_subset_size < e.kid_subset_size).any():
        used = sorted(df.kid_subset_size.unique().tolist())
        notes["kid_subset_size_used"] = used
        warnings.warn(f"KID subset size {e.kid_subset_size} (eval.kid_subset_size) clipped to {used} by the sample "
                      f"count; recorded in metrics.csv (kid_subset_size)", stacklevel=2)
    layout.metrics.mkdir(parents=True, exist_ok=True)
    df.to_csv(layout.metrics / "metrics.csv", index=False)
    (layout.metrics / "metrics_notes.json").write_text(json.dumps(notes, indent=1, default=str))
    return df


def _spaces(df: pd.DataFrame) -> list[str]:
    """Feature spaces with at least one finite FID in the table."""
    return [sp for sp in ("domain", "inception") if f"fid_{sp}" in df and np.isfinite(df[f"fid_{sp}"]).any()]


def _floor_lines(ax, df: pd.DataFrame, col: str) -> None:
    """The floors of one metric column as horizontal lines (the same for every row of a run at one sample count)."""
    n = int(df.num_samples.iloc[0]) if "num_samples" in df else None
    for which, style, what in (("train", "--", f"{n} training images"),
                               ("holdout", ":", f"{int(df.get('floor_holdout_n', pd.Series([0])).iloc[0])} "
                                                f"held-out images")):
        c = f"{col}_floor_{which}"
        if c in df and np.isfinite(df[c]).any():
            ax.axhline(float(df[c].iloc[0]), color="k", ls=style, lw=1, label=f"floor: {what} vs training")


def plot_over_training(df: pd.DataFrame):
    """Seed Figure 4: FID and KID over training per width, each with its floors at the same sample count."""
    import matplotlib.pyplot as plt

    spaces = _spaces(df)
    n = int(df.num_samples.iloc[0])
    fig, axes = plt.subplots(len(spaces) or 1, 2, figsize=(10, 3.4 * max(len(spaces), 1)), squeeze=False)
    for r, sp in enumerate(spaces):
        for w, g in df.groupby("width"):
            axes[r, 0].plot(g.kimg, g[f"fid_{sp}"], "o-", label=f"width {w}")
            axes[r, 1].errorbar(g.kimg, g[f"kid_{sp}_mean"], yerr=g[f"kid_{sp}_std"], fmt="o-", label=f"width {w}")
        _floor_lines(axes[r, 0], df, f"fid_{sp}")
        _floor_lines(axes[r, 1], df, f"kid_{sp}")
        axes[r, 0].set(title=f"FID ({sp} features)", xlabel="kimg")
        axes[r, 1].set(title=f"KID ({sp} features), mean ± std over subsets", xlabel="kimg")
        axes[r, 0].legend(fontsize=7)
    fig.suptitle(f"Figure 4: FID and KID over training per width\n{FID_NOTE.format(n=n)}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_width_over_training(df: pd.DataFrame, width: int | None = None):
    """Seed Figure 5: MeanMSE, FID and KID of one width (default the widest) over training, floors included."""
    import matplotlib.pyplot as plt

    width = int(df.width.max()) if width is None else width
    g = df[df.width == width]
    spaces = _spaces(g)
    cols = [("mean_mse", "MeanMSE ([-1, 1] scale)")] + [(f"fid_{sp}", f"FID ({sp})") for sp in spaces] + \
        [(f"kid_{sp}", f"KID ({sp})") for sp in spaces]
    fig, axes = plt.subplots(1, len(cols), figsize=(3.4 * len(cols), 3.2), squeeze=False)
    for ax, (c, title) in zip(axes[0], cols):
        ax.plot(g.kimg, g[c if c in g else f"{c}_mean"], "o-")
        _floor_lines(ax, g, c)
        ax.set(title=title, xlabel="kimg")
    fig.suptitle(f"Figure 5: width {width} over training. {FID_NOTE.format(n=int(g.num_samples.iloc[0]))}",
                 fontsize=9)
    fig.tight_layout()
    return fig


def plot_copy_rates(df: pd.DataFrame):
    """Copy and unseen-fusion rates over training per width, with their Wilson 95% intervals as bands."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for (w, g), c in zip(df.groupby("width"), plt.get_cmap("tab10").colors):
        for v, style in (("copy", "o-"), ("unseen_fusion", "s--")):
            ax.plot(g.kimg, g[f"{v}_rate"], style, color=c, label=f"width {w}: {v.replace('_', ' ')}")
            ax.fill_between(g.kimg, g[f"{v}_lo"], g[f"{v}_hi"], color=c, alpha=0.15)
    ax.set(xlabel="kimg", ylabel="share of samples", ylim=(0, 1),
           title="Copies of a training image (or mirror) and hits on unseen fusions, 95% intervals")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_memoriser_distance(df: pd.DataFrame):
    """Per-sample MSE to the ideal memoriser's sample from the same noise (mean and median) over training."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.4))
    for (w, g), c in zip(df.groupby("width"), plt.get_cmap("tab10").colors):
        ax.plot(g.kimg, g.memoriser_mse, "o-", color=c, label=f"width {w}: mean")
        ax.plot(g.kimg, g.memoriser_mse_median, "x:", color=c, label=f"width {w}: median")
    ax.set(xlabel="kimg", ylabel="MSE ([-1, 1] scale)", ylim=(0, None),
           title="How far is each sample from the perfect copier's sample from the same noise?")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _settle_kimg(g: pd.DataFrame, col: str, within: float = 0.1) -> float:
    """First kimg from which `col` stays within `within` of its total range above its final value."""
    v = g[col].to_numpy()
    tol = within * (np.nanmax(v) - np.nanmin(v)) + 1e-12
    ok = np.abs(v - v[-1]) <= tol
    first = len(v) - 1
    while first > 0 and ok[first - 1]:
        first -= 1
    return float(g.kimg.iloc[first])


def _floor_claims(width: int, row: pd.Series, spaces: list[str]) -> list[str]:
    """The last snapshot's FID/KID beside their floors, and its distance to the perfect copier, in words."""
    out = []
    for sp in spaces:
        if not np.isfinite(row.get(f"fid_{sp}_floor_train", math.nan)):
            continue
        fid, f_tr, f_ho = row[f"fid_{sp}"], row[f"fid_{sp}_floor_train"], row.get(f"fid_{sp}_floor_holdout", math.nan)
        kid, k_tr, k_ho = row[f"kid_{sp}_mean"], row[f"kid_{sp}_floor_train"], row.get(f"kid_{sp}_floor_holdout",
                                                                                        math.nan)
        out.append(f"width {width}, {sp} features, last snapshot: FID {fid:.3g} against floors {f_tr:.3g} "
                   f"({int(row.num_samples)} training images) and {f_ho:.3g} ({int(row.get('floor_holdout_n', 0))} "
                   f"held-out images); KID {kid:.3g} against {k_tr:.3g} and {k_ho:.3g} "
                   f"(subset size {int(row.get('kid_subset_size', 0))}): FID is {fid / f_tr:.1f}x its training floor.")
    if np.isfinite(row.get("copy_rate", math.nan)):
        out.append(f"width {width}, last snapshot: copies {row.copy_rate:.1%} [95% CI {row.copy_lo:.1%}, "
                   f"{row.copy_hi:.1%}], unseen fusions {row.unseen_fusion_rate:.1%} [{row.unseen_fusion_lo:.1%}, "
                   f"{row.unseen_fusion_hi:.1%}] of {int(row.num_samples)} samples"
                   + (f"; probe: {row.probe_verdict}." if isinstance(row.get("probe_verdict"), str) else "."))
    if np.isfinite(row.get("memoriser_mse", math.nan)):
        out.append(f"width {width}, last snapshot: samples are at MSE {row.memoriser_mse:.4f} (median "
                   f"{row.memoriser_mse_median:.4f}) from the ideal memoriser's samples from the same noise; "
                   f"{row.memoriser_match_rate:.0%} are within the copy threshold of it (the very copy it makes).")
    return out


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
            if len(after) < 2:  # settling at the last snapshot leaves nothing after it to compare
                out.append(f"width {w}: FID/KID ({sp}) settle only at the last snapshot ({last:g} kimg): no later "
                           f"snapshot shows whether MeanMSE keeps falling after them (over the whole run it goes "
                           f"{g.mean_mse.iloc[0]:.4f} -> {g.mean_mse.iloc[-1]:.4f}); not testable here.")
            else:
                drop = 1 - after.mean_mse.iloc[-1] / after.mean_mse.iloc[0]
                out.append(f"width {w}: MeanMSE goes {after.mean_mse.iloc[0]:.4f} -> {after.mean_mse.iloc[-1]:.4f} "
                           f"({drop:+.0%} fall) over the {len(after)} snapshots from {after.kimg.iloc[0]:g} kimg, "
                           f"after FID/KID ({sp}) settle: "
                           f"{'it keeps falling, as the seed says' if drop > 0.05 else 'it does not keep falling'}.")
    for w, g in df.sort_values("kimg").groupby("width"):
        out += _floor_claims(w, g.iloc[-1], spaces)
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
    """Sample and score every chosen EMA snapshot; write metrics/metrics.csv (figures: notebook 04)."""
    cfg = load_config(args.params)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun: rank 0 evaluates alone, as one process
        if int(os.environ.get("RANK", "0")) != 0:
            return 0
        print("evaluate under torchrun: rank 0 evaluates alone (metrics.csv has one writer); the other ranks exit")
        os.environ.update(WORLD_SIZE="1", RANK="0", LOCAL_RANK="0")
    df = evaluate(cfg, RunLayout.for_config(cfg, args.out).root)
    print(df.to_string(index=False))
    return 0
