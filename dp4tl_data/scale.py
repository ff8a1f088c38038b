"""Keep-lists at LAION scale: a streaming writer, cluster votes, shard-level policies, and the
kept-fraction report (numbers and PNG).

At 2B samples in 231k shards nothing may hold every entry: `KeepListWriter` takes one shard
at a time and writes the format `KeepList.load` reads (payloads are read back lazily, one range
read per shard). Shard-level policies drop shards whose kept fraction is low; `shard_tradeoff`
says what that costs in samples and saves in bytes read, for a list of thresholds.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np

from ._keeplist_io import ShardTableWriter, write_manifest
from .errors import KeepListError, PrunerError
from .keeplist import KeepList, ShardEntry, content_fingerprint

log = logging.getLogger(__name__)

# A LAION-400M/2B image in img2dataset shards weighs about 125 kB (250 TB / 2B samples).
BYTES_PER_SAMPLE = 125_000
READ_MB_S = 1000.0


class KeepListWriter:
    """Write a shard-level keep-list shard by shard, in any order, in `KeepList`'s format.

    Memory holds one row per shard (name, counts, a 32-byte digest), never the payloads: 231k
    shards cost tens of MB. The manifest is written last, by `close`, so an interrupted write
    leaves no keep-list behind. Shards with nothing kept are counted, not stored.

        with KeepListWriter("keep.json", provenance={"method": "laion-fm"}) as w:
            for name, mask in results:
                w.add_mask(name, mask)
    """

    def __init__(
        self,
        url: str,
        *,
        provenance: Mapping[str, Any] | None = None,
        scores: dict[str, Any] | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.url = url
        self._so = dict(storage_options or {})
        self.provenance = dict(provenance or {})
        self._scores = scores
        self._table = ShardTableWriter(url, **self._so)
        self._names: set[str] = set()
        self.shards_seen = 0
        self.samples_seen: int | None = 0
        self.samples_kept = 0
        self._closed = False

    def add_mask(self, name: str, mask: np.ndarray) -> int:
        """Keep the samples of shard `name` where `mask` is true (positions in shard order)."""
        entry = ShardEntry(name, "bitmap", mask=np.asarray(mask, dtype=bool))
        self._count(name, entry.total)
        return self._add(entry) if entry.kept else 0

    def add_all(self, name: str, count: int | None = None) -> int:
        """Keep all of shard `name` (`count` samples, when known)."""
        entry = ShardEntry(name, "all", kept=count, total=count)
        self._count(name, count)
        return self._add(entry)

    def add_keys(self, name: str, keys: Iterable[str], total: int | None = None) -> int:
        """Keep the samples of shard `name` with these ``__key__`` values."""
        entry = ShardEntry(name, "keys", keys=keys, total=total)
        self._count(name, total)
        return self._add(entry) if entry.kept else 0

    def add_entry(self, entry: ShardEntry) -> int:
        """Copy one entry of another keep-list (its payload is read once, here)."""
        self._count(entry.name, entry.total)
        return self._add(entry)

    def _count(self, name: str, total: int | None) -> None:
        if self._closed:
            raise KeepListError(f"{self.url}: writer is closed")
        if name in self._names:
            raise KeepListError(f"{self.url}: shard {name!r} added twice")
        self._names.add(name)
        self.shards_seen += 1
        self.samples_seen = None if total is None or self.samples_seen is None else self.samples_seen + total

    def _add(self, entry: ShardEntry) -> int:
        self._table.add(entry)
        self.samples_kept += entry.kept or 0
        return entry.kept or 0

    @property
    def fingerprint(self) -> str:
        """`KeepList.fingerprint` of what was added so far (same definition, same value)."""
        return content_fingerprint(None, self._table.rows)

    def close(self) -> str:
        """Write the shard table and the manifest; returns the keep-list URL."""
        if self._closed:
            return self.url
        shards = self._table.finish()
        self._closed = True
        prov: dict[str, Any] = {"num_shards": self.shards_seen, "num_samples": self.samples_seen, **self.provenance}
        prov["samples_kept"] = self.samples_kept
        provenance = KeepList(provenance=prov).provenance
        return write_manifest(self.url, self.fingerprint, None, shards, provenance, self._scores, **self._so)

    def __enter__(self) -> KeepListWriter:
        return self

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if typ is None:
            self.close()
        elif not self._closed:
            self._table.abort()
            self._closed = True


# --------------------------------------------------------------------------- cluster votes


def vote_clusters(target: np.ndarray, centroids: np.ndarray, *, nearest: int = 1) -> np.ndarray:
    """Votes per cluster: each target embedding votes for its `nearest` clusters (DataComp's
    image-based filter keeps every cluster that some target is nearest to)."""
    from .cluster import check_features
    from .errors import require

    faiss = require("faiss", "laion")
    c = check_features(centroids, "centroids")
    t = check_features(target, "target embeddings", dim=c.shape[1])
    if not 1 <= nearest <= len(c):
        raise PrunerError(f"nearest={nearest} must be between 1 and the {len(c)} clusters")
    index = faiss.IndexFlatL2(c.shape[1])  # type: ignore[attr-defined]
    index.add(c)
    _, ids = index.search(t, nearest)
    return np.bincount(ids.ravel(), minlength=len(c)).astype(np.int64)


def select_clusters(votes: np.ndarray, *, min_votes: int = 1, top: int | None = None) -> np.ndarray:
    """Kept cluster ids (sorted): those with at least `min_votes` votes, at most the `top` most voted."""
    votes = np.asarray(votes)
    ids = np.flatnonzero(votes >= min_votes)
    if top is not None:
        ids = ids[np.argsort(-votes[ids], kind="stable")[:top]]
    return np.sort(ids)


# --------------------------------------------------------------------------- shard-level policies


@dataclass(frozen=True)
class ShardCounts:
    """Per kept shard: names, kept and total samples (-1: unknown), and how many source shards
    the list leaves out altogether (None when the list does not say how many there are)."""

    names: list[str]
    kept: np.ndarray
    total: np.ndarray
    absent: int | None

    @property
    def fraction(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.total > 0, self.kept / np.maximum(self.total, 1), np.nan)


def shard_counts(keep: KeepList) -> ShardCounts:
    """Kept and total counts per shard of `keep`, without reading any payload."""
    if keep.shards is None:
        raise KeepListError("the keep-list has no shard level")
    rows = keep.shard_stats()
    kept = np.array([-1 if r["kept"] is None else r["kept"] for r in rows], dtype=np.int64)
    total = np.array([-1 if r["total"] is None else r["total"] for r in rows], dtype=np.int64)
    nshards = keep.provenance.get("num_shards")
    absent = nshards - len(rows) if isinstance(nshards, int) and nshards >= len(rows) else None
    return ShardCounts([r["shard"] for r in rows], kept, total, absent)


def shard_tradeoff(
    keep: KeepList,
    thresholds: Sequence[float] = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5),
    *,
    shard_bytes: Mapping[str, int] | None = None,
    bytes_per_sample: float = BYTES_PER_SAMPLE,
    read_mb_s: float = READ_MB_S,
) -> list[dict[str, Any]]:
    """What dropping shards with kept fraction below each threshold does: samples kept and lost,
    shards and bytes read when kept shards stream whole, bytes and time saved against reading
    every source shard; ``*_ranges``: the same when a reader fetches only kept samples' byte
    ranges (the indexed webdataset reader), estimated as kept fraction x shard bytes. Bytes come
    from `shard_bytes` (real tar sizes) when given, else ``total x bytes_per_sample`` (an
    estimate, flagged in the rows)."""
    c = shard_counts(keep)
    if (c.total < 0).any() or (c.kept < 0).any():
        raise KeepListError("shard trade-off needs kept and total counts for every shard (index the source)")
    if shard_bytes is not None:
        missing = [n for n in c.names if n not in shard_bytes]
        if missing:
            raise KeepListError(f"no size for {len(missing)} kept shards, e.g. {missing[0]!r}")
        size = np.array([shard_bytes[n] for n in c.names], dtype=np.float64)
        src_bytes = float(sum(shard_bytes.values()))
    else:
        size = c.total * float(bytes_per_sample)
        n_src = keep.provenance.get("num_samples")
        src_bytes = float(n_src) * bytes_per_sample if isinstance(n_src, int) else float(size.sum())
    frac = c.fraction
    all_kept = int(c.kept.sum())
    rows = []
    for t in thresholds:
        on = frac >= t if t > 0 else np.ones(len(frac), dtype=bool)
        read = float(size[on].sum())
        saved = src_bytes - read
        ranged = float((size[on] * frac[on]).sum())  # reading only kept samples' byte ranges
        rows.append(
            {
                "min_fraction": float(t),
                "shards_read": int(on.sum()),
                "samples_kept": int(c.kept[on].sum()),
                "samples_lost": all_kept - int(c.kept[on].sum()),
                "lost_fraction": (all_kept - int(c.kept[on].sum())) / all_kept if all_kept else 0.0,
                "bytes_read": read,
                "bytes_saved": saved,
                "saved_fraction": saved / src_bytes if src_bytes else 0.0,
                "time_saved_s": saved / (read_mb_s * 1e6),
                "bytes_saved_ranges": src_bytes - ranged,
                "time_saved_ranges_s": (src_bytes - ranged) / (read_mb_s * 1e6),
                "bytes_estimated": shard_bytes is None,
            }
        )
    return rows


def drop_sparse_shards(
    keep: KeepList,
    min_fraction: float,
    url: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write to `url` the shards of `keep` whose kept fraction is at least `min_fraction`
    (streamed, one shard at a time); returns the counts kept and lost."""
    if not 0.0 <= min_fraction <= 1.0:
        raise KeepListError(f"min_fraction must be in [0, 1], found {min_fraction}")
    c = shard_counts(keep)
    if (c.total < 0).any():
        raise KeepListError("a shard-level policy needs each shard's total count (index the source)")
    frac = c.fraction
    assert keep.shards is not None
    prov = {k: v for k, v in keep.provenance.items() if k not in ("created", "samples_kept")}
    prov.update(method="drop-sparse-shards", params={"min_fraction": min_fraction}, parents=[keep.fingerprint])
    with KeepListWriter(url, provenance=prov, storage_options=storage_options) as w:
        for name, f in zip(c.names, frac):
            if f >= min_fraction:
                w.add_entry(keep.shards[name])
    lost = int(c.kept.sum()) - w.samples_kept
    return {
        "url": url,
        "shards_kept": int((frac >= min_fraction).sum()),
        "shards_dropped": int((frac < min_fraction).sum()),
        "samples_kept": w.samples_kept,
        "samples_lost": lost,
    }


