"""Who am I in a distributed run: rank, world size, DataLoader worker. Plus stable seeds.

`World` is an argument passed to every stage; only `World.detect()` reads torch or the
environment, so stages stay testable by simulating ranks in one process.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from .errors import Dp4tlError


@dataclass(frozen=True)
class World:
    """One reader's slot: `rank` of `world_size` processes, `worker` of `num_workers` loaders."""

    rank: int = 0
    world_size: int = 1
    worker: int = 0
    num_workers: int = 1

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise Dp4tlError(f"invalid world: rank {self.rank} of world_size {self.world_size}")
        if self.num_workers < 1 or not 0 <= self.worker < self.num_workers:
            raise Dp4tlError(f"invalid world: worker {self.worker} of num_workers {self.num_workers}")

    @property
    def slot(self) -> int:
        """This reader's index among all rank x worker readers (rank-major)."""
        return self.rank * self.num_workers + self.worker

    @property
    def slots(self) -> int:
        """How many readers there are in all."""
        return self.world_size * self.num_workers

    def with_worker(self, worker: int, num_workers: int) -> World:
        """The same rank, seen from DataLoader worker `worker` of `num_workers`."""
        return World(self.rank, self.world_size, worker, num_workers)

    @classmethod
    def detect(cls, rank: int | None = None, world_size: int | None = None) -> World:
        """The current world: torch.distributed if initialised, else RANK/WORLD_SIZE, plus the
        DataLoader worker info when called inside a worker. Explicit arguments win."""
        r, ws = 0, 1
        try:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                r, ws = dist.get_rank(), dist.get_world_size()
            else:
                r, ws = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        except ImportError:
            r, ws = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        if rank is not None:
            r = rank
        if world_size is not None:
            ws = world_size
        worker, num_workers = 0, 1
        try:
            from torch.utils.data import get_worker_info

            info = get_worker_info()
            if info is not None:
                worker, num_workers = info.id, info.num_workers
        except ImportError:
            pass
        return cls(r, ws, worker, num_workers)


def stable_seed(*parts: object) -> int:
    """A 63-bit seed derived from `parts` with SHA-256: the same on every machine and run
    (never Python's salted `hash()`, the time or the pid)."""
    text = "\x1f".join(repr(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") >> 1
