"""Streaming `datasets.IterableDataset`: kept files only, rows decided before decoding,
balanced over ranks, exact resume.

The pruned dataset is an ordinary `IterableDataset` over `PrunedExamplesIterable`, so
`.map`, `.shuffle`, `.decode`, `split_dataset_by_node`, DataLoader workers and `state_dict`
go through `datasets` as usual. What this module adds:

- The kept files are the only ones ever opened (fully pruned files left the list before).
- When kept counts are known (a source index, a sample-level list, or a scan of the key/label
  columns when several ranks need balancing), the kept rows form one sequence, made a multiple
  of the world size (``uneven``: ``pad`` repeats rows from the start, ``drop`` cuts the tail),
  and cut into ``world_size x k`` *virtual shards*: virtual shard ``j * world_size + r`` is part
  ``j`` of rank ``r``'s equal range. `split_dataset_by_node` (shard strategy: ``i::world_size``,
  or example strategy: every ``world_size``-th row) then gives every rank the same count.
- Without counts (one rank), virtual shards are whole files.
- The state is ``(virtual shard, piece, kept rows read)`` in the dp4tl state format; resuming
  opens no file before the position and repeats nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from copy import copy
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa
from datasets import IterableDataset, SplitDict, SplitInfo
from datasets.iterable_dataset import _BaseExamplesIterable

from dp4tl_data.errors import KeepListError, SampleError
from dp4tl_data.shards import Piece, ShardRef, per_rank_count, range_pieces
from dp4tl_data.state import check_state, make_state

from .hf_read import ReadSpec, read_piece

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    """The whole kept sequence: files in order, world size and policy (same on every rank)."""

    refs: tuple[ShardRef, ...]
    world_size: int
    uneven: str
    keep: str  # keep-list fingerprint, for the state
    allow_empty: bool
    spec_name: str

    @property
    def counted(self) -> bool:
        return all(r.kept is not None for r in self.refs)

    @property
    def kept(self) -> int | None:
        """Kept rows in the source, when known."""
        return sum(int(r.kept or 0) for r in self.refs) if self.counted else None

    @property
    def total(self) -> int | None:
        """Rows the whole stream yields per epoch (kept rows, equalised over the world)."""
        n = self.kept
        return None if n is None else per_rank_count(n, self.world_size, self.uneven) * self.world_size

    def per_rank(self) -> int | None:
        n = self.kept
        return None if n is None else per_rank_count(n, self.world_size, self.uneven)

    def virtual_shards(self) -> list[list[Piece]]:
        """Counted: rank ``r``'s equal range of the kept sequence, cut at file boundaries into
        pieces; virtual shard ``j * world_size + r`` is rank ``r``'s ``j``-th piece (or empty).
        Uncounted: whole files."""
        if not self.counted:
            return [[Piece(r, 0, -1)] for r in self.refs]
        per_rank = self.per_rank() or 0
        bounds = np.concatenate([[0], np.cumsum([int(r.kept or 0) for r in self.refs])])
        n = int(bounds[-1])
        ranks = [range_pieces(self.refs, bounds, r * per_rank, (r + 1) * per_rank, n) for r in range(self.world_size)]
        k = max(1, *(len(p) for p in ranks))
        return [[ranks[r][j]] if j < len(ranks[r]) else [] for j in range(k) for r in range(self.world_size)]


class PrunedExamplesIterable(_BaseExamplesIterable):  # type: ignore[misc]
    """The `datasets` examples iterable of a pruned stream: a list of virtual shards (pieces)."""

    def __init__(self, plan: Plan, spec: ReadSpec, shards: list[list[Piece]] | None = None) -> None:
        super().__init__()
        self.plan = plan
        self.spec = spec
        self.root = shards is None
        self.shards = plan.virtual_shards() if shards is None else shards
        self._sleep_on_threads_shutdown = spec.builder == "parquet"  # as datasets does for Arrow threads

    # -- datasets protocol

    @property
    def iter_arrow(self) -> Any:
        return self._iter_arrow

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    def shuffle_data_sources(self, generator: np.random.Generator) -> PrunedExamplesIterable:
        """The root reorders its files (every rank draws the same order, so balance holds);
        a split part reorders its own virtual shards."""
        if self.root:
            order = generator.permutation(len(self.plan.refs))
            plan = replace(self.plan, refs=tuple(self.plan.refs[i] for i in order))
            return PrunedExamplesIterable(plan, self.spec)
        order = generator.permutation(len(self.shards))
        return PrunedExamplesIterable(self.plan, self.spec, [self.shards[i] for i in order])

    def shard_data_sources(self, num_shards: int, index: int, contiguous: bool = True) -> PrunedExamplesIterable:
        picked = self.split_shard_indices_by_worker(num_shards, index, contiguous=contiguous)
        return PrunedExamplesIterable(self.plan, self.spec, [self.shards[i] for i in picked])

    def reshard_data_sources(self) -> PrunedExamplesIterable:
        return copy(self)

    def _init_state_dict(self) -> dict[str, Any]:
        self._state_dict = {
            "type": type(self).__name__,
            **make_state(
                keep=self.plan.keep,
                world_size=self.plan.world_size,
                epoch=0,
                position={"shard": 0, "piece": 0, "offset": 0},
            ),
        }
        return self._state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        check_state(state_dict, keep=self.plan.keep, world_size=self.plan.world_size)
        self._init_state_dict()
        pos = state_dict["position"]
        self._state_dict["position"] = {k: int(pos.get(k, 0)) for k in ("shard", "piece", "offset")}
        return self._state_dict

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for key, table in self._tables(per_row=True):
            yield key, table.to_pylist()[0]

    def _iter_arrow(self) -> Iterator[tuple[str, pa.Table]]:
        yield from self._tables(per_row=False)

    # -- reading

    def _tables(self, per_row: bool) -> Iterator[tuple[str, pa.Table]]:
        """Kept rows from the saved position on; the state moves before each yield."""
        state = self._state_dict
        pos = dict(state["position"]) if state else {"shard": 0, "piece": 0, "offset": 0}
        total = 0
        for s in range(pos["shard"], len(self.shards)):
            pieces = self.shards[s]
            first = pos["piece"] if s == pos["shard"] else 0
            for p in range(first, len(pieces)):
                piece = pieces[p]
                done = pos["offset"] if (s, p) == (pos["shard"], first) else 0
                start = piece.start + done
                stop = piece.stop if piece.stop >= 0 else None
                key = f"{piece.shard.name}:{start}"
                for table in read_piece(self.spec, piece.shard, start, stop):
                    rows = [table.slice(i, 1) for i in range(table.num_rows)] if per_row else [table]
                    for t in rows:
                        done += t.num_rows
                        total += t.num_rows
                        if state:
                            state["position"] = {"shard": s, "piece": p, "offset": done}
                        yield key, t
                if stop is not None and piece.start + done < stop:
                    raise SampleError(
                        f"{piece.shard.url}: holds fewer kept rows than the {piece.stop} its index or "
                        "keep-list lists; the file changed (re-index it)"
                    )
                if state:
                    nxt = (s, p + 1) if p + 1 < len(pieces) else (s + 1, 0)
                    state["position"] = {"shard": nxt[0], "piece": nxt[1], "offset": 0}
        fresh = pos == {"shard": 0, "piece": 0, "offset": 0}
        if self.root and fresh and not total and not self.plan.allow_empty:
            raise KeepListError(
                f"{self.plan.spec_name}: the keep-list keeps none of its rows (allow_empty=True to accept)"
            )

    def stats(self) -> dict[str, Any]:
        """Filter counters of the reads made in this process."""
        a, b = self.spec.rule.stats.as_dict(), self.spec.sample_filter.stats.as_dict()
        out = {k: a[k] + b[k] for k in ("seen", "kept", "padded")}
        for k in ("dropped", "skipped"):
            out[k] = {r: a[k].get(r, 0) + b[k].get(r, 0) for r in set(a[k]) | set(b[k])}
        return out


class PrunedIterableDataset(IterableDataset):  # type: ignore[misc]
    """An IterableDataset whose `len()` is exact when the kept counts are known: the rows each
    rank yields per epoch (after ``split_dataset_by_node`` over the planned world)."""

    def __len__(self) -> int:
        ex = self._ex_iterable
        n = ex.plan.per_rank() if isinstance(ex, PrunedExamplesIterable) else None
        if n is None:
            raise TypeError("length unknown: index the source (dp4tl index) or use a sample-level keep-list")
        return int(n)


def pruned_dataset(plan: Plan, spec: ReadSpec, *, info: Any, split: Any, token_per_repo_id: Any = None) -> Any:
    """The pruned IterableDataset (features kept, so `datasets` decodes the kept rows only)."""
    info = info.copy()
    info.features = spec.features
    total = plan.total
    if total is not None:
        info.splits = SplitDict({str(split): SplitInfo(str(split), num_examples=total)})
    ex = PrunedExamplesIterable(plan, spec)
    return PrunedIterableDataset(ex_iterable=ex, info=info, split=split, token_per_repo_id=token_per_repo_id)
