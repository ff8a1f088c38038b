"""The pruned WebDataset stream, stage by stage::

    refs    = shard refs with exact kept counts    # from the index (or the keep-list's counts)
    refs    = filter_shards(refs, keep)             # fully pruned shards: never opened
    refs    = order_shards(refs, shuffle, seed, epoch)
    pieces  = split_shards(refs, rank)              # the same number of kept samples per rank
    order   = rank order (seeded buffer shuffle), then this worker's positions in it
    samples = IndexedShardReader | stream_shard     # only kept bytes are read
    ...your webdataset stages (.decode, .to_tuple, .batched)

Positions. A rank's kept samples form one sequence S of ``len()`` samples; the rank's output
order is S permuted by a seeded buffer shuffle (identity without one). Output positions are
dealt to DataLoader workers in chunks of `batch_size` (so the loader's batches come out in
exactly that order, whatever the number of workers) or, without a batch size, as contiguous
ranges. A resume state is the number of output positions consumed: workers skip them
without reading a byte of them.
"""

from __future__ import annotations

import logging
import os
import random
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch.utils.data import IterableDataset
from webdataset.utils import PipelineStage

from dp4tl_data.errors import Dp4tlError, IndexFileError, KeepListError, SampleError, ShardError, StateError
from dp4tl_data.index import SourceIndex
from dp4tl_data.keeplist import KeepList
from dp4tl_data.members import SampleFilter
from dp4tl_data.shards import Piece, ShardRef, filter_shards, order_shards, per_rank_count, split_shards
from dp4tl_data.state import check_state, make_state
from dp4tl_data.stats import FilterStats
from dp4tl_data.urls import check_url, common_root, join_root, stable_name
from dp4tl_data.world import World, stable_seed

from .wds_index import KIND, LabelSpec, member_arrays
from .wds_reader import IndexedShardReader, stream_shard

log = logging.getLogger(__name__)
REMOTE_GAP = 0
SHARD_CACHE = 4
POOL = 8


@dataclass(frozen=True)
class Order:
    """Seeded order: shuffle the shard list per epoch; shuffle samples within a `buffer`."""

    shuffle_shards: bool = False
    buffer: int = 0
    seed: int = 0


@dataclass(frozen=True)
class ReadOptions:
    """How shards are read: `select(member_name)` picks members (webdataset's select_files),
    `coalesce_gap` bytes between ranges still read in one request (default 0: only touching
    ranges), `concurrency` range requests in flight (remote files), `readahead` samples per
    read round, `strict_identity`: check mtime/etag too."""

    select: Callable[[str], bool] | None = None
    coalesce_gap: int | None = None
    concurrency: int = 4
    readahead: int = 256
    strict_identity: bool = True
    storage_options: dict[str, Any] | None = field(default=None, hash=False)
    allow_commands: bool = False


class _IndexRef:
    """A SourceIndex that each process re-opens from its URL (open files are not shared across forks)."""

    def __init__(self, index: SourceIndex) -> None:
        self.url = index.url
        self._index: SourceIndex | None = index
        self._pid = os.getpid()

    def get(self) -> SourceIndex:
        if self._index is None or (self.url != "<memory>" and self._pid != os.getpid()):
            self._index = SourceIndex.load(self.url)
            self._pid = os.getpid()
        return self._index

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.url != "<memory>":
            state["_index"] = None
        return state


# ----------------------------------------------------------------------------- planning


def buffer_order(n: int, buffer: int, seed: int) -> np.ndarray:
    """The permutation a seeded shuffle buffer of size `buffer` applies to ``0..n-1``."""
    if buffer <= 1 or n <= 1:
        return np.arange(n, dtype=np.int64)
    rng = random.Random(seed)
    out = np.empty(n, dtype=np.int64)
    buf: list[int] = []
    k = 0
    for i in range(n):
        buf.append(i)
        if len(buf) >= buffer:
            j = rng.randrange(len(buf))
            buf[j], buf[-1] = buf[-1], buf[j]
            out[k] = buf.pop()
            k += 1
    while buf:
        j = rng.randrange(len(buf))
        buf[j], buf[-1] = buf[-1], buf[j]
        out[k] = buf.pop()
        k += 1
    return out


