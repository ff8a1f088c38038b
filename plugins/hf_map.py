"""Map-style `datasets.Dataset`: the kept rows as a Dataset, chosen at the Arrow level.

The key and label columns are read as Arrow arrays (no row is decoded, no Python loop per row),
`pyarrow.compute.is_in` gives the mask, and `Dataset.select` the result: an indices mapping
over the same Arrow data, so `.map`, `.shuffle`, `split_dataset_by_node` and formats all work.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from dp4tl_data.errors import ClassMismatchError, KeepListError, SampleError
from dp4tl_data.keeplist import KeepList, preview
from dp4tl_data.shards import per_rank_count
from dp4tl_data.urls import common_root, stable_name
from dp4tl_data.world import World

from .hf_rule import KEY_FIELD, column, make_rule

log = logging.getLogger(__name__)
SHARD_FIELD = "__url__"


def describe(ds: Any) -> str:
    """How errors name a map-style dataset: its first Arrow cache file, else its builder."""
    files = getattr(ds, "cache_files", None) or []
    if files:
        return str(files[0].get("filename"))
    builder = getattr(getattr(ds, "info", None), "builder_name", None)
    return f"in-memory Dataset ({builder})" if builder else "in-memory Dataset"


def equalise(indices: np.ndarray, world_size: int, uneven: str) -> np.ndarray:
    """`indices` padded (repeating from the start) or cut to a multiple of `world_size`."""
    target = per_rank_count(len(indices), world_size, uneven) * world_size
    if target == len(indices) or len(indices) == 0:
        return indices
    return np.resize(indices, target)


def keep_mask(
    ds: Any,
    keep: KeepList,
    *,
    label_field: str | None = None,
    key_field: str = KEY_FIELD,
    shard_field: str | None = None,
    root: str | None = None,
    dataset_classes: Sequence[str] | None = None,
) -> np.ndarray:
    """Boolean mask of the rows of map-style `ds` that `keep` keeps."""
    where = describe(ds)
    arrow = ds.with_format("arrow")
    rule = make_rule(
        keep, ds.features, label_field=label_field, key_field=key_field, dataset_classes=dataset_classes, where=where
    )
    wanted = set(rule.columns)
    shard_col = shard_field or (SHARD_FIELD if SHARD_FIELD in ds.column_names else None)
    if keep.shards is not None and shard_col is not None:
        wanted.add(shard_col)
    if rule.labels is not None and key_field in ds.column_names:
        wanted.add(key_field)  # so a missing label can be named by its key
    missing = sorted(c for c in wanted if c.split(".", 1)[0] not in ds.column_names)
    if missing:
        what = "label" if rule.labels is not None and missing[0] == rule.labels.label_field.split(".")[0] else "key"
        raise SampleError(f"{where}: no {what} column {missing[0]!r} (columns: {sorted(ds.column_names)})")
    table = pa.table({c: arrow[c] for c in sorted(wanted)}) if wanted else pa.table({"_": np.zeros(len(ds))})
    if keep.shards is not None and shard_col is not None:
        mask = _mask_by_shard(rule, table, shard_col, root, where)
    else:
        mask = rule.mask(table, None, 0, where)
    if rule.labels is not None:
        labels = column(table, rule.labels.label_field, where)
        if dataset_classes is None and getattr(ds.features.get(rule.labels.label_field), "names", None) is None:
            gone = rule.labels.missing(labels)
            if gone:
                raise ClassMismatchError(
                    f"{where}: keep-list names {len(gone)} classes the dataset lacks: {preview(gone)}"
                )
    return mask


def _mask_by_shard(rule: Any, table: pa.Table, shard_col: str, root: str | None, where: str) -> np.ndarray:
    """The mask, shard by shard: rows of each data file (in dataset order) with their positions."""
    urls = table.column(shard_col).combine_chunks().dictionary_encode()
    found = [str(u) for u in urls.dictionary.to_pylist()]
    base = root if root is not None else common_root(found)
    codes = urls.indices.to_numpy(zero_copy_only=False)
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(found) + 1))
    mask = np.zeros(table.num_rows, dtype=bool)
    for code, url in enumerate(found):
        rows = order[bounds[code] : bounds[code + 1]]
        name = stable_name(url, base)
        mask[rows] = rule.mask(table.take(pa.array(rows)), name, 0, f"{where} ({name})")
    return mask


def prune_map_dataset(
    ds: Any,
    keep: KeepList,
    *,
    label_field: str | None = None,
    key_field: str = KEY_FIELD,
    shard_field: str | None = None,
    root: str | None = None,
    dataset_classes: Sequence[str] | None = None,
    world: World | None = None,
    uneven: str = "pad",
    allow_empty: bool = False,
    allow_foreign: bool = False,
    source_fingerprint: str | None = None,
) -> Any:
    """The kept rows of map-style `ds`, as a Dataset (an indices mapping, nothing copied).

    With several ranks (`world`, else torch.distributed or WORLD_SIZE) the row count is made a
    multiple of the world size (``uneven``: ``pad`` repeats rows from the start, ``drop`` cuts
    the tail, ``error`` refuses), so ``split_dataset_by_node`` gives every rank the same count.
    """
    keep.check_source(source_fingerprint, allow_foreign=allow_foreign, where=describe(ds))
    mask = keep_mask(
        ds,
        keep,
        label_field=label_field,
        key_field=key_field,
        shard_field=shard_field,
        root=root,
        dataset_classes=dataset_classes,
    )
    indices = np.flatnonzero(mask)
    if not len(indices) and not allow_empty:
        raise KeepListError(
            f"{describe(ds)}: the keep-list keeps none of its {len(ds)} rows (allow_empty=True to accept)"
        )
    ws = (world or World.detect()).world_size
    indices = equalise(indices, ws, uneven)
    log.info("pruned %s: kept %d of %d rows", describe(ds), int(mask.sum()), len(ds))
    return ds.select(indices)
