"""Helpers for the webdataset tests: real tar shards, keys out of loaders (no tests here)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

import numpy as np
from torch.utils.data import DataLoader

from benchmarks.shardgen import ShardSet, write_shards

SIZES = [40, 25, 60, 10, 35, 30]  # unequal on purpose
NCLASSES = 10
KEEP_CLASSES = {0, 2, 3, 7, 9}


def make_shards(root: str, sizes: list[int] = SIZES, seed: int = 0, prefix: str = "shard") -> ShardSet:
    """Real JPEG tar shards (16x16 images, classes mixed across shards)."""
    return write_shards(
        root, nshards=len(sizes), sizes=sizes, nclasses=NCLASSES, image_size=16, seed=seed, prefix=prefix
    )


def write_tar(path: str, samples: Iterable[dict[str, Any]]) -> None:
    """A tar shard of the given webdataset samples (``__key__`` plus ext: bytes)."""
    import webdataset as wds

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with wds.TarWriter(path) as sink:
        for s in samples:
            sink.write(s)


def labelled(prefix: str, n: int, labels: list[int] | None = None) -> list[dict[str, Any]]:
    """`n` small samples with ``.cls``, ``.json`` and a payload of varying size."""
    labels = labels or [i % NCLASSES for i in range(n)]
    return [
        {
            "__key__": f"{prefix}_{i:04d}",
            "bin": bytes([i % 251]) * (100 + 37 * i),
            "cls": str(labels[i]).encode(),
            "json": json.dumps({"label": labels[i], "name": f"c{labels[i]}"}).encode(),
        }
        for i in range(n)
    ]


def keys(samples: Iterable[Any]) -> list[str]:
    """Keys from samples, or from batches whose ``__key__`` is a list."""
    out: list[str] = []
    for s in samples:
        k = s["__key__"] if isinstance(s, dict) else s[0]
        out.extend(k if isinstance(k, (list, tuple)) else [k])
    return out


def loader_keys(ds: Any, num_workers: int) -> list[str]:
    """Keys of every sample `ds` yields through a torch DataLoader with `num_workers`."""
    return keys(DataLoader(ds, batch_size=None, num_workers=num_workers))


def random_keys(shards: ShardSet, fraction: float, seed: int = 1, skip: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """A random `fraction` of each shard's keys (shards in `skip` left out entirely)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, rows in shards.samples.items():
        if name in skip:
            continue
        out[name] = [k for k, _ in rows if rng.random() < fraction]
    return out