def worker_positions(start: int, total: int, worker: int, num_workers: int, unit: int | None) -> np.ndarray:
    """Output positions in ``[start, total)`` that `worker` yields: chunks of `unit` dealt
    round-robin (a DataLoader then returns them in order), or one contiguous range."""
    if unit:
        k = np.arange(start, total, dtype=np.int64)
        return k[((k - start) // unit) % num_workers == worker]
    lo = start + (total - start) * worker // num_workers
    hi = start + (total - start) * (worker + 1) // num_workers
    return np.arange(lo, hi, dtype=np.int64)


def reader_world(world: World | None) -> World:
    """`world` (or the detected one) with the DataLoader worker filled in, unless simulated."""
    base = world or World.detect()
    if world is not None and world.num_workers > 1:
        return base
    info = World.detect(rank=base.rank, world_size=base.world_size)
    return base.with_worker(info.worker, info.num_workers)


def shard_names(urls: Sequence[str], root: str | None, index: SourceIndex | None) -> tuple[list[str], str]:
    """Stable names of `urls` (relative to `root`, else the index root or their common root)."""
    if root is None:
        iroot = index.root if index is not None else ""
        under = iroot and all(u.startswith(iroot.rstrip("/") + "/") for u in urls)
        root = iroot if under else common_root([u for u in urls if not u.startswith("pipe:")])
    names = [_pipe_name(u) if u.startswith("pipe:") else stable_name(u, root) for u in urls]
    if index is not None:
        missing = [(n, u) for n, u in zip(names, urls) if n not in index]
        if missing:
            n, u = missing[0]
            raise IndexFileError(
                f"{index.url}: shard {n!r} ({u}) is not in the index; pass root= (the folder its names are relative to)"
            )
    return names, root


def _pipe_name(url: str) -> str:
    last = url.split()[-1]
    return last.rsplit("/", 1)[-1]


def indexed_counts(
    keep: KeepList,
    index: SourceIndex,
    names: Iterable[str],
    *,
    dataset_classes: Sequence[str] | None,
    on_error: str,
    stats: FilterStats,
) -> dict[str, int]:
    """Exact kept samples per shard of `names`; refuses samples without labels (class-level
    lists) unless on_error="skip", and keyed entries naming keys the index lacks."""
    out: dict[str, int] = {}
    for name in names:
        stats.seen += index.count(name)
        if not keep.keeps_shard(name):
            stats.dropped["shard"] += index.count(name)
            continue
        nulls = index.table(name).column("label").null_count if keep.classes is not None else 0
        if nulls:
            if on_error == "raise":
                index.check_labels(name)
            stats.skipped["no label"] += nulls
            log.warning("shard %r: %d samples without label skipped", name, nulls)
        mask = keep.masks(index, dataset_classes=dataset_classes, names=[name]).get(name)
        kept = int(mask.sum()) if mask is not None else 0
        entry = keep.shard(name)
        if entry is not None and entry.encoding == "keys" and keep.classes is None and entry.kept != kept:
            lacking = sorted(entry.keys() - set(index.keys(name)))
            raise KeepListError(
                f"keep-list keeps {entry.kept} samples of shard {name!r}, the index holds {kept} of them "
                f"(first missing key: {lacking[0] if lacking else None!r})"
            )
        stats.kept += kept
        stats.dropped["sample"] += index.count(name) - kept - nulls
        if kept:
            out[name] = kept
    return out


def listed_counts(keep: KeepList, names: Iterable[str]) -> dict[str, int] | None:
    """Kept samples per shard from a sample-level keep-list alone (None when it does not count them)."""
    if keep.classes is not None or keep.shards is None:
        return None
    out: dict[str, int] = {}
    for name in names:
        entry = keep.shard(name)
        if entry is None:
            continue
        if entry.kept is None or entry.encoding == "all":
            return None  # a whole shard's count is a claim about the data, not a list of samples
        out[name] = entry.kept
    return out


# ----------------------------------------------------------------------------- the reader


class KeptSamples(IterableDataset, PipelineStage):  # type: ignore[misc]
    """The kept samples of webdataset tar shards, this reader's share, as webdataset dicts.

    An IterableDataset (first stage of a pipeline, or on its own) and a webdataset pipeline
    stage (after a shard list yielding ``{"url": ...}``: it replaces ``split_by_node``,
    ``split_by_worker`` and ``tarfile_to_samples``).
    """

    def __init__(
        self,
        keep: KeepList,
        *,
        urls: Sequence[str] | None = None,
        index: SourceIndex | str | None = None,
        root: str | None = None,
        world: World | None = None,
        uneven: str = "pad",
        on_error: str = "raise",
        label_field: str | None = None,
        dataset_classes: Sequence[str] | None = None,
        batch_size: int | None = None,
        order: Order = Order(),
        read: ReadOptions = ReadOptions(),
        allow_foreign: bool = False,
    ) -> None:
        super().__init__()
        idx = SourceIndex.load(index) if isinstance(index, str) else index
        if idx is not None and idx.kind not in (KIND, ""):
            raise IndexFileError(f"{idx.url}: a {idx.kind!r} index, not a webdataset one")
        self.keep = keep
        self.world = world
        self.uneven = uneven
        per_rank_count(0, 1, uneven)
        self.order = order
        self.read_options = read
        self.batch_size = batch_size
        self.root = root
        self.allow_foreign = allow_foreign
        self.dataset_classes = dataset_classes
        self._filter_args: dict[str, Any] = dict(
            label_field=label_field, dataset_classes=dataset_classes, on_error=on_error
        )
        flt = SampleFilter(keep, **self._filter_args)  # validates the arguments now
        self.on_error = on_error
        self.label = LabelSpec.parse(flt.label_field if flt.needs_label else None)
        self._index = _IndexRef(idx) if idx is not None else None
        if idx is not None:
            keep.check_source(idx.fingerprint, allow_foreign=allow_foreign, where=idx.url)
            self._check_keep_shards(idx)
        self.epoch = 0
        self._start = 0
        self._position = 0
        self.last_stats = FilterStats()
        self.bytes_read = 0
        self.requests = 0
        self.urls: list[str] = []
        self.refs: list[ShardRef] = []
        self.source_stats = FilterStats()
        if urls is not None or idx is not None:
            self.configure(urls)

    # -- source

    @property
    def index(self) -> SourceIndex | None:
        return self._index.get() if self._index is not None else None

    def _check_keep_shards(self, idx: SourceIndex) -> None:
        if self.keep.shards is None or self.allow_foreign:
            return
        extra = sorted(n for n in self.keep.shards if n not in idx)
        if extra:
            raise KeepListError(
                f"keep-list keeps shard {extra[0]!r} ({len(extra)} in all) that the index {idx.url} lacks; "
                "it was made for another source (allow_foreign=True to apply it anyway)"
            )

    def configure(self, urls: Sequence[str] | None) -> None:
        """Set the shard list (None: every shard of the index) and compute kept counts."""
        idx = self.index
        if urls is None:
            if idx is None:
                raise ShardError("no shards: pass urls or an index")
            root = self.root if self.root is not None else idx.root
            urls = [join_root(root, n) for n in idx.shard_names]
        urls = list(urls)
        if urls == self.urls and self.refs:
            return
        for u in urls:
            check_url(u, allow_commands=self.read_options.allow_commands)
        if idx is not None and any(u.startswith("pipe:") for u in urls):
            raise ShardError("pipe: URLs cannot be read by byte range; drop index= to stream them")
        names, root = shard_names(urls, self.root, idx)
        stats = FilterStats()
        if idx is not None:
            counts: dict[str, int] | None = indexed_counts(
                self.keep, idx, names, dataset_classes=self.dataset_classes, on_error=self.on_error, stats=stats
            )
            listed = set(names)
            left_out = sum(1 for n in idx.shard_names if n not in listed and self.keep.keeps_shard(n))
            if left_out:
                log.info("%d indexed shards are not among the given URLs and are not read", left_out)
        else:
            counts = listed_counts(self.keep, names)
        refs = [
            ShardRef(n, u, kept=(counts.get(n, 0) if counts is not None else None), total=_total(idx, n))
            for n, u in zip(names, urls)
        ]
        self.urls, self.refs, self.source_stats = urls, filter_shards(refs, self.keep), stats
        self.identity_root = root if idx is not None and root == idx.root else None

    @property
    def counted(self) -> bool:
        return all(r.kept is not None for r in self.refs)

    # -- protocol

    def __len__(self) -> int:
        """Kept samples this rank yields per epoch (exact; the same on every rank)."""
        if not self.counted:
            raise TypeError("length unknown: without an index a class-level keep-list does not count kept samples")
        total = sum(r.kept or 0 for r in self.refs)
        w = self.world or World.detect()
        return per_rank_count(total, w.world_size, self.uneven)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch: it seeds the shard and sample order (a new epoch starts at position 0)."""
        if epoch != self.epoch:
            self._start = 0
            self._position = 0
        self.epoch = epoch

    def _fingerprint(self) -> dict[str, Any]:
        idx = self.index
        return {
            "source": idx.fingerprint if idx is not None else sorted(r.name for r in self.refs),
            "order": [self.order.shuffle_shards, self.order.buffer, self.order.seed],
            "uneven": self.uneven,
        }

    def state_at(self, position: int) -> dict[str, Any]:
        """A resume state at output `position` of this rank's epoch."""
        w = self.world or World.detect()
        fp = self._fingerprint()
        if not self.counted:
            fp["slot"] = [reader_world(self.world).slot]
        return make_state(
            keep=self.keep.fingerprint,
            world_size=w.world_size,
            epoch=self.epoch,
            position={"samples": int(position), "rank": w.rank, **fp},
        )

    def state_dict(self, position: int | None = None) -> dict[str, Any]:
        """Where this rank is in its epoch: output positions consumed (default: what this object yielded)."""
        if position is None and reader_world(self.world).num_workers > 1:
            raise StateError("this reader is one of several workers; take the state from the loader")
        return self.state_at(self._position if position is None else position)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: the next pass starts at the saved position (nothing before it is read)."""
        w = self.world or World.detect()
        check_state(state, keep=self.keep.fingerprint, world_size=w.world_size)
        pos = state["position"]
        for k, want in self._fingerprint().items():
            if pos.get(k) != want:
                raise StateError(f"state {k}: found {pos.get(k)!r}, expected {want!r}")
        samples = pos.get("samples")
        if not isinstance(samples, int) or samples < 0:
            raise StateError(f"state position: found {samples!r}, expected a sample count")
        self.epoch = int(state["epoch"])
        self._start = self._position = samples

    def stats(self) -> dict[str, Any]:
        """The source's counts (seen/kept/dropped by reason, fixed by the index) and this pass's."""
        last = self.last_stats.as_dict()
        src = self.source_stats.as_dict()
        return {
            **src,
            "yielded": last["kept"],
            "padded": last["padded"],
            "skipped": {**src["skipped"], **last["skipped"]},
            "shards": {"listed": len(self.urls), "kept": len(self.refs)},
            "bytes_read": self.bytes_read,
            "requests": self.requests,
        }

    # -- iteration

    def __iter__(self) -> Iterator[dict[str, Any]]:
        start = self._start
        n = 0
        for sample in self.samples():
            n += 1
            self._position = start + n
            yield sample

    def run(self, src: Iterable[Any]) -> Iterator[dict[str, Any]]:
        """As a pipeline stage: read the shards named by `src` (``{"url": ...}`` dicts or strings)."""
        self.configure([s["url"] if isinstance(s, dict) else s for s in src])
        yield from self

    def samples(self, unit: int | None = None) -> Iterator[dict[str, Any]]:
        """This reader's kept samples for the epoch, from the saved position on; positions are
        dealt to DataLoader workers in chunks of `unit` (default: `batch_size`) or contiguously."""
        if not self.refs and not self.urls:
            self.configure(None)
        w = reader_world(self.world)
        stats = self.last_stats = FilterStats()
        refs = order_shards(self.refs, shuffle=self.order.shuffle_shards, seed=self.order.seed, epoch=self.epoch)
        start, self._start = self._start, 0
        if not self.counted:
            yield from self._uncounted(refs, w, start, stats)
            return
        pieces = split_shards(refs, World(w.rank, w.world_size), uneven=self.uneven)
        bounds = np.concatenate([[0], np.cumsum([len(p) for p in pieces])]).astype(np.int64)
        total = int(bounds[-1])
        perm = buffer_order(total, self.order.buffer, stable_seed("samples", self.order.seed, self.epoch, w.rank))
        mine = worker_positions(min(start, total), total, w.worker, w.num_workers, unit or self.batch_size)
        emit = perm[mine]
        need = np.sort(emit)
        if self._index is not None:
            got = self._read_indexed(pieces, bounds, need, stats)
        else:
            got = self._read_streamed(pieces, bounds, need, stats)
        yield from _emit(emit, got, stats)

    # -- indexed reads

    def _read_indexed(
        self, pieces: Sequence[Piece], bounds: np.ndarray, need: np.ndarray, stats: FilterStats
    ) -> Iterator[tuple[int, dict[str, Any] | None]]:
        cache: OrderedDict[str, tuple[IndexedShardReader, np.ndarray] | None] = OrderedDict()
        step = max(1, self.read_options.readahead)
        try:
            for lo in range(0, len(need), step):
                window = need[lo : lo + step]
                which = np.searchsorted(bounds, window, side="right") - 1
                cuts = np.flatnonzero(np.diff(which)) + 1
                for part, pi in zip(np.split(window, cuts), which[np.concatenate([[0], cuts])].tolist()):
                    piece = pieces[pi]
                    yield from self._read_piece(piece, part, part - bounds[pi] + piece.start, cache, stats)
        finally:
            for entry in cache.values():
                if entry is not None:
                    self._account(entry[0])
                    entry[0].close()

    def _read_piece(
        self,
        piece: Piece,
        positions: np.ndarray,
        kept_offsets: np.ndarray,
        cache: OrderedDict[str, tuple[IndexedShardReader, np.ndarray] | None],
        stats: FilterStats,
    ) -> Iterator[tuple[int, dict[str, Any] | None]]:
        name = piece.shard.name
        done = 0
        try:
            entry = self._open(piece.shard, cache)
            if entry is None:
                raise _SkippedError
            reader, kept_rows = entry
            rows = kept_rows[kept_offsets]
            for s, (_, sample) in zip(positions.tolist(), reader.read(rows)):
                stats.kept += 1
                done += 1
                yield s, sample
        except _SkippedError:
            pass
        except (ShardError, IndexFileError, SampleError) as exc:
            if self.on_error == "raise":
                raise
            stats.skip("shard error")
            log.warning("skipped the rest of shard %r: %s", name, exc)
            old = cache.get(name)
            if old is not None:
                self._account(old[0])
                old[0].close()
            cache[name] = None
        for s in positions[done:].tolist():
            yield s, None

    def _open(
        self, ref: ShardRef, cache: OrderedDict[str, tuple[IndexedShardReader, np.ndarray] | None]
    ) -> tuple[IndexedShardReader, np.ndarray] | None:
        if ref.name in cache:
            cache.move_to_end(ref.name)
            return cache[ref.name]
        idx = self.index
        assert idx is not None
        mask = self.keep.masks(idx, dataset_classes=self.dataset_classes, names=[ref.name]).get(ref.name)
        kept_rows = np.flatnonzero(mask) if mask is not None else np.zeros(0, np.int64)
        if len(kept_rows) != ref.kept:
            raise IndexFileError(f"{idx.url}: shard {ref.name!r} keeps {len(kept_rows)} samples, expected {ref.kept}")
        opts = self.read_options
        gap = opts.coalesce_gap if opts.coalesce_gap is not None else (0 if "://" not in ref.url else REMOTE_GAP)
        reader = IndexedShardReader(
            ref.url,
            ref.name,
            member_arrays(idx.table(ref.name)),
            select=opts.select,
            max_gap=gap,
            indexed=idx.shard(ref.name),
            strict_identity=opts.strict_identity and self.identity_root is not None,
            storage_options=opts.storage_options,
            concurrency=opts.concurrency,
        )
        cache[ref.name] = (reader, kept_rows)
        while len(cache) > SHARD_CACHE:
            _, old = cache.popitem(last=False)
            if old is not None:
                self._account(old[0])
                old[0].close()
        return cache[ref.name]

    def _account(self, reader: IndexedShardReader) -> None:
        self.bytes_read += reader.file.bytes_read
        self.requests += reader.file.requests
        reader.file.bytes_read = reader.file.requests = 0

    # -- streamed reads (no index)

    def _stream(
        self, ref: ShardRef, want: Callable[[int], bool], stop: int | None, stats: FilterStats
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        flt = SampleFilter(self.keep, **self._filter_args)
        flt.stats = stats

        def decide(key: str, position: int, label: Any, has_label: bool) -> bool:
            return flt.decide(shard=ref.name, key=key, position=position, label=label, has_label=has_label)

        return stream_shard(
            ref.url,
            decide,
            label=self.label,
            needs_label=flt.needs_label,
            want=want,
            stop=stop,
            select=self.read_options.select,
            storage_options=self.read_options.storage_options,
            allow_commands=self.read_options.allow_commands,
        )

    def _read_streamed(
        self, pieces: Sequence[Piece], bounds: np.ndarray, need: np.ndarray, stats: FilterStats
    ) -> Iterator[tuple[int, dict[str, Any] | None]]:
        if not len(need):
            return
        first = int(np.searchsorted(bounds, need[0], side="right")) - 1
        last = int(np.searchsorted(bounds, need[-1], side="right")) - 1
        wanted = set(need.tolist())
        for pi in range(first, last + 1):
            piece, base = pieces[pi], int(bounds[pi])
            mine = [s for s in range(base, base + len(piece)) if s in wanted]
            if not mine:
                continue
            offset = base - piece.start
            got = 0
            try:
                want = _member_of(wanted, offset)
                for k, sample in self._stream(piece.shard, want, mine[-1] - offset + 1, stats):
                    got += 1
                    yield k + offset, sample
                if got != len(mine):
                    raise SampleError(
                        f"{piece.shard.url}: keep-list keeps {piece.shard.kept} samples of shard {piece.shard.name!r}, "
                        f"the shard has fewer (found {piece.start + got} of the first {piece.stop})"
                    )
            except (ShardError, SampleError) as exc:
                if self.on_error == "raise":
                    raise
                stats.skip("shard error")
                log.warning("skipped the rest of shard %r: %s", piece.shard.name, exc)
                for s in mine[got:]:
                    yield s, None

    def _uncounted(
        self, refs: Sequence[ShardRef], w: World, start: int, stats: FilterStats
    ) -> Iterator[dict[str, Any]]:
        """Without counts: whole shards dealt round-robin to readers, samples as they stream."""
        pieces = split_shards(refs, w)
        if w.world_size > 1:
            log.warning("without an index the ranks' sample counts may differ; index the shards for equal counts")

        def samples() -> Iterator[dict[str, Any]]:
            for p in pieces:
                try:
                    for _, sample in self._stream(p.shard, lambda k: True, None, stats):
                        stats.kept += 1
                        yield sample
                except ShardError as exc:
                    if self.on_error == "raise":
                        raise
                    stats.skip("shard error")
                    log.warning("skipped the rest of shard %r: %s", p.shard.name, exc)

        seed = stable_seed("samples", self.order.seed, self.epoch, w.rank, w.worker)
        for i, sample in enumerate(_shuffled(samples(), self.order.buffer, seed)):
            if i >= start:
                yield sample


def _member_of(positions: set[int], offset: int) -> Callable[[int], bool]:
    return lambda k: k + offset in positions


class _SkippedError(Exception):
    pass


def _total(index: SourceIndex | None, name: str) -> int | None:
    return index.count(name) if index is not None else None


def _shuffled(items: Iterator[Any], buffer: int, seed: int) -> Iterator[Any]:
    if buffer <= 1:
        yield from items
        return
    rng = random.Random(seed)
    buf: list[Any] = []
    for x in items:
        buf.append(x)
        if len(buf) >= buffer:
            j = rng.randrange(len(buf))
            buf[j], buf[-1] = buf[-1], buf[j]
            yield buf.pop()
    while buf:
        j = rng.randrange(len(buf))
        buf[j], buf[-1] = buf[-1], buf[j]
        yield buf.pop()


def _emit(
    emit: np.ndarray, got: Iterator[tuple[int, dict[str, Any] | None]], stats: FilterStats
) -> Iterator[dict[str, Any]]:
    """Samples in `emit` order from `got` (which yields them in ascending position), holding
    early ones; a sample that failed (None, on_error="skip") is replaced by a repeat of one
    already yielded, so the epoch keeps its length (counted as padded)."""
    held: dict[int, dict[str, Any] | None] = {}
    pool: list[dict[str, Any]] = []
    debt = 0
    for s in emit.tolist():
        while s not in held:
            nxt = next(got, None)
            if nxt is None:
                raise Dp4tlError(f"internal: position {s} was never read")
            held[nxt[0]] = nxt[1]
        sample = held.pop(s)
        if sample is None:
            stats.padded += 1
            if not pool:
                debt += 1
                continue
            sample = pool[stats.padded % len(pool)]
        elif len(pool) < POOL:
            pool.append(sample)
        while debt:
            debt -= 1
            yield sample
        yield sample
    if debt:
        raise ShardError(f"every sample this reader was to yield failed ({debt}); cannot keep the epoch length")
