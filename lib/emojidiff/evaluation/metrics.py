"""Sample-quality and memorisation metrics as pure functions of features or pixels: FID, KID, MeanMSE, copy rates."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from emojidiff.images import to_unit_range


def _as_2d_float64(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"{name}: expected a 2-D array of at least 2 feature rows, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: features contain NaN or inf")
    return x


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def fid_from_stats(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (Heusel et al. 2017, eq. 6)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    # Tr((S1 S2)^1/2) = Tr((S1^1/2 S2 S1^1/2)^1/2): the symmetric form, eigvalsh instead of a general eig
    r1 = _psd_sqrt(sigma1)
    m = r1 @ sigma2 @ r1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def fid_from_features(a, b) -> float:
    """FID = |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) on two feature sets (rows are samples)."""
    a, b = _as_2d_float64(a, "a"), _as_2d_float64(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    return fid_from_stats(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def polynomial_mmd2(x: np.ndarray, y: np.ndarray, degree: int = 3, coef0: float = 1.0) -> float:
    """Unbiased MMD^2 with k(u, v) = (u.v / d + coef0)^degree on equal-size sets (Binkowski et al. 2018, eq. 3)."""
    d = x.shape[1]
    m = len(x)
    k_xx = (x @ x.T / d + coef0) ** degree
    k_yy = (y @ y.T / d + coef0) ** degree
    k_xy = (x @ y.T / d + coef0) ** degree
    # within-set sums drop the diagonal (i != i'); the cross term keeps every pair
    s_xx = k_xx.sum() - np.trace(k_xx)
    s_yy = k_yy.sum() - np.trace(k_yy)
    return float((s_xx + s_yy) / (m * (m - 1)) - 2.0 * k_xy.sum() / (m * m))


def kid_subset_size(n_a: int, n_b: int, subset_size: int) -> int:
    """The KID subset size actually used: the requested one, clipped to the smaller set's size."""
    if subset_size < 2:
        raise ValueError(f"KID subset size must be at least 2, got {subset_size}")
    return min(int(subset_size), int(n_a), int(n_b))


