"""Hugging Face `datasets`: PrunedStream for map-style and streaming datasets, and an indexer.

    ds = load_dataset("user/name", split="train", streaming=True)
    ds = PrunedStream(ds, KeepList.load("keep.json"))      # same kind of dataset, kept rows only

Stages live in their own modules: `hf_files` (which data files exist, which are kept),
`hf_rule` (vectorised keep decision on key/label columns), `hf_map` (map-style selection),
`hf_read` (reading kept rows of one file, undecoded), `hf_stream` (the streaming dataset:
balanced splitting, exact resume) and `hf_index` (the `dp4tl index` builder).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from dp4tl_data.errors import IndexFileError, KeepListError, PluginError
from dp4tl_data.index import SourceIndex
from dp4tl_data.keeplist import KeepList
from dp4tl_data.registry import Registry
from dp4tl_data.shards import per_rank_count
from dp4tl_data.stats import FilterStats
from dp4tl_data.world import World

log = logging.getLogger(__name__)
MAP_OPTIONS = (
    "label_field",
    "key_field",
    "shard_field",
    "root",
    "dataset_classes",
    "world",
    "uneven",
    "allow_empty",
    "allow_foreign",
    "source_fingerprint",
)
STREAM_OPTIONS = (
    "label_field",
    "key_field",
    "root",
    "dataset_classes",
    "index",
    "world",
    "uneven",
    "allow_empty",
    "allow_foreign",
    "source_fingerprint",
    "on_error",
    "storage_options",
    "scan",
    "batch_size",
)
FILE_KWARGS = ("original_files", "base_files", "files", "tar_paths")


def register(registry: Registry) -> None:
    registry.add_adapter("hf.Dataset", _is_map_dataset, prune_map, priority=70)
    registry.add_adapter("hf.IterableDataset", _is_iterable_dataset, prune_stream, priority=70)
    registry.add_indexer("hf", _index_accepts, _index_build, priority=10)


def _index_accepts(spec: Any) -> bool:
    from .hf_index import accepts

    return accepts(spec)


def _index_build(spec: Any, **options: Any) -> SourceIndex:
    from .hf_index import build

    return build(spec, **options)


def _datasets() -> Any:
    return sys.modules.get("datasets")


def _is_map_dataset(source: Any) -> bool:
    mod = _datasets()
    return mod is not None and isinstance(source, (mod.Dataset, mod.DatasetDict))


def _is_iterable_dataset(source: Any) -> bool:
    mod = _datasets()
    return mod is not None and isinstance(source, (mod.IterableDataset, mod.IterableDatasetDict))


def _check_options(options: dict[str, Any], allowed: tuple[str, ...], what: str) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise PluginError(f"unknown options for a {what}: {unknown} (known: {sorted(allowed)})")


def prune_map(ds: Any, keep: KeepList, **options: Any) -> Any:
    """A map-style Dataset (or DatasetDict) of the rows `keep` keeps; see `hf_map.prune_map_dataset`."""
    from .hf_map import prune_map_dataset

    _check_options(options, MAP_OPTIONS, "map-style Dataset")
    mod = _datasets()
    if isinstance(ds, mod.DatasetDict):
        return mod.DatasetDict({split: prune_map_dataset(d, keep, **options) for split, d in ds.items()})
    return prune_map_dataset(ds, keep, **options)


# ----------------------------------------------------------------------------- streaming


def load_pruned(
    path: str | None,
    keep: KeepList | str,
    *,
    split: str = "train",
    data_files: Any = None,
    data_dir: str | None = None,
    revision: str | None = None,
    features: Any = None,
    **options: Any,
) -> Any:
    """Stream `split` of a hub repo (``user/name``), a local folder or data files, pruned by `keep`.

    The file list is resolved without reading any file, fully pruned files are dropped, and only
    the kept files are ever opened (the first kept one also gives the features, unless passed).
    Options are PrunedStream's (``label_field``, ``index``, ``world``, ``uneven``, ...).
    """
    from .hf_files import probe, resolve_source

    if isinstance(keep, str):
        keep = KeepList.load(keep)
    _check_options(options, STREAM_OPTIONS, "streaming dataset")
    source = resolve_source(
        path, split=split, data_files=data_files, data_dir=data_dir, revision=revision, root=options.pop("root", None)
    )
    info = None
    if features is None:
        first = probe(source.builder, _first_kept(source, keep, options), split, options.get("storage_options"))
        features, info = first.features, first.info
    if info is None:
        from datasets import DatasetInfo

        info = DatasetInfo(features=features, builder_name=source.builder)
    return _stream(source, keep, features=features, info=info, split=split, **options)


def _first_kept(source: Any, keep: KeepList, options: dict[str, Any]) -> str:
    for ref in source.files:
        if keep.keeps_shard(ref.name):
            return str(ref.url)
    if options.get("allow_empty"):
        return str(source.files[0].url)
    raise KeepListError(f"{source.spec}: the keep-list keeps none of its {len(source.files)} files")


def prune_stream(ds: Any, keep: KeepList, **options: Any) -> Any:
    """A streaming IterableDataset (or IterableDatasetDict) of the rows `keep` keeps.

    The data files come from ``data_files=`` or, failing that, from the dataset as
    `load_dataset` built it; apply `.map`, `.shuffle`, `.filter` after pruning, not before.
    """
    mod = _datasets()
    if isinstance(ds, mod.IterableDatasetDict):
        return mod.IterableDatasetDict({s: prune_stream(d, keep, **dict(options)) for s, d in ds.items()})
    from .hf_files import source_from_urls
    from .hf_stream import PrunedExamplesIterable

    data_files = options.pop("data_files", None)
    _check_options(options, STREAM_OPTIONS, "streaming IterableDataset")
    if isinstance(ds._ex_iterable, PrunedExamplesIterable):
        raise PluginError("this dataset is already pruned; combine keep-lists instead (keep_a & keep_b)")
    builder = ds.info.builder_name
    if not builder:
        raise PluginError("this IterableDataset was not made by load_dataset from data files; prune its files instead")
    urls = _dataset_files(ds) if data_files is None else _as_list(data_files, str(ds.split or "train"))
    source = source_from_urls(urls, builder, options.pop("root", None))
    return _stream(source, keep, features=ds.features, info=ds.info, split=ds.split, **options)


def _as_list(data_files: Any, split: str) -> list[str]:
    if isinstance(data_files, dict):
        data_files = data_files[split]
    return [data_files] if isinstance(data_files, str) else [str(u) for u in data_files]


def _dataset_files(ds: Any) -> list[str]:
    """The data files of a dataset as `load_dataset` built it (datasets has no public accessor)."""
    ex = ds._ex_iterable
    kwargs = getattr(ex, "kwargs", None)
    if type(ex).__name__ in ("ExamplesIterable", "ArrowExamplesIterable") and isinstance(kwargs, dict):
        for name in FILE_KWARGS:
            files = kwargs.get(name)
            if isinstance(files, list) and files and all(isinstance(f, str) for f in files):
                return list(files)
    raise PluginError(
        "cannot find this dataset's data files: prune it before .map/.filter/.shuffle, or pass data_files=[...]"
    )


def _stream(
    source: Any,
    keep: KeepList,
    *,
    features: Any,
    info: Any,
    split: Any,
    label_field: str | None = None,
    key_field: str = "__key__",
    dataset_classes: Any = None,
    index: SourceIndex | str | None = None,
    world: World | None = None,
    uneven: str = "pad",
    allow_empty: bool = False,
    allow_foreign: bool = False,
    source_fingerprint: str | None = None,
    on_error: str = "raise",
    storage_options: dict[str, Any] | None = None,
    scan: bool | None = None,
    batch_size: int = 1000,
) -> Any:
    """Files -> kept files -> rule -> plan -> the pruned IterableDataset."""
    from dp4tl_data.members import SampleFilter

    from .hf_files import kept_files
    from .hf_read import ReadSpec
    from .hf_rule import KeepRule, class_names, make_rule
    from .hf_stream import Plan, pruned_dataset

    where = source.spec
    if isinstance(index, str):
        index = SourceIndex.load(index)
    keep.check_source(
        index.fingerprint if index is not None else source_fingerprint, allow_foreign=allow_foreign, where=where
    )
    masks = counts = None
    if index is not None:
        dataset_classes = dataset_classes if dataset_classes is not None else index.classes
        unknown = [r.name for r in source.files if r.name not in index]
        if unknown:
            raise IndexFileError(f"{index.url}: does not list data file {unknown[0]!r} of {where}; re-index")
        masks = keep.masks(index, dataset_classes=dataset_classes)
        counts = {n: int(m.sum()) for n, m in masks.items()}
    refs = kept_files(source, keep, counts)
    schema_file = refs[0].url if refs else where  # the features are this file's
    if index is not None:
        rule = KeepRule(keep, None, key_field=key_field)
    else:
        rule = make_rule(
            keep,
            features,
            label_field=label_field,
            key_field=key_field,
            dataset_classes=dataset_classes,
            where=schema_file,
            on_error=on_error,
        )
    lf = rule.labels.label_field if rule.labels is not None else None
    names = dataset_classes if dataset_classes is not None else (class_names(features, lf) if lf else None)
    flt = SampleFilter(keep, label_field=lf, key_field=key_field, dataset_classes=names, on_error=on_error)
    sizes = None
    if index is not None:
        sizes = {r.name: n for r in refs if (n := index.shard(r.name).nbytes) is not None}
    spec = ReadSpec(
        source.builder, features, rule, flt, masks, str(split), dict(storage_options or {}), batch_size, sizes
    )
    ws = (world or World.detect()).world_size
    per_rank_count(0, ws, uneven)
    if any(r.kept is None for r in refs) and (scan or (scan is None and ws > 1)):
        refs = _scan(spec, refs, ws)
    plan = Plan(tuple(refs), ws, uneven, keep.fingerprint, allow_empty, where)
    if plan.kept is not None:
        per_rank_count(plan.kept, ws, uneven)
        if plan.kept == 0 and not allow_empty:
            raise KeepListError(f"{where}: the keep-list keeps none of its rows (allow_empty=True to accept)")
    elif not refs and not allow_empty:
        raise KeepListError(f"{where}: the keep-list keeps none of its {len(source.files)} files")
    return pruned_dataset(plan, spec, info=info, split=split)


def _scan(spec: Any, refs: list[Any], ws: int) -> list[Any]:
    """Kept counts by reading only what decides; needed to give several ranks equal counts."""
    from dp4tl_data.shards import ShardRef

    from .hf_read import count_kept

    log.warning(
        "counting kept rows of %d files to balance %d ranks; index the source (dp4tl index) to skip this", len(refs), ws
    )
    out = [ShardRef(r.name, r.url, count_kept(spec, r), r.total) for r in refs]
    spec.rule.stats = FilterStats()
    spec.sample_filter.stats = FilterStats()
    return [r for r in out if r.kept]
