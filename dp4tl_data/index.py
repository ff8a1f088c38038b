"""SourceIndex: the manifest of a source dataset that keep-lists fingerprint.

Per shard: stable name, sample count, size, mtime/etag. Per sample: key, label id, and, for
container formats, the byte offset and size of the sample and of each member. Format plugins
(webdataset tars, Hugging Face files) *build* indexes; the core only stores and reads them.

Storage is a folder (any fsspec URL)::

    source.idx/index.json       format, version, kind, root, label field, class names, fingerprint
    source.idx/shards.parquet   name, nsamples, nbytes, mtime, etag, row_start
    source.idx/samples.parquet  shard, key, label, offset, size, members (sorted by shard)

`samples.parquet` is written in row groups, and a reader loads only the row groups of the
shards it asks for, so memory stays flat in the shards it does not read.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ._version import __version__
from .errors import IndexFileError, KeepListError, ShardError
from .urls import check_root, check_shard_name

FORMAT = "dp4tl-index"
VERSION = 1
ROW_GROUP = 16384

MEMBER_TYPE = pa.struct([("name", pa.string()), ("offset", pa.int64()), ("size", pa.int64())])
SAMPLE_SCHEMA = pa.schema(
    [
        ("shard", pa.int32()),
        ("key", pa.string()),
        ("label", pa.int64()),
        ("offset", pa.int64()),
        ("size", pa.int64()),
        ("members", pa.list_(MEMBER_TYPE)),
    ]
)
SHARD_SCHEMA = pa.schema(
    [
        ("name", pa.string()),
        ("nsamples", pa.int64()),
        ("nbytes", pa.int64()),
        ("mtime", pa.float64()),
        ("etag", pa.string()),
        ("row_start", pa.int64()),
    ]
)


@dataclass(frozen=True)
class IndexedShard:
    """One shard as indexed: stable name, sample count, and what identifies its bytes."""

    name: str
    nsamples: int
    nbytes: int | None = None
    mtime: float | None = None
    etag: str | None = None


def shard_samples_table(
    keys: Sequence[str],
    labels: Sequence[int | None] | None = None,
    offsets: Sequence[int | None] | None = None,
    sizes: Sequence[int | None] | None = None,
    members: Sequence[list[dict[str, Any]] | None] | None = None,
) -> pa.Table:
    """One shard's sample rows in the index schema (the ``shard`` column is filled on build)."""
    n = len(keys)
    none: list[Any] = [None] * n
    return pa.table(
        {
            "shard": pa.array(np.zeros(n, dtype=np.int32)),
            "key": pa.array(list(keys), pa.string()),
            "label": pa.array(list(labels) if labels is not None else none, pa.int64()),
            "offset": pa.array(list(offsets) if offsets is not None else none, pa.int64()),
            "size": pa.array(list(sizes) if sizes is not None else none, pa.int64()),
            "members": pa.array(list(members) if members is not None else none, pa.list_(MEMBER_TYPE)),
        },
        schema=SAMPLE_SCHEMA,
    )


def shard_digest(name: str, keys: Sequence[str]) -> bytes:
    """What a shard contributes to the source fingerprint: its name, count and keys."""
    h = hashlib.sha256(f"{name}\x1f{len(keys)}\x1f".encode())
    h.update("\n".join(keys).encode("utf-8"))
    return h.digest()


