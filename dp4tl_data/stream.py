"""PrunedStream: one call that gives an existing source back with only the kept samples."""

from __future__ import annotations

from typing import Any

from .keeplist import KeepList
from .registry import get_registry


def PrunedStream(source: Any, keep: KeepList | str, **options: Any) -> Any:  # noqa: N802 - reads as a type
    """`source`, minus the samples `keep` prunes, as the same kind of object where possible.

    `source` may be a torch DataLoader or map-style Dataset, a webdataset pipeline, a Hugging
    Face dataset, or any iterable of dict samples; the first installed adapter that accepts it
    does the work. `keep` is a KeepList or the URL of one. Options are the adapter's (common
    ones: ``label_field``, ``label_fn``, ``key_fn``, ``world``, ``uneven``, ``on_error``,
    ``allow_foreign``).
    """
    if isinstance(keep, str):
        keep = KeepList.load(keep)
    if not isinstance(keep, KeepList):
        raise TypeError(f"keep must be a KeepList or a URL, found {type(keep).__name__}")
    adapter = get_registry().adapter_for(source)
    return adapter.wrap(source, keep, **options)
