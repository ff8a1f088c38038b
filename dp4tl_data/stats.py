"""Counters every filter keeps: seen, kept, dropped by reason, skipped on error, padded."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class FilterStats:
    """What a filter stage did; `as_dict` is what `stats()` and state dicts show."""

    seen: int = 0
    kept: int = 0
    padded: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)

    def drop(self, reason: str) -> None:
        self.dropped[reason] += 1

    def skip(self, reason: str) -> None:
        self.skipped[reason] += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "seen": self.seen,
            "kept": self.kept,
            "padded": self.padded,
            "dropped": dict(self.dropped),
            "skipped": dict(self.skipped),
        }
