"""Feature mapping (FM): cluster the source's features, keep the clusters the target falls into.

k-means (faiss) turns source features into pseudo-classes; every target sample votes for its
nearest centroid (hard), and sums its softmax over negative squared distances (soft, the
tie-break); the K most voted clusters are kept. Votes follow the data: a target sample votes
for the centroid nearest to *it* (the reference code's selection script indexed its
distance buffer by sample instead of cluster, so nearly every vote went to cluster 0).
FM needs no source labels; it yields a sample-level list, and a shard-level one on request.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from ..cluster import assign, check_features, kmeans
from ..errors import PrunerError
from ..keeplist import KeepList
from .base import Made, PruneRequest, budgets, sample_keeplist, shard_keeplist
from .combine import combine_votes
from .votes import Votes, count_votes

LEVELS = ("sample", "shard")


def centroid_logits(x: np.ndarray, centroids: np.ndarray, *, batch: int = 4096) -> Iterator[np.ndarray]:
    """Batches of ``-||x - c||^2 / tau`` for every centroid c (argmax = nearest centroid);
    tau is the mean nearest squared distance, so the soft votes do not depend on feature scale."""
    import torch

    c = torch.from_numpy(centroids).double()
    c2 = (c * c).sum(1)
    parts = []
    for s in range(0, len(x), batch):
        xb = torch.from_numpy(x[s : s + batch]).double()
        parts.append(((xb * xb).sum(1, keepdim=True) - 2 * xb @ c.T + c2).clamp_min_(0))
    tau = float(torch.cat([p.min(1).values for p in parts]).mean()) if parts else 1.0
    tau = tau if tau > 0 else 1.0
    for p in parts:
        yield (-p / tau).numpy()


def cluster_votes(target: np.ndarray, centroids: np.ndarray, *, where: str) -> Votes:
    """Nearest-centroid votes of the rows of `target` over the clusters."""
    if len(target) == 0:
        raise PrunerError(f"{where}: the target has no samples, nothing voted")
    return count_votes(centroid_logits(target, centroids), len(centroids), where=where)


def feature_mapping(
    request: PruneRequest,
    *,
    clusters: int = 1000,
    niter: int = 20,
    mode: str = "hard",
    level: str = "sample",
    encoding: str = "keys",
    shard_min_fraction: float = 0.0,
    max_points_per_centroid: int = 256,
) -> dict[float, KeepList]:
    """FM keep-lists (the `fm` pruner): sample level (kept clusters' samples) or shard level
    (shards whose kept fraction exceeds `shard_min_fraction`)."""
    if level not in LEVELS:
        raise PrunerError(f"fm level must be one of {LEVELS}, found {level!r}")
    src = request.source
    idx = src._need_index("fm")
    feats = check_features(request.source_feats("fm"), "source features")
    if len(feats) != idx.num_samples:
        raise PrunerError(f"source features have {len(feats)} rows, the source index has {idx.num_samples} samples")
    if not 1 <= clusters <= len(feats):
        raise PrunerError(f"fm: {clusters} clusters for {len(feats)} source samples")
    plan = budgets(clusters, request.ratios, request.keeps, what="clusters")
    km = kmeans(feats, clusters, niter=niter, seed=request.seed, max_points_per_centroid=max_points_per_centroid)
    src_ids, _ = assign(feats, km.centroids)
    per_target = []
    for t in request.need_targets("fm"):
        if t.features is None:
            raise PrunerError(f"fm: target {t.id!r} has no features (--model)")
        tf = check_features(t.features(), f"target {t.id} features", dim=feats.shape[1])
        per_target.append(cluster_votes(tf, km.centroids, where=f"target {t.id}"))
    votes = combine_votes(per_target)
    sizes = np.bincount(src_ids, minlength=clusters)
    scores = {**votes.to_json(mode=mode), "unit": "clusters", "cluster_sizes": sizes.tolist(), "inertia": km.inertia}
    out: dict[float, KeepList] = {}
    for ratio, k in plan:
        kept = np.sort(votes.top(k, mode))
        mask = np.isin(src_ids, kept)
        params: dict[str, Any] = {
            "clusters": clusters,
            "keep": k,
            "niter": niter,
            "votes": mode,
            "seed": request.seed,
            "level": level,
            "targets": len(request.targets),
        }
        sc = {**scores, "kept": kept.tolist()}
        if level == "shard":
            params["shard_min_fraction"] = shard_min_fraction
        made = Made("fm", ratio, params, request.model_id, request.target_id())
        if level == "shard":
            out[ratio] = shard_keeplist(src, mask, made, sc, shard_min_fraction)
        else:
            out[ratio] = sample_keeplist(src, mask, made, sc, encoding)
    return out
