"""Read kept samples from tar shards, paying only for what is kept.

Two readers, both yielding webdataset's sample dicts (``__key__``, ``__url__``, ext: bytes):

- `IndexedShardReader`: with a SourceIndex, reads only the byte ranges of the requested
  samples (or of their selected members). Local files: ``os.pread``; remote files: fsspec
  ``cat_ranges``, with neighbouring ranges coalesced into one request. Each member's tar
  header is checked against the index on the way, so a shard rewritten since it was indexed
  is an error naming the shard and key, never a wrong sample.
- `stream_shard`: without an index, walks the tar headers and decides at a sample's first
  header (or at its label member, for class-level lists) whether to keep it; pruned payloads
  are skipped by seeking (seekable files) and never copied into Python objects.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import urlparse

import fsspec
import numpy as np
from fsspec.implementations.local import LocalFileSystem

from dp4tl_data.errors import Dp4tlError, IndexFileError, ShardError
from dp4tl_data.index import IndexedShard
from dp4tl_data.urls import check_url

from .wds_index import BLOCK, LabelSpec, access_error, check_end, same_shard, shard_identity, split_name, stat_shard

Decide = Callable[[str, int, Any, bool], bool]  # (key, position, label, has_label) -> kept
MAX_BLOCK = 16 * 2**20
MAX_INFLIGHT = 64 * 2**20
STREAM_BLOCK_SIZE = 2**20


# ----------------------------------------------------------------------------- byte ranges


def base_sample(key: str, url: str, local_path: str | None) -> dict[str, Any]:
    """The fields webdataset puts in every sample: key, URL and, for local files, the path."""
    sample: dict[str, Any] = {"__key__": key, "__url__": url}
    if local_path is not None:
        sample["__local_path__"] = local_path
    return sample


def local_path(url: str) -> str | None:
    """The file path webdataset reports as ``__local_path__`` (None for remote URLs)."""
    parsed = urlparse(url)
    return parsed.path if parsed.scheme in ("", "file") else None


def coalesce(starts: np.ndarray, ends: np.ndarray, max_gap: int, max_block: int = MAX_BLOCK) -> list[tuple[int, int]]:
    """Merge sorted ranges ``[starts[i], ends[i])`` whose gap is at most `max_gap` bytes into
    blocks of at most `max_block` bytes (a single range larger than that stays whole).
    Returns ``(first, last)`` range indices (inclusive) of each block."""
    n = len(starts)
    if n == 0:
        return []
    breaks = np.flatnonzero(starts[1:] - ends[:-1] > max_gap) + 1
    out: list[tuple[int, int]] = []
    for lo, hi in zip(np.concatenate([[0], breaks]), np.concatenate([breaks, [n]])):
        first = int(lo)
        for i in range(int(lo) + 1, int(hi)):
            if ends[i] - starts[first] > max_block:
                out.append((first, i - 1))
                first = i
        out.append((first, int(hi) - 1))
    return out


class RangeFile:
    """One shard opened for byte-range reads: ``os.pread`` locally, fsspec ``cat_ranges`` elsewhere."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None, concurrency: int = 4) -> None:
        self.url = url
        self.concurrency = concurrency
        self.storage_options = storage_options or {}
        self.fs, self.path = fsspec.core.url_to_fs(url, **self.storage_options)
        self.local = isinstance(self.fs, LocalFileSystem)
        self._fd: int | None = None
        self.requests = 0
        self.bytes_read = 0

    def info(self) -> dict[str, Any]:
        return stat_shard(self.url, self.storage_options)

    def read(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """The bytes of each ``[start, end)`` range, in order; ShardError naming the shard on failure."""
        try:
            if self.local:
                if self._fd is None:
                    self._fd = os.open(self.path, os.O_RDONLY)
                out = [os.pread(self._fd, b - a, a) for a, b in ranges]
            else:
                paths = [self.path] * len(ranges)
                got = self.fs.cat_ranges(
                    paths,
                    [a for a, _ in ranges],
                    [b for _, b in ranges],
                    on_error="return",
                    batch_size=self.concurrency,
                )
                for g in got:
                    if isinstance(g, BaseException):
                        raise g
                out = list(got)
        except Dp4tlError:
            raise
        except Exception as exc:  # network stacks raise their own types
            raise access_error(self.url, exc) from None
        self.requests += len(ranges)
        self.bytes_read += sum(len(b) for b in out)
        return out

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# ----------------------------------------------------------------------------- indexed reader


class IndexedShardReader:
    """Reads chosen samples of one indexed shard by byte range.

    `arrays` are the shard's index rows (`wds_index.member_arrays`). `select(member_name)`
    picks members to read (default: all, read as one range per sample). `max_gap`: ranges at
    most this far apart are read in one request (0: only touching ranges), `concurrency` of
    them at a time (remote files). `indexed`: the
    shard as indexed; its size (and mtime/etag with `strict_identity`) must still match.
    """

    def __init__(
        self,
        url: str,
        name: str,
        arrays: dict[str, Any],
        *,
        select: Callable[[str], bool] | None = None,
        max_gap: int = 0,
        indexed: IndexedShard | None = None,
        strict_identity: bool = True,
        storage_options: dict[str, Any] | None = None,
        concurrency: int = 4,
    ) -> None:
        self.url = url
        self.name = name
        self.a = arrays
        self.select = select
        self.max_gap = max_gap
        self.file = RangeFile(url, storage_options, concurrency)
        self.local_path = local_path(url)
        self.mext = [(split_name(n) or ("", ""))[1] for n in arrays["mname"]]
        self.mname_b = [n.encode("utf-8") if n.isascii() and len(n) < 100 else None for n in arrays["mname"]]
        self.mstart: list[int] = arrays["mstart"].tolist()
        self.moff: list[int] = arrays["moff"].tolist()
        self.msize: list[int] = arrays["msize"].tolist()
        if indexed is not None:
            self._check_identity(indexed, strict_identity)

    def _check_identity(self, indexed: IndexedShard, strict: bool) -> None:
        size, mtime, etag = shard_identity(self.file.info())
        if size != indexed.nbytes or (strict and not same_shard(indexed, size, mtime, etag) and _knows(indexed)):
            found = f"size {size}, mtime {mtime}, etag {etag}"
            want = f"size {indexed.nbytes}, mtime {indexed.mtime}, etag {indexed.etag}"
            raise IndexFileError(
                f"{self.url}: shard {self.name!r} changed since it was indexed ({found}; index: {want}); re-index it"
            )

    def close(self) -> None:
        self.file.close()

    def read(self, rows: np.ndarray) -> Iterator[tuple[int, dict[str, Any]]]:
        """``(row, sample)`` for each of the sorted index `rows`, in that order."""
        starts, ends, owner, picked = self._ranges(rows)
        nranges, n = len(owner), len(rows)
        keys, mstart = self.a["keys"], self.mstart
        pending: dict[int, dict[str, Any]] = {}
        done = 0
        for group in _groups(coalesce(starts, ends, self.max_gap), starts, ends):
            data = self.file.read([(int(starts[f]), int(ends[last])) for f, last in group])
            for (first, last), buf in zip(group, data):
                base = int(starts[first])
                if len(buf) != int(ends[last]) - base:
                    raise IndexFileError(
                        f"{self.url}: shard {self.name!r} is shorter than indexed "
                        f"(at key {keys[int(rows[owner[first]])]!r}); re-index it"
                    )
                for i in range(first, last + 1):
                    s = owner[i]
                    row = int(rows[s])
                    sample = pending.get(s)
                    if sample is None:
                        sample = pending[s] = base_sample(keys[row], self.url, self.local_path)
                    for j in picked[i] if picked is not None else range(mstart[row], mstart[row + 1]):
                        self._put(sample, buf, base, j, row)
            r = group[-1][1]
            upto = owner[r] + 1 if r == nranges - 1 or owner[r + 1] != owner[r] else owner[r]
            while done < upto:
                yield int(rows[done]), pending.pop(done, {}) or self._empty(int(rows[done]))
                done += 1
        while done < n:
            yield int(rows[done]), pending.pop(done, {}) or self._empty(int(rows[done]))
            done += 1

    def _ranges(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[int], list[list[int]] | None]:
        """Byte ranges to read for `rows`: one per sample (headers included), or one per
        selected member (its header included); the sample each belongs to; its members."""
        a = self.a
        if self.select is None:
            starts = a["offset"][rows]
            return starts, starts + a["size"][rows], list(range(len(rows))), None
        mstart, names = self.mstart, a["mname"]
        owner: list[int] = []
        flat: list[int] = []
        for s, r in enumerate(rows.tolist()):
            for j in range(mstart[r], mstart[r + 1]):
                if self.select(names[j]):
                    owner.append(s)
                    flat.append(j)
        idx = np.asarray(flat, dtype=np.int64)
        starts = a["moff"][idx] - BLOCK
        return starts, a["moff"][idx] + a["msize"][idx], owner, [[j] for j in flat]

    def _empty(self, row: int) -> dict[str, Any]:
        return base_sample(self.a["keys"][row], self.url, self.local_path)

    def _put(self, sample: dict[str, Any], buf: bytes, base: int, j: int, row: int) -> None:
        off = self.moff[j] - base
        name_b = self.mname_b[j]
        h = off - BLOCK
        if not (BLOCK <= off and off + self.msize[j] <= len(buf)) or (
            name_b is not None and not (buf.startswith(name_b, h) and buf[h + len(name_b)] == 0)
        ):
            raise IndexFileError(
                f"{self.url}: shard {self.name!r} no longer matches its index at key {self.a['keys'][row]!r} "
                f"(member {self.a['mname'][j]!r} not at byte {self.moff[j]}); re-index it"
            )
        ext = self.mext[j]
        if ext in sample:
            raise ShardError(f"{self.url}: key {self.a['keys'][row]!r} has two .{ext} members")
        sample[ext] = buf[off : off + self.msize[j]]


def _knows(indexed: IndexedShard) -> bool:
    return indexed.mtime is not None or indexed.etag is not None


def _groups(blocks: list[tuple[int, int]], starts: np.ndarray, ends: np.ndarray) -> Iterator[list[tuple[int, int]]]:
    """Blocks in groups of at most MAX_INFLIGHT bytes: one round of requests each."""
    group: list[tuple[int, int]] = []
    size = 0
    for f, last in blocks:
        n = int(ends[last] - starts[f])
        if group and size + n > MAX_INFLIGHT:
            yield group
            group, size = [], 0
        group.append((f, last))
        size += n
    if group:
        yield group


# ----------------------------------------------------------------------------- streaming filter


def open_stream(
    url: str, *, storage_options: dict[str, Any] | None = None, allow_commands: bool = False
) -> tuple[Any, bool]:
    """(file object, seekable) for streaming shard `url`; ``pipe:`` only with `allow_commands`."""
    check_url(url, allow_commands=allow_commands)
    try:
        if url.startswith("pipe:"):
            from webdataset.gopen import gopen

            return gopen(url, "rb"), False
        if "://" not in url:
            return open(url, "rb"), True  # noqa: SIM115 - closed by the caller
        fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
        return fs.open(path, "rb", block_size=STREAM_BLOCK_SIZE, cache_type="readahead"), True
    except Dp4tlError:
        raise
    except Exception as exc:
        raise access_error(url, exc) from None


def stream_shard(
    url: str,
    decide: Decide,
    *,
    label: LabelSpec,
    needs_label: bool,
    want: Callable[[int], bool] = lambda k: True,
    stop: int | None = None,
    select: Callable[[str], bool] | None = None,
    storage_options: dict[str, Any] | None = None,
    allow_commands: bool = False,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(k, sample)`` for the kept samples of shard `url` (k counts kept samples from 0) for
    which ``want(k)``; reading stops once `stop` samples are kept.

    `decide(key, position, label, has_label)` is asked at a sample's first header, or, when
    `needs_label`, at its label member (members before it are read only if it is kept).
    """
    f, seekable = open_stream(url, storage_options=storage_options, allow_commands=allow_commands)
    try:
        yield from _stream(f, seekable, url, decide, label, needs_label, want, stop, select)
    finally:
        f.close()


def _stream(
    f: Any,
    seekable: bool,
    url: str,
    decide: Decide,
    label: LabelSpec,
    needs_label: bool,
    want: Callable[[int], bool],
    stop: int | None,
    select: Callable[[str], bool] | None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        tar = tarfile.open(fileobj=f, mode="r:" if seekable else "r|")
    except tarfile.ReadError as exc:
        raise ShardError(f"{url}: not a tar file or corrupt first header ({exc})") from None
    key: str | None = None
    path = local_path(url) if seekable else None
    pos = -1
    kept = 0
    decision: bool | None = None
    wanted = False
    sample: dict[str, Any] = {}
    held: list[Any] = []
    end = 0
    seen: set[str] = set()  # keys of this shard so far: a repeated key would shift positions

    def read(m: tarfile.TarInfo) -> bytes:
        fobj = tar.extractfile(m)
        return fobj.read() if fobj is not None else b""

    def take(ext: str, payload: bytes) -> None:
        if ext in sample:
            raise ShardError(f"{url}: key {key!r} has two .{ext} members")
        sample[ext] = payload

    def decided(value: bool) -> None:
        nonlocal decision, wanted
        decision = value
        wanted = value and want(kept)

    def finish() -> dict[str, Any] | None:
        nonlocal kept
        if key is None:
            return None
        if decision is None:
            decided(decide(key, pos, None, False))
            if wanted:
                for ext, m in held:
                    take(ext, m if isinstance(m, bytes) else read(m))
        if not decision:
            return None
        kept += 1
        return sample if wanted else None

    while True:
        try:
            m = tar.next()
        except (tarfile.ReadError, EOFError, OSError) as exc:
            raise ShardError(f"{url}: corrupt or truncated tar after key {key!r} ({exc})") from None
        if m is None:
            break
        tar.members = []  # type: ignore[attr-defined]
        end = m.offset_data + -(-m.size // BLOCK) * BLOCK
        parts = split_name(m.name) if m.isreg() else None
        if parts is None:
            continue
        k, ext = parts
        if k != key:
            out = finish()
            if out is not None:
                yield kept - 1, out
            if stop is not None and kept >= stop:
                return
            if k in seen:
                raise ShardError(f"{url}: key {k!r} appears twice (a sample's members must be contiguous, keys unique)")
            seen.add(k)
            key, pos, sample, held = k, pos + 1, base_sample(k, url, path), []
            decision, wanted = None, False
            if not needs_label:
                decided(decide(k, pos, None, True))
        chosen = select is None or select(m.name)
        try:
            if decision is None:
                if ext == label.ext:
                    payload = read(m)
                    lab = label.value(payload, f"{url} key {key!r}")
                    decided(decide(key, pos, lab, lab is not None))
                    if wanted:
                        for e, h in held:
                            take(e, h if isinstance(h, bytes) else read(h))
                        if chosen:
                            take(ext, payload)
                    held = []
                elif chosen:
                    held.append((ext, m if seekable else read(m)))
            elif wanted and chosen:
                take(ext, read(m))
        except (tarfile.ReadError, EOFError, OSError) as exc:
            raise ShardError(f"{url}: corrupt or truncated tar at key {key!r} ({exc})") from None
    out = finish()
    if out is not None:
        yield kept - 1, out
    if seekable:
        check_end(f, url, end, key)
