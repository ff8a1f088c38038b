"""torch adapters: DataLoader (rebuilt over the pruned dataset), map-style Dataset (pruned by
index from its labels, no sample loaded), and IterableDataset / plain iterables."""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dp4tl_data.errors import PluginError, SampleError
from dp4tl_data.keeplist import KeepList
from dp4tl_data.members import SampleFilter, label_value
from dp4tl_data.registry import Registry


def register(registry: Registry) -> None:
    registry.add_adapter("torch.DataLoader", _is_loader, prune_loader, priority=50)
    registry.add_adapter("torch.Dataset", _is_map_dataset, prune_dataset, priority=40)
    registry.add_adapter("torch.IterableDataset", _is_iterable, prune_iterable, priority=-50)


@functools.cache
def _has_torch() -> bool:
    """Whether torch is installed; without it no source is a torch object (core-only installs)."""
    return importlib.util.find_spec("torch") is not None


def _is_loader(source: Any) -> bool:
    if not _has_torch():
        return False
    from torch.utils.data import DataLoader

    return isinstance(source, DataLoader)


def _is_map_dataset(source: Any) -> bool:
    if not _has_torch():
        return False
    from torch.utils.data import Dataset, IterableDataset

    if isinstance(source, IterableDataset) or type(source).__module__.startswith(("datasets.", "webdataset.")):
        return False
    return isinstance(source, Dataset) and hasattr(source, "__len__") and hasattr(source, "__getitem__")


def _is_iterable(source: Any) -> bool:
    return _has_torch() and hasattr(source, "__iter__") and not isinstance(source, (str, bytes, dict))


# ----------------------------------------------------------------------------- map-style


class PrunedItems:
    """The kept items of a map-style dataset, by index; `indices` maps back to the source.
    (What `PrunedStream` returns is `PrunedDataset`: this plus torch's `Dataset` base.)"""

    def __init__(self, dataset: Any, indices: np.ndarray, targets: np.ndarray | None, keep: KeepList) -> None:
        self.dataset = dataset
        self.indices = indices
        self.keep = keep
        self.targets = targets[indices].tolist() if targets is not None else None
        if hasattr(dataset, "classes"):
            self.classes = dataset.classes

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        return self.dataset[int(self.indices[i])]

    def __getitems__(self, idx: list[int]) -> list[Any]:
        return [self.dataset[int(self.indices[i])] for i in idx]

    def stats(self) -> dict[str, Any]:
        return {"seen": len(self.dataset), "kept": len(self.indices), "dropped": len(self.dataset) - len(self.indices)}


def dataset_labels(dataset: Any, label_fn: Callable[[int], Any] | None = None) -> np.ndarray | list[Any]:
    """Labels of a map-style dataset without loading samples: `targets`, `labels`, or label_fn(i)."""
    if label_fn is not None:
        return [label_value(label_fn(i)) for i in range(len(dataset))]
    for attr in ("targets", "labels", "_labels", "y"):
        values = getattr(dataset, attr, None)
        if values is not None:
            if hasattr(values, "numpy"):
                values = values.numpy()
            arr = np.asarray(values)
            if len(arr) != len(dataset):
                raise SampleError(f"{type(dataset).__name__}.{attr} has {len(arr)} labels for {len(dataset)} items")
            return arr
    raise SampleError(
        f"{type(dataset).__name__} has no 'targets' or 'labels'; pass label_fn=lambda i: <label of item i>"
    )


def dataset_keys(dataset: Any, key_fn: Callable[[int], str] | None = None) -> list[str]:
    """Sample keys of a map-style dataset: key_fn(i), or ImageFolder-style `samples` paths
    relative to `root`, up to the first dot of the file name (the webdataset convention)."""
    if key_fn is not None:
        return [key_fn(i) for i in range(len(dataset))]
    samples = getattr(dataset, "samples", None) or getattr(dataset, "imgs", None)
    if samples is None:
        raise SampleError(f"{type(dataset).__name__} has no sample keys; pass key_fn=lambda i: <key of item i>")
    root = str(getattr(dataset, "root", ""))
    out = []
    for s in samples:
        path = str(s[0] if isinstance(s, (tuple, list)) else s)
        rel = os.path.relpath(path, root) if root else path
        head, base = os.path.split(rel)
        out.append((head + "/" if head else "").replace(os.sep, "/") + base.split(".", 1)[0])
    return out


def keep_indices(
    dataset: Any,
    keep: KeepList,
    *,
    label_fn: Callable[[int], Any] | None = None,
    key_fn: Callable[[int], str] | None = None,
    dataset_classes: Sequence[str] | None = None,
    match: str = "auto",
) -> tuple[np.ndarray, np.ndarray | None]:
    """Indices of `dataset` that `keep` keeps (sorted), and the dataset's labels when read."""
    n = len(dataset)
    mask = np.ones(n, dtype=bool)
    labels_arr: np.ndarray | None = None
    if keep.classes is not None:
        labels = dataset_labels(dataset, label_fn)
        classes = _classes_for_match(keep, dataset, dataset_classes, match)
        keeps = keep.classes.matcher(classes)
        arr = np.asarray(labels)
        if arr.dtype.kind in "iu":
            ids = np.fromiter((i for i in range(int(arr.max()) + 1 if n else 0) if keeps(i)), dtype=np.int64)
            mask &= np.isin(arr, ids)
            labels_arr = arr
        else:
            mask &= np.fromiter((keeps(label_value(v)) for v in labels), dtype=bool, count=n)
    if keep.shards is not None:
        keys = dataset_keys(dataset, key_fn)
        flt = SampleFilter(keep)
        mask &= np.fromiter((flt.decide(shard=None, key=k) for k in keys), dtype=bool, count=n)
    return np.flatnonzero(mask), labels_arr


