"""Hugging Face `datasets`: PrunedStream for map-style and streaming datasets, and an indexer.

    ds = load_dataset("user/name", split="train", streaming=True)
    ds = PrunedStream(ds, KeepList.load("keep.json"))      # same kind of dataset, kept rows only

Stages live in their own modules: `hf_files` (which data files exist, which are kept),
`hf_rule` (vectorised keep decision on key/label columns), `hf_map` (map-style selection),
`hf_read` (reading kept rows of one file, undecoded), `hf_stream` (the streaming dataset:
balanced splitting, exact resume) and `hf_index` (the `dp4tl index` builder).
"""

from __future__ import annotations

import sys
from typing import Any

from dp4tl_data.errors import PluginError
from dp4tl_data.keeplist import KeepList
from dp4tl_data.registry import Registry

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


def register(registry: Registry) -> None:
    registry.add_adapter("hf.Dataset", _is_map_dataset, prune_map, priority=70)


def _datasets() -> Any:
    return sys.modules.get("datasets")


def _is_map_dataset(source: Any) -> bool:
    mod = _datasets()
    return mod is not None and isinstance(source, (mod.Dataset, mod.DatasetDict))


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
