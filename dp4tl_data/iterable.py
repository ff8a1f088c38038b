"""The generic stream: any iterable of samples, filtered, striped over ranks and workers.

Every reader walks the whole source (a generic iterable cannot seek) and takes its share of
the *kept* samples: kept sample ``g`` goes to rank ``g % world_size``, and within a rank the
``j``-th goes to worker ``j % num_workers``. Since every reader sees every sample, each knows
the kept total at the end and equalises rank counts exactly (``pad`` or ``drop``).
Formats that can seek (indexed tars, Hugging Face files) use the shard stage instead.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from .errors import SampleError, StateError
from .keeplist import KeepList
from .members import SampleFilter
from .shards import per_rank_count
from .state import check_state, make_state
from .stats import FilterStats
from .world import World


class PrunedIterable:
    """An iterable of the kept samples of `source`, this reader's share, with exact counts."""

    def __init__(
        self,
        source: Iterable[Any],
        keep: KeepList,
        *,
        label_field: str | None = None,
        label_fn: Callable[[Any], Any] | None = None,
        key_field: str = "__key__",
        key_fn: Callable[[Any], str] | None = None,
        shard_fn: Callable[[Any], str | None] | None = None,
        dataset_classes: Sequence[str] | None = None,
        world: World | None = None,
        split: bool = True,
        uneven: str = "pad",
        on_error: str = "raise",
        check_complete: bool = True,
    ) -> None:
        self.source = source
        self.keep = keep
        self._filter_args: dict[str, Any] = dict(
            label_field=label_field,
            label_fn=label_fn,
            key_field=key_field,
            key_fn=key_fn,
            dataset_classes=dataset_classes,
            on_error=on_error,
        )
        SampleFilter(keep, **self._filter_args)  # validate arguments now, not in a worker
        self.shard_fn = shard_fn
        self.world = world
        self.split = split
        self.uneven = uneven
        per_rank_count(0, 1, uneven)
        self.check_complete = check_complete
        self.epoch = 0
        self._skip = 0
        self._yielded = 0
        self.last_stats = FilterStats()

    # -- protocol

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch (kept in the state; sources that shuffle read it from there)."""
        if epoch != self.epoch:
            self._skip = 0  # a loaded position belongs to the epoch it was taken in
        self.epoch = epoch
        if hasattr(self.source, "set_epoch"):
            self.source.set_epoch(epoch)

    def _world(self) -> World:
        base = self.world or World.detect()
        if self.world is not None and self.world.num_workers > 1:
            return base
        detected = World.detect(rank=base.rank, world_size=base.world_size)
        return base.with_worker(detected.worker, detected.num_workers)

    def __len__(self) -> int:
        """Samples this rank yields per epoch, when the keep-list knows the kept total."""
        total = self.expected_total()
        if total is None:
            raise TypeError("length unknown: the keep-list does not count this source's kept samples; index it")
        w = self.world or World.detect()
        return per_rank_count(total, w.world_size if self.split else 1, self.uneven)

    def expected_total(self) -> int | None:
        """Kept samples in the whole source, when a sample-level list with counts says so."""
        if self.keep.classes is not None or self.keep.shards is None:
            return None
        counts = [e.kept for e in self.keep.shards.values()]
        if any(c is None for c in counts) or any(e.encoding == "all" for e in self.keep.shards.values()):
            return None
        return int(sum(c for c in counts if c is not None))

    def state_dict(self) -> dict[str, Any]:
        """Where this reader is: samples yielded so far in this epoch."""
        w = self._world()
        return make_state(
            keep=self.keep.fingerprint,
            world_size=w.world_size if self.split else 1,
            epoch=self.epoch,
            position={"yielded": self._yielded, "rank": w.rank, "worker": w.worker, "num_workers": w.num_workers},
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: the next iteration skips the samples this reader already yielded."""
        w = self._world()
        check_state(state, keep=self.keep.fingerprint, world_size=w.world_size if self.split else 1)
        pos = state["position"]
        for field, expected in (("rank", w.rank), ("worker", w.worker), ("num_workers", w.num_workers)):
            if pos.get(field) != expected:
                raise StateError(f"state position {field}: found {pos.get(field)!r}, expected {expected!r}")
        yielded = pos.get("yielded")
        if not isinstance(yielded, int) or yielded < 0:
            raise StateError(f"state position yielded: found {yielded!r}, expected a count")
        self.epoch = int(state["epoch"])
        self._skip = yielded

    def stats(self) -> dict[str, Any]:
        """Counters of the last (or current) pass."""
        return self.last_stats.as_dict()

    # -- iteration

    def __iter__(self) -> Iterator[Any]:
        w = self._world()
        ranks = w.world_size if self.split else 1
        rank = w.rank if self.split else 0
        flt = SampleFilter(self.keep, **self._filter_args)
        self.last_stats = flt.stats
        skip = self._skip
        self._skip = 0
        self._yielded = skip
        per_shard: Counter[str | None] = Counter()
        head: list[Any] = []  # the first `ranks` kept samples, for padding
        held: tuple[int, Any] | None = None  # drop policy: my last sample until its round completes
        g = 0
        emitted = 0

        def mine(j: int) -> bool:
            return j % w.num_workers == w.worker

        for sample in self.source:
            shard = self.shard_fn(sample) if self.shard_fn else None
            if not flt(sample, shard=shard):
                continue
            if shard is not None:
                per_shard[shard] += 1
            if len(head) < ranks:
                head.append(sample)
            r, j = g % ranks, g // ranks
            g += 1
            if self.uneven == "drop" and held is not None and g >= (held[0] + 1) * ranks:
                emitted += 1
                if emitted > skip:
                    self._yielded += 1
                    yield held[1]
                held = None
            if r != rank or not mine(j):
                continue
            if self.uneven == "drop":
                held = (j, sample)
                if g >= (j + 1) * ranks:
                    emitted += 1
                    held = None
                    if emitted > skip:
                        self._yielded += 1
                        yield sample
                continue
            emitted += 1
            if emitted > skip:
                self._yielded += 1
                yield sample
        self._check_complete(g, per_shard)
        target = per_rank_count(g, ranks, self.uneven)
        have = (g - rank + ranks - 1) // ranks if g > rank else 0
        for j in range(have, target):  # pad: repeat from the start of the kept sequence
            if not mine(j):
                continue
            flt.stats.padded += 1
            emitted += 1
            if emitted > skip:
                self._yielded += 1
                yield head[(j * ranks + rank - g) % g]

    def _check_complete(self, total: int, per_shard: Counter[str | None]) -> None:
        if not self.check_complete:
            return
        expected = self.expected_total()
        if expected is not None and total > expected:
            raise SampleError(
                f"keep-list lists {expected} samples but the source yielded {total} kept samples: "
                "a key appears more than once in a shard"
            )
        if expected is None or total >= expected or self.last_stats.skipped:
            return
        assert self.keep.shards is not None
        short = [n for n, e in self.keep.shards.items() if self.shard_fn and (e.kept or 0) > per_shard.get(n, 0)]
        where = f" (first short shard: {short[0]!r})" if short else ""
        raise SampleError(
            f"keep-list lists {expected} samples but the source yielded only {total} of them{where}; "
            "the source changed or the list is for another dataset (check_complete=False to allow)"
        )