def _classes_for_match(keep: KeepList, dataset: Any, given: Sequence[str] | None, match: str) -> Sequence[str] | None:
    if match not in ("auto", "names", "ids"):
        raise PluginError(f"match must be 'auto', 'names' or 'ids', found {match!r}")
    if given is not None or match == "ids":
        return given
    assert keep.classes is not None
    ds_classes = getattr(dataset, "classes", None)
    if match == "names" and ds_classes is None:
        raise PluginError(f"{type(dataset).__name__} has no 'classes'; pass dataset_classes=")
    if ds_classes is not None and keep.classes.name_set and (match == "names" or all(keep.classes.names)):
        return list(ds_classes)
    return None


@functools.cache
def _map_class() -> type:
    from torch.utils.data import Dataset

    class PrunedDataset(PrunedItems, Dataset):  # type: ignore[misc]
        """The kept items of a map-style dataset, by index; `indices` maps back to the source."""

    PrunedDataset.__qualname__ = "PrunedDataset"  # pickled by reference (see __getattr__)
    return PrunedDataset


def prune_dataset(dataset: Any, keep: KeepList, **options: Any) -> Any:
    """A map-style dataset of the kept items, found from labels and keys alone."""
    _check_foreign(keep, options)
    idx, labels = keep_indices(
        dataset,
        keep,
        label_fn=options.pop("label_fn", None),
        key_fn=options.pop("key_fn", None),
        dataset_classes=options.pop("dataset_classes", None),
        match=options.pop("match", "auto"),
    )
    _no_more(options, "map-style Dataset")
    return _map_class()(dataset, idx, labels, keep)


def _check_foreign(keep: KeepList, options: dict[str, Any]) -> None:
    fp = options.pop("source_fingerprint", None)
    keep.check_source(fp, allow_foreign=options.pop("allow_foreign", False))


def _no_more(options: dict[str, Any], what: str) -> None:
    if options:
        raise PluginError(f"unknown options for a {what}: {sorted(options)}")


# ----------------------------------------------------------------------------- iterable


@functools.cache
def _iterable_class() -> type:
    from torch.utils.data import IterableDataset

    from dp4tl_data.iterable import PrunedIterable

    class PrunedIterableDataset(PrunedIterable, IterableDataset):  # type: ignore[misc]
        """PrunedIterable that a torch DataLoader runs in iterable mode, split over its workers."""

    # pickled by reference to this module's attribute (see __getattr__): spawn/forkserver workers need that
    PrunedIterableDataset.__qualname__ = "PrunedIterableDataset"
    return PrunedIterableDataset


def __getattr__(name: str) -> Any:
    """The torch dataset classes are made on first use, so that loading this plugin needs no torch."""
    if name == "PrunedIterableDataset":
        return _iterable_class()
    if name == "PrunedDataset":
        return _map_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def prune_iterable(source: Any, keep: KeepList, **options: Any) -> Any:
    _check_foreign(keep, options)
    return _iterable_class()(source, keep, **options)


# ----------------------------------------------------------------------------- DataLoader


def prune_loader(loader: Any, keep: KeepList, **options: Any) -> Any:
    """A DataLoader like `loader` (same batching, workers, collate, sampler kind, seeds) over
    the pruned dataset."""
    from torch.utils.data import (
        BatchSampler,
        DataLoader,
        DistributedSampler,
        IterableDataset,
        RandomSampler,
        SequentialSampler,
    )

    ds = loader.dataset
    kwargs: dict[str, Any] = dict(
        batch_size=loader.batch_size,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        generator=loader.generator,
        persistent_workers=loader.persistent_workers,
        pin_memory_device=loader.pin_memory_device,
    )
    if loader.num_workers > 0:
        kwargs["prefetch_factor"] = loader.prefetch_factor
    if hasattr(loader, "in_order"):
        kwargs["in_order"] = loader.in_order
    if isinstance(ds, IterableDataset):
        return DataLoader(prune_iterable(ds, keep, **options), **kwargs)
    if loader.batch_size is None and loader.batch_sampler is not None:
        raise PluginError(
            "the DataLoader uses a custom batch_sampler; prune its dataset with PrunedStream(dataset, keep) and rebuild"
        )
    if loader.batch_sampler is not None and type(loader.batch_sampler) is not BatchSampler:
        raise PluginError(
            f"cannot carry a {type(loader.batch_sampler).__name__} over; prune the dataset with PrunedStream(dataset, keep) and rebuild"
        )
    pruned = prune_dataset(ds, keep, **options)
    sampler = loader.sampler
    if type(sampler) is SequentialSampler:
        kwargs["shuffle"] = False
    elif type(sampler) is RandomSampler:
        if sampler.replacement or sampler._num_samples is not None:
            kwargs["sampler"] = RandomSampler(pruned, replacement=sampler.replacement, generator=sampler.generator)
        else:
            kwargs["shuffle"] = True
            kwargs["generator"] = sampler.generator if sampler.generator is not None else loader.generator
    elif isinstance(sampler, DistributedSampler):
        new: DistributedSampler[Any] = DistributedSampler(
            pruned,
            num_replicas=sampler.num_replicas,
            rank=sampler.rank,
            shuffle=sampler.shuffle,
            seed=sampler.seed,
            drop_last=sampler.drop_last,
        )
        new.set_epoch(sampler.epoch)
        kwargs["sampler"] = new
    else:
        raise PluginError(
            f"cannot carry a {type(sampler).__name__} over to the pruned dataset; prune the dataset with "
            "PrunedStream(dataset, keep) and build the sampler yourself"
        )
    return DataLoader(pruned, **kwargs)
