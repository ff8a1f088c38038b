"""Index WebDataset tar shards: one scan of the tar headers per shard, in parallel.

Per shard the index records its stable name, sample count, size, mtime and etag (what a
re-index and every reader compare against). Per sample: the key (webdataset's rule: the path
up to the first dot of the basename), the label, the byte span of the sample (its headers and
payloads) and the payload offset and size of each member. Payloads are skipped by seeking;
only the label member of each sample is read.

Labels come from a member the user names: ``cls`` (the default when samples have a ``.cls``),
a ``.json`` field (``json.label``, ``json.meta.label``), or any other extension holding an int
or a class name. Class names become ids in sorted order (``index.classes``).

A wids shard index (``{"__kind__": "wids-shard-index-v1", "shardlist": [...]}``) is imported:
its shard list is indexed and its sample counts and file sizes are checked against the tars.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
import tarfile
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

import fsspec
import pyarrow as pa

from dp4tl_data.errors import Dp4tlError, IndexFileError, ShardError
from dp4tl_data.index import IndexedShard, SourceIndex, shard_samples_table
from dp4tl_data.members import label_value
from dp4tl_data.urls import check_url, common_root, stable_name

log = logging.getLogger(__name__)

KIND = "webdataset"
BLOCK = 512
SCAN_BLOCK_SIZE = 8 * 2**20
WIDS_KIND = "wids-shard-index-v1"
TAR_SUFFIXES = (".tar",)
COMPRESSED_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")
_SKIP_META = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext


def split_name(fname: str) -> tuple[str, str] | None:
    """(key, lower-case extension) of a tar member, or None for members webdataset skips."""
    if "/" not in fname and fname.startswith("__") and fname.endswith("__"):
        return None
    if _SKIP_META.match(fname):
        return None
    m = _KEY_EXT.match(fname)
    return (m.group(1), m.group(2).lower()) if m else None


# ----------------------------------------------------------------------------- labels


@dataclass(frozen=True)
class LabelSpec:
    """Where a sample's label is: member extension `ext`, and a JSON `path` inside it (if any)."""

    field: str | None
    ext: str | None = None
    path: tuple[str, ...] = ()

    @classmethod
    def parse(cls, spec: str | None) -> LabelSpec:
        if not spec:
            return cls(None)
        ext, _, rest = spec.partition(".")
        return cls(spec, ext.lower(), tuple(rest.split(".")) if rest else ())

    def value(self, payload: bytes, where: str) -> int | str | None:
        """The label in `payload` (the ``ext`` member's bytes): int id or str name, None if absent."""
        if not self.path:
            return label_value(payload)  # type: ignore[no-any-return]
        try:
            obj: Any = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ShardError(f"{where}: .{self.ext} is not valid JSON ({exc})") from None
        for part in self.path:
            if not isinstance(obj, dict) or part not in obj:
                return None
            obj = obj[part]
        if isinstance(obj, bool) or not isinstance(obj, (int, str)):
            raise ShardError(f"{where}: label {self.field!r} is {obj!r}, not an int id or a str name")
        return obj


# ----------------------------------------------------------------------------- shard identity


def shard_identity(info: dict[str, Any]) -> tuple[int | None, float | None, str | None]:
    """(size, mtime, etag) from an fsspec ``info`` dict, whatever the filesystem calls them."""
    size = info.get("size")
    mtime: Any = info.get("mtime", info.get("LastModified", info.get("Last-Modified", info.get("last_modified"))))
    if isinstance(mtime, str):
        try:
            mtime = parsedate_to_datetime(mtime)
        except (TypeError, ValueError):
            mtime = None
    if isinstance(mtime, datetime):
        mtime = mtime.timestamp()
    etag = info.get("ETag", info.get("etag"))
    return (
        int(size) if size is not None else None,
        float(mtime) if isinstance(mtime, (int, float)) else None,
        str(etag).strip('"') if etag else None,
    )


def access_error(url: str, exc: BaseException) -> ShardError:
    """A ShardError naming `url`: "not found" for a missing file, "unreachable" for the rest."""
    if isinstance(exc, FileNotFoundError):
        cause = exc.__cause__
        if cause is None or getattr(cause, "status", None) == 404 or isinstance(cause, FileNotFoundError):
            return ShardError(f"{url}: shard not found")
        exc = cause
    return ShardError(f"{url}: shard unreachable ({type(exc).__name__}: {exc})")


