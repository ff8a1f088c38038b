"""Which data files a HF dataset spec has, and which of them a keep-list keeps.

A spec is a hub repo id (``user/name``, ``hf://datasets/user/name[@rev]``), a local folder, or
data files (paths, globs or URLs). Files are listed without reading any of them: a hub repo
with one listing call, a folder with a directory walk, URLs as given. Splits follow the
`datasets` conventions (``data/train-00000-of-00004.parquet``, ``train/``, ``*_train.*``).
Each file is one shard; its stable name is its path relative to the dataset root (the repo
root, the folder, or the common directory of the URLs).
"""

from __future__ import annotations

import glob
import logging
import os
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dp4tl_data.errors import PluginError, ShardError
from dp4tl_data.keeplist import KeepList
from dp4tl_data.shards import ShardRef, filter_shards
from dp4tl_data.urls import common_root, stable_name

log = logging.getLogger(__name__)

BUILDERS = {
    ".parquet": "parquet",
    ".tar": "webdataset",
    ".json": "json",
    ".jsonl": "json",
    ".ndjson": "json",
    ".csv": "csv",
    ".tsv": "csv",
    ".arrow": "arrow",
    ".txt": "text",
}
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
HUB_PREFIX = "hf://datasets/"


@dataclass(frozen=True)
class Source:
    """A dataset's files for one split: `builder` (``parquet``, ``webdataset``...), `root`, and
    the files as ShardRefs (stable name, URL) in name order."""

    builder: str
    root: str
    files: list[ShardRef]
    spec: str

    @property
    def urls(self) -> list[str]:
        return [f.url for f in self.files]


def is_repo_id(spec: str) -> bool:
    """``user/name`` that is not a local path, or an ``hf://datasets/`` URL."""
    return spec.startswith(HUB_PREFIX) or (bool(REPO_ID.match(spec)) and not os.path.exists(spec))


def builder_for(urls: Sequence[str], where: str) -> str:
    """The `datasets` builder for these files, from their extensions (one format per dataset)."""
    found = {BUILDERS.get(_ext(u)) for u in urls}
    if None in found or len(found) != 1:
        exts = sorted({_ext(u) for u in urls})
        raise PluginError(f"{where}: cannot stream files with extensions {exts}; supported: {sorted(BUILDERS)}")
    return str(found.pop())


def _ext(url: str) -> str:
    base = url.rsplit("/", 1)[-1].split("?", 1)[0]
    for comp in (".gz", ".bz2", ".xz", ".zst"):
        if base.endswith(comp):
            base = base[: -len(comp)]
    return os.path.splitext(base)[1].lower()


def split_files(
    listing: Iterable[str],
    split: str,
    *,
    data_files: str | Sequence[str] | Mapping[str, str | Sequence[str]] | None = None,
    data_dir: str | None = None,
) -> list[str]:
    """The paths of `listing` (relative to a dataset root) that form `split`, by the `datasets`
    rules: explicit `data_files` patterns, else the default split patterns. No I/O."""
    from datasets.data_files import DataFilesList, get_data_patterns, sanitize_patterns
    from fsspec.implementations.memory import MemoryFileSystem

    fs = MemoryFileSystem()
    root = f"/dp4tl-listing-{uuid.uuid4().hex}"
    base = f"memory://{root}" + (f"/{data_dir.strip('/')}" if data_dir else "")
    try:
        for path in listing:
            fs.pipe_file(f"{root}/{path.lstrip('/')}", b"")
        try:
            patterns = sanitize_patterns(data_files) if data_files is not None else get_data_patterns(base)
        except FileNotFoundError:
            raise ShardError(f"no data files found under {data_dir or 'the dataset root'}") from None
        if split not in patterns:
            raise ShardError(f"split {split!r} not found; splits: {sorted(map(str, patterns))}")
        try:
            found = DataFilesList.from_patterns(
                list(patterns[split]), base_path=base, allowed_extensions=list(BUILDERS)
            )
        except FileNotFoundError as exc:
            raise ShardError(f"split {split!r}: {exc}") from None
        prefix = f"memory://{root}/"
        return sorted(str(u)[len(prefix) :] for u in found)
    finally:
        if fs.exists(root):
            fs.rm(root, recursive=True)


def hub_root(spec: str, revision: str | None = None) -> tuple[str, str, str]:
    """(repo id, revision, root URL) of a hub spec ``user/name`` or ``hf://datasets/user/name@rev``."""
    rest = spec[len(HUB_PREFIX) :] if spec.startswith(HUB_PREFIX) else spec
    parts = rest.strip("/").split("/")
    if len(parts) < 2:
        raise PluginError(f"{spec!r} is not a hub dataset id (expected user/name)")
    name, _, rev = parts[1].partition("@")
    repo = f"{parts[0]}/{name}"
    rev = revision or rev or "main"
    return repo, rev, f"{HUB_PREFIX}{repo}@{rev}"


