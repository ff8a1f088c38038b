"""k-means and nearest-centroid assignment on features, with faiss (the `[pruners]` extra).

Shared by feature mapping (FM) and the LAION-scale pipeline. Inputs are validated: NaN or
inf features and dimension mismatches are errors that say where.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import PrunerError, require


@dataclass(frozen=True)
class KMeansResult:
    """Centroids (k x d float32), final inertia (sum of squared distances) and iterations run."""

    centroids: np.ndarray
    inertia: float
    niter: int


def check_features(x: np.ndarray, what: str, dim: int | None = None) -> np.ndarray:
    """`x` as a C-contiguous float32 matrix; raises PrunerError on NaN/inf or a wrong width."""
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise PrunerError(f"{what}: features must be a 2-D array, found shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise PrunerError(f"{what}: feature dimension {arr.shape[1]} differs from the expected {dim}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise PrunerError(f"{what}: {int(bad.sum())} rows hold NaN or inf (first at row {int(np.argmax(bad))})")
    return arr


def kmeans(
    x: np.ndarray,
    k: int,
    *,
    niter: int = 20,
    seed: int = 0,
    max_points_per_centroid: int = 256,
    spherical: bool = False,
) -> KMeansResult:
    """k-means of the rows of `x` into `k` clusters (faiss; subsamples to
    `max_points_per_centroid` x k points for training, like faiss does by default)."""
    faiss = require("faiss", "pruners")
    xs = check_features(x, "k-means input")
    if not 1 <= k <= len(xs):
        raise PrunerError(f"k-means: k={k} clusters for {len(xs)} points")
    km = faiss.Kmeans(  # type: ignore[attr-defined]
        xs.shape[1],
        k,
        niter=niter,
        seed=seed,
        verbose=False,
        spherical=spherical,
        max_points_per_centroid=max_points_per_centroid,
    )
    km.train(xs)
    inertia = float(km.obj[-1]) if len(km.obj) else float("nan")
    return KMeansResult(np.ascontiguousarray(km.centroids, dtype=np.float32), inertia, niter)


def assign(x: np.ndarray, centroids: np.ndarray, *, batch: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of each row of `x`: (cluster ids int64, squared L2 distances float32)."""
    faiss = require("faiss", "pruners")
    c = check_features(centroids, "centroids")
    index = faiss.IndexFlatL2(c.shape[1])  # type: ignore[attr-defined]
    index.add(c)
    n = len(x)
    ids = np.empty(n, dtype=np.int64)
    dist = np.empty(n, dtype=np.float32)
    for s in range(0, n, batch):
        xb = check_features(x[s : s + batch], f"features rows {s}..{min(n, s + batch)}", dim=c.shape[1])
        d, i = index.search(xb, 1)
        ids[s : s + len(xb)] = i[:, 0]
        dist[s : s + len(xb)] = d[:, 0]
    return ids, dist
