"""The one resume-state protocol every stream follows: versioned, fingerprinted, validated."""

from __future__ import annotations

from typing import Any

from .errors import StateError

STATE_VERSION = 1


def make_state(*, keep: str, world_size: int, epoch: int, position: dict[str, Any]) -> dict[str, Any]:
    """A state dict: version, keep-list fingerprint, world size, epoch and a stream position."""
    return {"version": STATE_VERSION, "keep": keep, "world_size": world_size, "epoch": epoch, "position": position}


def check_state(state: Any, *, keep: str, world_size: int) -> dict[str, Any]:
    """`state` if it fits this stream, else StateError saying 'found X, expected Y'."""
    if not isinstance(state, dict):
        raise StateError(f"state must be a dict, found {type(state).__name__}")
    for field, expected in (("version", STATE_VERSION), ("keep", keep), ("world_size", world_size)):
        found = state.get(field)
        if found != expected:
            raise StateError(f"state {field}: found {found!r}, expected {expected!r}")
    if not isinstance(state.get("epoch"), int) or not isinstance(state.get("position"), dict):
        raise StateError("state lacks an int 'epoch' and a dict 'position'")
    return state
