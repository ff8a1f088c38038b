"""clip-retrieval / embedding-reader layout: ``img_emb/img_emb_{N}.npy`` + ``metadata/metadata_{N}.parquet``.

Rows of the two files are aligned by order; the metadata's ``image_path`` column holds the
webdataset key. At LAION scale there is no per-sample index: a sample's identity is its
position in its part, and keep-list bitmaps are over that order. One part maps to one tar
shard (named by `shard_name`, ``{N:05d}.tar`` by default, img2dataset's naming), so the bitmap
order is the tar order the part was embedded from.

A part's digest is `dp4tl_data.index.shard_digest(name, keys)`, the same one a SourceIndex of
the tars uses, so a keep-list's ``source_fingerprint`` matches an index of the same shards.
Everything goes through fsspec; nothing is unpickled (``np.load(allow_pickle=False)``).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dp4tl_data.errors import ShardError
from dp4tl_data.index import shard_digest
from dp4tl_data.urls import check_shard_name

EMB_RE = re.compile(r"^img_emb_(\d+)\.npy$")
META_RE = re.compile(r"^metadata_(\d+)\.parquet$")
KEY_COLUMN = "image_path"
DEFAULT_SHARD_NAME = "{N:05d}.tar"


@dataclass(frozen=True)
class EmbeddingPart:
    """One part of an embedding folder: `name` (the keep-list shard name), its number, and the
    URLs of its embedding and metadata files. Picklable, so it can travel to Dask workers."""

    name: str
    number: int
    emb_url: str
    meta_url: str
    storage_options: tuple[tuple[str, Any], ...] = ()

    def _open(self, url: str, **kwargs: Any) -> Any:
        fs, path = fsspec.core.url_to_fs(url, **dict(self.storage_options))
        try:
            return fs.open(path, "rb", **kwargs)
        except FileNotFoundError:
            raise ShardError(f"{url}: missing (part {self.name!r})") from None

    def header(self) -> tuple[tuple[int, ...], np.dtype]:
        """(shape, dtype) of the embedding file, from its header alone."""
        with self._open(self.emb_url, block_size=4096) as f:  # one small range read
            try:
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(f)
            except (ValueError, OSError) as exc:
                raise ShardError(f"{self.emb_url}: not a .npy file ({exc})") from None
        _check_dtype(self.emb_url, shape, dtype)
        return tuple(shape), dtype

    def meta_rows(self) -> int:
        """Rows of the metadata file, from its footer alone."""
        with self._open(self.meta_url) as f:
            try:
                return int(pq.ParquetFile(f, pre_buffer=False).metadata.num_rows)
            except (pa.ArrowException, OSError) as exc:
                raise ShardError(f"{self.meta_url}: corrupt parquet ({exc})") from None

    def rows(self) -> int:
        """Samples in the part; ShardError when the embedding and metadata row counts differ."""
        (n, _), _ = self.header()
        m = self.meta_rows()
        if n != m:
            raise ShardError(f"{self.emb_url}: {n} embedding rows, but {self.meta_url} has {m} metadata rows")
        return n

    def read(self) -> np.ndarray:
        """The embeddings, as stored (float16 or float32), after checking the row counts agree.
        NaN/inf rows are reported by `dp4tl_data.cluster.check_features` where they are used."""
        m = self.meta_rows()
        with self._open(self.emb_url) as f:
            try:
                x = np.load(f, allow_pickle=False)
            except (ValueError, OSError, EOFError) as exc:
                raise ShardError(f"{self.emb_url}: unreadable .npy ({exc})") from None
        _check_dtype(self.emb_url, x.shape, x.dtype)
        if len(x) != m:
            raise ShardError(f"{self.emb_url}: {len(x)} embedding rows, but {self.meta_url} has {m} metadata rows")
        return x  # type: ignore[no-any-return]

    def column(self, name: str) -> pa.ChunkedArray:
        """One metadata column, in embedding order."""
        with self._open(self.meta_url) as f:
            try:  # not pq.read_table: see _keeplist_io (arrow threads on Python files abort at exit)
                table = pq.ParquetFile(f, pre_buffer=False).read(columns=[name], use_threads=False)
            except (pa.ArrowException, OSError, KeyError) as exc:
                raise ShardError(f"{self.meta_url}: cannot read column {name!r} ({exc})") from None
        return table.column(name)

    def keys(self, column: str = KEY_COLUMN) -> list[str]:
        """The webdataset keys, in embedding order (basename up to the first dot of `column`)."""
        col = self.column(column)
        if col.null_count:
            raise ShardError(f"{self.meta_url}: {col.null_count} rows have no {column!r}")
        return [to_key(p) for p in col.to_pylist()]

    def digest(self, keys: Sequence[str] | None = None) -> bytes:
        """What this part contributes to the source fingerprint (name, count, keys)."""
        return shard_digest(self.name, list(keys) if keys is not None else self.keys())


def to_key(path: str) -> str:
    """A webdataset key from a key or a path: basename up to its first dot."""
    return posixpath.basename(path).split(".", 1)[0]


def _check_dtype(url: str, shape: Sequence[int], dtype: np.dtype) -> None:
    if len(shape) != 2:
        raise ShardError(f"{url}: embeddings must be 2-D, found shape {tuple(shape)}")
    if dtype.kind != "f":
        raise ShardError(f"{url}: embeddings must be floats, found dtype {dtype}")


def list_parts(
    root: str, *, shard_name: str = DEFAULT_SHARD_NAME, storage_options: dict[str, Any] | None = None
) -> list[EmbeddingPart]:
    """The parts under `root` (which holds ``img_emb/`` and ``metadata/``), sorted by shard name.

    An embedding file without its metadata file (or the reverse) is a ShardError naming it.
    """
    so = storage_options or {}
    emb = _numbered(ls_urls(root.rstrip("/") + "/img_emb", so), EMB_RE)
    meta = _numbered(ls_urls(root.rstrip("/") + "/metadata", so), META_RE)
    for a, b, what in ((emb, meta, "metadata"), (meta, emb, "embedding")):
        lonely = sorted(set(a) - set(b))
        if lonely:
            raise ShardError(f"{a[lonely[0]]}: no matching {what} file ({len(lonely)} parts lack one)")
    if not emb:
        raise ShardError(f"{root}: no img_emb/img_emb_N.npy files")
    parts = []
    for n in sorted(emb):
        name = check_shard_name(shard_name.format(N=n), where=root)
        parts.append(EmbeddingPart(name, n, emb[n], meta[n], tuple(sorted(so.items()))))
    if len({p.name for p in parts}) != len(parts):
        raise ShardError(f"{root}: shard name template {shard_name!r} gives two parts the same name")
    return sorted(parts, key=lambda p: p.name)


def ls_urls(folder: str, storage_options: dict[str, Any]) -> list[str]:
    """The URLs of the files in `folder` (same scheme as `folder`); ShardError when it is missing."""
    fs, path = fsspec.core.url_to_fs(folder, **storage_options)
    try:
        files = fs.ls(path, detail=False)
    except FileNotFoundError:
        raise ShardError(f"{folder}: missing folder") from None
    return sorted(fs.unstrip_protocol(f) if "://" in folder else f for f in files)


def _numbered(urls: list[str], pattern: re.Pattern[str]) -> dict[int, str]:
    out: dict[int, str] = {}
    for u in urls:
        m = pattern.match(posixpath.basename(u.rstrip("/")))
        if m:
            n = int(m.group(1))
            if n in out:
                raise ShardError(f"{u}: part {n} appears twice ({out[n]})")
            out[n] = u
    return out
