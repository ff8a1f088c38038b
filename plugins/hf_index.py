"""`dp4tl index` for Hugging Face dataset specs: per data file, its keys, labels and count.

A spec is a hub repo id (``user/name``, ``hf://datasets/user/name``), a local folder, or data
files (paths, globs, URLs) in parquet, json(l), csv or arrow. One data file = one shard, named
relative to the dataset root; byte-range columns stay null (rows are not byte ranges). Only the
key and label columns are read (tars: headers and the label member). Keys are the
``__key__`` column, else the row position in the file (stable while the file is unchanged:
the index records its size and mtime/etag).
"""

from __future__ import annotations

import logging
import os
import tarfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
from tqdm import tqdm

from dp4tl_data.errors import SampleError, ShardError
from dp4tl_data.index import IndexedShard, SourceIndex, shard_samples_table
from dp4tl_data.shards import ShardRef

from .hf_files import BUILDERS, is_repo_id, probe, resolve_source

log = logging.getLogger(__name__)
TABULAR = tuple(ext for ext, b in BUILDERS.items() if b in ("parquet", "json", "csv", "arrow"))
LABEL_GUESSES = ("label", "labels", "cls", "class", "target")


def accepts(spec: Any) -> bool:
    """HF specs only: ``hf://`` URLs, one ``user/name`` repo id, or folders / files / globs of
    parquet, json(l), csv or arrow files. Tar lists (and wids ``.json`` indexes) are left to
    the webdataset indexer."""
    items = [spec] if isinstance(spec, str) else spec
    if not isinstance(items, (list, tuple)) or not items or not all(isinstance(s, str) for s in items):
        return False
    if all(s.startswith("hf://") for s in items):
        return True
    if len(items) == 1 and is_repo_id(items[0]):
        return True
    return all(_tabular(s) for s in items)


def _tabular(item: str) -> bool:
    if "://" not in item and os.path.isdir(item):
        names = [n for _, _, files in os.walk(item) for n in files]
        return any(n.endswith(TABULAR) for n in names) and not any(n.endswith(".tar") for n in names)
    base = item.rsplit("/", 1)[-1]
    if base.endswith(".json"):
        return "://" not in item and not _is_wids_index(item)
    return base.endswith(TABULAR)


def _is_wids_index(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return b"wids-shard-index" in f.read(4096)
    except OSError:
        return False


def build(
    spec: Sequence[str] | str,
    *,
    label_field: str | None = None,
    root: str | None = None,
    workers: int | None = None,
    split: str = "train",
    key_field: str = "__key__",
    storage_options: dict[str, Any] | None = None,
    **_: Any,
) -> SourceIndex:
    """The SourceIndex of `split` of a HF dataset spec."""
    items = [spec] if isinstance(spec, str) else list(spec)
    if len(items) == 1 and (is_repo_id(items[0]) or os.path.isdir(items[0])):
        source = resolve_source(items[0], split=split, root=root)
    else:
        source = resolve_source(None, data_files=items, split=split, root=root)
    features = probe(source.builder, source.files[0].url, split, storage_options).features
    lf = label_field or next((c for c in LABEL_GUESSES if c in features), None)
    if lf is not None and lf.split(".", 1)[0] not in features:
        raise SampleError(f"{source.files[0].url}: no label column {lf!r} (columns: {sorted(features)})")
    from .hf_rule import class_names

    classes = class_names(features, lf) if lf else None
    opts = dict(storage_options or {})

    def scan(ref: ShardRef) -> tuple[ShardRef, list[str], list[Any], dict[str, Any]]:
        keys, labels = _keys_labels(source.builder, ref, key_field, lf, features, split, opts)
        return ref, keys, labels, _file_info(ref.url, opts)

    n = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=max(1, n)) as pool:
        scanned = list(tqdm(pool.map(scan, source.files), total=len(source.files), desc="index", disable=None))
    label_ids, classes = _label_ids([s[2] for s in scanned], classes, lf)
    pairs = []
    for (ref, keys, _, info), ids in zip(scanned, label_ids):
        shard = IndexedShard(ref.name, len(keys), info.get("size"), info.get("mtime"), info.get("etag"))
        pairs.append((shard, shard_samples_table(keys, ids)))
    extra = {"builder": source.builder, "split": split, "key_field": key_field}
    return SourceIndex.build(
        pairs, kind=f"hf-{source.builder}", root=source.root, label_field=lf, classes=classes, extra=extra
    )


