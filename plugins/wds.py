"""WebDataset: prune tar shards while they stream, and never pay for a pruned sample.

    loader = PrunedStream(wds.WebDataset(urls), keep, index="source.idx")    # or a list of URLs
    loader = PrunedStream(DataLoader(wds.WebDataset(urls), batch_size=64, num_workers=4), keep, index=...)

or as a stage in your own pipeline, in place of split_by_node, split_by_worker and
tarfile_to_samples::

    wds.DataPipeline(wds.SimpleShardList(urls), pruned_samples(keep, index=idx), wds.decode("pil"), ...)

With an index (`dp4tl index SHARDS -o source.idx`, or `index_shards`), fully pruned shards are
never opened, only kept samples' byte ranges are read, every rank yields exactly ``len()``
samples, and ``state_dict()`` resumes mid-epoch. Without one, a streaming filter decides at
each sample's first tar header. Options (``PrunedStream(..., **options)``): ``index``,
``root``, ``world``, ``uneven``, ``on_error``, ``label_field``, ``dataset_classes``,
``shuffle``, ``shuffle_buffer``, ``seed``, ``batch_size``, ``select`` (webdataset's
``select_files``), ``coalesce_gap``, ``concurrency``, ``readahead``, ``strict_identity``, ``storage_options``,
``allow_commands``, ``allow_foreign``.

This module imports neither webdataset nor torch until a webdataset source is wrapped.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from dp4tl_data.keeplist import KeepList
from dp4tl_data.registry import Registry

from .wds_index import accepts as accepts_spec
from .wds_index import build, index_shards


def register(registry: Registry) -> None:
    registry.add_indexer("webdataset", accepts_spec, build)
    registry.add_adapter("webdataset", accepts, wrap, priority=60)


def accepts(source: Any) -> bool:
    """Shard URLs (``.tar``, brace patterns, ``pipe:``), a webdataset SourceIndex (or its folder), a webdataset
    pipeline, or a torch DataLoader over one."""
    if isinstance(source, str):
        return _tar_url(source) or _index_url(source)
    if isinstance(source, (list, tuple)):
        return bool(source) and all(isinstance(s, str) and _tar_url(s) for s in source)
    if type(source).__name__ == "SourceIndex":
        return getattr(source, "kind", None) == "webdataset"
    data = sys.modules.get("torch.utils.data")
    if data is not None and isinstance(source, data.DataLoader):
        return not isinstance(source.dataset, (str, list, tuple)) and accepts(source.dataset)
    if type(source).__module__.startswith("webdataset") and hasattr(source, "pipeline"):
        from .wds_pipeline import TAR_STAGES

        return any(getattr(s, "f", None) in TAR_STAGES for s in source.pipeline)
    return False


def _tar_url(url: str) -> bool:
    return url.endswith(".tar") or (url.startswith("pipe:") and ".tar" in url)


def _index_url(url: str) -> bool:
    """An index folder: named ``*.idx``, or a local folder holding an ``index.json``."""
    return url.rstrip("/").endswith(".idx") or ("://" not in url and os.path.isfile(os.path.join(url, "index.json")))


def wrap(source: Any, keep: KeepList, **options: Any) -> Any:
    """A PrunedWebDataset (or, for a DataLoader, a PrunedLoader) of the kept samples of `source`."""
    from .wds_pipeline import wrap as wrap_source

    return wrap_source(source, keep, **options)


def pruned_samples(keep: KeepList, **options: Any) -> Any:
    """A webdataset pipeline stage yielding the kept samples of the shards it is given
    (``{"url": ...}`` from ``wds.SimpleShardList``), or a first stage reading the index's shards."""
    from .wds_pipeline import make_reader

    return make_reader(keep, None, options)


__all__ = ["accepts", "build", "index_shards", "pruned_samples", "register", "wrap"]
