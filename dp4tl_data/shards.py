"""Shard stage: drop fully pruned shards, order them, and split kept work across readers.

Splitting works in *kept-sample* space: the kept samples of the ordered shard list form one
sequence of N samples; each rank takes an equal contiguous range of it and each DataLoader
worker a contiguous part of its rank's range. So every rank gets exactly the same number of
samples whatever the shard sizes, and fewer shards than readers starves nobody.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import Dp4tlError
from .keeplist import KeepList
from .world import World, stable_seed

UNEVEN_POLICIES = ("pad", "drop", "error")


@dataclass(frozen=True)
class ShardRef:
    """A shard to read: stable `name`, `url` to open, and `kept` / `total` sample counts when known."""

    name: str
    url: str
    kept: int | None = None
    total: int | None = None


@dataclass(frozen=True)
class Piece:
    """Kept samples ``[start, stop)`` of `shard`, counted among that shard's kept samples."""

    shard: ShardRef
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


def filter_shards(refs: Iterable[ShardRef], keep: KeepList) -> list[ShardRef]:
    """The refs that may hold kept samples: shards missing from a shard-level list, or with
    zero kept samples, are dropped here, before any of their bytes is read."""
    return [r for r in refs if keep.keeps_shard(r.name) and r.kept != 0]


def order_shards(refs: Sequence[ShardRef], *, shuffle: bool, seed: int, epoch: int) -> list[ShardRef]:
    """`refs` in a stable order: by name, or a permutation seeded by (seed, epoch)."""
    ordered = sorted(refs, key=lambda r: r.name)
    if not shuffle:
        return ordered
    rng = np.random.default_rng(stable_seed("shards", seed, epoch))
    return [ordered[i] for i in rng.permutation(len(ordered))]


def per_rank_count(total: int, world_size: int, uneven: str = "pad") -> int:
    """Samples each rank yields from `total` kept samples under the `uneven` policy."""
    if uneven not in UNEVEN_POLICIES:
        raise Dp4tlError(f"uneven must be one of {UNEVEN_POLICIES}, found {uneven!r}")
    if total % world_size and uneven == "error":
        raise Dp4tlError(
            f"{total} kept samples do not split evenly over {world_size} ranks; use uneven='pad' or 'drop'"
        )
    return total // world_size if uneven == "drop" else -(-total // world_size)


def split_shards(refs: Sequence[ShardRef], world: World, *, uneven: str = "pad") -> list[Piece]:
    """The pieces reader `world` reads, from `refs` in the order given.

    With known kept counts every rank gets exactly `per_rank_count` samples: ``pad`` repeats
    samples from the start of the sequence (like DistributedSampler), ``drop`` leaves out the
    last ``N % world_size``. Without counts, whole shards go round-robin to readers and rank
    counts may differ (index the source to balance them).
    """
    if any(r.kept is None for r in refs):
        return [Piece(r, 0, -1) for r in refs[world.slot :: world.slots]]
    counts = np.array([r.kept for r in refs], dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return []
    per_rank = per_rank_count(total, world.world_size, uneven)
    lo = world.rank * per_rank + (per_rank * world.worker) // world.num_workers
    hi = world.rank * per_rank + (per_rank * (world.worker + 1)) // world.num_workers
    return range_pieces(refs, np.concatenate([[0], np.cumsum(counts)]), lo, hi, total)


def range_pieces(refs: Sequence[ShardRef], bounds: np.ndarray, lo: int, hi: int, total: int) -> list[Piece]:
    """Positions ``[lo, hi)`` of the kept sequence (wrapping past `total`) as pieces of `refs`;
    `bounds` are the cumulative kept counts, starting at 0."""
    out: list[Piece] = []
    while lo < hi:
        a = lo % total
        b = min(a + (hi - lo), total)
        i = int(np.searchsorted(bounds, a, side="right")) - 1
        while a < b:
            stop = min(int(bounds[i + 1]), b)
            out.append(Piece(refs[i], a - int(bounds[i]), stop - int(bounds[i])))
            lo += stop - a
            a = stop
            i += 1
    return out


def pieces_length(pieces: Sequence[Piece]) -> int | None:
    """Samples in `pieces`, or None when a piece's extent is unknown."""
    if any(p.stop < 0 for p in pieces):
        return None
    return sum(len(p) for p in pieces)
