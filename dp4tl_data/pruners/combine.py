"""Several targets, one keep-list: sum of normalised votes; plus union and intersection of lists."""

from __future__ import annotations

from collections.abc import Sequence
from functools import reduce

import numpy as np

from ..errors import PrunerError
from ..keeplist import KeepList
from .votes import Votes


def combine_votes(votes: Sequence[Votes], weights: Sequence[float] | None = None) -> Votes:
    """One vote vector for several targets: each target's votes divided by its size (so a
    large target does not drown a small one), weighted, and summed. One target is returned as is."""
    if not votes:
        raise PrunerError("no targets to combine")
    if len(votes) == 1 and weights is None:
        return votes[0]
    w = np.ones(len(votes)) if weights is None else np.asarray(weights, dtype=np.float64)
    if len(w) != len(votes) or not np.isfinite(w).all() or (w < 0).any() or w.sum() == 0:
        raise PrunerError(f"target weights must be {len(votes)} finite non-negative numbers, not all zero")
    parts = [v.normalised() for v in votes]
    c = parts[0].num_classes
    if any(p.num_classes != c for p in parts):
        raise PrunerError(f"targets voted over different class counts: {[p.num_classes for p in parts]}")
    hard = sum((wi * p.hard for wi, p in zip(w, parts)), np.zeros(c))
    soft = sum((wi * p.soft for wi, p in zip(w, parts)), np.zeros(c))
    return Votes(np.asarray(hard, dtype=np.float64), np.asarray(soft, dtype=np.float64), int(sum(v.n for v in votes)))


def union(lists: Sequence[KeepList]) -> KeepList:
    """Everything any of `lists` keeps (same source, same level)."""
    if not lists:
        raise PrunerError("union of no keep-lists")
    return reduce(lambda a, b: a | b, lists)


def intersection(lists: Sequence[KeepList]) -> KeepList:
    """What every one of `lists` keeps."""
    if not lists:
        raise PrunerError("intersection of no keep-lists")
    return reduce(lambda a, b: a & b, lists)
