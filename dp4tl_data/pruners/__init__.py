"""Built-in pruners, registered through the ``dp4tl_data.plugins`` entry point ``pruners``.

Every pruner is ``fn(request: PruneRequest, **params) -> dict[ratio, KeepList]``; a third
party registers more with ``registry.add_pruner(name, fn)`` from its own plugin.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..registry import Registry
from .base import PruneRequest, SourceInfo, Target
from .baselines import moderate_class, moderate_sample, random_class, random_sample
from .fm import feature_mapping
from .lm import label_mapping, reverse_label_mapping
from .votes import VoteCounter, Votes

PRUNERS: dict[str, Callable[..., Any]] = {
    "lm": label_mapping,
    "reverse-lm": reverse_label_mapping,
    "fm": feature_mapping,
    "random-class": random_class,
    "random-sample": random_sample,
    "moderate-class": moderate_class,
    "moderate-sample": moderate_sample,
}

__all__ = ["PRUNERS", "PruneRequest", "SourceInfo", "Target", "VoteCounter", "Votes", "register"]


def register(registry: Registry) -> None:
    """Register the built-in pruners."""
    for name, fn in PRUNERS.items():
        registry.add_pruner(name, fn)
