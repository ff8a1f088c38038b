"""Read the kept rows of one data file, undecoded, as Arrow tables in the dataset's schema.

`read_piece(spec, ref, start, stop)` yields kept rows ``[start, stop)`` of file `ref`, counted
among that file's kept rows. The decision is made on the key/label columns before any image or
audio is decoded (decoding happens later, in `datasets`, on the kept rows only):

- parquet: per row group, only the key/label columns are read first; the other columns are
  read only for row groups (and batches) that hold a kept row in the window;
- webdataset tars: a sample is decided at its first member when the key decides (index,
  sample-level list) or at its label member (``.cls``), and the members of pruned samples are
  never read into Python;
- other formats (json, csv, arrow, text): read through `datasets` per file, then masked.
"""

from __future__ import annotations

import copy
import functools
import io
import json
import logging
import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dp4tl_data.errors import Dp4tlError, IndexFileError, SampleError, ShardError
from dp4tl_data.members import SampleFilter, label_value
from dp4tl_data.shards import ShardRef

from .hf_rule import KeepRule

log = logging.getLogger(__name__)
BATCH = 1000
MEDIA = ("Image", "Audio", "Video", "Mesh")


@dataclass
class ReadSpec:
    """How to read and decide the rows of this dataset's files (plain data, sent to workers)."""

    builder: str
    features: Any  # datasets.Features
    rule: KeepRule
    sample_filter: SampleFilter
    masks: dict[str, np.ndarray] | None = None  # per file, from a source index, in file order
    split: str = "train"
    storage_options: dict[str, Any] = field(default_factory=dict)
    batch_size: int = BATCH
    sizes: dict[str, int] | None = None  # bytes per file, from a source index

    @property
    def schema(self) -> pa.Schema:
        return self.features.arrow_schema

    def mask(self, table: pa.Table, ref: ShardRef, row0: int) -> np.ndarray:
        """Kept rows of `table` (rows ``row0...`` of file `ref`)."""
        if self.masks is not None:
            m = self.masks.get(ref.name)
            if m is None:
                return np.zeros(table.num_rows, dtype=bool)
            if row0 + table.num_rows > len(m):
                raise IndexFileError(f"{ref.url}: has more rows than the {len(m)} the index lists; re-index it")
            return m[row0 : row0 + table.num_rows]
        return self.rule.mask(table, ref.name, row0, ref.url)

    def check_rows(self, ref: ShardRef, rows: int) -> None:
        """With an index, the file must still hold the rows the index lists."""
        if self.masks is not None and ref.name in self.masks and rows != len(self.masks[ref.name]):
            raise IndexFileError(
                f"{ref.url}: has {rows} rows, the index lists {len(self.masks[ref.name])}; re-index it"
            )


def window(mask: np.ndarray, pos: int, start: int, stop: int | None) -> tuple[np.ndarray, int]:
    """Rows of a batch whose kept ordinal (counted from `pos`) lies in ``[start, stop)``; new `pos`."""
    kept = np.flatnonzero(mask)
    ordinals = pos + np.arange(len(kept))
    sel = (ordinals >= start) & (ordinals < stop if stop is not None else True)
    return kept[sel], pos + len(kept)


def read_piece(spec: ReadSpec, ref: ShardRef, start: int = 0, stop: int | None = None) -> Iterator[pa.Table]:
    """Kept rows ``[start, stop)`` of file `ref`, undecoded, in `spec.schema`."""
    reader = {"parquet": _parquet, "webdataset": _tar}.get(spec.builder, _generic)
    try:
        _check_size(spec, ref)
        yield from reader(spec, ref, start, stop)
    except (Dp4tlError, GeneratorExit):
        raise
    except (pa.ArrowException, OSError, tarfile.TarError, ValueError, EOFError) as exc:
        raise ShardError(f"{ref.url}: {_what(spec, exc)} ({type(exc).__name__}: {exc})") from exc


