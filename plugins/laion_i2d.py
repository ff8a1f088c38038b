"""img2dataset layout: per shard ``{00000}.tar`` + ``{00000}.parquet`` + ``{00000}_stats.json``.

The parquet lists every attempted download, failures included, in its own order, so a parquet
row is not a tar position: samples are joined on ``key`` with ``status == "success"``, and the
result is in tar order (the order bitmaps and embeddings use). Disagreements between the three
files are ShardErrors naming the file and a key; nothing is silently dropped.
"""

from __future__ import annotations

import json
import posixpath
import tarfile
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dp4tl_data.errors import ShardError
from dp4tl_data.index import shard_digest
from dp4tl_data.urls import check_shard_name

from .laion_emb import ls_urls, to_key


@dataclass(frozen=True)
class TarMember:
    """One tar member: its name, and the byte offset and size of its data."""

    name: str
    offset: int
    size: int


@dataclass(frozen=True)
class I2DShard:
    """One img2dataset shard: stable `name` (``00012.tar``) and the URL of its tar (the parquet
    and ``_stats.json`` lie beside it)."""

    name: str
    tar_url: str
    storage_options: tuple[tuple[str, Any], ...] = ()
    _cache: dict[str, pa.Table] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def base(self) -> str:
        return self.tar_url[: -len(".tar")]

    @property
    def parquet_url(self) -> str:
        return self.base + ".parquet"

    @property
    def stats_url(self) -> str:
        return self.base + "_stats.json"

    def _fs(self, url: str) -> tuple[Any, str]:
        return fsspec.core.url_to_fs(url, **dict(self.storage_options))  # type: ignore[no-any-return]

    def size(self) -> int:
        """Bytes of the tar."""
        fs, path = self._fs(self.tar_url)
        try:
            return int(fs.size(path))
        except FileNotFoundError:
            raise ShardError(f"{self.tar_url}: missing") from None

    def members(self) -> list[TarMember]:
        """The tar's members in order, from their headers (data is skipped, not read)."""
        fs, path = self._fs(self.tar_url)
        out = []
        try:
            with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
                for info in tar:
                    if info.isfile():
                        out.append(TarMember(info.name, info.offset_data, info.size))
        except FileNotFoundError:
            raise ShardError(f"{self.tar_url}: missing") from None
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise ShardError(f"{self.tar_url}: corrupt tar ({exc})") from None
        return out

    def stats(self) -> dict[str, Any]:
        """The ``_stats.json`` counters."""
        fs, path = self._fs(self.stats_url)
        try:
            with fs.open(path, "rb") as f:
                obj = json.loads(f.read(16 * 1024 * 1024))
        except FileNotFoundError:
            raise ShardError(f"{self.stats_url}: missing (shard {self.name!r})") from None
        except (ValueError, OSError) as exc:
            raise ShardError(f"{self.stats_url}: corrupt stats ({exc})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("successes"), int):
            raise ShardError(f"{self.stats_url}: no integer 'successes' counter")
        return obj

    def success_table(self) -> pa.Table:
        """The parquet rows with ``status == "success"``."""
        fs, path = self._fs(self.parquet_url)
        try:
            with fs.open(path, "rb") as f:
                table = pq.ParquetFile(f, pre_buffer=False).read(use_threads=False)  # not read_table: see _keeplist_io
        except FileNotFoundError:
            raise ShardError(f"{self.parquet_url}: missing (shard {self.name!r})") from None
        except (pa.ArrowException, OSError) as exc:
            raise ShardError(f"{self.parquet_url}: corrupt parquet ({exc})") from None
        for col in ("key", "status"):
            if col not in table.column_names:
                raise ShardError(f"{self.parquet_url}: no {col!r} column")
        return table.filter(pc.equal(table.column("status"), "success"))

    def keys(self) -> list[str]:
        """The sample keys in tar order."""
        return self.read().column("key").to_pylist()  # type: ignore[no-any-return]

    def column(self, name: str) -> pa.ChunkedArray:
        """One parquet column of the successful samples, in tar order."""
        table = self.read()
        if name not in table.column_names:
            raise ShardError(f"{self.parquet_url}: no {name!r} column")
        return table.column(name)

    def digest(self, keys: list[str] | None = None) -> bytes:
        """What this shard contributes to the source fingerprint (name, count, keys)."""
        return shard_digest(self.name, keys if keys is not None else self.keys())

    def read(self) -> pa.Table:
        """Successful samples in tar order: the parquet columns joined on key, plus ``members``
        (the sample's tar members with offsets and sizes). Read once, then cached."""
        if "read" not in self._cache:
            self._cache["read"] = self._join()
        return self._cache["read"]

    def _join(self) -> pa.Table:
        groups = group_members(self.members())
        keys = list(groups)
        ok = self.success_table()
        pkeys = ok.column("key").to_pylist()
        row = {k: i for i, k in enumerate(pkeys)}
        if len(row) != len(pkeys):
            dup = next(k for k in pkeys if pkeys.count(k) > 1)
            raise ShardError(f"{self.parquet_url}: key {dup!r} is listed twice as a success")
        missing = [k for k in keys if k not in row]
        if missing:
            raise ShardError(f"{self.tar_url}: sample {missing[0]!r} has no success row in {self.parquet_url}")
        if len(keys) != len(row):
            absent = next(k for k in pkeys if k not in groups)
            raise ShardError(f"{self.parquet_url}: success {absent!r} is not in {self.tar_url}")
        successes = self.stats()["successes"]
        if successes != len(keys):
            raise ShardError(f"{self.stats_url}: says {successes} successes, {self.tar_url} holds {len(keys)} samples")
        out = ok.take(pa.array(np.array([row[k] for k in keys], dtype=np.int64)))
        members = [[{"name": m.name, "offset": m.offset, "size": m.size} for m in groups[k]] for k in keys]
        return out.append_column("members", pa.array(members))


def group_members(members: list[TarMember]) -> dict[str, list[TarMember]]:
    """Members grouped by webdataset key (directory + basename up to the first dot), in tar order.
    A key whose members are not contiguous is a ShardError (the tar would yield it twice)."""
    out: dict[str, list[TarMember]] = {}
    last = None
    for m in members:
        d = posixpath.dirname(m.name)
        key = (d + "/" if d else "") + to_key(m.name)
        if key != last and key in out:
            raise ShardError(f"tar member {m.name!r}: key {key!r} is split across the tar")
        out.setdefault(key, []).append(m)
        last = key
    return out


def list_shards(root: str, *, storage_options: dict[str, Any] | None = None) -> list[I2DShard]:
    """The img2dataset shards (``*.tar``) directly under `root`, sorted by name."""
    so = storage_options or {}
    out = []
    for url in ls_urls(root, so):
        base = posixpath.basename(url.rstrip("/"))
        if base.endswith(".tar"):
            out.append(I2DShard(check_shard_name(base, where=root), url, tuple(sorted(so.items()))))
    if not out:
        raise ShardError(f"{root}: no .tar shards")
    return out


def shard_sizes(root: str, *, storage_options: dict[str, Any] | None = None) -> dict[str, int]:
    """Bytes of every ``*.tar`` directly under `root`, from one listing."""
    fs, path = fsspec.core.url_to_fs(root, **(storage_options or {}))
    try:
        files = fs.ls(path, detail=True)
    except FileNotFoundError:
        raise ShardError(f"{root}: missing folder") from None
    out = {}
    for f in files:
        base = posixpath.basename(str(f["name"]).rstrip("/"))
        if base.endswith(".tar") and f.get("size") is not None:
            out[check_shard_name(base, where=root)] = int(f["size"])
    if not out:
        raise ShardError(f"{root}: no .tar shards")
    return out
