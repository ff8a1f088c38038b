"""Baselines the paper compares against: random classes, random samples, moderate coresets.

- random-class: K classes drawn with a stable seed (same list on every machine);
- random-sample: the same fraction of samples, drawn uniformly with a stable seed;
- moderate-sample (Moderate-DS, target-agnostic): per class, each sample's feature distance
  to the class median; keep the samples whose distance is nearest the class's median distance;
- moderate-class: the target's median feature is its "moderate core"; source classes are
  ranked by how far their mean feature is from it, and the middle band of that ranking is kept.
Reverse LM lives with LM (`lm.py`).
"""

from __future__ import annotations

import numpy as np

from ..cluster import check_features
from ..errors import PrunerError
from ..keeplist import KeepList
from ..world import stable_seed
from .base import Made, PruneRequest, budgets, class_keeplist, sample_keeplist


def random_class(request: PruneRequest) -> dict[float, KeepList]:
    """K random classes per budget; one permutation serves every budget (lists are nested)."""
    src = request.source
    rng = np.random.default_rng(stable_seed("random-class", request.seed, src.fingerprint, src.num_classes))
    order = rng.permutation(src.num_classes)
    priority = np.empty(src.num_classes)
    priority[order] = np.arange(src.num_classes, 0, -1)
    scores = {"kind": "random-priority", "votes": priority.tolist(), "order": "seeded permutation"}
    if src.names is not None:
        scores["names"] = list(src.names)
    sizes = src.class_sizes()
    return {
        ratio: class_keeplist(
            src, order[:k].tolist(), Made("random-class", ratio, {"seed": request.seed, "keep": k}), scores, sizes
        )
        for ratio, k in budgets(src.num_classes, request.ratios, request.keeps)
    }


def random_sample(request: PruneRequest, *, encoding: str = "keys") -> dict[float, KeepList]:
    """The same fraction of samples per budget, drawn uniformly (nested across budgets)."""
    src = request.source
    idx = src._need_index("random-sample")
    n = idx.num_samples
    if n == 0:
        raise PrunerError("random-sample: the source index has no samples")
    rng = np.random.default_rng(stable_seed("random-sample", request.seed, src.fingerprint))
    order = rng.permutation(n)
    out: dict[float, KeepList] = {}
    for ratio, k in budgets(n, request.ratios, request.keeps, what="samples"):
        mask = np.zeros(n, dtype=bool)
        mask[order[:k]] = True
        out[ratio] = sample_keeplist(
            src, mask, Made("random-sample", ratio, {"seed": request.seed, "keep": k}), None, encoding
        )
    return out


def _class_features(request: PruneRequest, what: str) -> tuple[np.ndarray, np.ndarray]:
    src = request.source
    feats = check_features(request.source_feats(what), "source features")
    labels = src.labels()
    if len(feats) != len(labels):
        raise PrunerError(f"{what}: source features have {len(feats)} rows, the source index has {len(labels)} samples")
    if (labels < 0).any():
        raise PrunerError(f"{what}: {int((labels < 0).sum())} source samples have no label")
    return feats, labels


def moderate_sample(request: PruneRequest, *, encoding: str = "keys") -> dict[float, KeepList]:
    """Moderate-DS: per class, keep the samples whose distance to the class median feature
    is closest to the class's median distance (the same fraction in every class)."""
    src = request.source
    feats, labels = _class_features(request, "moderate-sample")
    closeness = np.zeros(len(labels))  # how far from "moderate" each sample is (lower = keep first)
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        d = np.linalg.norm(feats[rows] - np.median(feats[rows], axis=0), axis=1)
        closeness[rows] = np.abs(d - np.median(d))
    out: dict[float, KeepList] = {}
    for ratio, _ in budgets(len(labels), request.ratios, request.keeps, what="samples"):
        mask = np.zeros(len(labels), dtype=bool)
        for c in np.unique(labels):
            rows = np.flatnonzero(labels == c)
            k = len(rows) - int(round(ratio * len(rows)))
            mask[rows[np.lexsort((rows, closeness[rows]))[:k]]] = True
        made = Made("moderate-sample", ratio, {"band": "median distance to class median"}, request.model_id)
        out[ratio] = sample_keeplist(src, mask, made, None, encoding)
    return out


def moderate_class(request: PruneRequest) -> dict[float, KeepList]:
    """Class-wise Moderate: rank classes by the distance of their mean feature to the target's
    median feature, keep the K whose distance is nearest the median of those distances."""
    src = request.source
    feats, labels = _class_features(request, "moderate-class")
    cores = []
    for t in request.need_targets("moderate-class"):
        if t.features is None:
            raise PrunerError(f"moderate-class: target {t.id!r} has no features (--model)")
        tf = check_features(t.features(), f"target {t.id} features", dim=feats.shape[1])
        if len(tf) == 0:
            raise PrunerError(f"target {t.id}: the target has no samples")
        cores.append(np.median(tf, axis=0))
    core = np.mean(cores, axis=0)
    sums = np.zeros((src.num_classes, feats.shape[1]))
    np.add.at(sums, labels, feats)
    counts = np.bincount(labels, minlength=src.num_classes)
    present = counts > 0
    dist = np.full(src.num_classes, np.inf)
    dist[present] = np.linalg.norm(sums[present] / counts[present, None] - core, axis=1)
    band = -np.abs(dist - np.median(dist[present]))  # higher = more moderate; absent classes last
    band[~present] = -np.inf
    ranking = np.lexsort((np.arange(src.num_classes), -band))
    scores = {
        "kind": "moderate-band",
        "votes": np.where(present, band, 0.0).tolist(),
        "distance": np.where(present, dist, -1.0).tolist(),
    }
    if src.names is not None:
        scores["names"] = list(src.names)
    return {
        ratio: class_keeplist(
            src,
            ranking[:k].tolist(),
            Made(
                "moderate-class",
                ratio,
                {"keep": k, "core": "median target feature"},
                request.model_id,
                request.target_id(),
            ),
            scores,
            counts,
        )
        for ratio, k in budgets(src.num_classes, request.ratios, request.keeps)
    }
