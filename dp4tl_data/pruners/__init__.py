"""Built-in pruners, registered through the ``dp4tl_data.plugins`` entry point ``pruners``."""

from __future__ import annotations

from ..registry import Registry


def register(registry: Registry) -> None:
    """Nothing registered yet."""