def _check_size(spec: ReadSpec, ref: ShardRef) -> None:
    """With an index, a file whose size changed since indexing is refused (its rows moved)."""
    expected = (spec.sizes or {}).get(ref.name)
    if expected is None:
        return
    fs, path = fsspec.core.url_to_fs(ref.url, **spec.storage_options)
    found = fs.size(path)
    if found is not None and int(found) != expected:
        raise IndexFileError(
            f"{ref.url}: is {found} bytes, the index recorded {expected}; the file changed (re-index it)"
        )


def _what(spec: ReadSpec, exc: BaseException) -> str:
    """How a read error reads: unreachable (missing, refused) or corrupt."""
    if isinstance(exc, (FileNotFoundError, ConnectionError, PermissionError)) or type(exc).__module__.startswith(
        "aiohttp"
    ):
        return "unreachable"
    return {"parquet": "corrupt parquet", "webdataset": "corrupt tar"}.get(spec.builder, "unreadable file")


def open_url(url: str, storage_options: dict[str, Any], streaming: bool = False) -> Any:
    """An open binary file; http(s) streams in one GET when `streaming` (tars are read in order)."""
    opts = dict(storage_options)
    if streaming and url.startswith(("http://", "https://")):
        opts.setdefault("block_size", 0)  # one streaming GET, no range requests
    return fsspec.open(url, "rb", **opts).open()


def _cast(spec: ReadSpec, table: pa.Table) -> pa.Table:
    from datasets.table import table_cast

    return table_cast(table, spec.schema)


# ----------------------------------------------------------------------------- parquet


def open_parquet(url: str, storage_options: dict[str, Any]) -> pq.ParquetFile:
    """A ParquetFile: local paths natively; remote through fsspec, without pre-buffering or
    threads (an Arrow thread freeing a Python file's buffer at interpreter exit aborts pyarrow 26)."""
    if "://" not in url or url.startswith("file://"):
        return pq.ParquetFile(url.removeprefix("file://"))
    return pq.ParquetFile(open_url(url, storage_options), pre_buffer=False)


def _parquet(spec: ReadSpec, ref: ShardRef, start: int, stop: int | None) -> Iterator[pa.Table]:
    pf = open_parquet(ref.url, spec.storage_options)
    try:
        names = set(pf.schema_arrow.names)
        decide = [c for c in spec.rule.columns if c in names] if spec.masks is None else []
        columns = [c for c in spec.features if c in names]
        row0, pos = 0, 0
        for g in range(pf.num_row_groups):
            if stop is not None and pos >= stop:
                return
            n = pf.metadata.row_group(g).num_rows
            head = pf.read_row_group(g, columns=decide, use_threads=False) if decide else pa.table({"_": pa.nulls(n)})
            mask = spec.mask(head, ref, row0)
            sel, pos = window(mask, pos, start, stop)
            if len(sel):
                yield from _take_batches(spec, pf, g, columns, sel)
            row0 += n
        spec.check_rows(ref, row0)
    finally:
        pf.close()


def _take_batches(
    spec: ReadSpec, pf: pq.ParquetFile, group: int, columns: list[str], sel: np.ndarray
) -> Iterator[pa.Table]:
    """The selected rows of one row group, read in batches (batches without one are skipped)."""
    b0 = 0
    for batch in pf.iter_batches(batch_size=spec.batch_size, row_groups=[group], columns=columns, use_threads=False):
        lo, hi = np.searchsorted(sel, [b0, b0 + batch.num_rows])
        if hi > lo:
            yield _cast(spec, pa.Table.from_batches([batch]).take(pa.array(sel[lo:hi] - b0)))
        b0 += batch.num_rows
        if b0 > sel[-1]:
            return


# ----------------------------------------------------------------------------- webdataset tars


