"""Keep-lists from the field's formats, and back where that is cheap.

- DataComp: a sorted ``.npy`` of 128-bit uids (dtype ``u8,u8``); a uid listed twice is
  emitted twice. Multiplicity is kept as *passes*: ``keep.json`` holds every listed sample,
  ``keep.x2.json`` those listed at least twice, and so on (stream them one after another).
- SemDeDup and plain key lists: text, one key or path per line (``a/b/000120034.jpg`` is key
  ``000120034``), as the samples to keep or to remove.
- Megatron-Energon: ``split.yaml`` ``exclude: ["<shard>", "<shard>/<key>"]`` (exclude-only).

Imports resolve entries against the source's shards (anything with ``name``, ``keys()``,
``column(name)`` and ``digest(keys)``, e.g. `dp4tl_data.plugins.laion.open_source`), one
shard at a time, and write bitmaps with `KeepListWriter`; the source fingerprint is recorded.
Entries that match no sample are counted and reported; with ``strict`` they are an error, and
when none matches the list is refused as foreign. Exports refuse a list made for another source.
"""

from __future__ import annotations

import contextlib
import json
import logging
import posixpath
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import fsspec
import numpy as np

from .distributed import source_fingerprint
from .errors import ForeignKeepListError, KeepListError, require
from .keeplist import KeepList
from .scale import KeepListWriter

log = logging.getLogger(__name__)

UID_DTYPE = np.dtype([("f0", "<u8"), ("f1", "<u8")])
FORMATS = ("datacomp", "keys", "energon")


class SourceShard(Protocol):
    """A shard of the source as importers see it."""

    name: str

    def keys(self) -> list[str]: ...

    def column(self, name: str) -> Any: ...

    def digest(self, keys: list[str] | None = None) -> bytes: ...


@dataclass
class ImportReport:
    """What an import matched: list entries, how many matched a sample, and what was written."""

    url: str
    entries: int = 0
    matched: int = 0
    samples_kept: int = 0
    emitted: int = 0
    passes: list[str] = field(default_factory=list)
    unmatched_examples: list[str] = field(default_factory=list)

    @property
    def unmatched(self) -> int:
        return self.entries - self.matched


def _check_matches(report: ImportReport, path: str, strict: bool) -> None:
    if report.entries and not report.matched:
        raise ForeignKeepListError(
            f"{path}: none of its {report.entries} entries is a sample of this source "
            f"(e.g. {report.unmatched_examples[:3]}); is it a list for another dataset?"
        )
    if report.unmatched:
        msg = f"{path}: {report.unmatched} of {report.entries} entries match no sample (e.g. {report.unmatched_examples[:3]})"
        if strict:
            raise KeepListError(msg)
        log.warning(msg)


# --------------------------------------------------------------------------- DataComp uids


def uids_from_hex(values: Sequence[str], where: str) -> np.ndarray:
    """32-hex-digit uid strings as the ``u8,u8`` records DataComp writes."""
    raw = np.asarray(values, dtype="S32")
    if len(raw) and (np.char.str_len(raw) != 32).any():
        bad = values[int(np.argmax(np.char.str_len(raw) != 32))]
        raise KeepListError(f"{where}: uid {bad!r} is not 32 hex digits")
    b = raw.view(np.uint8).reshape(len(raw), 32).astype(np.int64)
    nib = np.full(256, -1, dtype=np.int64)
    for i, ch in enumerate(b"0123456789abcdef"):
        nib[ch] = i
    for i, ch in enumerate(b"ABCDEF"):
        nib[ch] = 10 + i
    d = nib[b]
    if (d < 0).any():
        raise KeepListError(f"{where}: uid {values[int(np.argmax((d < 0).any(axis=1)))]!r} is not hexadecimal")
    weights = np.uint64(16) ** np.arange(15, -1, -1, dtype=np.uint64)
    out = np.empty(len(raw), dtype=UID_DTYPE)
    out["f0"] = (d[:, :16].astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)
    out["f1"] = (d[:, 16:].astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)
    return out


def uid_hex(uids: np.ndarray) -> list[str]:
    return [f"{int(a):016x}{int(b):016x}" for a, b in zip(uids["f0"], uids["f1"])]


