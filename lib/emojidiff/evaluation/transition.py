"""The memorisation-to-generalisation test (Kadkhodaie et al., ICLR 2024): disjoint training subsets, two-model scores.

Two models trained on disjoint sets of N images and sampled from the same noise: below a critical N each copies its
own images and the two disagree (their samples are as far apart as two random training images); above it both
produce the same new image. Subsets are drawn from two disjoint halves of the training split made of whole near-twin
groups (`twin_group`, mirrors included), so no image and no near-twin of an image is on both sides.
"""

from __future__ import annotations

import numpy as np

from emojidiff.evaluation.copies import reference_set
from emojidiff.images import from_uint8

SPLIT_WORDS = (0x7A5, 0x5B5E7)  # seed words of the halves and subsets: independent of training's streams


def disjoint_halves(groups: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint sets of image indices of near-equal size, each a union of whole twin groups, seeded.

    The groups are shuffled, then each goes to the half with fewer images so far; each half lists its images in
    that group order (so a subset is a prefix of whole groups).
    """
    groups = np.asarray(groups)
    rng = np.random.default_rng([int(seed), SPLIT_WORDS[0]])
    labels = rng.permutation(np.unique(groups))
    halves: tuple[list, list] = ([], [])
    sizes = [0, 0]
    for g in labels:
        members = np.flatnonzero(groups == g)
        side = int(sizes[1] < sizes[0])
        halves[side].append(members)
        sizes[side] += len(members)
    return tuple(np.concatenate(h) if h else np.zeros(0, np.int64) for h in halves)


def _fill(half: np.ndarray, groups: np.ndarray, n: int) -> np.ndarray | None:
    """The first whole groups of `half` (in its order) that sum to exactly n images, skipping groups that would
    overshoot; None when no such choice exists in one pass."""
    chosen, total = [], 0
    order = list(dict.fromkeys(groups[half].tolist()))  # group labels in the half's order
    for g in order:
        members = half[groups[half] == g]
        if total + len(members) <= n:
            chosen.append(members)
            total += len(members)
        if total == n:
            return np.concatenate(chosen)
    return None


def largest_size(groups: np.ndarray, seed: int) -> int:
    """The largest N that both halves can give exactly, in whole twin groups."""
    a, b = disjoint_halves(groups, seed)
    groups = np.asarray(groups)
    for n in range(min(len(a), len(b)), 0, -1):
        if _fill(a, groups, n) is not None and _fill(b, groups, n) is not None:
            return n
    raise ValueError(f"the training split's {len(groups)} images cannot make two non-empty disjoint subsets")


def resolve_ladder(ladder: list[int], groups: np.ndarray, seed: int) -> list[int]:
    """The ladder with 0 replaced by the largest size, sorted; a size above the largest is refused."""
    top = largest_size(groups, seed)
    too_big = [n for n in ladder if n > top]
    if too_big:
        raise ValueError(f"transition.ladder {ladder}: {too_big} above the largest N two disjoint halves of the "
                         f"{len(groups)} training images allow ({top}); use 0 for the largest")
    return sorted({top if n == 0 else n for n in ladder})


def disjoint_subsets(groups: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of two disjoint subsets of exactly n images each, each of whole twin groups, from disjoint halves.

    Sizes are exact: groups that would overshoot n are skipped (the training split has many single-image groups);
    when whole groups cannot make n, a ValueError names n and the largest size.
    """
    if n < 1:
        raise ValueError(f"subset size must be >= 1, got {n}")
    groups = np.asarray(groups)
    a, b = disjoint_halves(groups, seed)
    out = (_fill(a, groups, n), _fill(b, groups, n))
    if out[0] is None or out[1] is None:
        raise ValueError(f"whole twin groups cannot make two disjoint subsets of {n} images (halves of {len(a)} and "
                         f"{len(b)}; the largest exact size is {largest_size(groups, seed)})")
    return out


def pair_mse(samples_a: np.ndarray, samples_b: np.ndarray) -> np.ndarray:
    """Per seed: the per-pixel MSE (on the [-1, 1] scale) between two models' uint8 samples from the same noise."""
    if samples_a.shape != samples_b.shape:
        raise ValueError(f"samples must pair up seed by seed, got shapes {samples_a.shape} and {samples_b.shape}")
    diff = from_uint8(samples_a, np.float64) - from_uint8(samples_b, np.float64)
    return (diff ** 2).reshape(len(diff), -1).mean(1)


def random_pair_mse(images: np.ndarray, pairs: int = 2000, seed: int = 0) -> float:
    """Mean MSE between two different training images drawn at random: the disagreement of unrelated images."""
    n = len(images)
    if n < 2:
        raise ValueError(f"random-pair MSE needs at least 2 images, got {n}")
    rng = np.random.default_rng([int(seed), SPLIT_WORDS[1]])
    i = rng.integers(0, n, pairs)
    j = (i + rng.integers(1, n, pairs)) % n  # never i itself
    return float(pair_mse(images[i], images[j]).mean())


def nearest_mse(samples: np.ndarray, images: np.ndarray, xflip: bool = True) -> np.ndarray:
    """Per sample: MSE to the nearest of `images` (and their mirrors when xflip)."""
    return reference_set(images, xflip).nearest(samples)[0]


def compare_models(samples_a: np.ndarray, samples_b: np.ndarray, subset_a: np.ndarray, subset_b: np.ndarray,
                   copy_mse: float, random_mse: float, xflip: bool = True) -> dict:
    """The two-model scores of one N and snapshot: disagreement (mean, its standard error, ratio to random pairs),
    each model's copy rate against its own and the other's subset, and MeanMSE against its own subset."""
    d = pair_mse(samples_a, samples_b)
    row = {"samples": len(d), "disagreement": float(d.mean()),
           "disagreement_se": float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan"),
           "random_pair_mse": random_mse, "disagreement_ratio": float(d.mean() / random_mse)}
    for name, samples, own, other in (("a", samples_a, subset_a, subset_b), ("b", samples_b, subset_b, subset_a)):
        own_mse, other_mse = nearest_mse(samples, own, xflip), nearest_mse(samples, other, xflip)
        row[f"copy_own_{name}"] = float((own_mse < copy_mse).mean())
        row[f"copy_other_{name}"] = float((other_mse < copy_mse).mean())
        row[f"mean_mse_{name}"] = float(own_mse.mean())
    for key in ("copy_own", "copy_other", "mean_mse"):
        row[key] = (row[f"{key}_a"] + row[f"{key}_b"]) / 2
    return row


def _crossing(ns: np.ndarray, values: np.ndarray, level: float) -> float:
    """The N where `values` (over increasing ns) first falls below level, interpolated in log N; inf if never, the
    smallest N if already below there."""
    below = np.flatnonzero(values < level)
    if not len(below):
        return float("inf")
    i = below[0]
    if i == 0:
        return float(ns[0])
    t = (values[i - 1] - level) / (values[i - 1] - values[i])
    return float(np.exp(np.log(ns[i - 1]) + t * (np.log(ns[i]) - np.log(ns[i - 1]))))


def critical_size(ns, ratios, ses=None, level: float = 0.5) -> dict:
    """Where the disagreement ratio falls below `level` (half-way from memorising to agreeing), interpolated in
    log N, with a range from the ratio +-2 standard errors, and one line that says it."""
    order = np.argsort(ns)
    ns, ratios = np.asarray(ns, float)[order], np.asarray(ratios, float)[order]
    band = 2 * (np.zeros_like(ratios) if ses is None else np.nan_to_num(np.asarray(ses, float)[order]))
    est, low, high = (_crossing(ns, ratios + d, level) for d in (0, -band, band))
    if np.isinf(est):
        text = f"no transition up to N={ns[-1]:g}: the ratio stays >= {level} (critical N above the largest)"
    elif est == ns[0]:
        text = f"the ratio is below {level} already at N={ns[0]:g}: critical N at or below the smallest"
    else:
        text = (f"critical N ~ {est:.0f} (ratio crosses {level}; range {low:.0f} to "
                f"{'above ' + format(ns[-1], 'g') if np.isinf(high) else format(high, '.0f')} from +-2 s.e.)")
    return {"estimate": est, "low": low, "high": high, "level": level, "text": text}
