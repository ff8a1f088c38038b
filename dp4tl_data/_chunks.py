"""The DataLoader dataset behind `features.run_model` (imported only when a model runs).

A module-level class, so that it pickles into spawn and forkserver workers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from .features import image_of, shard_samples


class Chunks(IterableDataset):  # type: ignore[type-arg]
    """Per-shard chunks of decoded images; DataLoader workers take whole shards round-robin."""

    def __init__(self, shards: Sequence[Any], preprocess: Any, chunk: int) -> None:
        self.shards, self.preprocess, self.chunk = list(shards), preprocess, chunk

    def __iter__(self) -> Iterator[tuple[str, list[str], np.ndarray, bool]]:
        info = get_worker_info()
        mine = self.shards if info is None else self.shards[info.id :: info.num_workers]
        for sh in mine:
            keys: list[str] = []
            xs: list[np.ndarray] = []
            for s in shard_samples(sh):
                keys.append(str(s["__key__"]))
                xs.append(self.preprocess.array(image_of(s)))
                if len(xs) == self.chunk:
                    yield sh.name, keys, np.stack(xs), False
                    keys, xs = [], []
            yield sh.name, keys, np.stack(xs) if xs else np.zeros((0, 1, 1, 1), np.float32), True
