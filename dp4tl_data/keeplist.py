"""KeepList: which source classes, shards and samples to keep, with provenance.

A keep-list holds up to two levels, and a sample is kept when it passes every level present:

- class level: kept class ids *and* names, and the label field they refer to;
- shard level: kept shards by stable name, each either whole or restricted to a set of samples
  (by ``__key__``, or as a bitmap over the shard's sample order in the source index).

Storage (see `dp4tl_data._keeplist_io`) is a JSON manifest plus, when there is a shard level,
a Parquet shard table and one binary payload file; nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ._version import __version__
from .errors import ClassMismatchError, ForeignKeepListError, KeepListError
from .urls import check_shard_name

Encoding = Literal["all", "keys", "bitmap"]
ENCODINGS: tuple[str, ...] = ("all", "keys", "bitmap")
MAX_KEY_CHARS = 4096  # a sample key longer than this is refused (bounds key payloads on load)


# --------------------------------------------------------------------------- class level


@dataclass(frozen=True)
class ClassLevel:
    """Kept classes: parallel tuples of ids and names (either may hold None), and the label field."""

    label_field: str
    ids: tuple[int | None, ...]
    names: tuple[str | None, ...]

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.names):
            raise KeepListError("class level: ids and names differ in length")
        for i, n in zip(self.ids, self.names):
            if i is None and n is None:
                raise KeepListError("class level: a class has neither id nor name")
            if i is not None and (not isinstance(i, int) or isinstance(i, bool) or i < 0):
                raise KeepListError(f"class level: class id {i!r} is not a non-negative int")
            if n is not None and not isinstance(n, str):
                raise KeepListError(f"class level: class name {n!r} is not a string")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def id_set(self) -> frozenset[int]:
        return frozenset(i for i in self.ids if i is not None)

    @property
    def name_set(self) -> frozenset[str]:
        return frozenset(n for n in self.names if n is not None)

    def _ident(self, k: int) -> tuple[str, object]:
        return ("name", self.names[k]) if self.names[k] is not None else ("id", self.ids[k])

    def _match(self, other: ClassLevel) -> list[int | None]:
        """For each of my classes, the matching class of `other` (by name when both have one,
        else by id), or None."""
        by_name = {n: j for j, n in enumerate(other.names) if n is not None}
        by_id = {i: j for j, i in enumerate(other.ids) if i is not None}
        out: list[int | None] = []
        for i, n in zip(self.ids, self.names):
            j: int | None = None
            if n is not None and n in by_name:
                j = by_name[n]
            elif i is not None and i in by_id and (n is None or other.names[by_id[i]] is None):
                j = by_id[i]
            out.append(j)
        return out

    def resolve(self, dataset_classes: Sequence[str] | None = None) -> frozenset[int]:
        """The dataset's label ids to keep.

        With `dataset_classes` (the dataset's class names in id order) names are matched by
        name, so a list made on one copy of a dataset applies to another that orders or spells
        ids differently; names the dataset lacks raise ClassMismatchError listing them.
        Without it, ids are used as they are.
        """
        if dataset_classes is None:
            missing = [n for i, n in zip(self.ids, self.names) if i is None]
            if missing:
                raise ClassMismatchError(
                    f"keep-list names classes without ids ({preview(missing)}); pass the dataset's class names"
                )
            return self.id_set
        lookup = {name: k for k, name in enumerate(dataset_classes)}
        out: set[int] = set()
        unknown: list[str] = []
        for i, n in zip(self.ids, self.names):
            if n is not None:
                if n in lookup:
                    out.add(lookup[n])
                else:
                    unknown.append(n)
            elif i is not None:
                if i >= len(dataset_classes):
                    unknown.append(f"id {i}")
                else:
                    out.add(i)
        if unknown:
            raise ClassMismatchError(
                f"keep-list names {len(unknown)} classes the dataset lacks: {preview(sorted(unknown))}"
            )
        return frozenset(out)

    def matcher(self, dataset_classes: Sequence[str] | None = None) -> Callable[[object], bool]:
        """A predicate on a sample's label value: an int id, or a str name (e.g. an ImageNet synset)."""
        ids = self.resolve(dataset_classes) if dataset_classes is not None or not self.name_set else self.id_set
        return LabelMatcher(ids, self.name_set)

    def combine(self, other: ClassLevel, op: str) -> ClassLevel:
        if self.label_field != other.label_field:
            raise KeepListError(
                f"cannot combine class lists on different label fields: {self.label_field!r} vs {other.label_field!r}"
            )
        match = self._match(other)
        ids, names = list(self.ids), list(self.names)
        for k, j in enumerate(match):  # fill in what the other side knows
            if j is not None:
                ids[k] = ids[k] if ids[k] is not None else other.ids[j]
                names[k] = names[k] if names[k] is not None else other.names[j]
        if op == "&":
            keep = [k for k, j in enumerate(match) if j is not None]
        elif op == "-":
            keep = [k for k, j in enumerate(match) if j is None]
        else:
            keep = list(range(len(self)))
            matched = {j for j in match if j is not None}
            extra = [j for j in range(len(other)) if j not in matched]
            ids += [other.ids[j] for j in extra]
            names += [other.names[j] for j in extra]
            keep += list(range(len(self), len(self) + len(extra)))
        level = ClassLevel(self.label_field, tuple(ids[k] for k in keep), tuple(names[k] for k in keep))
        return _sorted_classes(level)

    def to_json(self) -> dict[str, Any]:
        return {"label_field": self.label_field, "ids": list(self.ids), "names": list(self.names)}

    @classmethod
    def from_json(cls, obj: Any, where: str) -> ClassLevel:
        if not isinstance(obj, dict) or not isinstance(obj.get("label_field"), str):
            raise KeepListError(f"{where}: 'classes' must be an object with a string 'label_field'")
        ids, names = obj.get("ids"), obj.get("names")
        if not isinstance(ids, list) or not isinstance(names, list):
            raise KeepListError(f"{where}: 'classes' needs lists 'ids' and 'names'")
        try:
            return cls(obj["label_field"], tuple(ids), tuple(names))
        except KeepListError as exc:
            raise KeepListError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class LabelMatcher:
    """Whether a label value is kept: ints against `ids`, strs against `names`. A plain object,
    so that it pickles into spawned DataLoader workers."""

    ids: frozenset[int]
    names: frozenset[str]

    def __call__(self, label: object) -> bool:
        if type(label) is int:
            return label in self.ids
        if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
            return int(label) in self.ids
        if isinstance(label, str):
            return label in self.names
        if isinstance(label, bytes):
            text = label.decode("utf-8", "replace").strip()
            return int(text) in self.ids if text.lstrip("-").isdigit() else text in self.names
        raise KeepListError(f"label {label!r} is neither an int id nor a str name")


def _sorted_classes(level: ClassLevel) -> ClassLevel:
    order = sorted(
        range(len(level)),
        key=lambda k: (level.ids[k] is None, level.ids[k] or 0, level.names[k] or ""),
    )
    return ClassLevel(level.label_field, tuple(level.ids[k] for k in order), tuple(level.names[k] for k in order))


# --------------------------------------------------------------------------- shard level


class ShardEntry:
    """One kept shard: whole (``all``), a set of keys (``keys``), or a bitmap over the shard's
    sample order in the source index (``bitmap``). Payloads may be loaded lazily."""

    __slots__ = ("name", "encoding", "kept", "total", "_payload", "_loader", "_keys", "_mask")

    def __init__(
        self,
        name: str,
        encoding: str,
        *,
        kept: int | None = None,
        total: int | None = None,
        keys: Iterable[str] | None = None,
        mask: np.ndarray | None = None,
        loader: Callable[[], bytes] | None = None,
    ) -> None:
        self.name = check_shard_name(name)
        if encoding not in ENCODINGS:
            raise KeepListError(f"shard {name!r}: unknown encoding {encoding!r}")
        self.encoding = encoding
        self._loader = loader
        self._payload: bytes | None = None
        self._keys: frozenset[str] | None = None
        self._mask: np.ndarray | None = None
        if keys is not None:
            ks = frozenset(keys)
            for k in ks:
                if not isinstance(k, str) or not k or "\n" in k or len(k) > MAX_KEY_CHARS:
                    raise KeepListError(f"shard {name!r}: invalid sample key {k!r}")
            self._keys = ks
            kept = len(ks)
        if mask is not None:
            m = np.asarray(mask, dtype=bool)
            if m.ndim != 1:
                raise KeepListError(f"shard {name!r}: bitmap must be one-dimensional")
            self._mask = m
            kept, total = int(m.sum()), len(m)
        self.kept = kept
        self.total = total
        if encoding == "bitmap" and total is None:
            raise KeepListError(f"shard {name!r}: a bitmap entry needs the shard's sample count")

    # -- payload

    def keys(self) -> frozenset[str]:
        """The kept keys (``keys`` encoding only)."""
        if self.encoding != "keys":
            raise KeepListError(f"shard {self.name!r} is stored as {self.encoding!r}, not as keys")
        if self._keys is None:
            raw = self._raw()
            try:
                self._keys = frozenset(raw.decode("utf-8").split("\n")) if raw else frozenset()
            except UnicodeDecodeError:
                raise KeepListError(f"shard {self.name!r}: key payload is not UTF-8 text") from None
            if self.kept is not None and len(self._keys) != self.kept:
                raise KeepListError(
                    f"shard {self.name!r}: payload holds {len(self._keys)} keys, manifest says {self.kept}"
                )
        return self._keys

    def mask(self) -> np.ndarray:
        """The kept positions as a boolean mask over the shard's samples (``bitmap`` only)."""
        if self.encoding != "bitmap":
            raise KeepListError(f"shard {self.name!r} is stored as {self.encoding!r}, not as a bitmap")
        if self._mask is None:
            assert self.total is not None
            bits = np.frombuffer(self._raw(), dtype=np.uint8)
            if len(bits) != (self.total + 7) // 8:
                raise KeepListError(f"shard {self.name!r}: bitmap has {len(bits) * 8} bits for {self.total} samples")
            self._mask = np.unpackbits(bits, count=self.total).astype(bool)
            if self.kept is not None and int(self._mask.sum()) != self.kept:
                raise KeepListError(
                    f"shard {self.name!r}: bitmap keeps {int(self._mask.sum())}, manifest says {self.kept}"
                )
        return self._mask

    def _raw(self) -> bytes:
        if self._payload is None:
            if self._loader is None:
                raise KeepListError(f"shard {self.name!r}: no payload")
            self._payload = self._loader()
        return self._payload

    def payload(self) -> bytes:
        """The uncompressed payload bytes (sorted newline-joined keys, or packed bits)."""
        if self.encoding == "all":
            return b""
        if self.encoding == "keys":
            return "\n".join(sorted(self.keys())).encode("utf-8")
        return np.packbits(self.mask()).tobytes()

    # -- membership

    def contains(self, key: str | None = None, position: int | None = None) -> bool:
        """Whether the sample with `key` (``keys``) or at `position` in the shard (``bitmap``) is kept."""
        if self.encoding == "all":
            return True
        if self.encoding == "keys":
            if key is None:
                raise KeepListError(f"shard {self.name!r}: sample-level entry needs the sample key")
            return key in self.keys()
        if position is None:
            raise KeepListError(f"shard {self.name!r}: bitmap entry needs the sample position in the shard")
        m = self.mask()
        if not 0 <= position < len(m):
            raise KeepListError(f"shard {self.name!r}: position {position} outside the {len(m)} indexed samples")
        return bool(m[position])

    def combine(self, other: ShardEntry, op: str) -> ShardEntry | None:
        """`self op other` for one shard (``|``, ``&``, ``-``); None when nothing is left."""
        a, b = self.encoding, other.encoding
        if op == "|":
            if a == "all" or b == "all":
                return ShardEntry(self.name, "all", kept=_known_all(self, other), total=self.total or other.total)
        elif op == "&":
            if a == "all":
                return other
            if b == "all":
                return self
        elif op == "-":
            if b == "all":
                return None
            if a == "all" and b == "bitmap":
                return _entry_or_none(ShardEntry(self.name, "bitmap", mask=~other.mask()))
        if a == "all" or a != b:
            raise KeepListError(
                f"shard {self.name!r}: cannot compute {a} {op} {b} without the source index; "
                "resolve both lists against it first (KeepList.resolve(index))"
            )
        if a == "keys":
            ka, kb = self.keys(), other.keys()
            res = ka | kb if op == "|" else ka & kb if op == "&" else ka - kb
            return _entry_or_none(ShardEntry(self.name, "keys", keys=res, total=self.total or other.total))
        ma, mb = self.mask(), other.mask()
        if len(ma) != len(mb):
            raise KeepListError(f"shard {self.name!r}: bitmaps of {len(ma)} and {len(mb)} samples")
        res_m = ma | mb if op == "|" else ma & mb if op == "&" else ma & ~mb
        return _entry_or_none(ShardEntry(self.name, "bitmap", mask=res_m))

    def __repr__(self) -> str:
        return f"ShardEntry({self.name!r}, {self.encoding!r}, kept={self.kept}, total={self.total})"


def _known_all(a: ShardEntry, b: ShardEntry) -> int | None:
    for e in (a, b):
        if e.encoding == "all" and e.kept is not None:
            return e.kept
    return a.total or b.total


def _entry_or_none(entry: ShardEntry) -> ShardEntry | None:
    return entry if entry.kept else None


# --------------------------------------------------------------------------- KeepList


@dataclass
class KeepList:
    """Which classes, shards and samples of a source dataset to keep, with provenance.

    Build one with `from_classes`, `from_shards` or `from_samples`; combine with ``|``, ``&``
    and ``-``; persist with `save` and `load` (any fsspec URL).
    """

    classes: ClassLevel | None = None
    shards: Mapping[str, ShardEntry] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, Any] | None = None
    _fingerprint: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.provenance = {**_base_provenance(), **(self.provenance or {})}

    # -- constructors

    @classmethod
    def from_classes(
        cls,
        classes: Iterable[int | str],
        label_field: str = "label",
        names: Sequence[str] | Mapping[int, str] | None = None,
        **provenance: Any,
    ) -> KeepList:
        """Keep the given classes, given as int ids or str names.

        `names` (the dataset's class names, in id order, or an id->name mapping) records the
        name of every kept id, so the list also applies to copies that spell labels as names.
        """
        ids: list[int | None] = []
        nms: list[str | None] = []
        seen: set[object] = set()
        for c in classes:
            if isinstance(c, (int, np.integer)) and not isinstance(c, bool):
                i = int(c)
                if i < 0:
                    raise KeepListError(f"class id {i} is negative")
                if names is not None and isinstance(names, Mapping):
                    nm = names.get(i)
                elif names is not None:
                    if i >= len(names):
                        raise KeepListError(f"class id {i} has no name: names lists {len(names)} classes")
                    nm = names[i]
                else:
                    nm = None
                ident: object = i
                ids.append(i)
                nms.append(nm)
            elif isinstance(c, str):
                i2: int | None = None
                if names is not None:
                    lookup = (
                        {v: k for k, v in names.items()}
                        if isinstance(names, Mapping)
                        else {v: k for k, v in enumerate(names)}
                    )
                    if c not in lookup:
                        raise ClassMismatchError(f"class {c!r} is not among the {len(lookup)} names given")
                    i2 = lookup[c]
                ident = c
                ids.append(i2)
                nms.append(c)
            else:
                raise KeepListError(f"class {c!r} is neither an int id nor a str name")
            if ident in seen:
                continue
            seen.add(ident)
        level = _dedupe(ClassLevel(label_field, tuple(ids), tuple(nms)))
        return cls(classes=_sorted_classes(level), provenance=provenance)

    @classmethod
    def from_shards(cls, names: Iterable[str] | Mapping[str, int | None], **provenance: Any) -> KeepList:
        """Keep whole shards, by stable name; a mapping gives each shard's sample count."""
        counts = dict(names) if isinstance(names, Mapping) else dict.fromkeys(names)
        entries = {n: ShardEntry(n, "all", kept=c, total=c) for n, c in counts.items()}
        return cls(shards=dict(sorted(entries.items())), provenance=provenance)

    @classmethod
    def from_samples(
        cls,
        samples: Mapping[str, Iterable[str]],
        totals: Mapping[str, int] | None = None,
        **provenance: Any,
    ) -> KeepList:
        """Keep samples by ``__key__``, per shard: ``{shard_name: keys}``. Empty shards are dropped."""
        entries: dict[str, ShardEntry] = {}
        for name, keys in samples.items():
            e = ShardEntry(name, "keys", keys=keys, total=(totals or {}).get(name))
            if e.kept:
                entries[name] = e
        return cls(shards=dict(sorted(entries.items())), provenance=provenance)

    @classmethod
    def from_masks(cls, masks: Mapping[str, np.ndarray], **provenance: Any) -> KeepList:
        """Keep samples by position in each shard's index order: ``{shard_name: bool mask}``.

        Compact at scale (one bit per sample); applying it needs the same source index, so set
        ``source_fingerprint`` in the provenance."""
        entries: dict[str, ShardEntry] = {}
        for name, m in masks.items():
            e = ShardEntry(name, "bitmap", mask=np.asarray(m, dtype=bool))
            if e.kept:
                entries[name] = e
        return cls(shards=dict(sorted(entries.items())), provenance=provenance)

    # -- queries

    @property
    def levels(self) -> list[str]:
        """The levels present: ``class``, ``shard``, ``sample``."""
        out = []
        if self.classes is not None:
            out.append("class")
        if self.shards is not None:
            out.append("shard")
            if any(e.encoding != "all" for e in self.shards.values()):
                out.append("sample")
        return out

    @property
    def source_fingerprint(self) -> str | None:
        fp = self.provenance.get("source_fingerprint")
        return fp if isinstance(fp, str) else None

    def keeps_shard(self, name: str) -> bool:
        """Whether any sample of shard `name` may be kept (False: skip the shard unopened)."""
        return self.shards is None or name in self.shards

    def shard(self, name: str) -> ShardEntry | None:
        """The shard-level entry of `name`: None when the list has no shard level."""
        if self.shards is None:
            return None
        return self.shards.get(name)

    def check_source(self, fingerprint: str | None, *, allow_foreign: bool = False, where: str = "") -> None:
        """Raise ForeignKeepListError when this list was made for another source."""
        mine = self.source_fingerprint
        if allow_foreign or mine is None or fingerprint is None or mine == fingerprint:
            return
        src = f" ({where})" if where else ""
        raise ForeignKeepListError(
            f"keep-list was made for source {mine[:16]}, this source{src} is {fingerprint[:16]}; "
            "pass allow_foreign=True (CLI: --allow-foreign) to apply it anyway"
        )

    @property
    def fingerprint(self) -> str:
        """A content hash of what the list keeps (not of its provenance)."""
        if self._fingerprint is None:
            classes = self.classes.to_json() if self.classes is not None else None
            rows = None
            if self.shards is not None:  # content_fingerprint orders the rows by name
                rows = [
                    (e.name, e.encoding, e.kept, hashlib.sha256(e.payload()).digest()) for e in self.shards.values()
                ]
            self._fingerprint = content_fingerprint(classes, rows)
        return self._fingerprint

    def stats(self) -> dict[str, Any]:
        """Summary: levels, counts, and kept fractions per level where the totals are known."""
        out: dict[str, Any] = {"levels": self.levels, "fingerprint": self.fingerprint}
        nclass = self.provenance.get("num_classes")
        if self.classes is not None:
            out["classes_kept"] = len(self.classes)
            out["label_field"] = self.classes.label_field
            if isinstance(nclass, int) and nclass > 0:
                out["classes_total"] = nclass
                out["class_fraction"] = len(self.classes) / nclass
        if self.shards is not None:
            out["shards_kept"] = len(self.shards)
            nshards = self.provenance.get("num_shards")
            if isinstance(nshards, int) and nshards > 0:
                out["shards_total"] = nshards
                out["shard_fraction"] = len(self.shards) / nshards
            kept = [e.kept for e in self.shards.values()]
            if all(k is not None for k in kept):
                out["samples_kept"] = int(sum(k for k in kept if k is not None))
        nsamples = self.provenance.get("num_samples")
        kept_samples = self.provenance.get("samples_kept", out.get("samples_kept"))
        if isinstance(kept_samples, int):
            out["samples_kept"] = kept_samples
        if isinstance(nsamples, int) and nsamples > 0 and isinstance(kept_samples, int):
            out["samples_total"] = nsamples
            out["sample_fraction"] = kept_samples / nsamples
        return out

    def shard_stats(self) -> list[dict[str, Any]]:
        """Per kept shard: name, encoding, kept, total and kept fraction (None when unknown)."""
        rows = []
        for name, e in (self.shards or {}).items():
            frac = e.kept / e.total if e.kept is not None and e.total else None
            rows.append({"shard": name, "encoding": e.encoding, "kept": e.kept, "total": e.total, "fraction": frac})
        return rows

    # -- set algebra

    def __or__(self, other: KeepList) -> KeepList:
        return self._combine(other, "|")

    def __and__(self, other: KeepList) -> KeepList:
        return self._combine(other, "&")

    def __sub__(self, other: KeepList) -> KeepList:
        return self._combine(other, "-")

    def _combine(self, other: KeepList, op: str) -> KeepList:
        if not isinstance(other, KeepList):
            return NotImplemented
        fp_a, fp_b = self.source_fingerprint, other.source_fingerprint
        if fp_a and fp_b and fp_a != fp_b:
            raise ForeignKeepListError(f"cannot combine keep-lists of different sources: {fp_a[:16]} vs {fp_b[:16]}")
        mine = (self.classes is not None, self.shards is not None)
        theirs = (other.classes is not None, other.shards is not None)
        if op != "&" and (mine != theirs or all(mine)):
            raise KeepListError(
                f"'{op}' needs two lists with the same single level (found {self.levels} and {other.levels}); "
                "resolve both against the source index first (KeepList.resolve(index))"
            )
        classes = self.classes
        if self.classes is not None and other.classes is not None:
            classes = self.classes.combine(other.classes, op)
        elif classes is None:
            classes = other.classes
        shards = self.shards
        if self.shards is not None and other.shards is not None:
            shards = _combine_shards(self.shards, other.shards, op)
        elif shards is None:
            shards = other.shards
        prov: dict[str, Any] = {
            "method": {"|": "union", "&": "intersection", "-": "difference"}[op],
            "parents": [self.fingerprint, other.fingerprint],
        }
        if fp_a or fp_b:
            prov["source_fingerprint"] = fp_a or fp_b
        for k in ("num_classes", "num_shards", "num_samples"):
            if self.provenance.get(k) is not None and self.provenance.get(k) == other.provenance.get(k):
                prov[k] = self.provenance[k]
        return KeepList(classes=classes, shards=shards, provenance=prov)

    # -- resolution against a source index

    def resolve(self, index: Any, *, dataset_classes: Sequence[str] | None = None, encoding: str = "keys") -> KeepList:
        """This list as a sample-level list over `index` (a `SourceIndex`): every kept sample of
        every shard, by key (or as a bitmap with ``encoding="bitmap"``). Exact counts follow."""
        self.check_source(index.fingerprint)
        masks = self.masks(index, dataset_classes=dataset_classes)
        prov = dict(self.provenance)
        prov.update(
            source_fingerprint=index.fingerprint, num_shards=len(index.shard_names), num_samples=index.num_samples
        )
        prov["samples_kept"] = int(sum(int(m.sum()) for m in masks.values()))
        if encoding == "bitmap":
            out = KeepList.from_masks(masks, **prov)
        else:
            samples = {}
            for name, m in masks.items():
                keys = index.keys(name)
                samples[name] = [keys[i] for i in np.flatnonzero(m)]
            out = KeepList.from_samples(samples, totals={n: len(m) for n, m in masks.items()}, **prov)
        if self.classes is not None:  # already applied to the samples; kept as provenance only
            out.provenance["resolved_classes"] = self.classes.to_json()
        out.scores = self.scores
        return out

    def masks(
        self, index: Any, *, dataset_classes: Sequence[str] | None = None, names: Iterable[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Per shard of `index` (or of its shards `names` only), the boolean mask of kept samples in index order."""
        classes = dataset_classes if dataset_classes is not None else index.classes
        keep_ids: frozenset[int] | None = None
        if self.classes is not None:
            if index.label_field not in (None, self.classes.label_field):
                raise KeepListError(
                    f"keep-list refers to label field {self.classes.label_field!r}, the index to {index.label_field!r}"
                )
            keep_ids = self.classes.resolve(classes) if classes is not None else self.classes.id_set
        out: dict[str, np.ndarray] = {}
        for name in index.shard_names if names is None else names:
            if not self.keeps_shard(name):
                continue
            n = index.count(name)
            m = np.ones(n, dtype=bool)
            if keep_ids is not None:
                labels = index.labels(name)
                m &= np.isin(labels, np.fromiter(keep_ids, dtype=np.int64, count=len(keep_ids)))
            entry = self.shard(name)
            if entry is not None and entry.encoding == "keys":
                ks = entry.keys()
                m &= np.fromiter((k in ks for k in index.keys(name)), dtype=bool, count=n)
            elif entry is not None and entry.encoding == "bitmap":
                bm = entry.mask()
                if len(bm) != n:
                    raise KeepListError(f"shard {name!r}: bitmap of {len(bm)} samples, index has {n}")
                m &= bm
            if m.any():
                out[name] = m
        return out

    def kept_counts(self, index: Any, *, dataset_classes: Sequence[str] | None = None) -> dict[str, int]:
        """Exact kept samples per shard of `index` (shards with none are left out)."""
        return {n: int(m.sum()) for n, m in self.masks(index, dataset_classes=dataset_classes).items()}

    # -- persistence

    def save(self, url: str, **storage_options: Any) -> str:
        """Write the manifest to `url` (and payload files beside it); returns `url`."""
        from ._keeplist_io import save_keeplist

        return save_keeplist(self, url, **storage_options)

    @classmethod
    def load(cls, url: str, **storage_options: Any) -> KeepList:
        """Read a keep-list; payloads are fetched lazily, one shard at a time."""
        from ._keeplist_io import load_keeplist

        return load_keeplist(url, **storage_options)

    def __repr__(self) -> str:
        parts = []
        if self.classes is not None:
            parts.append(f"classes={len(self.classes)}")
        if self.shards is not None:
            parts.append(f"shards={len(self.shards)}")
        method = self.provenance.get("method")
        if method:
            parts.append(f"method={method!r}")
        return f"KeepList({', '.join(parts)})"

    def __iter__(self) -> Iterator[str]:
        raise TypeError("KeepList is not iterable; use .classes or .shards")


def content_fingerprint(
    classes: dict[str, Any] | None, rows: Iterable[tuple[str, str, int | None, bytes]] | None
) -> str:
    """The keep-list fingerprint from the class level and, per shard in name order, (name,
    encoding, kept, sha256 of the uncompressed payload): computable from a stored shard table
    without reading a payload, so a loaded list's fingerprint is verified, not trusted."""
    h = hashlib.sha256()
    if classes is not None:
        h.update(json.dumps(classes, sort_keys=True).encode())
    for name, encoding, kept, digest in sorted(rows or ()):
        h.update(f"\x1e{name}\x1f{encoding}\x1f{kept}\x1f".encode())
        h.update(digest)
    return h.hexdigest()


def _combine_shards(a: Mapping[str, ShardEntry], b: Mapping[str, ShardEntry], op: str) -> dict[str, ShardEntry]:
    out: dict[str, ShardEntry] = {}
    names = sorted(set(a) | set(b)) if op == "|" else sorted(a)
    for name in names:
        ea, eb = a.get(name), b.get(name)
        if ea is None:
            res = eb if op == "|" else None
        elif eb is None:
            res = ea if op in ("|", "-") else None
        else:
            res = ea.combine(eb, op)
        if res is not None:
            out[name] = res
    return out


def _dedupe(level: ClassLevel) -> ClassLevel:
    seen: set[tuple[str, object]] = set()
    ids: list[int | None] = []
    names: list[str | None] = []
    for k in range(len(level)):
        ident = level._ident(k)
        if ident in seen:
            continue
        seen.add(ident)
        ids.append(level.ids[k])
        names.append(level.names[k])
    return ClassLevel(level.label_field, tuple(ids), tuple(names))


def _base_provenance() -> dict[str, Any]:
    return {
        "method": None,
        "params": {},
        "ratio": None,
        "model_id": None,
        "target_id": None,
        "library_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source_fingerprint": None,
    }


def preview(items: Sequence[object], n: int = 10) -> str:
    """The first `n` items joined by commas, and how many more there are."""
    shown = ", ".join(str(x) for x in items[:n])
    return shown + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def compress(raw: bytes) -> bytes:
    """Payload compression: zlib level 6 (stdlib, no pickle, fast to inflate per shard)."""
    return zlib.compress(raw, 6)