class SourceIndex:
    """A source dataset's manifest: shards, sample keys, labels and byte ranges."""

    def __init__(
        self,
        meta: dict[str, Any],
        shards: pa.Table,
        samples: pq.ParquetFile | pa.Table,
        url: str = "<memory>",
    ) -> None:
        self.url = url
        self.meta = meta
        self._shards = shards
        self._names: list[str] = shards.column("name").to_pylist()
        self._rows = {n: i for i, n in enumerate(self._names)}
        self._n = shards.column("nsamples").to_numpy()
        self._start = shards.column("row_start").to_numpy()
        self._samples = samples
        self._cache: OrderedDict[str, pa.Table] = OrderedDict()

    # -- identity

    @property
    def fingerprint(self) -> str:
        return str(self.meta["fingerprint"])

    @property
    def kind(self) -> str:
        return str(self.meta.get("kind", ""))

    @property
    def root(self) -> str:
        return str(self.meta.get("root", ""))

    @property
    def label_field(self) -> str | None:
        lf = self.meta.get("label_field")
        return lf if isinstance(lf, str) else None

    @property
    def classes(self) -> list[str] | None:
        c = self.meta.get("classes")
        return list(c) if isinstance(c, list) else None

    # -- shards

    @property
    def shard_names(self) -> list[str]:
        return list(self._names)

    @property
    def num_samples(self) -> int:
        return int(self._n.sum())

    def __contains__(self, name: object) -> bool:
        return name in self._rows

    def _row(self, name: str) -> int:
        try:
            return self._rows[name]
        except KeyError:
            raise IndexFileError(f"{self.url}: shard {name!r} is not in the index") from None

    def count(self, name: str) -> int:
        return int(self._n[self._row(name)])

    def shard(self, name: str) -> IndexedShard:
        i = self._row(name)
        row = {c: self._shards.column(c)[i].as_py() for c in ("nbytes", "mtime", "etag")}
        return IndexedShard(name, int(self._n[i]), row["nbytes"], row["mtime"], row["etag"])

    # -- samples

    def table(self, name: str) -> pa.Table:
        """The sample rows of shard `name`, in shard order (cached, a few shards at a time)."""
        cached = self._cache.get(name)
        if cached is not None:
            self._cache.move_to_end(name)
            return cached
        i = self._row(name)
        start, n = int(self._start[i]), int(self._n[i])
        if isinstance(self._samples, pa.Table):
            t = self._samples.slice(start, n)
        else:
            t = _read_rows(self._samples, start, n)
        if t.num_rows != n:
            raise IndexFileError(f"{self.url}: shard {name!r} lists {n} samples, found {t.num_rows} rows")
        self._cache[name] = t
        while len(self._cache) > 8:
            self._cache.popitem(last=False)
        return t

    def keys(self, name: str) -> list[str]:
        return self.table(name).column("key").to_pylist()  # type: ignore[no-any-return]

    def labels(self, name: str) -> np.ndarray:
        """Label ids of shard `name` (-1 where a sample has no label)."""
        col = self.table(name).column("label")
        return col.fill_null(-1).to_numpy().astype(np.int64)

    def check_labels(self, name: str) -> None:
        """Raise naming the first key of shard `name` that has no label."""
        t = self.table(name)
        nulls = t.column("label").is_null().to_numpy(zero_copy_only=False)
        if nulls.any():
            key = t.column("key")[int(np.argmax(nulls))].as_py()
            raise KeepListError(f"{self.url}: shard {name!r} sample {key!r} has no label")

    # -- build and persist

    @classmethod
    def build(
        cls,
        shards: Iterable[tuple[IndexedShard, pa.Table]],
        *,
        kind: str,
        root: str = "",
        label_field: str | None = None,
        classes: Sequence[str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> SourceIndex:
        """An index from ``(shard, samples table)`` pairs; shards are sorted by name."""
        items = sorted(shards, key=lambda st: st[0].name)
        cols: dict[str, list[Any]] = {c: [] for c in SHARD_SCHEMA.names}
        tables = []
        h = hashlib.sha256()
        row = 0
        seen: set[str] = set()
        for i, (sh, t) in enumerate(items):
            check_shard_name(sh.name, where="index")
            if sh.name in seen:
                raise IndexFileError(f"index: shard {sh.name!r} listed twice")
            seen.add(sh.name)
            if t.num_rows != sh.nsamples:
                raise IndexFileError(f"index: shard {sh.name!r} says {sh.nsamples} samples, table has {t.num_rows}")
            t = t.cast(SAMPLE_SCHEMA).set_column(0, "shard", pa.array(np.full(t.num_rows, i, dtype=np.int32)))
            keys = t.column("key").to_pylist()
            h.update(shard_digest(sh.name, keys))
            for c, v in (
                ("name", sh.name),
                ("nsamples", sh.nsamples),
                ("nbytes", sh.nbytes),
                ("mtime", sh.mtime),
                ("etag", sh.etag),
                ("row_start", row),
            ):
                cols[c].append(v)
            row += t.num_rows
            tables.append(t)
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "kind": kind,
            "root": root,
            "label_field": label_field,
            "classes": list(classes) if classes is not None else None,
            "fingerprint": h.hexdigest(),
            "num_shards": len(items),
            "num_samples": row,
            "library_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **(extra or {}),
        }
        samples = pa.concat_tables(tables) if tables else SAMPLE_SCHEMA.empty_table()
        return cls(meta, pa.table(cols, schema=SHARD_SCHEMA), samples)

    def save(self, url: str, **storage_options: Any) -> str:
        """Write the index folder at `url`."""
        fs, path = fsspec.core.url_to_fs(url, **storage_options)
        fs.makedirs(path, exist_ok=True)
        samples = self._samples if isinstance(self._samples, pa.Table) else self._samples.read()
        with fs.open(f"{path}/samples.parquet", "wb") as f:
            pq.write_table(samples, f, row_group_size=ROW_GROUP)
        with fs.open(f"{path}/shards.parquet", "wb") as f:
            pq.write_table(self._shards, f)
        with fs.open(f"{path}/index.json", "w") as f:
            f.write(json.dumps(self.meta, indent=1, sort_keys=True))
        self.url = url
        return url

    @classmethod
    def load(cls, url: str, **storage_options: Any) -> SourceIndex:
        """Open an index folder; sample rows are read lazily per shard."""
        try:
            fs, path = fsspec.core.url_to_fs(url, **storage_options)
            with fs.open(f"{path}/index.json", "rb") as f:
                raw = f.read(64 * 1024 * 1024)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise IndexFileError(f"{url}: not an index folder (no index.json)") from None
        try:
            meta = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise IndexFileError(f"{url}: corrupt index.json ({exc})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else None
            raise IndexFileError(f"{url}: not a dp4tl index (format {found!r}, expected {FORMAT!r})")
        if meta.get("version") != VERSION:
            raise IndexFileError(f"{url}: index version {meta.get('version')!r} is not supported (expected {VERSION})")
        try:
            with fs.open(f"{path}/shards.parquet", "rb") as f:
                # not pq.read_table: see _keeplist_io (arrow threads on Python files abort at exit)
                shards = pq.ParquetFile(f, pre_buffer=False).read(use_threads=False)
            samples = pq.ParquetFile(fs.open(f"{path}/samples.parquet", "rb"), pre_buffer=False)
        except FileNotFoundError as exc:
            raise IndexFileError(f"{url}: missing index file {exc.filename}") from None
        except (OSError, pa.ArrowException) as exc:
            raise IndexFileError(f"{url}: corrupt index table ({exc})") from None
        if shards.schema.names != SHARD_SCHEMA.names:
            raise IndexFileError(
                f"{url}: shards.parquet has columns {shards.schema.names}, expected {SHARD_SCHEMA.names}"
            )
        _check_shard_table(url, meta, shards)
        total = int(shards.column("nsamples").to_numpy().sum()) if shards.num_rows else 0
        if samples.metadata.num_rows != total:
            raise IndexFileError(f"{url}: samples.parquet has {samples.metadata.num_rows} rows, shards list {total}")
        return cls(meta, shards, samples, url=url)


def _check_shard_table(url: str, meta: dict[str, Any], shards: pa.Table) -> None:
    """What `build` guarantees, checked again on untrusted files: types, safe unique names,
    non-negative counts, contiguous row ranges, a string fingerprint and a data-filesystem root."""
    for col, typ in zip(SHARD_SCHEMA.names, SHARD_SCHEMA.types):
        column = shards.column(col)
        if column.type != typ or (col in ("name", "nsamples", "row_start") and column.null_count):
            raise IndexFileError(f"{url}: shards.parquet column {col!r} must be {typ}, found {column.type}")
    names = shards.column("name").to_pylist()
    for n in names:
        try:
            check_shard_name(n, where=url)
        except KeepListError as exc:
            raise IndexFileError(str(exc)) from None
    if len(set(names)) != len(names):
        raise IndexFileError(f"{url}: shards.parquet lists a shard twice")
    n = shards.column("nsamples").to_numpy()
    start = shards.column("row_start").to_numpy()
    if (n < 0).any() or not np.array_equal(start, np.concatenate([[0], np.cumsum(n)[:-1]]).astype(np.int64)):
        raise IndexFileError(f"{url}: shards.parquet row ranges are negative or not contiguous")
    if not isinstance(meta.get("fingerprint"), str):
        raise IndexFileError(f"{url}: index.json lacks a string 'fingerprint'")
    try:
        check_root(meta.get("root", ""), url)
    except ShardError as exc:
        raise IndexFileError(str(exc)) from None


def _read_rows(pf: pq.ParquetFile, start: int, n: int) -> pa.Table:
    """Rows [start, start+n) of a Parquet file, reading only the row groups they lie in."""
    if n == 0:
        return SAMPLE_SCHEMA.empty_table()
    groups, first, pos = [], None, 0
    for g in range(pf.metadata.num_row_groups):
        rows = pf.metadata.row_group(g).num_rows
        if pos + rows > start and pos < start + n:
            groups.append(g)
            first = pos if first is None else first
        pos += rows
    t = pf.read_row_groups(groups, use_threads=False)
    return t.slice(start - (first or 0), n)