def kid_from_features(a, b, subsets: int = 100, subset_size: int = 1000, degree: int = 3,
                      seed: int = 2020, return_subset_size: bool = False):
    """KID: (mean, std) over `subsets` random subsets of the unbiased polynomial MMD^2, k = (x.y/d + 1)^degree.

    Subsets are drawn as torch-fidelity draws them (RandomState(seed), a's subset then b's), so results match
    `torch_fidelity.calculate_metrics(kid=True, rng_seed=seed)`. A subset size above the smaller set is clipped to it
    with a warning; `return_subset_size` returns (mean, std, size used) so callers can record it.
    """
    a, b = _as_2d_float64(a, "a"), _as_2d_float64(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    if subsets < 1:
        raise ValueError(f"subsets must be positive, got {subsets}")
    used = kid_subset_size(len(a), len(b), subset_size)
    if used < subset_size:
        warnings.warn(f"KID subset size {subset_size} clipped to the smaller set's size {used}", stacklevel=2)
    subset_size = used
    rng = np.random.RandomState(seed)
    mmds = np.empty(subsets)
    for i in range(subsets):
        fa = a[rng.choice(len(a), subset_size, replace=False)]
        fb = b[rng.choice(len(b), subset_size, replace=False)]
        mmds[i] = polynomial_mmd2(fa, fb, degree)
    if return_subset_size:
        return float(mmds.mean()), float(mmds.std()), subset_size
    return float(mmds.mean()), float(mmds.std())


def fid_kid_floors(train, holdout, n: int, kid_subsets: int = 100, kid_subset_size: int = 1000,
                   seed: int = 0) -> dict:
    """FID/KID of real data against the training features at (at most) `n` images: what a perfect model would score.

    train: n random training rows (drawn with replacement when n exceeds the training set, else the floor would be
    the set against itself, 0) vs all training rows (FID's small-sample bias alone: n copies of the data).
    holdout: min(n, len(holdout)) random held-out rows vs all training rows (a perfect generaliser).
    Returns fid/kid per floor with the row counts and KID subset sizes used (clipped as kid_from_features does).
    """
    train = _as_2d_float64(train, "train")
    rng = np.random.default_rng(seed)
    out = {}
    sets = [("train", train)]
    if holdout is not None and len(holdout) >= 2:
        sets.append(("holdout", _as_2d_float64(holdout, "holdout")))
    for name, feats in sets:
        m = int(n) if name == "train" else min(int(n), len(feats))
        if m < 2 or len(feats) < 2:
            raise ValueError(f"need >= 2 rows for the {name} floor, got {m} of {len(feats)} (n={n})")
        pick = feats[np.sort(rng.choice(len(feats), m, replace=m > len(feats)))]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the clipping is returned, not warned, here
            kid, kid_std, used = kid_from_features(pick, train, kid_subsets, kid_subset_size, seed=seed,
                                                 return_subset_size=True)
        out |= {f"fid_floor_{name}": fid_from_features(pick, train), f"kid_floor_{name}": kid,
                f"kid_floor_{name}_std": kid_std, f"floor_{name}_n": m, f"floor_{name}_kid_subset_size": used}
    return out


def best_device() -> torch.device:
    """CUDA when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")



@torch.no_grad()
def nearest_mse(samples, train, k: int = 1, chunk: int = 1024, device=None):
    """Exact k nearest training images of each sample by per-pixel MSE on the [-1, 1] scale (uint8 is mapped there).

    `samples` and `train` are uint8 NHWC or float NCHW in [-1, 1]. Returns (mse, index) as numpy arrays of shape (N,)
    for k = 1 or (N, k) sorted nearest first: MSE = mean over the C*H*W values of (x - y)^2. Candidates are found with
    chunked matrix products, |x - y|^2 = |x|^2 + |y|^2 - 2 x.y, then their MSE is recomputed directly (exact).
    """
    device = torch.device(device) if device is not None else best_device()
    x = to_unit_range(samples).flatten(1)
    y = to_unit_range(train).flatten(1)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"samples and train images differ in size: {x.shape[1]} vs {y.shape[1]} values")
    if not 1 <= k <= len(y):
        raise ValueError(f"k must be in [1, {len(y)}] (number of training images), got {k}")
    y = y.to(device)
    y2 = (y * y).sum(1)
    kk = min(len(y), k + 2)  # a little slack against fp32 rounding between near-ties
    out_mse, out_idx = [], []
    for start in range(0, len(x), chunk):
        xc = x[start:start + chunk].to(device)
        d2 = y2[None, :] - 2.0 * (xc @ y.T)  # |x|^2 is constant per row: irrelevant to the ranking
        cand = d2.topk(kk, dim=1, largest=False).indices
        exact = ((xc[:, None, :] - y[cand]) ** 2).mean(2)  # recompute candidates' MSE directly
        order = exact.argsort(1)[:, :k]
        out_mse.append(exact.gather(1, order).cpu())
        out_idx.append(cand.gather(1, order).cpu())
    mse, idx = torch.cat(out_mse).double().numpy(), torch.cat(out_idx).numpy()
    return (mse[:, 0], idx[:, 0]) if k == 1 else (mse, idx)


def paired_mse(a, b) -> np.ndarray:
    """Per-pair MSE ([-1, 1] scale) between image i of `a` and image i of `b` (uint8 NHWC or float NCHW)."""
    x, y = to_unit_range(a).flatten(1).double(), to_unit_range(b).flatten(1).double()
    if x.shape != y.shape:
        raise ValueError(f"paired images differ in count or size: {tuple(x.shape)} vs {tuple(y.shape)}")
    return ((x - y) ** 2).mean(1).numpy()


def memorisation_rates(nearest2_mse, copy_ratio: float = 1 / 3, copy_mse: float = 0.005) -> dict:
    """MeanMSE and two copy rates from each sample's two smallest MSEs (an (N, 2) array from nearest_mse(k=2)).

    copy_rate_ratio: share of samples with L2 distance to the nearest training image below `copy_ratio` times the
    distance to the second nearest (Gu et al. 2023; on L2 distances, i.e. sqrt(MSE), so 1/3 means MSE ratio 1/9).
    copy_rate_mse: share with min MSE ([-1, 1] scale) below `copy_mse`. mean_mse: the seed's MeanMSE, mean of min MSE.
    """
    m = np.asarray(nearest2_mse, np.float64)
    if m.ndim != 2 or m.shape[1] < 2:
        raise ValueError(f"expected (N, 2) nearest and second-nearest MSEs, got shape {m.shape}")
    ratio = np.sqrt(m[:, 0]) / np.maximum(np.sqrt(m[:, 1]), 1e-12)
    return {
        "mean_mse": float(m[:, 0].mean()),
        "median_mse": float(np.median(m[:, 0])),
        "copy_rate_ratio": float((ratio < copy_ratio).mean()),
        "copy_rate_mse": float((m[:, 0] < copy_mse).mean()),
    }


def nearest_k(samples: np.ndarray, reference: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest reference images of each sample by MSE ([-1, 1] scale): (mse (N, k), index (N, k))."""
    if len(reference) < k:
        raise ValueError(f"need at least k={k} reference images, got {len(reference)}")
    if samples.shape[1:] != reference.shape[1:]:
        raise ValueError(f"samples {samples.shape[1:]} and reference {reference.shape[1:]} differ in size")
    mse, idx = nearest_mse(samples, reference, k=k)
    return np.asarray(mse, np.float64).reshape(len(samples), k), np.asarray(idx, np.int64).reshape(len(samples), k)
