"""The pair split: hold out whole combinations of parts (upper-twin class x lower-twin class), never seen in training.

A fusion (a, b) is the eyes and brows of a and the mouth of b. Faces a, a' are upper-twins when (a, x) and (a', x)
render within `twin_mse` of each other (or of each other's mirror) for every other face x; lower-twins likewise
with (x, b) and (x, b'). Classes are connected components (union-find) of these relations. The held-out unit is a
combination (upper class, lower class); a combination, the image rows of its pairs, and those rows' image twin groups
are linked into units (connected components), so holding out a unit leaves no twin of it, of either kind, in training.
"""

from __future__ import annotations

import numpy as np

from emojidiff.images import from_uint8


def components(n: int, edges: np.ndarray) -> np.ndarray:
    """Connected-component label of each of n nodes (scipy's union-find over an edge list (E, 2))."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if n == 0:
        return np.zeros(0, np.int64)
    edges = np.asarray(edges, np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.int64)


def part_distances(grid: np.ndarray, mirrors: bool = True) -> np.ndarray:
    """d[a, a'] = max over x not in {a, a'} of MSE(grid[a, x], grid[a', x]) ([-1, 1] scale), mirror of a' allowed.

    grid is (n, n, H, W, 3) uint8 with grid[a, x] the fusion (a, x) (the diagonal is ignored). For upper-twins pass
    the grid as is; for lower-twins pass grid.transpose(1, 0, ...). With fewer than 3 faces there is no x: inf.
    """
    import torch

    n = grid.shape[0]
    if grid.shape[:2] != (n, n) or grid.ndim != 5:
        raise ValueError(f"grid must be (n, n, H, W, 3), got {grid.shape}")
    x = from_uint8(torch.from_numpy(np.ascontiguousarray(grid)))
    refs = [x.flatten(2), x.flip(3).flatten(2)] if mirrors else [x.flatten(2)]  # axis 3 is W
    eye = torch.eye(n, dtype=torch.bool)
    out = np.full((n, n), np.inf)
    for a in range(n):
        d = torch.stack([(refs[0][a][None] - r).square().mean(-1) for r in refs]).amin(0)  # (a', x)
        ignore = eye | eye[a][None]  # x == a' or x == a
        d = d.masked_fill(ignore, -np.inf).amax(1).double().numpy()
        out[a] = np.where(np.isfinite(d), d, np.inf)
    out = np.minimum(out, out.T)  # the mirror relation is symmetric; float rounding is not
    np.fill_diagonal(out, 0.0)
    return out


def twin_classes(dist: np.ndarray, twin_mse: float) -> np.ndarray:
    """Class label per face: connected components of dist < twin_mse."""
    i, j = np.nonzero(np.triu(dist < twin_mse, 1))
    return components(len(dist), np.stack([i, j], 1))


def pair_units(face_a: np.ndarray, face_b: np.ndarray, row_of: np.ndarray, upper: np.ndarray, lower: np.ndarray,
               row_groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unit per row, combination id per pair): combinations, rows and row twin groups linked into components."""
    combo = upper[face_a] * (lower.max() + 1 if len(lower) else 1) + lower[face_b]
    _, combo = np.unique(combo, return_inverse=True)
    n_rows, n_combos = len(row_groups), int(combo.max()) + 1 if len(combo) else 0
    n_groups = int(row_groups.max()) + 1 if len(row_groups) else 0
    # nodes: rows [0, n_rows), combinations next, then twin groups
    edges = np.concatenate([np.stack([row_of, n_rows + combo], 1),
                            np.stack([np.arange(n_rows), n_rows + n_combos + row_groups], 1)])
    labels = components(n_rows + n_combos + n_groups, edges)
    _, unit = np.unique(labels[:n_rows], return_inverse=True)  # labels 0..units-1
    return unit.astype(np.int64), combo.astype(np.int64)