def _tar(spec: ReadSpec, ref: ShardRef, start: int, stop: int | None) -> Iterator[pa.Table]:
    from datasets.packaged_modules.webdataset.webdataset import WebDataset

    media = [k for k, v in spec.features.items() if type(v).__name__ in MEDIA]
    rows: list[dict[str, Any]] = []
    with tar_members(ref.url, spec.storage_options) as entries:
        counter = _TarSelector(spec, ref, start, stop)
        for ex in WebDataset._get_pipeline_from_tar(ref.url, counter.members(entries)):
            for name in spec.features:
                ex.setdefault(name, None)
            for name in media:
                if ex[name] is not None:
                    ex[name] = {"path": f"{ex['__key__']}.{name}", "bytes": ex[name]}
            rows.append(ex)
            if len(rows) == spec.batch_size:
                yield pa.Table.from_pylist(rows, schema=spec.schema)
                rows = []
        if rows:
            yield pa.Table.from_pylist(rows, schema=spec.schema)
        if counter.finished:
            spec.check_rows(ref, counter.position + 1)


Member = tuple[str, Callable[[], bytes]]  # a tar member's name, and how to read its bytes (if ever)


@contextmanager
def tar_members(url: str, storage_options: dict[str, Any]) -> Iterator[Iterator[Member]]:
    """The regular-file members of a tar, in order; their bytes are read only when asked for.

    Local tars are scanned with wids' memory-mapped header index (a member never asked for is
    never paged in); others are streamed once with `tarfile`.
    """
    local = _local_tar(url)
    if local is not None:
        try:
            yield (
                (name, functools.partial(_slice, local.mmapped_file, off + 512, size))
                for name, off, size in local.by_index
            )
        finally:
            local.close()
        return
    with open_url(url, storage_options, streaming=True) as f, tarfile.open(fileobj=f, mode="r|*") as tf:
        yield ((m.name, functools.partial(_extract, tf, m)) for m in tf if m.isfile())


def _local_tar(url: str) -> Any:
    """wids' MMIndexedTar of a local uncompressed tar whose names it reads in full, else None."""
    path = url.removeprefix("file://")
    if "://" in path or not path.endswith(".tar"):
        return None
    try:
        from wids.wids_mmtar import MMIndexedTar, parse_tar_header
    except ImportError:
        return None
    tar = MMIndexedTar(path, verbose=False)
    for name, off, _ in tar.by_index:  # long names live in pax/GNU records wids skips: use tarfile
        if len(name) >= 99 or parse_tar_header(tar.mmapped_file[off : off + 500]).prefix.strip(b"\0"):
            tar.close()
            return None
    return tar


def _slice(buf: Any, start: int, size: int) -> bytes:
    return bytes(buf[start : start + size])


def _extract(tf: tarfile.TarFile, m: tarfile.TarInfo) -> bytes:
    fh = tf.extractfile(m)
    return fh.read() if fh is not None else b""


def member_label(data: bytes, path: str) -> Any:
    """The label in a tar member: its text (``.cls``) or, with `path`, a field of its JSON."""
    if not path:
        return label_value(data)
    value: Any = json.loads(data)
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


