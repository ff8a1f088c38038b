"""Sample stage: decide per sample, from its label, shard and key, whether the keep-list keeps it.

Formats call `SampleFilter.decide` with what they already know (for a tar member: the key and
position from the first header, before reading the payload); generic streams call it on the
sample dict. Errors name the shard and key; ``on_error="skip"`` counts and logs instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .errors import Dp4tlError, SampleError
from .keeplist import KeepList
from .stats import FilterStats

log = logging.getLogger(__name__)
ON_ERROR = ("raise", "skip")


def label_value(value: Any) -> Any:
    """A label as int or str: tensors and numpy scalars become ints, ``.cls`` bytes are decoded."""
    if type(value) is int or type(value) is str:
        return value
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, (bytes, bytearray)):
        text = bytes(value).decode("utf-8", "replace").strip()
        return int(text) if text.lstrip("-").isdigit() else text
    return value


class SampleFilter:
    """The per-sample keep decision for one keep-list, with counters."""

    def __init__(
        self,
        keep: KeepList,
        *,
        label_field: str | None = None,
        label_fn: Callable[[Any], Any] | None = None,
        key_field: str = "__key__",
        key_fn: Callable[[Any], str] | None = None,
        dataset_classes: Sequence[str] | None = None,
        on_error: str = "raise",
    ) -> None:
        if on_error not in ON_ERROR:
            raise Dp4tlError(f"on_error must be one of {ON_ERROR}, found {on_error!r}")
        self.keep = keep
        self.label_field = label_field or (keep.classes.label_field if keep.classes else None)
        self.label_fn = label_fn
        self.key_field = key_field
        self.key_fn = key_fn
        self.on_error = on_error
        self.stats = FilterStats()
        self._keeps_label = keep.classes.matcher(dataset_classes) if keep.classes is not None else None
        self._all_keys: frozenset[str] | None = None

    @property
    def needs_label(self) -> bool:
        return self._keeps_label is not None

    @property
    def needs_key(self) -> bool:
        return self.keep.shards is not None and any(e.encoding == "keys" for e in self.keep.shards.values())

    def label_of(self, sample: Any, where: str) -> Any:
        if self.label_fn is not None:
            return self.label_fn(sample)
        if isinstance(sample, Mapping):
            if self.label_field in sample:
                return sample[self.label_field]
            raise SampleError(f"{where}: no label field {self.label_field!r} (fields: {sorted(map(str, sample))[:8]})")
        raise SampleError(f"{where}: sample is a {type(sample).__name__}, not a dict; pass label_fn=")

    def key_of(self, sample: Any) -> str | None:
        if self.key_fn is not None:
            return self.key_fn(sample)
        if type(sample) is dict or isinstance(sample, Mapping):
            k = sample.get(self.key_field)
            return str(k) if k is not None else None
        return None

    def decide(
        self,
        *,
        shard: str | None,
        key: str | None,
        position: int | None = None,
        label: Any = None,
        has_label: bool = True,
    ) -> bool:
        """Whether the sample is kept; raises SampleError (or counts a skip) on a missing label."""
        self.stats.seen += 1
        if self.keep.shards is not None:
            if shard is None:
                if not self._key_anywhere(key, _where(shard, key)):
                    self.stats.drop("sample")
                    return False
            else:
                entry = self.keep.shards.get(shard)
                if entry is None:
                    self.stats.drop("shard")
                    return False
                if entry.encoding == "keys" and key is None:
                    return self._error("no key", SampleError(f"{_where(shard, key)}: sample has no {self.key_field!r}"))
                if not entry.contains(key, position):
                    self.stats.drop("sample")
                    return False
        if self._keeps_label is not None:
            if not has_label or label is None:
                return self._error(
                    "no label", SampleError(f"{_where(shard, key)}: no label field {self.label_field!r}")
                )
            try:
                kept = self._keeps_label(label_value(label))
            except Dp4tlError as exc:
                return self._error("bad label", SampleError(f"{_where(shard, key)}: {exc}"))
            if not kept:
                self.stats.drop("class")
                return False
        self.stats.kept += 1
        return True

    def __call__(self, sample: Any, shard: str | None = None, position: int | None = None) -> bool:
        """`decide` for a whole sample dict (or any object, with label_fn / key_fn)."""
        key = self.key_of(sample)
        label = None
        if self._keeps_label is not None:
            if self.label_fn is None and type(sample) is dict and self.label_field in sample:
                label = sample[self.label_field]  # the fast path of label_of
            else:
                try:
                    label = self.label_of(sample, _where(shard, key))
                except SampleError as exc:
                    self.stats.seen += 1
                    return self._error("no label", exc)
        return self.decide(shard=shard, key=key, position=position, label=label)

    def _key_anywhere(self, key: str | None, where: str) -> bool:
        if self._all_keys is None:
            assert self.keep.shards is not None
            if any(e.encoding == "bitmap" for e in self.keep.shards.values()):
                raise SampleError(f"{where}: a bitmap keep-list needs shard names and positions; use an index")
            keys: set[str] = set()
            for e in self.keep.shards.values():
                if e.encoding == "all":
                    raise SampleError(f"{where}: a shard-level keep-list needs each sample's shard; pass shard_fn=")
                keys |= e.keys()
            self._all_keys = frozenset(keys)
        return key in self._all_keys

    def _error(self, reason: str, exc: SampleError) -> bool:
        if self.on_error == "raise":
            raise exc
        self.stats.skip(reason)
        log.warning("skipped: %s", exc)
        return False


def _where(shard: str | None, key: str | None) -> str:
    return f"shard {shard!r} key {key!r}" if shard else f"key {key!r}"
