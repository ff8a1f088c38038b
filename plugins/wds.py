"""Placeholder: this plugin's adapter and indexer are being built (see the issue tracker)."""

from __future__ import annotations

from dp4tl_data.registry import Registry


def register(registry: Registry) -> None:
    """Nothing registered yet."""