def read_uids(path: str) -> np.ndarray:
    """A DataComp uid keep-list (``u8,u8`` records; nothing unpickled)."""
    with fsspec.open(path, "rb") as f:
        try:
            arr = np.load(f, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise KeepListError(f"{path}: not a DataComp uid .npy ({exc})") from None
    if not isinstance(arr, np.ndarray):
        raise KeepListError(f"{path}: not a DataComp uid .npy (an archive of several arrays)")
    if arr.ndim != 1 or arr.dtype.names is None or len(arr.dtype.names) != 2:
        raise KeepListError(f"{path}: expected a 1-D array of (u8, u8) uid records, found {arr.dtype} {arr.shape}")
    if any(arr.dtype[n] != np.dtype("<u8") for n in arr.dtype.names):
        raise KeepListError(f"{path}: uid fields must be little-endian u8, found {arr.dtype}")
    out = np.empty(len(arr), dtype=UID_DTYPE)
    out["f0"], out["f1"] = arr[arr.dtype.names[0]], arr[arr.dtype.names[1]]
    return out


def import_datacomp(
    path: str,
    shards: Sequence[SourceShard],
    url: str,
    *,
    uid_column: str = "uid",
    strict: bool = False,
    **provenance: Any,
) -> ImportReport:
    """A DataComp uid list as bitmap keep-lists: `url` (multiplicity >= 1) and, when uids
    repeat, ``<url>.x2.json`` ... (multiplicity >= k), listed in the provenance as ``repeats``."""
    uniq, counts = np.unique(read_uids(path), return_counts=True)
    passes = int(counts.max()) if len(counts) else 1
    urls = [url] + [_pass_url(url, k) for k in range(2, passes + 1)]
    prov = {"method": "import-datacomp", "params": {"file": path}, **provenance}
    report = ImportReport(url, entries=len(uniq), passes=urls, emitted=int(counts.sum()))
    seen = np.zeros(len(uniq), dtype=bool)
    digests = []
    with contextlib.ExitStack() as stack:  # every pass is written, or none
        writers = [
            stack.enter_context(KeepListWriter(u, provenance={**prov, "pass": k + 1, "repeats": urls[1:]}))
            for k, u in enumerate(urls)
        ]
        for sh in shards:
            keys = sh.keys()
            su = _uids(sh, uid_column)
            if len(su) != len(keys):
                raise KeepListError(f"shard {sh.name!r}: {len(su)} uids for {len(keys)} samples")
            idx = np.minimum(np.searchsorted(uniq, su), max(len(uniq) - 1, 0))
            hit = uniq[idx] == su if len(uniq) else np.zeros(len(su), dtype=bool)
            seen[idx[hit]] = True
            mult = np.where(hit, counts[idx] if len(uniq) else 0, 0)
            for k, w in enumerate(writers):
                w.add_mask(sh.name, mult >= k + 1)
            digests.append((sh.name, sh.digest(keys)))
        report.matched = int(seen.sum())
        report.samples_kept = writers[0].samples_kept
        report.emitted = sum(w.samples_kept for w in writers)
        report.unmatched_examples = uid_hex(uniq[~seen][:3])
        _check_matches(report, path, strict)
        fp = source_fingerprint(digests)
        for w in writers:
            w.provenance.update(source_fingerprint=fp, entries=report.entries, unmatched=report.unmatched)
    return report


def _uids(sh: SourceShard, column: str) -> np.ndarray:
    col = sh.column(column)
    return uids_from_hex(col.to_pylist() if hasattr(col, "to_pylist") else list(col), f"shard {sh.name!r}")


def _pass_url(url: str, k: int) -> str:
    base = url[: -len(".json")] if url.endswith(".json") else url
    return f"{base}.x{k}.json"


def load_passes(url: str) -> list[KeepList]:
    """A keep-list and the repeat passes its provenance names (DataComp multiplicity)."""
    first = KeepList.load(url)
    rest = first.provenance.get("repeats") or []
    if not isinstance(rest, list) or not all(isinstance(u, str) for u in rest):
        raise KeepListError(f"{url}: 'repeats' must be a list of keep-list URLs")
    folder = url.rsplit("/", 1)[0] + "/" if "/" in url else ""
    return [first] + [KeepList.load(folder + posixpath.basename(u)) for u in rest]


def export_datacomp(
    url: str, shards: Sequence[SourceShard], path: str, *, uid_column: str = "uid", allow_foreign: bool = False
) -> int:
    """Write the sorted uid ``.npy`` of a keep-list and its repeat passes (a sample in k passes
    is listed k times); returns the number of records. Holds the kept uids in memory (16 B each)."""
    passes = load_passes(url)
    parts = []
    for sh, _, mult in _multiplicities(passes, shards, allow_foreign):
        parts.append(np.repeat(_uids(sh, uid_column), mult))
    out = np.sort(np.concatenate(parts)) if parts else np.empty(0, dtype=UID_DTYPE)
    with fsspec.open(path, "wb") as f:
        np.save(f, out, allow_pickle=False)
    return len(out)


def _multiplicities(
    passes: Sequence[KeepList], shards: Sequence[SourceShard], allow_foreign: bool
) -> Iterator[tuple[SourceShard, list[str], np.ndarray]]:
    """Per source shard with kept samples: (shard, keys, how many passes keep each sample).
    Raises ForeignKeepListError (at the end, once all digests are known) for another source."""
    names = {s.name for s in shards}
    for keep in passes:
        extra = sorted(n for n in (keep.shards or {}) if n not in names)
        if extra and not allow_foreign:
            raise ForeignKeepListError(f"keep-list names {len(extra)} shards this source lacks, e.g. {extra[0]!r}")
    digests = []
    for sh in shards:
        keys = sh.keys()
        digests.append((sh.name, sh.digest(keys)))
        mult = np.zeros(len(keys), dtype=np.int64)
        for keep in passes:
            mult += _mask(keep, sh.name, len(keys), keys)
        if mult.any():
            yield sh, keys, mult
    for keep in passes:
        keep.check_source(source_fingerprint(digests), allow_foreign=allow_foreign, where="export")


def _mask(keep: KeepList, name: str, n: int, keys: list[str]) -> np.ndarray:
    """Keep-list membership of a shard's samples, whatever the entry's encoding."""
    if keep.classes is not None:
        raise KeepListError("class-level keep-lists cannot be exported per sample; resolve against an index first")
    e = keep.shard(name) if keep.shards is not None else None
    if keep.shards is not None and e is None:
        return np.zeros(n, dtype=bool)
    if e is None or e.encoding == "all":
        return np.ones(n, dtype=bool)
    if e.encoding == "keys":
        ks = e.keys()
        return np.fromiter((k in ks for k in keys), dtype=bool, count=n)
    m = e.mask()
    if len(m) != n:
        raise ForeignKeepListError(f"shard {name!r}: keep-list bitmap covers {len(m)} samples, the source has {n}")
    return m


# --------------------------------------------------------------------------- key lists


def to_key(entry: str) -> str:
    """A sample key from a key or a path: the basename up to its first dot (webdataset)."""
    return posixpath.basename(entry.strip()).split(".", 1)[0]


def read_key_list(path: str) -> np.ndarray:
    """The keys of a text list (one key or path per line; blank lines and ``#`` comments
    skipped), as a sorted unique bytes array (compact: no Python set of a billion strings)."""
    keys = []
    try:
        with fsspec.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith("#"):
                    keys.append(to_key(line))
    except UnicodeDecodeError:
        raise KeepListError(f"{path}: the key list is not UTF-8 text") from None
    if not keys:
        raise KeepListError(f"{path}: the key list is empty")
    return np.unique(np.array([k.encode() for k in keys]))


def _matches(table: np.ndarray, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(per key: is it in the sorted bytes array `table`, the index of each hit in `table`)."""
    enc = [k.encode() for k in keys]
    q = np.array(enc, dtype=table.dtype)  # truncates longer keys: they cannot match, see fits
    fits = np.fromiter((len(e) <= table.dtype.itemsize for e in enc), dtype=bool, count=len(enc))
    idx = np.minimum(np.searchsorted(table, q), len(table) - 1)
    hit = (table[idx] == q) & fits
    return hit, idx[hit]


def import_keys(
    path: str,
    shards: Sequence[SourceShard],
    url: str,
    *,
    mode: str = "keep",
    strict: bool = False,
    **provenance: Any,
) -> ImportReport:
    """A text key list (SemDeDup output, or plain keys) as a bitmap keep-list: the listed
    samples kept (``mode="keep"``) or removed (``mode="remove"``)."""
    if mode not in ("keep", "remove"):
        raise KeepListError(f"mode must be 'keep' or 'remove', found {mode!r}")
    table = read_key_list(path)
    seen = np.zeros(len(table), dtype=bool)
    report = ImportReport(url, entries=len(table))
    prov = {"method": f"import-keys-{mode}", "params": {"file": path, "mode": mode}, **provenance}
    digests = []
    with KeepListWriter(url, provenance=prov) as w:
        for sh in shards:
            keys = sh.keys()
            hit, idx = _matches(table, keys)
            seen[idx] = True
            w.add_mask(sh.name, hit if mode == "keep" else ~hit)
            digests.append((sh.name, sh.digest(keys)))
        report.matched = int(seen.sum())
        report.unmatched_examples = [k.decode() for k in table[~seen][:3]]
        _check_matches(report, path, strict)
        w.provenance.update(source_fingerprint=source_fingerprint(digests), entries=report.entries)
        w.provenance["unmatched"] = report.unmatched
    report.samples_kept = report.emitted = w.samples_kept
    return report


def export_keys(
    url: str, shards: Sequence[SourceShard], path: str, *, with_shard: bool = False, allow_foreign: bool = False
) -> int:
    """Write the kept keys, one per line (``<shard>/<key>`` with `with_shard`), streamed."""
    n = 0
    with fsspec.open(path, "wt", encoding="utf-8") as f:
        for sh, keys, mult in _multiplicities([KeepList.load(url)], shards, allow_foreign):
            for i in np.flatnonzero(mult):
                f.write(f"{sh.name}/{keys[i]}\n" if with_shard else f"{keys[i]}\n")
                n += 1
    return n


# --------------------------------------------------------------------------- Megatron-Energon


def read_energon(path: str) -> tuple[set[str], dict[str, set[str]]]:
    """The ``exclude`` list of an Energon ``split.yaml``: whole shards, and keys per shard."""
    yaml = require("yaml", "laion")
    with fsspec.open(path, "rt", encoding="utf-8") as f:
        try:
            doc = yaml.safe_load(f)  # type: ignore[attr-defined]
        except Exception as exc:  # yaml's errors share no public base we can name without importing it
            raise KeepListError(f"{path}: not valid YAML ({type(exc).__name__})") from None
    excl = doc.get("exclude", []) if isinstance(doc, dict) else None
    if not isinstance(excl, list) or not all(isinstance(e, str) for e in excl):
        raise KeepListError(f"{path}: 'exclude' must be a list of strings")
    whole: set[str] = set()
    samples: dict[str, set[str]] = {}
    for e in excl:
        head, sep, key = e.rpartition("/")
        if sep and head.endswith(".tar"):
            samples.setdefault(head, set()).add(key)
        else:
            whole.add(e)
    return whole, samples


def import_energon(path: str, shards: Sequence[SourceShard], url: str, *, strict: bool = False) -> ImportReport:
    """An Energon exclude list as a keep-list of everything else (untouched shards stay ``all``)."""
    whole, samples = read_energon(path)
    report = ImportReport(url, entries=len(whole) + sum(len(v) for v in samples.values()))
    names = {s.name for s in shards}
    report.matched = len(whole & names)
    unmatched = sorted(whole - names) + sorted(f"{n}/*" for n in set(samples) - names)
    digests = []
    with KeepListWriter(url, provenance={"method": "import-energon", "params": {"file": path}}) as w:
        for sh in shards:
            keys = sh.keys()
            digests.append((sh.name, sh.digest(keys)))
            drop = samples.get(sh.name, set())
            if sh.name in whole:
                w.add_mask(sh.name, np.zeros(len(keys), dtype=bool))
            elif drop:
                m = np.fromiter((k not in drop for k in keys), dtype=bool, count=len(keys))
                report.matched += int((~m).sum())
                unmatched += [f"{sh.name}/{k}" for k in sorted(drop - set(keys))[:3]]
                w.add_mask(sh.name, m)
            else:
                w.add_all(sh.name, len(keys))
        report.unmatched_examples = unmatched[:3]
        _check_matches(report, path, strict)
        w.provenance.update(source_fingerprint=source_fingerprint(digests), entries=report.entries)
        w.provenance["unmatched"] = report.unmatched
    report.samples_kept = report.emitted = w.samples_kept
    return report


def export_energon(url: str, shards: Sequence[SourceShard], path: str, *, allow_foreign: bool = False) -> int:
    """Write an Energon ``split.yaml``: every source shard in ``split_parts.train``, and every
    dropped shard and sample in ``exclude`` (streamed); returns the number of excludes."""
    keep = KeepList.load(url)
    kept = {sh.name: (keys, mult) for sh, keys, mult in _multiplicities([keep], shards, allow_foreign)}
    n = 0
    with fsspec.open(path, "wt", encoding="utf-8") as f:
        f.write("split_parts:\n  train:\n")
        for sh in shards:
            f.write(f"    - {json.dumps(sh.name)}\n")
        f.write("exclude:\n")
        for sh in shards:
            if sh.name not in kept:
                f.write(f"  - {json.dumps(sh.name)}\n")
                n += 1
                continue
            keys, mult = kept[sh.name]
            for i in np.flatnonzero(mult == 0):
                f.write(f"  - {json.dumps(sh.name + '/' + keys[i])}\n")
                n += 1
        if n == 0:
            f.write("  []\n")
    return n