# --------------------------------------------------------------------------- report and plot


def plot_shard_fractions(
    keep: KeepList,
    path: str,
    *,
    shard_bytes: Mapping[str, int] | None = None,
    bytes_per_sample: float = BYTES_PER_SAMPLE,
    read_mb_s: float = READ_MB_S,
) -> dict[str, Any]:
    """Write a PNG histogram of the kept fraction per shard (shards the list leaves out count
    at 0), annotated with the estimated bytes and time saved; returns the figures shown."""
    from .errors import require

    require("matplotlib", "laion")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = shard_counts(keep)
    frac = c.fraction
    known = frac[np.isfinite(frac)]
    counts, edges = np.histogram(known, bins=20, range=(0.0, 1.0))
    report = shard_tradeoff(
        keep, (0.0,), shard_bytes=shard_bytes, bytes_per_sample=bytes_per_sample, read_mb_s=read_mb_s
    )[0]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="tab:blue", label="kept shards")
    if c.absent:
        ax.bar([-0.05], [c.absent], width=0.04, color="tab:gray", label=f"shards left out ({c.absent})")
    ax.set_xlabel("kept fraction of the shard's samples")
    ax.set_ylabel("shards")
    est = " (est.)" if report["bytes_estimated"] else ""
    ax.set_title(
        f"{len(c.names)} shards kept, {report['samples_kept']:,} samples; at {read_mb_s:g} MB/s saves\n"
        f"whole shards: {_human(report['bytes_saved'])}B{est}, {report['time_saved_s']:.0f} s; "
        f"kept byte ranges only: {_human(report['bytes_saved_ranges'])}B, {report['time_saved_ranges_s']:.0f} s",
        fontsize=10,
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return {
        "histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
        "shards_kept": len(c.names),
        "shards_left_out": c.absent,
        **report,
    }


def _human(n: float) -> str:
    for unit in ("", "k", "M", "G", "T", "P"):
        if abs(n) < 1000:
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} E"


def iter_masks(keep: KeepList, names: Iterable[str] | None = None) -> Iterator[tuple[str, np.ndarray | None]]:
    """``(shard, mask)`` for the named (default: all) shards of a bitmap keep-list, loading one
    payload at a time; the mask is None for a shard kept whole."""
    if keep.shards is None:
        raise KeepListError("the keep-list has no shard level")
    for name in names if names is not None else keep.shards:
        e = keep.shards.get(name)
        if e is None:
            continue
        yield name, (None if e.encoding == "all" else e.mask())