def _file_info(url: str, opts: dict[str, Any]) -> dict[str, Any]:
    fs, path = fsspec.core.url_to_fs(url, **opts)
    info = fs.info(path)
    etag = info.get("ETag") or info.get("etag") or info.get("blob_id")
    mtime = info.get("mtime") or info.get("LastModified") or info.get("last_commit")
    return {
        "size": info.get("size"),
        "mtime": float(mtime) if isinstance(mtime, (int, float)) else None,
        "etag": str(etag) if etag else None,
    }


def _keys_labels(
    builder: str, ref: ShardRef, key_field: str, lf: str | None, features: Any, split: str, opts: dict[str, Any]
) -> tuple[list[str], list[Any]]:
    """Keys and raw label values (ints, names or None) of one file, reading only those columns."""
    try:
        if builder == "webdataset":
            return _tar_keys_labels(ref.url, lf, opts)  # tar errors: see below
        table = _columns(
            builder, ref.url, [c for c in (key_field, (lf or "").split(".")[0]) if c in features], split, opts
        )
    except (pa.ArrowException, OSError, ValueError, EOFError, tarfile.TarError) as exc:
        kind = {"parquet": "corrupt parquet", "webdataset": "corrupt tar"}.get(builder, f"unreadable {builder} file")
        raise ShardError(f"{ref.url}: {kind} ({type(exc).__name__}: {exc})") from None
    keys = (
        [str(k) for k in table.column(key_field).to_pylist()]
        if key_field in table.column_names
        else [str(i) for i in range(table.num_rows)]
    )
    if len(set(keys)) != len(keys):
        raise SampleError(f"{ref.url}: keys in {key_field!r} are not unique")
    labels: list[Any] = [None] * table.num_rows
    if lf is not None:
        from .hf_rule import column

        labels = column(table, lf, ref.url).to_pylist()
    return keys, labels


def _columns(builder: str, url: str, columns: list[str], split: str, opts: dict[str, Any]) -> pa.Table:
    if builder == "parquet":
        from .hf_read import open_parquet

        pf = open_parquet(url, opts)
        try:
            if not columns:
                return pa.table({"_": pa.nulls(pf.metadata.num_rows)})
            return pf.read(columns=columns, use_threads=False)
        finally:
            pf.close()
    from datasets import load_dataset

    ds = load_dataset(builder, data_files={split: [url]}, split=split, streaming=True, storage_options=opts or None)
    ds = ds.select_columns(columns) if columns else ds
    tables = list(ds.decode(False).with_format("arrow").iter(batch_size=10000))
    return pa.concat_tables(tables) if tables else pa.table({c: pa.array([]) for c in columns})


def _tar_keys_labels(url: str, lf: str | None, opts: dict[str, Any]) -> tuple[list[str], list[Any]]:
    """Keys in tar order and the label of each (from its label member; payloads are skipped)."""
    from datasets.packaged_modules.webdataset.webdataset import base_plus_ext

    from .hf_read import member_label, tar_members

    member, _, path = (lf or "").partition(".")
    keys: list[str] = []
    labels: list[Any] = []
    with tar_members(url, opts) as entries:
        for name, read in entries:
            key, fld = base_plus_ext(name)
            if key is None:
                continue
            if not keys or keys[-1] != key:
                keys.append(key)
                labels.append(None)
            if lf and fld == member:
                labels[-1] = member_label(read(), path)
    return keys, labels


def _label_ids(
    per_file: list[list[Any]], classes: list[str] | None, lf: str | None
) -> tuple[list[list[int | None]], list[str] | None]:
    """Label ids per file; string labels become ids in the sorted list of names (the index's classes)."""
    if lf is None:
        return [[None] * len(v) for v in per_file], None
    names = {v for vals in per_file for v in vals if isinstance(v, str)}
    if names and classes is None:
        classes = sorted(names)
    lookup = {n: i for i, n in enumerate(classes or [])}
    out: list[list[int | None]] = []
    for vals in per_file:
        ids: list[int | None] = []
        for v in vals:
            if isinstance(v, str):
                ids.append(lookup[v] if v in lookup else None)
            elif isinstance(v, (int, np.integer)) and not isinstance(v, bool):
                ids.append(int(v))
            else:
                ids.append(None)
        out.append(ids)
    return out, classes
