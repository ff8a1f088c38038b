"""Keep decisions on Arrow columns, vectorised: labels (ClassLabel names or int ids) and keys.

Both the map-style and the streaming stage decide here, from the key and label columns alone,
before anything is decoded. Every error names `where` (the data file or dataset at fault).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dp4tl_data.errors import ClassMismatchError, KeepListError, SampleError
from dp4tl_data.keeplist import KeepList, ShardEntry
from dp4tl_data.stats import FilterStats

KEY_FIELD = "__key__"


def class_names(features: Any, label_field: str) -> list[str] | None:
    """The ClassLabel names of `label_field` in HF `features`, or None when it is not a ClassLabel."""
    if features is None:
        return None
    feat = features.get(label_field.split(".", 1)[0])
    for part in label_field.split(".")[1:]:
        feat = feat.get(part) if isinstance(feat, dict) else None
    names = getattr(feat, "names", None)
    return list(names) if names is not None and type(feat).__name__ == "ClassLabel" else None


def column(table: pa.Table, name: str, where: str, what: str = "label") -> pa.ChunkedArray:
    """Column `name` of `table`; ``a.b`` reads field ``b`` of struct column ``a`` (``json.label``)."""
    top, *rest = name.split(".")
    if top not in table.column_names:
        raise SampleError(f"{where}: no {what} column {name!r} (columns: {sorted(table.column_names)})")
    col: Any = table.column(top)
    for part in rest:
        if not pa.types.is_struct(col.type) or col.type.get_field_index(part) < 0:
            raise SampleError(f"{where}: no {what} column {name!r} (column {top!r} has type {col.type})")
        col = pc.struct_field(col, part)
    return col  # type: ignore[no-any-return]


@dataclass(frozen=True)
class LabelSet:
    """The label values a class-level keep-list keeps, as Arrow value sets for `is_in`."""

    label_field: str
    ids: pa.Array
    names: pa.Array

    @classmethod
    def resolve(cls, keep: KeepList, label_field: str, dataset_classes: Sequence[str] | None, where: str) -> LabelSet:
        """Resolve the list's classes against the dataset's class names (ClassLabel or given);
        names the dataset lacks raise ClassMismatchError listing them."""
        assert keep.classes is not None
        try:
            if dataset_classes is not None:
                ids = sorted(keep.classes.resolve(dataset_classes))
                names = sorted({dataset_classes[i] for i in ids} | {n for n in keep.classes.names if n is not None})
            else:
                ids = sorted(keep.classes.id_set)
                names = sorted(keep.classes.name_set)
        except ClassMismatchError as exc:
            raise ClassMismatchError(f"{where}: {exc}") from None
        return cls(label_field, pa.array(ids, pa.int64()), pa.array(names, pa.string()))

    def mask(self, labels: pa.ChunkedArray | pa.Array, where: str) -> np.ndarray:
        """Which of `labels` are kept; labels are int ids or str names."""
        typ = labels.type
        if pa.types.is_dictionary(typ):
            labels = labels.cast(typ.value_type)
            typ = typ.value_type
        if pa.types.is_integer(typ):
            if len(self.ids) == 0 and len(self.names):
                raise ClassMismatchError(
                    f"{where}: {self.label_field!r} holds int ids but the keep-list names classes only "
                    f"({self.names[0].as_py()!r}, ...); pass dataset_classes= (the class names in id order)"
                )
            hit = pc.is_in(labels, value_set=self.ids.cast(typ))
        elif pa.types.is_string(typ) or pa.types.is_large_string(typ):
            if len(self.names) == 0 and len(self.ids):
                raise ClassMismatchError(
                    f"{where}: {self.label_field!r} holds class names but the keep-list has ids only; "
                    "pass dataset_classes= (the class names in id order)"
                )
            hit = pc.is_in(labels, value_set=self.names)
        else:
            raise SampleError(f"{where}: label column {self.label_field!r} has type {typ}, expected int ids or names")
        return _to_numpy(hit)

    def missing(self, labels: pa.ChunkedArray | pa.Array) -> list[str]:
        """Kept classes that never occur in `labels` (for sources whose labels are all known)."""
        present = pc.unique(labels)
        if pa.types.is_integer(labels.type):
            gone = self.ids.filter(pc.invert(pc.is_in(self.ids, value_set=present.cast(pa.int64()))))
            return [f"id {i}" for i in gone.to_pylist()]
        gone = self.names.filter(pc.invert(pc.is_in(self.names, value_set=present.cast(pa.string()))))
        return [str(n) for n in gone.to_pylist()]


def _to_numpy(arr: pa.ChunkedArray | pa.Array) -> np.ndarray:
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    return np.asarray(arr.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)


def first_null(col: pa.ChunkedArray | pa.Array, keys: pa.ChunkedArray | pa.Array | None) -> str:
    """A description of the first null in `col`: its key, or its row."""
    nulls = _to_numpy(col.is_null())
    i = int(np.argmax(nulls))
    return f"key {keys[i].as_py()!r}" if keys is not None else f"row {i}"


@dataclass
class KeepRule:
    """One keep-list's vectorised decision for the rows of one dataset.

    `mask(table, shard, start)` says which rows of `table` are kept: rows of data file `shard`
    (a stable name, or None when unknown) starting at row `start` of that file.
    """

    keep: KeepList
    labels: LabelSet | None
    key_field: str = KEY_FIELD
    on_error: str = "raise"
    stats: FilterStats = field(default_factory=FilterStats)
    _value_sets: dict[str, pa.Array] = field(default_factory=dict, repr=False)
    _matched: dict[str, set[str]] = field(default_factory=dict, repr=False)
    _all_keys: pa.Array | None = field(default=None, repr=False)

    @property
    def needs_key(self) -> bool:
        return self.keep.shards is not None and any(e.encoding == "keys" for e in self.keep.shards.values())

    @property
    def columns(self) -> list[str]:
        """The top-level columns a decision reads."""
        out = []
        if self.labels is not None:
            out.append(self.labels.label_field.split(".", 1)[0])
        if self.needs_key:
            out.append(self.key_field)
        return out

    def mask(self, table: pa.Table, shard: str | None, start: int, where: str) -> np.ndarray:
        """Kept rows of `table`, counted in `stats` (seen, kept, dropped by reason)."""
        n = table.num_rows
        self.stats.seen += n
        keep = np.ones(n, dtype=bool)
        if self.keep.shards is not None:
            keep &= self._shard_mask(table, shard, start, where)
            self.stats.dropped["sample" if shard is None or self.keep.keeps_shard(shard) else "shard"] += int(
                n - keep.sum()
            )
        if self.labels is not None and keep.any():
            labels = column(table, self.labels.label_field, where)
            if labels.null_count:
                keys = table.column(self.key_field) if self.key_field in table.column_names else None
                exc = SampleError(f"{where}: {first_null(labels, keys)} has no label {self.labels.label_field!r}")
                if self.on_error == "raise":
                    raise exc
                nulls = _to_numpy(labels.is_null())
                self.stats.skipped["no label"] += int((keep & nulls).sum())
                keep &= ~nulls
            by_class = self.labels.mask(labels, where)
            self.stats.dropped["class"] += int((keep & ~by_class).sum())
            keep &= by_class
        self.stats.kept += int(keep.sum())
        return keep

    def _shard_mask(self, table: pa.Table, shard: str | None, start: int, where: str) -> np.ndarray:
        assert self.keep.shards is not None
        n = table.num_rows
        if shard is None:
            every = self._every_key(where)
            return _to_numpy(pc.is_in(self._keys(table, where), value_set=every))
        entry = self.keep.shards.get(shard)
        if entry is None:
            return np.zeros(n, dtype=bool)
        if entry.encoding == "all":
            return np.ones(n, dtype=bool)
        if entry.encoding == "keys":
            keys = self._keys(table, where)
            hit = _to_numpy(pc.is_in(keys, value_set=self._value_set(entry)))
            self._check_unique(shard, keys.filter(pa.array(hit)).to_pylist(), where)
            return hit
        bits = entry.mask()
        if start + n > len(bits):
            raise KeepListError(
                f"{where}: bitmap of shard {shard!r} covers {len(bits)} rows, the file has more; "
                "the file changed since it was indexed"
            )
        return np.asarray(bits[start : start + n], dtype=bool)

    def _check_unique(self, shard: str, hits: list[str], where: str) -> None:
        """A kept key seen twice in one file would be yielded twice and crowd out another."""
        seen = self._matched.setdefault(shard, set())
        for k in hits:
            if k in seen:
                raise SampleError(f"{where}: key {k!r} appears twice in shard {shard!r}")
            seen.add(k)

    def _keys(self, table: pa.Table, where: str) -> pa.ChunkedArray:
        return column(table, self.key_field, where, what="key")

    def _value_set(self, entry: ShardEntry) -> pa.Array:
        vs = self._value_sets.get(entry.name)
        if vs is None:
            vs = self._value_sets[entry.name] = pa.array(sorted(entry.keys()), pa.string())
        return vs

    def _every_key(self, where: str) -> pa.Array:
        if self._all_keys is None:
            assert self.keep.shards is not None
            keys: set[str] = set()
            for e in self.keep.shards.values():
                if e.encoding != "keys":
                    raise KeepListError(
                        f"{where}: a shard-level ({e.encoding}) keep-list needs each row's data file; "
                        "keep the '__url__' column or pass shard_field="
                    )
                keys |= e.keys()
            self._all_keys = pa.array(sorted(keys), pa.string())
        return self._all_keys


def make_rule(
    keep: KeepList,
    features: Any,
    *,
    label_field: str | None,
    key_field: str,
    dataset_classes: Sequence[str] | None,
    where: str,
    on_error: str = "raise",
) -> KeepRule:
    """The rule for `keep` on a dataset with HF `features` (ClassLabel names resolve names and ids)."""
    if on_error not in ("raise", "skip"):
        raise SampleError(f"on_error must be 'raise' or 'skip', found {on_error!r}")
    labels = None
    if keep.classes is not None:
        lf = label_field or keep.classes.label_field
        if features is not None and lf.split(".", 1)[0] not in features:
            raise SampleError(f"{where}: no label column {lf!r} (columns: {sorted(features)})")
        names = list(dataset_classes) if dataset_classes is not None else class_names(features, lf)
        labels = LabelSet.resolve(keep, lf, names, where)
    return KeepRule(keep, labels, key_field=key_field, on_error=on_error)
