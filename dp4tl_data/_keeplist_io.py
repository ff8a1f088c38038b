"""KeepList storage: a JSON manifest, a Parquet shard table and one binary payload file.

Layout for ``keep.json``::

    keep.json                 manifest: format, version, classes, provenance, scores
    keep.shards.parquet       one row per kept shard: name, encoding, kept, total, offset, length,
                              crc32 (of the compressed payload), sha256 (of the uncompressed payload)
    keep.samples.bin          zlib-compressed payloads, one per sample-level shard

Why this format: JSON and Parquet need no pickle and every language reads them; a shard's
payload is one range read (``fs.cat_file(url, start, end)``), so a reader touches only the
shards it serves. A bitmap costs one bit per indexed sample before compression: 2 billion
samples in 231k shards is at most 250 MB of payload plus a few MB of table, and much less
when kept samples cluster. Key payloads (sorted, newline-joined keys) suit lists made without
an index. Everything read here is untrusted: names are checked, offsets bounded, payloads
inflated only up to their expected size (no decompression bombs) and checked against their
sha256, and the manifest's fingerprint is recomputed from the shard table on load, so an edited
list cannot pass for the one a resume state or a provenance record names.
"""

from __future__ import annotations

import functools
import hashlib
import json
import posixpath
import zlib
from collections.abc import Iterator, Mapping
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import KeepListError
from .keeplist import ENCODINGS, MAX_KEY_CHARS, ClassLevel, KeepList, ShardEntry, compress, content_fingerprint
from .urls import check_shard_name

FORMAT = "dp4tl-keeplist"
VERSION = 1
MAX_MANIFEST_BYTES = 256 * 1024 * 1024
_INT_COLUMNS = ("kept", "total", "offset", "length")
_TABLE_COLUMNS = ("name", "encoding", "kept", "total", "offset", "length", "crc32", "sha256")
MAX_INFLATED_KEYS_BYTES = 1 << 30  # a key payload of unknown count inflates to at most 1 GiB


def sha256(raw: bytes) -> bytes:
    return hashlib.sha256(raw).digest()


def _sidecar(url: str, suffix: str) -> str:
    base = url[: -len(".json")] if url.endswith(".json") else url
    return posixpath.basename(base) + suffix