def stat_shard(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """fsspec ``info`` of shard `url`; ShardError naming it when it is missing or unreachable."""
    try:
        fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
        return fs.info(path)  # type: ignore[no-any-return]
    except Exception as exc:  # network stacks raise their own types (aiohttp, botocore)
        raise access_error(url, exc) from None


def same_shard(indexed: IndexedShard, size: int | None, mtime: float | None, etag: str | None) -> bool:
    """Whether the shard's bytes are still those indexed: same size, and same mtime or etag
    where both sides know one (at least one of them must be known)."""
    if indexed.nbytes is None or size != indexed.nbytes:
        return False
    checks = []
    if indexed.mtime is not None and mtime is not None:
        checks.append(abs(indexed.mtime - mtime) < 1e-6)
    if indexed.etag is not None and etag is not None:
        checks.append(indexed.etag == etag)
    return bool(checks) and all(checks)


# ----------------------------------------------------------------------------- scanning


@dataclass
class ScannedShard:
    """One shard's rows as scanned (labels raw: int ids or str names), or `reused` from a previous index."""

    shard: IndexedShard
    keys: list[str] = field(default_factory=list)
    labels: list[int | str | None] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    members: list[list[dict[str, Any]]] = field(default_factory=list)
    reused: bool = False


def scan_shard(
    url: str,
    name: str,
    label: LabelSpec,
    *,
    previous: IndexedShard | None = None,
    storage_options: dict[str, Any] | None = None,
) -> ScannedShard:
    """Scan one tar shard's headers (reading only label members); `reused` if it equals `previous`."""
    if url.endswith(COMPRESSED_SUFFIXES):
        raise ShardError(f"{url}: compressed tars cannot be indexed (no byte ranges); use plain .tar shards")
    size, mtime, etag = shard_identity(stat_shard(url, storage_options))
    ident = IndexedShard(name, 0, size, mtime, etag)
    if previous is not None and same_shard(previous, size, mtime, etag):
        return ScannedShard(IndexedShard(name, previous.nsamples, size, mtime, etag), reused=True)
    out = ScannedShard(ident)
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    try:
        with fs.open(path, "rb", block_size=SCAN_BLOCK_SIZE, cache_type="readahead") as f:
            _walk(f, url, size, label, out)
    except Dp4tlError:
        raise
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise ShardError(f"{url}: cannot read shard ({type(exc).__name__}: {exc})") from None
    out.shard = IndexedShard(name, len(out.keys), size, mtime, etag)
    return out


def _walk(f: Any, url: str, size: int | None, label: LabelSpec, out: ScannedShard) -> None:
    key: str | None = None
    exts: set[str] = set()
    seen: set[str] = set()
    start = end = 0
    lab: int | str | None = None

    def flush() -> None:
        if key is None:
            return
        out.keys.append(key)
        out.labels.append(lab)
        out.offsets.append(start)
        out.sizes.append(end - start)

    try:
        tar = tarfile.open(fileobj=f, mode="r:")
    except tarfile.ReadError as exc:
        raise ShardError(f"{url}: not a tar file or corrupt first header ({exc})") from None
    while True:
        try:
            m = tar.next()
        except (tarfile.ReadError, EOFError) as exc:
            raise ShardError(
                f"{url}: corrupt or truncated tar after key {key!r} (offset {tar.offset}: {exc})"
            ) from None
        if m is None:
            break
        tar.members = []  # type: ignore[attr-defined]
        stop = m.offset_data + -(-m.size // BLOCK) * BLOCK
        if size is not None and m.offset_data + m.size > size:
            raise ShardError(
                f"{url}: truncated tar: member {m.name!r} ends at byte {m.offset_data + m.size}, shard has {size}"
            )
        if not m.isreg():
            continue
        parts = split_name(m.name)
        if parts is None:
            continue
        k, ext = parts
        if k != key:
            flush()
            if k in seen:
                raise ShardError(f"{url}: key {k!r} appears twice (its members are not adjacent)")
            seen.add(k)
            key, exts, start, lab = k, set(), m.offset, None
            out.members.append([])
        if ext in exts:
            raise ShardError(f"{url}: key {key!r} has two .{ext} members")
        exts.add(ext)
        out.members[-1].append({"name": m.name, "offset": m.offset_data, "size": m.size})
        end = stop
        if ext == label.ext:
            fobj = tar.extractfile(m)
            assert fobj is not None
            lab = label.value(fobj.read(), f"{url} key {key!r}")
    flush()
    check_end(f, url, end, key)


def check_end(f: Any, url: str, end: int, key: str | None) -> None:
    """After the last member only zero blocks (or nothing) may follow: anything else is a
    header tarfile could not parse, which it would silently treat as the end of the archive."""
    f.seek(end)
    tail = f.read(BLOCK)
    if len(tail) % BLOCK:
        raise ShardError(f"{url}: truncated tar: it ends inside a header at byte {end + len(tail)} after key {key!r}")
    if tail.strip(b"\0"):
        raise ShardError(f"{url}: corrupt tar header at byte {end} after key {key!r}")


# ----------------------------------------------------------------------------- specs


def expand_spec(
    spec: str | Sequence[str], *, allow_commands: bool = False, storage_options: dict[str, Any] | None = None
) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Shard URLs from paths, globs, brace patterns, folders and wids shard indexes, plus the
    wids entries by URL (for checking). Order is kept; duplicates are an error."""
    import braceexpand

    items = [spec] if isinstance(spec, str) else list(spec)
    urls: list[str] = []
    wids: dict[str, dict[str, Any]] = {}
    for item in items:
        check_url(item, allow_commands=allow_commands)
        if item.startswith("pipe:"):
            raise ShardError(f"{item!r}: command URLs cannot be indexed (no byte ranges); index the files they read")
        for one in braceexpand.braceexpand(item):
            if one.endswith(".json"):
                entries = read_wids_index(one, storage_options)
                wids.update(entries)
                urls.extend(entries)
            elif any(c in one for c in "*?["):
                fs, _ = fsspec.core.url_to_fs(one, **(storage_options or {}))
                found = sorted(fs.glob(one))
                if not found:
                    raise ShardError(f"{one!r}: no shard matches")
                urls.extend(_with_protocol(fs, one, p) for p in found)
            elif "://" not in one and os.path.isdir(one):
                found = sorted(p for p in os.listdir(one) if p.endswith(TAR_SUFFIXES))
                if not found:
                    raise ShardError(f"{one!r}: folder holds no .tar shards")
                urls.extend(os.path.join(one, p) for p in found)
            else:
                urls.append(one)
    dups = sorted({u for u in urls if urls.count(u) > 1}) if len(set(urls)) != len(urls) else []
    if dups:
        raise ShardError(f"shard {dups[0]!r} is listed twice")
    return urls, wids


def _with_protocol(fs: Any, pattern: str, path: str) -> str:
    if "://" not in pattern:
        return str(path)
    proto = pattern.split("://", 1)[0]
    return path if "://" in path else f"{proto}://{path}"


def read_wids_index(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The shards of a wids shard index, by resolved URL: ``{url: {"nsamples", "filesize", ...}}``."""
    try:
        with fsspec.open(url, "rb", **(storage_options or {})) as f:
            obj = json.loads(f.read(64 * 2**20))
    except FileNotFoundError:
        raise IndexFileError(f"{url}: wids shard index not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexFileError(f"{url}: corrupt wids shard index ({exc})") from None
    if not isinstance(obj, dict) or obj.get("__kind__") != WIDS_KIND or not isinstance(obj.get("shardlist"), list):
        kind = obj.get("__kind__") if isinstance(obj, dict) else None
        raise IndexFileError(f"{url}: not a wids shard index (__kind__ {kind!r}, expected {WIDS_KIND!r})")
    base = obj.get("base") or (url.rsplit("/", 1)[0] if "/" in url else "")
    if not isinstance(base, str):
        raise IndexFileError(f"{url}: wids shard index 'base' must be a string, found {type(base).__name__}")
    out: dict[str, dict[str, Any]] = {}
    for entry in obj["shardlist"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
            raise IndexFileError(f"{url}: shardlist entry {entry!r} has no 'url'")
        u = entry["url"]
        check_url(u)
        if not re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*://", u) and not u.startswith("/"):
            u = posixpath.join(base, u) if base else u
        out[u] = entry
    return out


def _check_wids(scanned: ScannedShard, url: str, entry: dict[str, Any]) -> None:
    for k, have in (("nsamples", scanned.shard.nsamples), ("filesize", scanned.shard.nbytes)):
        want = entry.get(k)
        if want is not None and (not isinstance(want, int) or isinstance(want, bool)):
            raise IndexFileError(f"{url}: wids index {k} must be an int, found {want!r}")
        if want is not None and have is not None and want != have:
            raise IndexFileError(f"{url}: wids index says {k} {want}, the shard has {have}")


# ----------------------------------------------------------------------------- building


def index_shards(
    spec: str | Sequence[str],
    *,
    label_field: str | None = None,
    root: str | None = None,
    workers: int | None = None,
    previous: SourceIndex | str | None = None,
    progress: bool = True,
    storage_options: dict[str, Any] | None = None,
) -> SourceIndex:
    """Scan the tar shards of `spec` (paths, globs, braces, folders, fsspec URLs, wids indexes)
    and return their SourceIndex.

    `label_field`: ``cls``, ``json.label``, another extension, or None to use ``cls`` (or a
    ``json`` ``label`` field) when the first sample has one. `previous` (an index or its URL):
    shards whose size and mtime/etag are unchanged are taken from it without being read.
    `workers`: parallel scanners (processes for local files, threads for remote ones).
    """
    urls, wids = expand_spec(spec, storage_options=storage_options)
    if not urls:
        raise ShardError("no shards to index")
    urls = [_abs(u) for u in urls]
    wids = {_abs(u): e for u, e in wids.items()}
    root = _root(urls, root)
    names = [stable_name(u, root) for u in urls]
    prev = SourceIndex.load(previous) if isinstance(previous, str) else previous
    if label_field is None:
        label_field = prev.label_field if prev is not None else detect_label_field(urls[0], storage_options)
    label = LabelSpec.parse(label_field)
    prev = _previous(prev, label_field)
    jobs = [(u, n, prev.shard(n) if prev is not None and n in prev else None) for u, n in zip(urls, names)]
    scanned = _scan_all(jobs, label, workers=workers, progress=progress, storage_options=storage_options)
    for (u, _, _), s in zip(jobs, scanned):
        if u in wids:
            _check_wids(s, u, wids[u])
    reused = sum(s.reused for s in scanned)
    if reused:
        log.info("re-index: %d of %d shards unchanged, not read", reused, len(scanned))
    return _assemble(scanned, prev, label_field, root, wids_used=bool(wids))


def _abs(url: str) -> str:
    return url if "://" in url else os.path.abspath(url)


def _root(urls: Sequence[str], root: str | None) -> str:
    if root is None:
        root = common_root(urls)
    if root and "://" not in root:
        root = os.path.abspath(root)
    return root


def _previous(prev: SourceIndex | None, label_field: str | None) -> SourceIndex | None:
    if prev is None:
        return None
    if prev.kind != KIND:
        raise IndexFileError(f"{prev.url}: a {prev.kind!r} index cannot seed a webdataset re-index")
    if prev.label_field != label_field:
        log.info("re-index: label field changed (%r -> %r); scanning every shard", prev.label_field, label_field)
        return None
    return prev


def detect_label_field(url: str, storage_options: dict[str, Any] | None = None) -> str | None:
    """``cls`` when the first sample of `url` has a ``.cls`` member, ``json.label`` when its
    ``.json`` has a ``label`` field, else None (an index without labels)."""
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    try:
        with fs.open(path, "rb", block_size=2**16, cache_type="readahead") as f:
            tar = tarfile.open(fileobj=f, mode="r:")
            first: str | None = None
            payloads: dict[str, bytes] = {}
            for m in tar:
                parts = split_name(m.name) if m.isreg() else None
                if parts is None:
                    continue
                if first is not None and parts[0] != first:
                    break
                first = parts[0]
                if parts[1] in ("cls", "json"):
                    fobj = tar.extractfile(m)
                    payloads[parts[1]] = fobj.read() if fobj is not None else b""
    except FileNotFoundError:
        raise ShardError(f"{url}: shard not found") from None
    except (OSError, tarfile.TarError) as exc:
        raise ShardError(f"{url}: cannot read shard ({type(exc).__name__}: {exc})") from None
    if "cls" in payloads:
        return "cls"
    try:
        if "json" in payloads and "label" in json.loads(payloads["json"]):
            return "json.label"
    except (ValueError, TypeError):
        pass
    return None


def _scan_job(args: tuple[str, str, LabelSpec, IndexedShard | None, dict[str, Any] | None]) -> ScannedShard:
    url, name, label, previous, so = args
    return scan_shard(url, name, label, previous=previous, storage_options=so)


def _scan_all(
    jobs: Sequence[tuple[str, str, IndexedShard | None]],
    label: LabelSpec,
    *,
    workers: int | None,
    progress: bool,
    storage_options: dict[str, Any] | None,
) -> list[ScannedShard]:
    from tqdm.auto import tqdm

    args = [(u, n, label, p, storage_options) for u, n, p in jobs]
    n = len(args)
    workers = min(workers or os.cpu_count() or 1, n)
    bar = tqdm(total=n, desc="indexing shards", unit="shard", disable=not progress)
    try:
        if workers <= 1:
            out = []
            for a in args:
                out.append(_scan_job(a))
                bar.update()
            return out
        remote = any("://" in u and not u.startswith("file://") for u, _, _ in jobs)
        pool: Executor = ThreadPoolExecutor(workers) if remote else ProcessPoolExecutor(workers)
        with pool:
            results = []
            for r in pool.map(_scan_job, args, chunksize=1 if remote else max(1, n // (workers * 8))):
                results.append(r)
                bar.update()
            return results
    finally:
        bar.close()


def _raw_labels(prev: SourceIndex, name: str) -> list[int | str | None]:
    labels = prev.table(name).column("label").to_pylist()
    classes = prev.classes
    if classes is None:
        return labels  # type: ignore[no-any-return]
    return [classes[v] if v is not None else None for v in labels]


def _assemble(
    scanned: Sequence[ScannedShard], prev: SourceIndex | None, label_field: str | None, root: str, wids_used: bool
) -> SourceIndex:
    raw: list[list[int | str | None]] = []
    for s in scanned:
        if s.reused:
            assert prev is not None
            raw.append(_raw_labels(prev, s.shard.name))
        else:
            raw.append(s.labels)
    classes = _class_names(raw, scanned)
    lookup = {c: i for i, c in enumerate(classes)} if classes is not None else None
    pairs: list[tuple[IndexedShard, pa.Table]] = []
    missing = 0
    for s, labels in zip(scanned, raw):
        ids = [lookup[v] if lookup is not None and isinstance(v, str) else v for v in labels]
        missing += sum(v is None for v in ids)
        if s.reused:
            assert prev is not None
            t = prev.table(s.shard.name)
            t = t.set_column(t.schema.get_field_index("label"), "label", pa.array(ids, pa.int64()))
        else:
            t = shard_samples_table(s.keys, ids, s.offsets, s.sizes, s.members)  # type: ignore[arg-type]
        pairs.append((s.shard, t))
    if label_field is not None and missing:
        log.warning("%d samples have no label %r; a class-level keep-list will refuse them", missing, label_field)
    extra = {"reused_shards": sum(s.reused for s in scanned), "wids": wids_used}
    return SourceIndex.build(pairs, kind=KIND, root=root, label_field=label_field, classes=classes, extra=extra)


def _class_names(raw: Sequence[Sequence[int | str | None]], scanned: Sequence[ScannedShard]) -> list[str] | None:
    names = {v for labels in raw for v in labels if isinstance(v, str)}
    if not names:
        return None
    for s, labels in zip(scanned, raw):
        for k, v in enumerate(labels):
            if isinstance(v, int):
                key = s.keys[k] if s.keys else f"#{k}"
                raise IndexFileError(f"shard {s.shard.name!r} key {key!r}: int label {v} among str class names")
    return sorted(names)


# ----------------------------------------------------------------------------- registry hooks


def accepts(spec: Any) -> bool:
    """Whether `spec` names tar shards or a wids shard index (what `dp4tl index` hands over)."""
    items = [spec] if isinstance(spec, str) else spec
    if not isinstance(items, (list, tuple)) or not items or not all(isinstance(s, str) for s in items):
        return False
    return all(_looks_like_shards(s) for s in items)


def _looks_like_shards(item: str) -> bool:
    if item.endswith(TAR_SUFFIXES) or item.endswith(".json"):
        return True
    return "://" not in item and os.path.isdir(item) and any(p.endswith(TAR_SUFFIXES) for p in os.listdir(item))


def build(
    spec: Sequence[str],
    *,
    label_field: str | None = None,
    root: str | None = None,
    workers: int | None = None,
    previous: SourceIndex | str | None = None,
    **kwargs: Any,
) -> SourceIndex:
    """The registered indexer: `index_shards` with the CLI's arguments."""
    return index_shards(spec, label_field=label_field, root=root, workers=workers, previous=previous, **kwargs)


def member_arrays(table: pa.Table) -> dict[str, Any]:
    """One shard's index rows as flat arrays for the reader: keys, sample spans, and members
    (``moff``/``msize``/``mname`` flattened, sample ``i`` owning ``mstart[i]:mstart[i+1]``)."""
    members = table.column("members").combine_chunks()
    flat = members.flatten()
    offsets = members.offsets.to_numpy()
    return {
        "keys": table.column("key").to_pylist(),
        "offset": table.column("offset").to_numpy(),
        "size": table.column("size").to_numpy(),
        "mstart": offsets - offsets[0],
        "mname": flat.field("name").to_pylist(),
        "moff": flat.field("offset").to_numpy(),
        "msize": flat.field("size").to_numpy(),
    }


__all__ = [
    "KIND",
    "LabelSpec",
    "ScannedShard",
    "accepts",
    "build",
    "detect_label_field",
    "expand_spec",
    "index_shards",
    "member_arrays",
    "read_wids_index",
    "same_shard",
    "scan_shard",
    "shard_identity",
    "split_name",
    "stat_shard",
]
