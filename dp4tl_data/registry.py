"""The plugin registry: adapters (PrunedStream sources), pruners and indexers.

Plugins are discovered through the entry-point group ``dp4tl_data.plugins``; each entry point
names a ``register(registry)`` function. Ours live in ``plugins/`` (installed as
``dp4tl_data.plugins``); a third party adds an adapter or a pruner from its own package with::

    [project.entry-points."dp4tl_data.plugins"]
    myformat = "my_package.dp4tl:register"
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from .errors import PluginError

log = logging.getLogger(__name__)
GROUP = "dp4tl_data.plugins"


@dataclass(frozen=True)
class Adapter:
    """Wraps one kind of source: `accepts(source)` says whether it can, `wrap(source, keep, **opts)` does."""

    name: str
    accepts: Callable[[Any], bool]
    wrap: Callable[..., Any]
    priority: int = 0


@dataclass(frozen=True)
class Indexer:
    """Builds a SourceIndex from a data spec (paths, URLs, a HF dataset id...)."""

    name: str
    accepts: Callable[[Any], bool]
    build: Callable[..., Any]
    priority: int = 0


@dataclass
class Registry:
    """What the installed plugins provide."""

    adapters: list[Adapter] = field(default_factory=list)
    indexers: list[Indexer] = field(default_factory=list)
    pruners: dict[str, Callable[..., Any]] = field(default_factory=dict)
    loaded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def add_adapter(
        self, name: str, accepts: Callable[[Any], bool], wrap: Callable[..., Any], priority: int = 0
    ) -> None:
        """Register a PrunedStream adapter; the highest priority that accepts a source wins."""
        self.adapters = [a for a in self.adapters if a.name != name] + [Adapter(name, accepts, wrap, priority)]
        self.adapters.sort(key=lambda a: -a.priority)

    def add_indexer(
        self, name: str, accepts: Callable[[Any], bool], build: Callable[..., Any], priority: int = 0
    ) -> None:
        """Register an index builder for `dp4tl index` and `build_index`."""
        self.indexers = [i for i in self.indexers if i.name != name] + [Indexer(name, accepts, build, priority)]
        self.indexers.sort(key=lambda i: -i.priority)

    def add_pruner(self, name: str, fn: Callable[..., Any]) -> None:
        """Register a pruner: a callable returning a KeepList (or a dict of ratio -> KeepList)."""
        self.pruners[name] = fn

    def adapter_for(self, source: Any) -> Adapter:
        for a in self.adapters:
            if a.accepts(source):
                return a
        raise PluginError(
            f"no adapter accepts a {type(source).__module__}.{type(source).__qualname__}; "
            f"installed adapters: {[a.name for a in self.adapters]}"
        )

    def indexer_for(self, spec: Any) -> Indexer:
        for i in self.indexers:
            if i.accepts(spec):
                return i
        raise PluginError(f"no indexer accepts {spec!r}; installed indexers: {[i.name for i in self.indexers]}")

    def pruner(self, name: str) -> Callable[..., Any]:
        try:
            return self.pruners[name]
        except KeyError:
            raise PluginError(f"unknown pruner {name!r}; installed: {sorted(self.pruners)}") from None


_REGISTRY: Registry | None = None


def get_registry() -> Registry:
    """The registry, with every installed plugin loaded (once per process)."""
    global _REGISTRY
    if _REGISTRY is None:
        reg = Registry()
        from .iterable import PrunedIterable

        reg.add_adapter("iterable", _is_iterable, PrunedIterable, priority=-100)
        for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
            try:
                ep.load()(reg)
                reg.loaded.append(ep.name)
            except ImportError as exc:  # an optional dependency that is not installed: expected
                reg.failed[ep.name] = f"{type(exc).__name__}: {exc}"
                log.debug("plugin %s not loaded: %s", ep.name, exc)
            except Exception as exc:  # a broken third-party plugin must not break the others
                reg.failed[ep.name] = f"{type(exc).__name__}: {exc}"
                log.warning("plugin %s failed to load: %s", ep.name, exc)
        _REGISTRY = reg
    return _REGISTRY


def _is_iterable(source: Any) -> bool:
    return hasattr(source, "__iter__") and not isinstance(source, (str, bytes, dict))
