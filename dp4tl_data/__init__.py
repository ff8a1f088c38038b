"""dp4tl-data: prune a pretraining source for a target task, and stream only what is kept.

keep = KeepList.load("keep.json")
loader = PrunedStream(loader, keep)
"""

from ._version import __version__
from .errors import (
    ClassMismatchError,
    Dp4tlError,
    ForeignKeepListError,
    IndexFileError,
    KeepListError,
    PluginError,
    PrunerError,
    SampleError,
    ShardError,
    StateError,
)
from .index import SourceIndex
from .keeplist import KeepList
from .registry import get_registry
from .stream import PrunedStream
from .world import World

__all__ = [
    "ClassMismatchError",
    "Dp4tlError",
    "ForeignKeepListError",
    "IndexFileError",
    "KeepList",
    "KeepListError",
    "PluginError",
    "PrunedStream",
    "PrunerError",
    "SampleError",
    "ShardError",
    "SourceIndex",
    "StateError",
    "World",
    "__version__",
    "get_registry",
]
assert __all__ == sorted(__all__, key=str.lower) or __all__ == sorted(__all__)
