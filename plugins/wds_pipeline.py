"""webdataset integration: a pipeline that starts with the pruned reader, a DataLoader that
saves and restores its position, and the adapter that builds both from what users have
(shard URLs, an index, a ``wds.WebDataset``/``DataPipeline``, or a DataLoader over one)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import braceexpand
import webdataset as wds
from torch.utils.data import DataLoader
from webdataset import filters, shardlists, tariterators

from dp4tl_data.errors import PluginError, StateError
from dp4tl_data.index import SourceIndex
from dp4tl_data.keeplist import KeepList

from .wds_stream import KeptSamples, Order, ReadOptions

log = logging.getLogger(__name__)

# stages that turn one sample into one output, so they keep len() and positions
ONE_TO_ONE = {
    filters._map,
    filters._to_tuple,
    filters._map_tuple,
    filters._map_dict,
    filters._rename,
    filters._rename_keys,
    filters._extract_keys,
    filters._log_keys,
}
TAR_STAGES = {tariterators.tar_file_expander, tariterators.tarfile_samples}
LOADER_ARGS = (
    "batch_size",
    "num_workers",
    "collate_fn",
    "pin_memory",
    "drop_last",
    "timeout",
    "worker_init_fn",
    "multiprocessing_context",
    "generator",
    "prefetch_factor",
    "pin_memory_device",
    "in_order",
)


class PrunedWebDataset(wds.DataPipeline, wds.FluidInterface):  # type: ignore[misc]
    """A webdataset pipeline whose source is `KeptSamples`; chain ``.decode()``,
    ``.to_tuple()``, ``.batched()`` as usual. ``len()``, ``set_epoch``, ``state_dict`` and
    ``load_state_dict`` count this pipeline's outputs (a batch counts its samples)."""

    def __init__(self, reader: KeptSamples, *stages: Any) -> None:
        super().__init__(reader.samples, *stages)
        self.reader = reader

    def unit(self) -> int:
        """Samples per output item: the product of the ``.batched()`` sizes in the pipeline."""
        n = 1
        for stage in self.pipeline[1:]:
            if getattr(stage, "f", None) is filters._batched:
                n *= _batch_size(stage)
        return n

    def __len__(self) -> int:
        """Outputs this rank yields per epoch (exact)."""
        n = len(self.reader)
        for stage in self.pipeline[1:]:
            f = getattr(stage, "f", None)
            if f is filters._batched:
                bs = _batch_size(stage)
                n = -(-n // bs) if stage.kw.get("partial", True) else n // bs
            elif f not in ONE_TO_ONE and f is not filters._shuffle:
                raise TypeError(f"length unknown after pipeline stage {stage}")
        return n

    def iterator1(self) -> Iterator[Any]:
        """One epoch: the reader's samples, dealt to workers in chunks of the pipeline's batch
        size (so only the epoch's last batch is partial), then the stages."""
        unit = self.unit()
        source: Any = self.reader.samples(unit=self.reader.batch_size or (unit if unit > 1 else None))
        for step in self.pipeline[1:]:
            source = self.invoke(step, source)
        return source  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[Any]:
        reader = self.reader
        start = reader._start
        total = len(reader) if reader.counted else None
        unit = self.unit()
        pos = start
        for item in self.iterator():
            pos = pos + unit if total is None else min(pos + unit, total)
            reader._position = pos
            yield item

    def set_epoch(self, epoch: int) -> None:
        self.reader.set_epoch(epoch)

    def state_dict(self, position: int | None = None) -> dict[str, Any]:
        return self.reader.state_dict(position)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reader.load_state_dict(state)

    def stats(self) -> dict[str, Any]:
        return self.reader.stats()


def _batch_size(stage: Any) -> int:
    return int(stage.args[0] if stage.args else stage.kw.get("batchsize", 20))


class PrunedLoader(DataLoader):  # type: ignore[misc]
    """A torch DataLoader over a PrunedWebDataset whose batches come out in the rank's order
    whatever `num_workers` is, and which saves and restores its position mid-epoch."""

    def __init__(self, dataset: PrunedWebDataset, **kwargs: Any) -> None:
        if kwargs.get("persistent_workers"):
            raise PluginError(
                "persistent_workers=True keeps a stale copy of the stream (epoch, position) in each worker; "
                "use persistent_workers=False"
            )
        unit = dataset.unit() * (kwargs.get("batch_size", 1) or 1)
        dataset.reader.batch_size = unit
        super().__init__(dataset, **kwargs)
        self.reader: KeptSamples = dataset.reader
        self.unit = unit
        self._position = 0

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        reader = self.reader
        pos = reader._start
        total = len(reader) if reader.counted else None
        self._position = pos
        batches = super().__iter__()
        if self.num_workers > 0:
            if not reader.counted and pos:
                raise StateError("resuming through DataLoader workers needs exact counts: index the shards")
            reader._start = 0  # the workers have their copy; the next epoch starts afresh
        for batch in batches:
            pos = pos + self.unit if total is None else min(pos + self.unit, total)
            self._position = pos
            yield batch

    def set_epoch(self, epoch: int) -> None:
        self.reader.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        """This rank's position: samples of its epoch already delivered in batches."""
        return self.reader.state_at(self._position)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reader.load_state_dict(state)
        self._position = self.reader._start

    def stats(self) -> dict[str, Any]:
        return self.reader.stats()


# ----------------------------------------------------------------------------- adapter


def make_reader(keep: KeepList, urls: Sequence[str] | None, options: dict[str, Any]) -> KeptSamples:
    """KeptSamples from PrunedStream's flat options (unknown ones are an error)."""
    opts = dict(options)
    order = Order(
        shuffle_shards=bool(opts.pop("shuffle", False)),
        buffer=int(opts.pop("shuffle_buffer", 0)),
        seed=int(opts.pop("seed", 0)),
    )
    select = opts.pop("select_files", None)
    read = ReadOptions(
        select=opts.pop("select", select),
        coalesce_gap=opts.pop("coalesce_gap", None),
        concurrency=int(opts.pop("concurrency", 4)),
        readahead=int(opts.pop("readahead", 256)),
        strict_identity=bool(opts.pop("strict_identity", True)),
        storage_options=opts.pop("storage_options", None),
        allow_commands=bool(opts.pop("allow_commands", False)),
    )
    known = ("index", "root", "world", "uneven", "on_error", "label_field", "dataset_classes", "batch_size")
    unknown = sorted(set(opts) - set(known) - {"allow_foreign"})
    if unknown:
        raise PluginError(f"unknown options for a webdataset source: {unknown}")
    return KeptSamples(keep, urls=urls, order=order, read=read, **opts)


def expand_urls(spec: str | Sequence[str]) -> list[str]:
    """Brace-expanded shard URLs, in order."""
    items = [spec] if isinstance(spec, str) else list(spec)
    return [u for item in items for u in braceexpand.braceexpand(item)]


def parse_pipeline(pipe: Any) -> tuple[list[str], list[Any], dict[str, Any]]:
    """From a webdataset pipeline: its shard URLs, the stages after tar expansion, and the
    options it implies (select_files, shard shuffling)."""
    head = pipe.pipeline[0]
    if isinstance(head, shardlists.ResampledShards):
        raise PluginError("a resampled shard list is endless; prune a plain one (resampled=False)")
    if not isinstance(head, shardlists.SimpleShardList):
        raise PluginError(f"cannot find the shard list of this pipeline (first stage: {type(head).__name__})")
    stages = list(pipe.pipeline[1:])
    tar = [i for i, s in enumerate(stages) if getattr(s, "f", None) in TAR_STAGES]
    if not tar:
        raise PluginError("this pipeline has no tar expansion stage (tarfile_to_samples) to replace")
    implied: dict[str, Any] = {}
    sel = stages[tar[0]].kw.get("select_files")
    if sel is not None:
        implied["select"] = sel
    if any(_is_shuffle(s) for s in stages[: tar[0]]):
        implied["shuffle"] = True
    rest = stages[tar[0] + 1 :]
    while rest and (getattr(rest[0], "f", None) is tariterators.group_by_keys or rest[0] is wds.compat.check_empty):
        rest = rest[1:]
    return list(head.urls), rest, implied


def _is_shuffle(stage: Any) -> bool:
    return getattr(stage, "f", None) is filters._shuffle or isinstance(stage, filters.detshuffle)


def wrap(source: Any, keep: KeepList, **options: Any) -> PrunedWebDataset | PrunedLoader:
    """PrunedStream for webdataset sources (see `plugins.wds`)."""
    if isinstance(source, DataLoader):
        ds = wrap(source.dataset, keep, **options)
        assert isinstance(ds, PrunedWebDataset)
        kwargs = {k: getattr(source, k) for k in LOADER_ARGS if hasattr(source, k)}
        if not kwargs.get("num_workers"):
            kwargs.pop("prefetch_factor", None)
        kwargs["persistent_workers"] = source.persistent_workers
        return PrunedLoader(ds, **kwargs)
    if isinstance(source, SourceIndex):
        return PrunedWebDataset(make_reader(keep, None, {**options, "index": source}))
    if isinstance(source, (str, list, tuple)):
        if isinstance(source, str) and not source.endswith(".tar") and not source.startswith("pipe:"):
            return PrunedWebDataset(make_reader(keep, None, {**options, "index": source}))
        return PrunedWebDataset(make_reader(keep, expand_urls(source), options))
    urls, stages, implied = parse_pipeline(source)
    for k, v in implied.items():
        options.setdefault(k, v)
    return PrunedWebDataset(make_reader(keep, urls, options), *stages)
