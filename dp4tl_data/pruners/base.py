"""What every pruner gets and gives: the source, the budget, the targets, and keep-lists with provenance.

A pruner is a callable ``fn(request: PruneRequest, **params) -> dict[float, KeepList]``
(ratio -> keep-list), registered by name. The request carries the source description, the
budgets (pruning ratios or keep counts), the targets and lazy providers of what a pruner
may need (target logits, target features, source features), so a pruner computes only what
it uses, once, for every ratio.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import PrunerError
from ..keeplist import KeepList


@dataclass(frozen=True)
class SourceInfo:
    """The source as pruners see it: class count and names, label field, fingerprint, index."""

    num_classes: int
    names: tuple[str, ...] | None = None
    label_field: str = "cls"
    fingerprint: str | None = None
    index: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise PrunerError(f"the source has {self.num_classes} classes; pruning needs at least one")
        if self.names is not None and len(self.names) != self.num_classes:
            raise PrunerError(f"the source lists {len(self.names)} class names for {self.num_classes} classes")

    @classmethod
    def from_index(cls, index: Any, *, num_classes: int | None = None, label_field: str | None = None) -> SourceInfo:
        """From a `SourceIndex`: class names when it has them, else ids up to the largest label."""
        names = index.classes
        if names is not None:
            n = len(names)
        else:
            top = max((int(index.labels(s).max(initial=-1)) for s in index.shard_names), default=-1)
            n = top + 1
        if num_classes is not None and num_classes != n:
            if names is not None or num_classes < n:
                raise PrunerError(f"{index.url}: the index has {n} classes, {num_classes} were expected")
            n = num_classes
        return cls(
            num_classes=n,
            names=tuple(names) if names is not None else None,
            label_field=label_field or index.label_field or "cls",
            fingerprint=index.fingerprint,
            index=index,
        )

    def name(self, i: int) -> str:
        return self.names[i] if self.names is not None else str(i)

    def labels(self) -> np.ndarray:
        """Every sample's label in index order (shards by name, samples in shard order)."""
        idx = self._need_index("labels")
        parts = [idx.labels(s) for s in idx.shard_names]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def class_sizes(self) -> np.ndarray | None:
        """Samples per class, from the index (None without one)."""
        if self.index is None:
            return None
        lab = self.labels()
        return np.bincount(lab[lab >= 0], minlength=self.num_classes)[: self.num_classes]

    def provenance(self) -> dict[str, Any]:
        """Provenance keys every list made on this source carries."""
        out: dict[str, Any] = {"source_fingerprint": self.fingerprint, "num_classes": self.num_classes}
        if self.index is not None:
            out["num_shards"] = len(self.index.shard_names)
            out["num_samples"] = self.index.num_samples
        return out

    def _need_index(self, what: str) -> Any:
        if self.index is None:
            raise PrunerError(f"{what}: this pruner needs the source index (--source source.idx)")
        return self.index


@dataclass(frozen=True)
class Target:
    """One target task: an id for provenance, and lazy providers of what pruners read from it.

    `logits()` yields batches of surrogate outputs (n x source classes); `features()` returns
    the encoder's embeddings (n x d)."""

    id: str
    logits: Callable[[], Iterable[np.ndarray]] | None = None
    features: Callable[[], np.ndarray] | None = None


@dataclass
class PruneRequest:
    """One pruning job: source, budgets, targets, seed, model id and lazy source features."""

    source: SourceInfo
    ratios: Sequence[float] = ()
    keeps: Sequence[int] = ()
    targets: Sequence[Target] = ()
    seed: int = 0
    model_id: str | None = None
    source_features: Callable[[], np.ndarray] | None = None

    def target_id(self) -> str | None:
        return "+".join(t.id for t in self.targets) if self.targets else None

    def need_targets(self, what: str) -> Sequence[Target]:
        if not self.targets:
            raise PrunerError(f"{what} needs a target (--target)")
        return self.targets

    def source_feats(self, what: str) -> np.ndarray:
        if self.source_features is None:
            raise PrunerError(f"{what} needs source features (--source-features or --model)")
        return self.source_features()


