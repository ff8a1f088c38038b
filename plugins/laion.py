"""LAION-scale sources: the clip-retrieval embedding layout and the img2dataset layout.

`open_source(root)` returns the shards of either, sorted by name; each has ``name``,
``keys()`` (sample keys in shard order), ``column(name)`` (a metadata column in the same
order) and ``digest()``: what importers, exporters and `dp4tl assign` need. Streaming the tars
is the webdataset plugin's job; this plugin registers no adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import fsspec

from dp4tl_data.errors import ShardError
from dp4tl_data.registry import Registry

from .laion_emb import DEFAULT_SHARD_NAME, EmbeddingPart, list_parts
from .laion_i2d import I2DShard, list_shards

LAYOUTS = ("embeddings", "img2dataset")


def detect_layout(root: str, storage_options: dict[str, Any] | None = None) -> str:
    """``embeddings`` when `root` holds ``img_emb/``, else ``img2dataset``."""
    fs, path = fsspec.core.url_to_fs(root, **(storage_options or {}))
    if not fs.exists(path):
        raise ShardError(f"{root}: no such source folder")
    return "embeddings" if fs.exists(f"{path.rstrip('/')}/img_emb") else "img2dataset"


def open_source(
    root: str,
    *,
    layout: str | None = None,
    shard_name: str = DEFAULT_SHARD_NAME,
    storage_options: dict[str, Any] | None = None,
) -> Sequence[EmbeddingPart | I2DShard]:
    """The shards of a LAION-style source folder (embedding parts, or img2dataset tars)."""
    layout = layout or detect_layout(root, storage_options)
    if layout == "embeddings":
        return list_parts(root, shard_name=shard_name, storage_options=storage_options)
    if layout == "img2dataset":
        return list_shards(root, storage_options=storage_options)
    raise ShardError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")


def register(registry: Registry) -> None:
    """Nothing to register: LAION tars stream through the webdataset adapter."""
