"""Import the reference code's ``.indices`` files (torch-saved index tensors) as keep-lists.

The reference code (OPTML-Group/DP4TL) writes the kept sample positions of its source file as
a saved tensor. Given the `SourceIndex` those positions refer to (positions in index order,
or in the order of an explicit list of keys), the import is an exact sample-level KeepList.
Files are read with ``torch.load(weights_only=True)``: nothing is unpickled.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import PrunerError
from ..keeplist import KeepList
from .base import Made, SourceInfo, sample_keeplist


def read_indices(path: str) -> tuple[np.ndarray, int | None]:
    """The sorted, unique, non-negative positions a ``.indices`` file holds (an int tensor or list,
    or a bool mask), and the mask's length when it was a mask."""
    import fsspec
    import torch

    with fsspec.open(path, "rb") as f:
        try:
            obj = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a corrupt or unsafe file
            raise PrunerError(f"{path}: not a readable index tensor ({type(exc).__name__}: {exc})") from None
    if isinstance(obj, dict):
        for k in ("indices", "index", "idx"):
            if k in obj:
                obj = obj[k]
                break
    if isinstance(obj, (list, tuple)):
        obj = torch.as_tensor(obj)
    if not isinstance(obj, torch.Tensor) or obj.ndim != 1:
        raise PrunerError(f"{path}: expected a 1-D index tensor, found {type(obj).__name__}")
    if obj.dtype == torch.bool:
        return np.flatnonzero(obj.numpy()), len(obj)
    if obj.is_floating_point() or obj.is_complex():
        raise PrunerError(f"{path}: index tensor has dtype {obj.dtype}, expected integers")
    arr = obj.to(torch.int64).numpy()
    uniq = np.unique(arr)
    if len(uniq) != len(arr):
        raise PrunerError(f"{path}: {len(arr) - len(uniq)} positions are listed more than once")
    if uniq.size and int(uniq[0]) < 0:
        raise PrunerError(f"{path}: position {int(uniq[0])} is negative")
    return uniq, None


def import_indices(path: str, index: Any, *, order: Sequence[str] | None = None, encoding: str = "keys") -> KeepList:
    """A sample-level KeepList of the positions in `path` over `index`.

    Positions count samples in index order (shards by name, samples in shard order), or, with
    `order`, in the order of that list of source keys (e.g. the reference code's file order)."""
    pos, mask_len = read_indices(path)
    src = SourceInfo.from_index(index)
    n = index.num_samples
    if mask_len is not None and mask_len != n:
        raise PrunerError(f"{path}: a mask of {mask_len} entries for {n} indexed samples")
    mask = np.zeros(n, dtype=bool)
    if order is not None:
        if len(order) != n:
            raise PrunerError(f"order lists {len(order)} keys, the index has {n} samples")
        where: dict[str, int] = {}
        for i, k in enumerate(k for s in index.shard_names for k in index.keys(s)):
            if k in where:
                raise PrunerError(f"key {k!r} is in several shards of the index; positions by key are ambiguous")
            where[k] = i
        if pos.size and int(pos[-1]) >= len(order):
            raise PrunerError(f"{path}: position {int(pos[-1])} is beyond the {len(order)} keys of the order")
        try:
            rows = np.array([where[order[int(p)]] for p in pos], dtype=np.int64)
        except KeyError as exc:
            raise PrunerError(f"{path}: key {exc.args[0]!r} of the order is not in the source index") from None
        mask[rows] = True
    else:
        if pos.size and (int(pos[0]) < 0 or int(pos[-1]) >= n):
            raise PrunerError(
                f"{path}: position {int(pos[-1]) if pos[-1] >= n else int(pos[0])} is outside the {n} indexed samples"
            )
        mask[pos] = True
    params = {"file": str(path), "order": "keys" if order is not None else "index"}
    made = Made("imported-indices", round(1 - int(mask.sum()) / n, 6) if n else None, params)
    return sample_keeplist(src, mask, made, None, encoding)