class _TarSelector:
    """Walks tar members and passes on only those of kept samples in the window, unread otherwise."""

    def __init__(self, spec: ReadSpec, ref: ShardRef, start: int, stop: int | None, count_only: bool = False) -> None:
        self.spec, self.ref, self.start, self.stop = spec, ref, start, stop
        self.count_only = count_only
        self.flt = spec.sample_filter
        lf = self.flt.label_field
        self.label_member, _, self.label_path = (lf or "").partition(".")
        self.needs_label = self.flt.needs_label and spec.masks is None
        self.position = -1  # of the current sample in the file
        self.kept = 0  # kept samples so far (ordinals)
        self.finished = False
        self.mask = spec.masks.get(ref.name) if spec.masks is not None else None

    def _admit(self, decided: bool) -> bool | None:
        """Kept and inside the window: True; outside: False; past the window: None (stop reading)."""
        if not decided:
            return False
        ordinal = self.kept
        self.kept += 1
        if self.stop is not None and ordinal >= self.stop:
            return None
        return ordinal >= self.start

    def _by_key(self, key: str) -> bool | None:
        """The decision from the key and position alone, or None when the label is needed."""
        if self.mask is not None:
            if self.position >= len(self.mask):
                raise IndexFileError(f"{self.ref.url}: has more samples than the {len(self.mask)} the index lists")
            return bool(self.mask[self.position])
        if self.spec.masks is not None:
            return False
        if self.needs_label:
            return None
        return self.flt.decide(shard=self.ref.name, key=key, position=self.position)

    def _label(self, data: bytes, key: str) -> Any:
        value = member_label(data, self.label_path)
        if value is None:
            raise SampleError(f"{self.ref.url}: sample {key!r} has no {self.flt.label_field!r}")
        return value

    def members(self, entries: Iterator[Member]) -> Iterator[tuple[str, io.BytesIO]]:
        from datasets.packaged_modules.webdataset.webdataset import base_plus_ext

        key: str | None = None
        state: bool | None = False
        held: list[tuple[str, bytes]] = []
        for mname, read in entries:
            k, fld = base_plus_ext(mname)
            if k is None:
                continue
            if k != key:
                if state is None and key is not None:
                    self._no_label(key)
                key, held = k, []
                self.position += 1
                by_key = self._by_key(k)
                state = None if by_key is None else self._admit(by_key)
                if state is None and by_key is not None:  # past the window
                    return
            if state is False or (state and self.count_only):
                continue  # a pruned sample: its bytes are skipped, never read into Python
            data = read()
            if state is None:
                held.append((mname, data))
                if fld.split(".", 1)[0] != self.label_member:
                    continue
                label = self._label(data, k)
                decided = self.flt.decide(shard=self.ref.name, key=k, position=self.position, label=label)
                state = self._admit(decided)
                if state is None:
                    return
                if state:
                    for name, buf in held:
                        yield name, io.BytesIO(buf)
                held = []
                continue
            yield mname, io.BytesIO(data)
        if state is None and key is not None:
            self._no_label(key)
        self.finished = True

    def _no_label(self, key: str) -> None:
        self.flt.decide(shard=self.ref.name, key=key, position=self.position, label=None, has_label=False)


def count_kept(spec: ReadSpec, ref: ShardRef) -> int:
    """Kept rows of file `ref`, reading only what decides (key/label columns, tar headers and labels)."""
    try:
        if spec.builder == "parquet":
            pf = open_parquet(ref.url, spec.storage_options)
            try:
                decide = [c for c in spec.rule.columns if c in set(pf.schema_arrow.names)]
                n, row0 = 0, 0
                for g in range(pf.num_row_groups):
                    rows = pf.metadata.row_group(g).num_rows
                    head = (
                        pf.read_row_group(g, columns=decide, use_threads=False)
                        if decide
                        else pa.table({"_": pa.nulls(rows)})
                    )
                    n += int(spec.mask(head, ref, row0).sum())
                    row0 += rows
                return n
            finally:
                pf.close()
        if spec.builder == "webdataset":
            with tar_members(ref.url, spec.storage_options) as entries:
                sel = _TarSelector(spec, ref, 0, None, count_only=True)
                for _ in sel.members(entries):
                    pass
                return sel.kept
    except (pa.ArrowException, OSError, tarfile.TarError, ValueError, EOFError) as exc:
        raise ShardError(f"{ref.url}: {_what(spec, exc)} ({type(exc).__name__}: {exc})") from exc
    return sum(t.num_rows for t in read_piece(spec, ref))


# ----------------------------------------------------------------------------- other formats


def _generic(spec: ReadSpec, ref: ShardRef, start: int, stop: int | None) -> Iterator[pa.Table]:
    from datasets import load_dataset

    ds = load_dataset(
        spec.builder,
        data_files={spec.split: [ref.url]},
        split=spec.split,
        streaming=True,
        features=spec.features,
        storage_options=copy.deepcopy(spec.storage_options) or None,  # datasets adds keys to it
    )
    row0, pos = 0, 0
    for table in ds.decode(False).with_format("arrow").iter(batch_size=spec.batch_size):
        if stop is not None and pos >= stop:
            return
        sel, pos = window(spec.mask(table, ref, row0), pos, start, stop)
        if len(sel):
            yield _cast(spec, table.take(pa.array(sel)))
        row0 += table.num_rows
    spec.check_rows(ref, row0)