def budgets(
    total: int, ratios: Sequence[float] = (), keeps: Sequence[int] = (), what: str = "classes"
) -> list[tuple[float, int]]:
    """``(ratio, K)`` pairs: K = total - round(ratio * total) units kept for each pruning ratio,
    and ratio = 1 - K / total for each keep count K. Raises PrunerError on a ratio outside
    [0, 1), a K outside [1, total], or a budget that keeps nothing."""
    if not ratios and not keeps:
        raise PrunerError("give at least one pruning ratio (--ratio) or keep count (--keep)")
    out: list[tuple[float, int]] = []
    for r in ratios:
        if not isinstance(r, (int, float)) or isinstance(r, bool) or not math.isfinite(r) or not 0 <= r < 1:
            raise PrunerError(f"pruning ratio {r!r} is outside [0, 1)")
        k = total - int(round(r * total))
        if k < 1:
            raise PrunerError(f"pruning ratio {r} keeps none of the {total} {what}")
        out.append((float(r), k))
    for k in keeps:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise PrunerError(f"keep count {k!r} is not an int")
        if k > total:
            raise PrunerError(f"K={k} is larger than the {total} source {what}")
        if k < 1:
            raise PrunerError(f"K={k}: keep at least one of the {total} source {what}")
        out.append((round(1 - int(k) / total, 6), int(k)))
    return out


@dataclass(frozen=True)
class Made:
    """How a list was made, for its provenance: method, ratio, parameters, model and target ids."""

    method: str
    ratio: float | None
    params: dict[str, Any]
    model_id: str | None = None
    target_id: str | None = None

    def provenance(self, source: SourceInfo, **extra: Any) -> dict[str, Any]:
        return {
            **source.provenance(),
            "method": self.method,
            "params": self.params,
            "ratio": self.ratio,
            "model_id": self.model_id,
            "target_id": self.target_id,
            **extra,
        }


def class_keeplist(
    source: SourceInfo,
    kept: Iterable[int],
    made: Made,
    scores: dict[str, Any] | None,
    sizes: np.ndarray | None = None,
) -> KeepList:
    """A class-level KeepList with full provenance (and images kept, when class sizes are known)."""
    ids = sorted(int(i) for i in kept)
    extra = {"samples_kept": int(sizes[ids].sum())} if sizes is not None else {}
    names = list(source.names) if source.names is not None else None
    keep = KeepList.from_classes(ids, label_field=source.label_field, names=names, **made.provenance(source, **extra))
    if scores is not None:
        keep.scores = {**scores, "kept": ids}
    return keep


def shard_masks(source: SourceInfo, mask: np.ndarray, what: str) -> dict[str, np.ndarray]:
    """A boolean mask over the source in index order, split per shard."""
    idx = source._need_index(what)
    mask = np.asarray(mask, dtype=bool)
    if len(mask) != idx.num_samples:
        raise PrunerError(f"{what}: mask over {len(mask)} samples, the index has {idx.num_samples}")
    out: dict[str, np.ndarray] = {}
    pos = 0
    for name in idx.shard_names:
        n = idx.count(name)
        out[name] = mask[pos : pos + n]
        pos += n
    return out


def sample_keeplist(
    source: SourceInfo, mask: np.ndarray, made: Made, scores: dict[str, Any] | None, encoding: str = "keys"
) -> KeepList:
    """A sample-level KeepList from a boolean mask over the source in index order."""
    masks = shard_masks(source, mask, made.method)
    prov = made.provenance(source, samples_kept=int(sum(int(m.sum()) for m in masks.values())))
    if encoding == "bitmap":
        keep = KeepList.from_masks(masks, **prov)
    elif encoding == "keys":
        idx = source.index
        samples = {}
        for name, m in masks.items():
            if m.any():
                keys = idx.keys(name)
                samples[name] = [keys[i] for i in np.flatnonzero(m)]
        keep = KeepList.from_samples(samples, totals={n: len(m) for n, m in masks.items()}, **prov)
    else:
        raise PrunerError(f"encoding must be 'keys' or 'bitmap', found {encoding!r}")
    keep.scores = scores
    return keep


def shard_keeplist(
    source: SourceInfo, mask: np.ndarray, made: Made, scores: dict[str, Any] | None, min_fraction: float = 0.0
) -> KeepList:
    """Whole shards whose fraction of kept samples (in `mask`) exceeds `min_fraction`."""
    counts = {
        n: len(m) for n, m in shard_masks(source, mask, made.method).items() if len(m) and m.mean() > min_fraction
    }
    keep = KeepList.from_shards(counts, **made.provenance(source, samples_kept=int(sum(counts.values()))))
    keep.scores = scores
    return keep
