"""The fusion dataset: every ordered pair of faces fused, rendered, deduplicated, split by pairs, and cached.

Rows: one per distinct image. All ordered pairs A != B are fused and rendered at `dedup_size` (the training size);
pairs whose images are byte-identical there share one row: the first pair in face order gives the row its
parents, `n_pairs` counts the pairs behind it, and `pairs` lists every pair with the row it became. Any other
size (the 128-px gallery) renders exactly the same rows, so galleries line up with training rows by index.
The held-out split is twin-aware: rows closer than `twin_mse` (MSE on the [-1, 1] scale at the dedup size) to each
other, or to each other's left-right mirror when training flips images, are linked into groups (connected
components, manifest column `twin_group`), and a seeded draw of whole groups makes up about `holdout` of the rows.
So no held-out image has a training image, or a training mirror, within `twin_mse`; all pairs behind a row share its
split. Alpha is flattened onto white by resvg (source-over).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from emojidiff.data import fusion
from emojidiff.data.emoji_sources import EmojiSourceError, available_styles, render_svg, select_faces
from emojidiff.images import from_uint8

CODE_VERSION = "1"  # bump when the fusion or rendering changes in a way the source hash below would miss
SPLIT_RULE = "twin-groups-1"  # bump when the split rule changes (it is part of the cache key)
PAIR_RULE = "part-classes-1"  # likewise for the pair split (data/pairs.py)
SPLIT_MODES = ("twins", "pairs")
_PARTS: dict = {}  # (style, unified) -> FaceParts, shared with forked workers


@dataclass
class FusionDataset:
    """Fused faces: uint8 NHWC `images`, one per `manifest` row; `pairs` maps every ordered pair to its row."""

    images: np.ndarray
    manifest: pd.DataFrame
    pairs: pd.DataFrame
    size: int
    info: dict = field(default_factory=dict)
    faces: pd.DataFrame | None = None  # the label space: one row per face (unified, name, char), shared by styles

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_faces(self) -> int:
        """Classes of the conditional label (faces of the shared face list)."""
        return len(self.faces) if self.faces is not None else 0

    @property
    def labels(self) -> np.ndarray:
        """(rows, 2) int64: the face-list indices of each row's parent A and parent B."""
        if self.faces is None:
            raise ValueError("this dataset has no face list (build it with build_dataset)")
        index = {u: i for i, u in enumerate(self.faces["unified"])}
        return np.stack([self.manifest[c].map(index).to_numpy(np.int64) for c in ("parent_a", "parent_b")], 1)

    def subset_labels(self, split: str) -> np.ndarray:
        """Labels of one split, aligned with subset(split)."""
        self.subset(split)  # checks the name
        return self.labels[(self.manifest["split"] == split).to_numpy()]

    def train_labels(self) -> np.ndarray:
        return self.subset_labels("train")

    def face_index(self, face) -> int:
        """A face's label index from its index, name ("grinning face"), emoji character or unified codepoint."""
        return face_index(self.faces, face)

    def pair_labels(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(row index, labels) of every ordered pair of one split, duplicates included (a row shared by two pairs
        appears once per pair, with each pair's own parents)."""
        self.subset(split)
        p = self.pairs[self.pairs["split"] == split]
        index = {u: i for i, u in enumerate(self.faces["unified"])}
        labels = np.stack([p[c].map(index).to_numpy(np.int64) for c in ("parent_a", "parent_b")], 1)
        return p["row"].to_numpy(np.int64), labels

    def subset(self, split: str) -> np.ndarray:
        """Images of one split ("train" or "holdout")."""
        if split not in ("train", "holdout"):
            raise ValueError(f"split must be 'train' or 'holdout', got {split!r}")
        return self.images[(self.manifest["split"] == split).to_numpy()]

    def train_images(self) -> np.ndarray:
        return self.subset("train")

    def holdout_images(self) -> np.ndarray:
        return self.subset("holdout")

    def torch_dataset(self, split: str = "train", xflip: bool = False) -> FusionImages:
        """A torch Dataset of one split, scaled to [-1, 1]; its `labels` (int64 (N, 2)) align with its images."""
        labels = self.subset_labels(split) if self.faces is not None else None
        return FusionImages(self.subset(split), xflip=xflip, labels=labels)

    def summary(self) -> dict:
        """Counts and sigma_data as plain data (for JSON)."""
        m = self.manifest
        return {**self.info, "size": self.size, "rows": len(m), "train": int((m.split == "train").sum()),
                "holdout": int((m.split == "holdout").sum()),
                "holdout_pairs": int((self.pairs.split == "holdout").sum()),
                "num_faces": self.num_faces,
                "face_list": [] if self.faces is None else self.faces[["unified", "name", "char"]].values.tolist(),
                "sigma_data": measure_sigma_data(self.train_images()) if len(m) else None}

    def save_summary(self, path: str | Path) -> Path:
        """Write summary() as JSON."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.summary(), indent=1, ensure_ascii=False) + "\n")
        return path


def measure_sigma_data(images: np.ndarray) -> float:
    """Standard deviation of the pixels scaled to [-1, 1] (EDM's sigma_data, Karras et al. 2022, sec. 5)."""
    x = np.asarray(images)
    if x.size == 0:
        raise ValueError("measure_sigma_data: no images")
    x = from_uint8(x, np.float64)
    return float(x.std())


class FusionImages:
    """torch Dataset over uint8 NHWC images: float CHW tensors in [-1, 1], optionally flipped left-right."""

    def __init__(self, images: np.ndarray, xflip: bool = False, labels: np.ndarray | None = None):
        import torch

        self.images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)  # NCHW uint8 view
        self.xflip = xflip
        self.labels = None if labels is None else torch.as_tensor(np.asarray(labels, np.int64))  # (N, 2) or None
        if self.labels is not None and len(self.labels) != len(self.images):
            raise ValueError(f"labels ({len(self.labels)}) and images ({len(self.images)}) must align")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        import torch

        x = from_uint8(self.images[i])
        if self.xflip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x


def _face_table(face_lists: dict) -> pd.DataFrame:
    """The shared label space: the union of every style's chosen faces, in face-list order (dropped ones kept)."""
    seen: dict = {}
    for fl in face_lists.values():
        for f in fl:
            seen.setdefault(f.unified, (f.unified, f.name, f.char))
    return pd.DataFrame(list(seen.values()), columns=["unified", "name", "char"])


def face_index(faces: pd.DataFrame | None, face) -> int:
    """Index in a face table (unified, name, char) of a face given by index, name, emoji character or codepoint."""
    f = faces if faces is not None else pd.DataFrame(columns=["unified", "name", "char"])
    if isinstance(face, (int, np.integer)) and not isinstance(face, bool) and 0 <= face < len(f):
        return int(face)
    if isinstance(face, str):
        key = face.strip()
        name = key.lower().replace(" ", "-").replace("_", "-")
        for col, value in (("char", key), ("name", name), ("unified", key.lower())):
            hit = np.nonzero((f[col].str.lower() if col != "char" else f[col]).to_numpy() == value)[0]
            if len(hit):
                return int(hit[0])
        if key.isdigit():
            return face_index(f, int(key))
    names = ", ".join(f"{i}: {r.char} {r.name}" for i, r in enumerate(f.itertuples()))
    raise EmojiSourceError(f"unknown face {face!r}; the faces are {names}")


def face_table(styles, faces: str | list[str] = "core", max_faces: int = 0) -> pd.DataFrame:
    """The label space of a dataset's parameters (what build_dataset sets as `faces`), without building it."""
    styles = [styles] if isinstance(styles, str) else list(styles)
    return _face_table({s: select_faces(faces, s, max_faces) for s in styles})


def _code_hash() -> str:
    h = hashlib.sha256(CODE_VERSION.encode())
    for name in ("fusion.py", "svgpath.py", "emoji_sources.py"):
        h.update((resources.files("emojidiff.data") / name).read_bytes())
    return h.hexdigest()[:12]


def _cache_root(cache_dir) -> Path:
    return Path(cache_dir or os.environ.get("EMOJIDIFF_CACHE") or Path.home() / ".cache" / "emojidiff") / "dataset"


def _parts(style: str, face) -> fusion.FaceParts:
    key = (style, face.unified)
    if key not in _PARTS:
        _PARTS[key] = fusion.analyse_face(style, face)
    return _PARTS[key]


def _render_chunk(job) -> np.ndarray:
    style, pairs, size = job
    out = np.empty((len(pairs), size, size, 3), np.uint8)
    for i, (a, b) in enumerate(pairs):
        pa, pb = _PARTS[(style, a)], _PARTS[(style, b)]
        out[i] = render_svg(fusion.fuse(pa, pb), size, name=f"{style}/{pa.face.name}+{pb.face.name}")
    return out


def _render_pairs(style, pairs, size, workers, progress) -> np.ndarray:
    """Fuse and render pairs of codepoints, in parallel over forked workers (which inherit _PARTS)."""
    chunk = 64
    jobs = [(style, pairs[i:i + chunk], size) for i in range(0, len(pairs), chunk)]
    bar = tqdm(total=len(pairs), desc=f"{style} {size}px", disable=not progress, leave=False)
    results = []
    if workers > 1 and len(jobs) > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for r in pool.imap(_render_chunk, jobs):
                results.append(r)
                bar.update(len(r))
    else:
        for job in jobs:
            results.append(_render_chunk(job))
            bar.update(len(results[-1]))
    bar.close()
    return np.concatenate(results) if results else np.zeros((0, size, size, 3), np.uint8)


def _analyse(style, faces, progress) -> None:
    for f in tqdm(faces, desc=f"{style} faces", disable=not progress, leave=False):
        _parts(style, f)


def twin_pairs(images: np.ndarray, twin_mse: float, mirrors: bool = True, chunk: int = 512) -> np.ndarray:
    """Every pair (i, j), i < j, of uint8 NHWC images within MSE twin_mse ([-1, 1] scale) of each other or, with
    mirrors, of each other's left-right mirror (MSE(a, flip b) = MSE(flip a, b), so the relation is symmetric)."""
    import torch

    x = from_uint8(torch.from_numpy(np.ascontiguousarray(images)))  # NHWC
    refs = [x, x.flip(2)] if mirrors else [x]  # axis 2 is W: a left-right mirror
    x = x.flatten(1)
    d = x.shape[1]
    n2 = (x * x).sum(1)
    out = []
    for ref in refs:
        ref = ref.flatten(1)
        for start in range(0, len(x), chunk):
            xc = x[start:start + chunk]
            approx = (n2[start:start + chunk, None] + n2[None] - 2.0 * xc @ ref.T) / d
            i, j = (approx < twin_mse + 1e-4).nonzero(as_tuple=True)  # slack for fp32 rounding, then exact
            exact = (xc[i].double() - ref[j].double()).square().mean(1)
            keep = (exact < twin_mse).numpy() & (i + start < j).numpy()
            out.append(np.stack([i.numpy()[keep] + start, j.numpy()[keep]], 1))
    return np.unique(np.concatenate(out), axis=0) if out else np.zeros((0, 2), np.int64)


def twin_groups(images: np.ndarray, twin_mse: float, mirrors: bool = True) -> np.ndarray:
    """Group label per image: connected components of the twin_pairs graph (labels in order of first image)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(images)
    if n == 0:
        return np.zeros(0, np.int64)
    p = twin_pairs(images, twin_mse, mirrors)
    graph = coo_matrix((np.ones(len(p)), (p[:, 0], p[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.int64)


def split_groups(groups: np.ndarray, holdout: float, rng: np.random.Generator) -> np.ndarray:
    """Hold out whole groups in a seeded order until about holdout of the rows: True where held out."""
    n_hold = int(round(holdout * len(groups)))
    sizes = np.bincount(groups) if len(groups) else np.zeros(0, np.int64)
    held = np.zeros(len(sizes), bool)
    total = 0
    for g in rng.permutation(len(sizes)):
        if total >= n_hold:
            break
        if total + sizes[g] <= n_hold:  # skip a group that would overshoot; smaller ones follow
            held[g] = True
            total += sizes[g]
    return held[groups]


def _build_style(style, face_list, size, holdout, seed, workers, progress, twin_mse=0.003, xflip=True,
                 split_mode="twins"):
    """One style's rows at the dedup size: fuse all pairs, render, deduplicate by hash, split (twins or pairs)."""
    gone = fusion.DROPPED.get(style, {})
    dropped = {f.unified: gone[f.unified] for f in face_list if f.unified in gone}
    faces = [f for f in face_list if f.unified not in dropped]
    by_u = {f.unified: f for f in faces}
    _analyse(style, faces, progress)
    pairs = [(a.unified, b.unified) for a in faces for b in faces if a is not b]
    base = _render_pairs(style, pairs, size, workers, progress)
    hashes = [hashlib.sha256(im.tobytes()).hexdigest()[:16] for im in base]
    first: dict[str, int] = {}
    row_of = [first.setdefault(h, len(first)) for h in hashes]  # row = order of first appearance
    keep = sorted({h: i for i, h in reversed(list(enumerate(hashes)))}.values())
    rng = np.random.default_rng([seed, int(hashlib.sha256(style.encode()).hexdigest()[:8], 16)])
    groups = twin_groups(base[keep], twin_mse, mirrors=xflip)
    extra, pair_extra, split_info = {}, {}, {}
    if split_mode == "pairs":  # hold out whole part combinations (data/pairs.py), closed over image twin groups
        units, pair_extra, split_info = _pair_units(faces, base, np.asarray(row_of), groups, twin_mse, xflip)
        extra = {"unit": units}
        held = split_groups(units, holdout, rng)
    else:
        held = split_groups(groups, holdout, rng)
    split = np.where(held, "holdout", "train").astype(object)
    counts = np.bincount(row_of, minlength=len(keep))
    manifest = pd.DataFrame({
        "style": style,
        "parent_a": [pairs[i][0] for i in keep],
        "parent_b": [pairs[i][1] for i in keep],
        "name_a": [by_u[pairs[i][0]].name for i in keep],
        "name_b": [by_u[pairs[i][1]].name for i in keep],
        "char_a": [by_u[pairs[i][0]].char for i in keep],
        "char_b": [by_u[pairs[i][1]].char for i in keep],
        "split": split,
        "twin_group": groups,
        "hash": [hashes[i] for i in keep],
        "n_pairs": counts,
        **extra,
    })
    pair_table = pd.DataFrame({"style": style, "parent_a": [p[0] for p in pairs], "parent_b": [p[1] for p in pairs],
                               "row": row_of, "split": split[row_of] if pairs else [],
                               "duplicate": ~np.isin(np.arange(len(pairs)), keep), **pair_extra})
    images = base[keep]
    info = {"faces": len(faces), "pairs": len(pairs), "distinct": len(keep), "duplicates": len(pairs) - len(keep),
            "twin_groups": int(groups.max() + 1) if len(groups) else 0,
            "largest_twin_group": int(np.bincount(groups).max()) if len(groups) else 0,
            "duplicate_rate": (len(pairs) - len(keep)) / max(len(pairs), 1), "dropped": dropped,
            "overridden": {u: by_u[u].name for u in fusion.OVERRIDES.get(style, {}) if u in by_u}, **split_info}
    return images, manifest, pair_table, info


def _pair_units(faces, base, row_of, groups, twin_mse, xflip):
    """The pair split's units per row, the pair table's class columns, and counts (see data/pairs.py)."""
    from emojidiff.data import pairs as pairs_mod

    n = len(faces)
    ia, ib = np.array([(i, j) for i in range(n) for j in range(n) if i != j], np.int64).reshape(-1, 2).T
    grid = np.zeros((n, n, *base.shape[1:]), np.uint8)
    grid[ia, ib] = base  # base is in the same (a, b) order
    upper = pairs_mod.twin_classes(pairs_mod.part_distances(grid, xflip), twin_mse)
    lower = pairs_mod.twin_classes(pairs_mod.part_distances(grid.transpose(1, 0, 2, 3, 4), xflip), twin_mse)
    units, combo = pairs_mod.pair_units(ia, ib, row_of, upper, lower, groups)
    info = {"upper_classes": int(upper.max() + 1) if n else 0, "lower_classes": int(lower.max() + 1) if n else 0,
            "combinations": int(combo.max() + 1) if len(combo) else 0, "pair_units": int(units.max() + 1)
            if len(units) else 0, "largest_pair_unit": int(np.bincount(units).max()) if len(units) else 0}
    return units, {"upper_class": upper[ia], "lower_class": lower[ib], "combination": combo}, info


def build_dataset(style: str | list[str] = "noto", faces: str | list[str] = "core", size: int = 32,
                  holdout: float = 0.1, seed: int = 0, max_faces: int = 0, dedup_size: int = 32,
                  cache_dir: str | Path | None = None, workers: int | None = None, progress: bool = True,
                  use_cache: bool = True, twin_mse: float = 0.003, xflip: bool = True,
                  split: str = "twins") -> FusionDataset:
    """Fuse all ordered pairs of the chosen faces of one or more styles; cached under $EMOJIDIFF_CACHE.

    The held-out split keeps near-twins together: see the module docstring (`twin_mse`, `xflip`: mirrors count).
    split="pairs" holds out whole part combinations instead (data/pairs.py), for conditional models.
    twin_mse 0.003 leaves room for a copy threshold between it and the memoriser control's noise (MSE 0.001); on
    the Noto core set at 32 px it links 3,797 images into 2,730 groups, the largest of 24.
    """
    styles = [style] if isinstance(style, str) else list(style)
    for s in styles:
        if s not in available_styles():
            raise EmojiSourceError(f"unknown emoji style {s!r} (available: {', '.join(available_styles())})")
    if not 0.0 <= holdout < 1.0:
        raise ValueError(f"holdout must be in [0, 1), got {holdout}")
    if not twin_mse >= 0.0:
        raise ValueError(f"twin_mse must be >= 0 (an MSE on the [-1, 1] scale), got {twin_mse}")
    if split not in SPLIT_MODES:
        raise ValueError(f"split must be one of {', '.join(SPLIT_MODES)}, got {split!r}")
    if size < 8 or dedup_size < 8:
        raise ValueError(f"size and dedup_size must be >= 8 pixels, got {size}, {dedup_size}")
    face_lists = {s: select_faces(faces, s, max_faces) for s in styles}
    face_table = _face_table(face_lists)
    params = {"styles": styles, "faces": {s: [f.unified for f in fl] for s, fl in face_lists.items()},
              "size": size, "dedup_size": dedup_size, "holdout": holdout, "seed": seed, "code": _code_hash(),
              "split": {"rule": SPLIT_RULE, "twin_mse": twin_mse, "xflip": bool(xflip),
                        **({"mode": split, "pair_rule": PAIR_RULE} if split != "twins" else {})},
              "data": {s: hashlib.sha256((resources.files("emojidiff") / "data" / f"{s}.json").read_bytes())
                       .hexdigest()[:12] for s in styles}}
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:20]
    folder = _cache_root(cache_dir) / key
    if use_cache and (folder / "done").is_file():
        info = json.loads((folder / "info.json").read_text())
        info["cache_hit"] = True
        text = {c: str for c in ("style", "parent_a", "parent_b", "name_a", "name_b", "char_a", "char_b", "split",
                                 "hash")}
        return FusionDataset(np.load(folder / "images.npy"), pd.read_csv(folder / "manifest.csv", dtype=text),
                             pd.read_csv(folder / "pairs.csv", dtype=text), size, info, faces=face_table)
    t0 = time.perf_counter()
    workers = workers or len(os.sched_getaffinity(0))
    if size != dedup_size:  # same rows as the dedup-size build, rendered at this size
        base = build_dataset(styles, faces, dedup_size, holdout, seed, max_faces, dedup_size, cache_dir, workers,
                             progress, use_cache, twin_mse, xflip, split)
        images = []
        for s in styles:
            _analyse(s, face_lists[s], progress)
            rows = base.manifest[base.manifest["style"] == s]
            images.append(_render_pairs(s, list(zip(rows.parent_a, rows.parent_b)), size, workers, progress))
        info = {**base.info, "build_seconds": round(time.perf_counter() - t0, 2), "cache_key": key}
        ds = FusionDataset(np.concatenate(images), base.manifest, base.pairs, size, info, faces=face_table)
    else:
        ds = _build_rows(styles, face_lists, faces, size, holdout, seed, max_faces, workers, progress, key, t0,
                         twin_mse, xflip, split)
        ds.faces = face_table
    if use_cache:
        _save(ds, folder)
    ds.info["cache_hit"] = False
    return ds


def _build_rows(styles, face_lists, faces, size, holdout, seed, max_faces, workers, progress, key, t0, twin_mse,
                xflip, split="twins"):
    parts = [_build_style(s, face_lists[s], size, holdout, seed, workers, progress, twin_mse, xflip, split)
             for s in styles]
    offsets = np.cumsum([0] + [len(p[1]) for p in parts])
    group_offsets = np.cumsum([0] + [p[3]["twin_groups"] for p in parts])  # group labels unique across styles
    manifest = pd.concat([p[1].assign(twin_group=p[1]["twin_group"] + g) for p, g in zip(parts, group_offsets)],
                         ignore_index=True)
    if split == "pairs":  # unit labels unique across styles too
        unit_offsets = np.cumsum([0] + [p[3]["pair_units"] for p in parts])
        manifest["unit"] = np.concatenate([p[1]["unit"].to_numpy() + u for p, u in zip(parts, unit_offsets)])
    manifest.insert(0, "index", np.arange(len(manifest)))
    pair_tables = [p[2].assign(row=p[2]["row"] + off) for p, off in zip(parts, offsets)]
    pairs = pd.concat(pair_tables, ignore_index=True)
    if split == "pairs" and len(styles) > 1:  # labels are shared by styles: one split for a pair in every style
        manifest, pairs = _join_styles(manifest, pairs, holdout, seed)
    info = {"styles": styles, "faces_kind": faces if isinstance(faces, str) else "list", "max_faces": max_faces,
            "dedup_size": size, "holdout_share": holdout, "seed": seed, "cache_key": key,
            "split_rule": {"rule": SPLIT_RULE, "twin_mse": twin_mse, "xflip": bool(xflip),
                           "unit": "twin_group" if split == "twins" else "pair_unit", "mode": split},
            "per_style": {s: p[3] for s, p in zip(styles, parts)},
            **{k: sum(p[3][k] for p in parts) for k in ("faces", "pairs", "distinct", "duplicates")}}
    info["duplicate_rate"] = info["duplicates"] / max(info["pairs"], 1)
    info["twin_groups"] = int(group_offsets[-1])
    if split == "pairs":
        for k in ("upper_classes", "lower_classes", "combinations"):
            info[k] = sum(p[3][k] for p in parts)
        info["pair_units"] = int(manifest["unit"].nunique())  # joined across styles when there are several
    info["build_seconds"] = round(time.perf_counter() - t0, 2)
    return FusionDataset(np.concatenate([p[0] for p in parts]), manifest, pairs, size, info)


def _join_styles(manifest: pd.DataFrame, pairs: pd.DataFrame, holdout: float, seed: int):
    """Link each style's units that share an ordered pair (a, b) and split the joined units once, seeded: a held-out
    pair is then held out in every style, since a conditional model's label (a, b) does not name the style."""
    from emojidiff.data.pairs import components

    unit = manifest["unit"].to_numpy()
    pair_unit = unit[pairs["row"].to_numpy()]
    key = pd.factorize(pairs["parent_a"] + "+" + pairs["parent_b"])[0]
    n_units = int(unit.max()) + 1
    edges = np.stack([pair_unit, n_units + key], 1)  # unit -- pair key
    joined = components(n_units + int(key.max()) + 1, edges)[:n_units]
    _, joined = np.unique(joined[unit], return_inverse=True)
    held = split_groups(joined, holdout, np.random.default_rng([seed, 0x5717E5]))
    manifest = manifest.assign(unit=joined, split=np.where(held, "holdout", "train").astype(object))
    pairs = pairs.assign(split=manifest["split"].to_numpy()[pairs["row"].to_numpy()])
    return manifest, pairs


def _save(ds: FusionDataset, folder: Path) -> None:
    """Write the cache folder; `done` last, so a half-written folder is never read."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"images.{os.getpid()}.npy"
    np.save(tmp, ds.images)
    tmp.replace(folder / "images.npy")
    ds.manifest.to_csv(folder / "manifest.csv", index=False)
    ds.pairs.to_csv(folder / "pairs.csv", index=False)
    (folder / "info.json").write_text(json.dumps(ds.info, indent=1, ensure_ascii=False))
    (folder / "done").write_text("ok\n")


def dataset_from_config(cfg, size: int | None = None, **kwargs) -> FusionDataset:
    """The profile's dataset (cfg.data, cfg.seed) at `size` (default cfg.data.size; e.g. cfg.data.gallery_size).

    Twins are judged with mirrors when the profile trains with x-flips (cfg.train.xflip).
    """
    d = cfg.data
    kwargs.setdefault("xflip", cfg.train.xflip)
    kwargs.setdefault("split", getattr(d, "split", "twins"))
    return build_dataset(style=d.styles, faces=d.faces, size=size or d.size, holdout=d.holdout, seed=cfg.seed,
                         max_faces=d.max_faces, dedup_size=d.size, **kwargs)


def cli_configure(parser) -> None:
    parser.add_argument("--params", required=True, help="study profile (YAML)")
    parser.add_argument("--size", type=int, default=None, help="image size (default: the profile's data.size)")
    parser.add_argument("--out", default=None, help="write the summary JSON here")


def cli_main(args) -> int:
    """Build (or load from cache) the profile's dataset and print its counts."""
    from emojidiff.config import load_config

    ds = dataset_from_config(load_config(args.params), size=args.size)
    summary = ds.summary()
    for k in ("styles", "faces", "pairs", "distinct", "duplicate_rate", "train", "holdout", "holdout_pairs",
              "sigma_data", "build_seconds", "cache_hit"):
        print(f"{k}: {summary.get(k)}")
    if args.out:
        ds.save_summary(args.out)
    return 0


def describe(manifest: pd.DataFrame | None, index: int, sep: str = " + ") -> str:
    """A short caption for one fusion: "face A + face B" (its parents), or its row number."""
    if manifest is None:
        return f"#{index}"
    row = manifest.iloc[int(index)]
    a = row["name_a"] if "name_a" in row else row["parent_a"]
    b = row["name_b"] if "name_b" in row else row["parent_b"]
    return f"{a}{sep}{b}"