def list_hub_files(repo: str, revision: str) -> list[str]:
    """Every file path in hub dataset `repo` at `revision` (one listing call, no download)."""
    from huggingface_hub import HfApi, constants

    if constants.is_offline_mode():
        raise ShardError(f"hf dataset {repo!r}: cannot list its files, the hub is offline (HF_HUB_OFFLINE is set)")
    try:
        return list(HfApi().list_repo_files(repo, repo_type="dataset", revision=revision))
    except Exception as exc:  # network, auth, missing repo: all become one line naming the repo
        raise ShardError(
            f"hf dataset {repo!r}@{revision}: cannot list its files ({type(exc).__name__}: {exc})"
        ) from None


def local_listing(folder: str) -> list[str]:
    """Every file under `folder`, relative, with forward slashes."""
    out = []
    for dirpath, _, names in os.walk(folder):
        for n in names:
            out.append(os.path.relpath(os.path.join(dirpath, n), folder).replace(os.sep, "/"))
    return sorted(out)


def expand_data_files(data_files: str | Sequence[str]) -> list[str]:
    """Local paths and globs expanded (sorted); URLs are kept as they are, nothing is requested."""
    items = [data_files] if isinstance(data_files, str) else list(data_files)
    out: list[str] = []
    for item in items:
        if "://" in item:
            out.append(item)
        elif glob.has_magic(item):
            matched = sorted(glob.glob(item, recursive=True))
            if not matched:
                raise ShardError(f"{item!r}: no files match")
            out.extend(os.path.abspath(m) for m in matched)
        else:
            if not os.path.exists(item):
                raise ShardError(f"{item!r}: no such file")
            out.append(os.path.abspath(item))
    return out


def resolve_source(
    spec: str | Sequence[str] | None,
    *,
    split: str = "train",
    data_files: Any = None,
    data_dir: str | None = None,
    revision: str | None = None,
    root: str | None = None,
    builder: str | None = None,
) -> Source:
    """The files of `split` of a hub repo, local folder or data files, as a Source."""
    where = spec if isinstance(spec, str) else "data_files"
    if isinstance(spec, str) and is_repo_id(spec):
        repo, rev, base = hub_root(spec, revision)
        rel = split_files(list_hub_files(repo, rev), split, data_files=data_files, data_dir=data_dir)
        urls = [f"{base}/{p}" for p in rel]
    elif isinstance(spec, str) and os.path.isdir(spec):
        base = os.path.abspath(spec)
        rel = split_files(local_listing(base), split, data_files=data_files, data_dir=data_dir)
        urls = [f"{base}/{p}" for p in rel]
    else:
        files = data_files if spec is None else spec
        if isinstance(files, Mapping):
            if split not in files:
                raise ShardError(f"split {split!r} not in data_files (splits: {sorted(files)})")
            files = files[split]
        if files is None:
            raise PluginError("give a hub repo id, a folder, or data_files")
        urls = expand_data_files(files)
        base = common_root(urls)
    if not urls:
        raise ShardError(f"{where}: split {split!r} has no data files")
    base = root if root is not None else base
    refs = sorted((ShardRef(stable_name(u, base), u) for u in urls), key=lambda r: r.name)
    return Source(builder or builder_for(urls, str(where)), base, refs, str(where))


def source_from_urls(urls: Sequence[str], builder: str, root: str | None = None) -> Source:
    """A Source from URLs a dataset already holds (``hf://`` URLs are named relative to the repo root)."""
    if root is None:
        hub = [u for u in urls if u.startswith(HUB_PREFIX)]
        root = hub_root(hub[0])[2] if hub and len(hub) == len(urls) else common_root(list(urls))
        if hub and not all(u.startswith(root + "/") for u in urls):
            root = common_root(list(urls))
    refs = sorted((ShardRef(stable_name(u, root), u) for u in urls), key=lambda r: r.name)
    return Source(builder, root, refs, urls[0] if urls else "")


def kept_files(source: Source, keep: KeepList, counts: Mapping[str, int] | None = None) -> list[ShardRef]:
    """The files that may hold kept rows (fully pruned files dropped here, before any is read),
    with their kept counts when `counts` (from an index) or the keep-list knows them."""
    refs = []
    for r in source.files:
        kept = counts.get(r.name, 0) if counts is not None else _listed_count(keep, r.name)
        refs.append(ShardRef(r.name, r.url, kept, r.total))
    out = filter_shards(refs, keep)
    log.info("%s: %d of %d files kept", source.spec, len(out), len(source.files))
    return out


def _listed_count(keep: KeepList, name: str) -> int | None:
    """Kept rows of file `name` when a sample-level list (with no class level) says so."""
    entry = keep.shard(name)
    if entry is None or keep.classes is not None or entry.encoding == "all":
        return None
    return entry.kept


def probe(builder: str, url: str, split: str, storage_options: dict[str, Any] | None = None) -> Any:
    """The streaming dataset of one (kept) file, for its features and info; errors name the file."""
    import copy

    from datasets import load_dataset

    try:
        return load_dataset(
            builder,
            data_files={split: [url]},
            split=split,
            streaming=True,
            storage_options=copy.deepcopy(storage_options),  # datasets adds keys to it
        )
    except Exception as exc:  # offline hub, missing file, bad schema: one line naming the file
        raise ShardError(f"{url}: cannot read its schema ({type(exc).__name__}: {exc})") from None
