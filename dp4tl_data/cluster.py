"""k-means and nearest-centroid assignment on features, with faiss (the `[pruners]` extra).

Shared by feature mapping (FM) and the LAION-scale pipeline. Inputs are validated: NaN or
inf features and dimension mismatches are errors that say where.

k-means starts from k-means++ seeds drawn on a subsample (so well separated groups are not
merged by an unlucky random start), then runs faiss's Lloyd iterations on at most
`max_points_per_centroid` x k training points; assignment of every row is exact (flat L2).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .errors import PrunerError, require

log = logging.getLogger(__name__)
INITS = ("k-means++", "random")


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


def kmeans_plusplus(x: np.ndarray, k: int, rng: np.random.Generator, trials: int | None = None) -> np.ndarray:
    """Greedy k-means++ seeds (Arthur & Vassilvitskii, 2007; the variant scikit-learn uses): each
    next centre is the best of `trials` candidates (default 2 + ln k) drawn with probability
    proportional to the squared distance to the nearest centre chosen so far."""
    n, d = x.shape
    trials = trials or 2 + int(np.log(k))
    centres = np.empty((k, d), dtype=np.float32)
    x2 = np.einsum("ij,ij->i", x, x, dtype=np.float64)

    def sqdist(rows: np.ndarray) -> np.ndarray:  # squared distances of every point to x[rows]
        return np.maximum(x2[:, None] - 2.0 * (x @ x[rows].T).astype(np.float64) + x2[rows][None, :], 0.0)

    j = int(rng.integers(n))
    centres[0] = x[j]
    d2 = sqdist(np.array([j]))[:, 0]
    for i in range(1, k):
        cum = np.cumsum(d2)
        total = float(cum[-1])
        if total <= 0:  # fewer distinct points than clusters: repeat one
            cand = rng.integers(n, size=1)
        else:
            cand = np.minimum(np.searchsorted(cum, rng.random(trials) * total), n - 1)
        new = np.minimum(d2[:, None], sqdist(cand))
        best = int(np.argmin(new.sum(axis=0)))
        centres[i] = x[cand[best]]
        d2 = new[:, best]
    return centres


def kmeans(
    x: np.ndarray,
    k: int,
    *,
    niter: int = 20,
    seed: int = 0,
    max_points_per_centroid: int = 256,
    spherical: bool = False,
    init: str = "k-means++",
    init_points_per_centroid: int = 16,
) -> KMeansResult:
    """k-means of the rows of `x` into `k` clusters (faiss; trains on at most
    `max_points_per_centroid` x k rows, like faiss does by default).

    `init="k-means++"` seeds the centroids by k-means++ on a random subsample of
    `init_points_per_centroid` x k rows; ``"random"`` is faiss's own random pick."""
    faiss = require("faiss", "pruners")
    xs = check_features(x, "k-means input")
    if not 1 <= k <= len(xs):
        raise PrunerError(f"k-means: k={k} clusters for {len(xs)} points")
    if init not in INITS:
        raise PrunerError(f"k-means: init must be one of {INITS}, found {init!r}")
    rng = np.random.default_rng(seed)
    km = faiss.Kmeans(  # type: ignore[attr-defined]
        xs.shape[1],
        k,
        niter=niter,
        seed=seed,
        verbose=False,
        spherical=spherical,
        max_points_per_centroid=max_points_per_centroid,
        min_points_per_centroid=1,  # faiss would print to stderr; we log instead
    )
    if len(xs) < 39 * k:
        log.info("k-means: %d points for %d clusters (faiss suggests at least %d)", len(xs), k, 39 * k)
    train = xs
    if len(xs) > max_points_per_centroid * k:  # subsample ourselves: one seeded draw, no faiss warning
        train = xs[np.sort(rng.choice(len(xs), max_points_per_centroid * k, replace=False))]
    init_centroids = None
    if init == "k-means++" and k > 1:
        m = min(len(train), max(init_points_per_centroid * k, 2 * k))
        sample = train if m == len(train) else train[rng.choice(len(train), m, replace=False)]
        init_centroids = kmeans_plusplus(sample, k, rng)
    km.train(train, init_centroids=init_centroids)
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