def _sibling(url: str, name: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + name if "/" in url else name


def save_keeplist(keep: KeepList, url: str, **storage_options: Any) -> str:
    shards, rows = None, None
    if keep.shards is not None:
        table = ShardTableWriter(url, **storage_options)
        for name in sorted(keep.shards):
            table.add(keep.shards[name])
        shards, rows = table.finish(), table.rows
    classes = keep.classes.to_json() if keep.classes is not None else None
    # each payload is read and hashed once, here; the fingerprint follows from the table rows
    fingerprint = content_fingerprint(classes, rows)
    return write_manifest(url, fingerprint, classes, shards, keep.provenance, keep.scores, **storage_options)


_TABLE_SCHEMA = pa.schema(
    [
        ("name", pa.string()),
        ("encoding", pa.string()),
        ("kept", pa.int64()),
        ("total", pa.int64()),
        ("offset", pa.int64()),
        ("length", pa.int64()),
        ("crc32", pa.uint32()),
        ("sha256", pa.binary(32)),
    ]
)


class ShardTableWriter:
    """Writes the payload file of keep-list `url` one shard at a time, then its shard table.

    Holds one table row per shard, never a payload: shards may come in any order (the table is
    sorted by name on `finish`), which lets a streaming writer add them as they are computed.
    """

    def __init__(self, url: str, **storage_options: Any) -> None:
        self.url, self._so = url, storage_options
        self.table_name, self.payload_name = _sidecar(url, ".shards.parquet"), _sidecar(url, ".samples.bin")
        self._cols: dict[str, list[Any]] = {c: [] for c in _TABLE_COLUMNS}
        self._offset = 0
        self._out = fsspec.open(_sibling(url, self.payload_name), "wb", **storage_options).open()
        self.rows: list[tuple[str, str, int | None, bytes]] = []  # `content_fingerprint` rows so far

    def add(self, entry: ShardEntry) -> None:
        """Append one shard: its compressed payload (nothing for ``all``) and its table row. The
        payload is read once; its sha256 goes to the table and to `rows`."""
        raw = entry.payload()
        blob = compress(raw) if entry.encoding != "all" else b""
        digest = sha256(raw)
        self._out.write(blob)
        for c, v in (
            ("name", entry.name),
            ("encoding", entry.encoding),
            ("kept", -1 if entry.kept is None else entry.kept),
            ("total", -1 if entry.total is None else entry.total),
            ("offset", self._offset),
            ("length", len(blob)),
            ("crc32", zlib.crc32(blob)),
            ("sha256", digest),
        ):
            self._cols[c].append(v)
        self._offset += len(blob)
        self.rows.append((entry.name, entry.encoding, entry.kept, digest))

    def finish(self) -> dict[str, Any]:
        """Close the payload, write the table sorted by name; returns the manifest's ``shards``."""
        self._out.close()
        table = pa.table(self._cols, schema=_TABLE_SCHEMA).sort_by("name")
        with fsspec.open(_sibling(self.url, self.table_name), "wb", **self._so) as out:
            pq.write_table(table, out)
        return {"table": self.table_name, "payload": self.payload_name, "count": table.num_rows}

    def abort(self) -> None:
        """Close the payload file without writing a table (no manifest will point at it)."""
        self._out.close()


def write_manifest(
    url: str,
    fingerprint: str,
    classes: dict[str, Any] | None,
    shards: dict[str, Any] | None,
    provenance: dict[str, Any],
    scores: dict[str, Any] | None,
    **storage_options: Any,
) -> str:
    """Write the JSON manifest last (readers see a keep-list only once it is complete)."""
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "fingerprint": fingerprint,
        "classes": classes,
        "shards": shards,
        "provenance": provenance,
        "scores": scores,
    }
    try:
        text = json.dumps(manifest, indent=1, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise KeepListError(f"{url}: provenance or scores are not plain JSON data: {exc}") from None
    with fsspec.open(url, "w", encoding="utf-8", **storage_options) as f:
        f.write(text)
    return url


def _fail(url: str, what: str) -> KeepListError:
    return KeepListError(f"{url}: {what}")


def load_keeplist(url: str, **storage_options: Any) -> KeepList:
    try:
        fs, path = fsspec.core.url_to_fs(url, **storage_options)
        with fs.open(path, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise _fail(url, "keep-list not found") from None
    except OSError as exc:
        raise _fail(url, f"cannot read keep-list: {exc}") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise _fail(url, "manifest is larger than 256 MB; not a keep-list manifest")
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(url, f"corrupt or truncated keep-list manifest (not valid JSON: {exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise _fail(url, f"not a dp4tl keep-list (format {found!r}, expected {FORMAT!r})")
    version = manifest.get("version")
    if version != VERSION:
        raise _fail(url, f"keep-list version {version!r} is not supported (expected {VERSION})")
    prov = manifest.get("provenance")
    if not isinstance(prov, dict):
        raise _fail(url, "'provenance' must be an object")
    scores = manifest.get("scores")
    if scores is not None and not isinstance(scores, dict):
        raise _fail(url, "'scores' must be an object or null")
    classes = ClassLevel.from_json(manifest["classes"], url) if manifest.get("classes") is not None else None
    shards = _load_shards(url, fs, path, manifest.get("shards")) if manifest.get("shards") is not None else None
    fp = manifest.get("fingerprint")
    if not isinstance(fp, str):
        raise _fail(url, "'fingerprint' must be a string")
    actual = content_fingerprint(manifest.get("classes"), shards.fingerprint_rows() if shards is not None else None)
    if actual != fp:
        raise _fail(url, f"fingerprint {fp[:16]} does not match the list's content ({actual[:16]}): edited or corrupt")
    keep = KeepList(classes=classes, shards=shards, provenance={}, scores=scores, _fingerprint=fp)
    keep.provenance = prov
    return keep


def _load_shards(url: str, fs: Any, path: str, spec: Any) -> LazyShards:
    if not isinstance(spec, dict):
        raise _fail(url, "'shards' must be an object")
    files = {}
    for key in ("table", "payload"):
        name = spec.get(key)
        if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
            raise _fail(url, f"'shards.{key}' must be a plain file name beside the manifest, found {name!r}")
        files[key] = _sibling(path, name)
    try:
        with fs.open(files["table"], "rb") as f:
            # no pre-buffering, no threads: an arrow thread that frees a buffer of a Python file object
            # during interpreter exit aborts the process (pyarrow 26: "terminate called without an
            # active exception", exit status 134), as pq.read_table(f) does now and then
            table = pq.ParquetFile(f, pre_buffer=False).read(use_threads=False)
        payload_size = fs.size(files["payload"])
    except FileNotFoundError as exc:
        raise _fail(url, f"missing keep-list file {exc.filename or files['table']}") from None
    except (OSError, pa.ArrowException) as exc:
        raise _fail(url, f"corrupt shard table {spec.get('table')}: {exc}") from None
    missing = [c for c in _TABLE_COLUMNS if c not in table.column_names]
    if missing:
        raise _fail(url, f"shard table lacks columns {missing}")
    if table.num_rows != spec.get("count"):
        raise _fail(url, f"shard table has {table.num_rows} rows, manifest says {spec.get('count')}")
    return LazyShards(url, fs, files["payload"], table, int(payload_size or 0))


class LazyShards(Mapping[str, ShardEntry]):
    """The shard table of a loaded keep-list; a shard's payload is read on first use."""

    def __init__(self, url: str, fs: Any, payload: str, table: pa.Table, payload_size: int) -> None:
        self._url, self._fs, self._payload = url, fs, payload
        names = table.column("name").to_pylist()
        for n in names:
            try:
                check_shard_name(n, where=url)
            except KeepListError:
                raise
        self._rows = {n: i for i, n in enumerate(names)}
        if len(self._rows) != len(names):
            raise _fail(url, "shard table lists a shard twice")
        self._names = names
        self._enc = table.column("encoding").to_pylist()
        bad = sorted({e for e in self._enc if e not in ENCODINGS})
        if bad:
            raise _fail(url, f"unknown shard encodings {bad}")
        for col, typ in (
            ("name", pa.string()),
            ("encoding", pa.string()),
            *((c, pa.int64()) for c in _INT_COLUMNS),
            ("crc32", pa.uint32()),
            ("sha256", pa.binary(32)),
        ):
            column = table.column(col)
            if column.type != typ or column.null_count:
                raise _fail(url, f"shard table column {col!r} must be non-null {typ}, found {column.type}")
        self._kept = table.column("kept").to_numpy()
        self._total = table.column("total").to_numpy()
        self._off = table.column("offset").to_numpy()
        self._len = table.column("length").to_numpy()
        self._crc = table.column("crc32").to_numpy()
        self._sha = table.column("sha256").to_pylist()
        limit = np.int64(1) << 62  # no int64 overflow in off + len below
        if ((self._off < 0) | (self._len < 0) | (self._off > limit) | (self._len > limit)).any() or (
            (self._off + self._len) > payload_size
        ).any():
            raise _fail(url, f"payload file is truncated or offsets are out of range ({payload_size} bytes)")
        self._cache: dict[str, ShardEntry] = {}

    def __len__(self) -> int:
        return len(self._names)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._rows

    def __getitem__(self, name: str) -> ShardEntry:
        entry = self._cache.get(name)
        if entry is None:
            i = self._rows[name]
            kept, total = int(self._kept[i]), int(self._total[i])
            entry = ShardEntry(
                name,
                self._enc[i],
                kept=None if kept < 0 else kept,
                total=None if total < 0 else total,
                loader=functools.partial(self._read, i, name),
            )
            self._cache[name] = entry
        return entry

    def _read(self, i: int, name: str) -> bytes:
        start, length = int(self._off[i]), int(self._len[i])
        try:
            blob = self._fs.cat_file(self._payload, start=start, end=start + length)
        except OSError as exc:
            raise _fail(self._url, f"cannot read payload of shard {name!r}: {exc}") from None
        if len(blob) != length or zlib.crc32(blob) != int(self._crc[i]):
            raise _fail(self._url, f"payload of shard {name!r} is corrupt (checksum mismatch)")
        try:
            inflater = zlib.decompressobj()
            raw = inflater.decompress(blob, self._max_inflated(i) + 1)
        except zlib.error as exc:
            raise _fail(self._url, f"payload of shard {name!r} is corrupt ({exc})") from None
        if len(raw) > self._max_inflated(i) or inflater.unconsumed_tail or not inflater.eof:
            raise _fail(self._url, f"payload of shard {name!r} inflates beyond its expected size")
        if sha256(raw) != self._sha[i]:
            raise _fail(self._url, f"payload of shard {name!r} does not match its sha256")
        return raw

    def _max_inflated(self, i: int) -> int:
        """The most bytes shard row `i`'s payload may inflate to: its bitmap, or its keys."""
        kept, total = int(self._kept[i]), int(self._total[i])
        if self._enc[i] == "bitmap":
            return (max(total, 0) + 7) // 8
        if kept >= 0:
            return kept * (MAX_KEY_CHARS * 4 + 1)  # UTF-8: at most 4 bytes a character
        return MAX_INFLATED_KEYS_BYTES

    def fingerprint_rows(self) -> list[tuple[str, str, int | None, bytes]]:
        """(name, encoding, kept, payload sha256) per shard, for `content_fingerprint`."""
        kept = self._kept.tolist()
        return [(n, e, None if k < 0 else k, d) for n, e, k, d in zip(self._names, self._enc, kept, self._sha)]

    def counts(self) -> dict[str, int | None]:
        """Kept count per shard, without reading any payload."""
        return {n: (None if k < 0 else int(k)) for n, k in zip(self._names, self._kept.tolist())}


def kept_array(shards: Mapping[str, ShardEntry]) -> np.ndarray:
    """Kept counts in name order (-1 where unknown), without reading payloads of lazy tables."""
    if isinstance(shards, LazyShards):
        return np.asarray(shards._kept)
    return np.array([-1 if e.kept is None else e.kept for e in shards.values()], dtype=np.int64)
