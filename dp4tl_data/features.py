"""Stream a dataset through a model: logits and embeddings per shard, aligned with the keys.

Data specs: tar shard globs or brace patterns (local or fsspec URLs), a source index folder
(its shards), or an image folder (``root/<class>/<image>``; each sub-folder acts as a shard).
A features folder holds, per shard, ``<shard>.keys.json`` and ``<shard>.<kind>.npy`` (``kind``
is ``logits`` or ``emb``), plus ``features.json`` naming the model; a shard whose keys file
exists is done, so an interrupted run resumes shard by shard.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import Dp4tlError, PrunerError, SampleError, ShardError, require
from .members import label_value
from .urls import check_shard_name, check_url, common_root, join_root, stable_name

log = logging.getLogger(__name__)

FORMAT = "dp4tl-features"
VERSION = 1
KINDS = ("logits", "emb")
IMAGE_EXTS = ("png", "jpg", "jpeg", "webp", "ppm", "pgm", "bmp", "tif", "tiff")


class FeatureError(Dp4tlError):
    """A features folder is missing, corrupt, or made by another model."""


# ----------------------------------------------------------------------------- data specs


@dataclass(frozen=True)
class Shard:
    """One unit of data: stable `name`, the `url` to read, and whether it is a tar or a folder."""

    name: str
    url: str
    kind: str = "tar"


@dataclass(frozen=True)
class DataSpec:
    """What a data spec resolved to: shards in name order, plus the source index if one was given."""

    spec: str
    shards: tuple[Shard, ...]
    index: Any = None

    @property
    def label_field(self) -> str | None:
        return self.index.label_field if self.index is not None else None


def resolve(spec: str | Sequence[str]) -> DataSpec:
    """A data spec as shards: an index folder, an image folder, or tar globs / brace patterns / URLs."""
    specs = [spec] if isinstance(spec, str) else list(spec)
    if not specs:
        raise PrunerError("empty data spec")
    text = " ".join(specs)
    if len(specs) == 1 and _is_index(specs[0]):
        from .index import SourceIndex

        idx = SourceIndex.load(specs[0])
        shards = tuple(Shard(n, check_url(join_root(idx.root, n))) for n in idx.shard_names)
        return DataSpec(text, shards, idx)
    if len(specs) == 1 and os.path.isdir(specs[0]):
        return DataSpec(text, _folder_shards(specs[0]))
    urls: list[str] = []
    for s in specs:
        urls += _expand(s)
    if not urls:
        raise PrunerError(f"data spec {text!r} matches no shard")
    urls = sorted(set(urls))
    root = common_root(urls)
    shards = tuple(Shard(stable_name(u, root), check_url(u)) for u in urls)
    return DataSpec(text, tuple(sorted(shards, key=lambda s: s.name)))


def _is_index(path: str) -> bool:
    import fsspec

    try:
        fs, p = fsspec.core.url_to_fs(path)
        return bool(fs.exists(f"{p.rstrip('/')}/index.json"))
    except (OSError, ValueError):
        return False


def _expand(spec: str) -> list[str]:
    import fsspec

    braceexpand: Any = require("braceexpand", "webdataset")

    out: list[str] = []
    for s in braceexpand.braceexpand(spec):
        check_url(s)
        if any(ch in s for ch in "*?["):
            fs, _ = fsspec.core.url_to_fs(s)
            proto = s.split("://", 1)[0] + "://" if "://" in s else ""
            found = sorted(fs.glob(s))
            out += [f"{proto}{p}" if proto and "://" not in p else p for p in found]
        else:
            out.append(s)
    return out


def _folder_shards(root: str) -> tuple[Shard, ...]:
    root = root.rstrip("/")
    subdirs = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    shards = [Shard(check_shard_name(d), os.path.join(root, d), "folder") for d in subdirs]
    if any(_is_image(f) for f in os.listdir(root)):
        shards.insert(0, Shard("_root", root, "folder"))
    if not shards:
        raise PrunerError(f"{root}: an image folder needs images or class sub-folders")
    return tuple(shards)


def _is_image(fname: str) -> bool:
    return "." in fname and fname.rsplit(".", 1)[1].lower() in IMAGE_EXTS


# ----------------------------------------------------------------------------- reading samples


def shard_samples(shard: Shard) -> Iterator[dict[str, Any]]:
    """The raw samples of one shard in order: dicts of ``__key__`` and member bytes."""
    if shard.kind == "folder":
        for fname in sorted(f for f in os.listdir(shard.url) if _is_image(f)):
            key, ext = fname.rsplit(".", 1)
            with open(os.path.join(shard.url, fname), "rb") as f:
                yield {"__key__": f"{shard.name}/{key}", ext.lower(): f.read(), "__url__": shard.url}
        return
    wds: Any = require("webdataset", "webdataset")
    ds = wds.WebDataset([shard.url], shardshuffle=False, nodesplitter=None, workersplitter=None, empty_check=False)
    try:
        yield from ds
    except (OSError, ValueError, KeyError) as exc:
        raise ShardError(f"{shard.url}: cannot read shard ({type(exc).__name__}: {exc})") from None


def image_of(sample: dict[str, Any]) -> Any:
    """The sample's image (the first image member) as a PIL image."""
    from PIL import Image, UnidentifiedImageError

    for ext in IMAGE_EXTS:
        data = sample.get(ext)
        if data is not None:
            try:
                img = Image.open(io.BytesIO(data))
                img.load()
                return img
            except (UnidentifiedImageError, OSError) as exc:
                raise SampleError(f"key {sample.get('__key__')!r}: corrupt {ext} image ({exc})") from None
    raise SampleError(f"key {sample.get('__key__')!r}: no image member (looked for {', '.join(IMAGE_EXTS[:4])}, ...)")


def label_of(sample: dict[str, Any], field: str) -> int:
    """The int label in member `field` (``cls``) or in a JSON member field (``json.label``)."""
    where = f"key {sample.get('__key__')!r}"
    if "." in field:
        member, key = field.split(".", 1)
        raw = sample.get(member)
        if raw is None:
            raise SampleError(f"{where}: no {member!r} member for label field {field!r}")
        try:
            value = json.loads(raw).get(key)
        except (ValueError, AttributeError):
            raise SampleError(f"{where}: member {member!r} is not a JSON object") from None
    else:
        value = sample.get(field)
    if value is None:
        raise SampleError(f"{where}: no label field {field!r}")
    value = label_value(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise SampleError(f"{where}: label {value!r} is not an int class id")
    return value


def batches(
    samples: Iterable[dict[str, Any]],
    preprocess: Any,
    *,
    batch_size: int,
    label_field: str | None = None,
    num_classes: int | None = None,
) -> Iterator[tuple[Any, Any]]:
    """Decoded batches ``(images tensor, labels tensor or None)`` from raw samples."""
    import torch

    xs: list[np.ndarray] = []
    ys: list[int] = []
    for s in samples:
        xs.append(preprocess.array(image_of(s)))
        if label_field is not None:
            y = label_of(s, label_field)
            if num_classes is not None and not 0 <= y < num_classes:
                raise SampleError(f"key {s.get('__key__')!r}: label {y} outside the {num_classes} source classes")
            ys.append(y)
        if len(xs) == batch_size:
            yield torch.from_numpy(np.stack(xs)), torch.tensor(ys) if label_field else None
            xs, ys = [], []
    if xs:
        yield torch.from_numpy(np.stack(xs)), torch.tensor(ys) if label_field else None


# ----------------------------------------------------------------------------- running a model


def _chunk_dataset(shards: Sequence[Shard], preprocess: Any, chunk: int) -> Any:
    from ._chunks import Chunks

    return Chunks(shards, preprocess, chunk)


def run_model(
    runner: Any,
    shards: Sequence[Shard],
    preprocess: Any,
    *,
    batch_size: int = 256,
    workers: int = 0,
    progress: Callable[[int], None] | None = None,
) -> Iterator[tuple[str, list[str], np.ndarray, np.ndarray | None]]:
    """Per complete shard: (name, keys, logits, embeddings), running `runner` on every image."""
    from torch.utils.data import DataLoader

    loader = DataLoader(_chunk_dataset(shards, preprocess, batch_size), batch_size=None, num_workers=workers)
    parts: dict[str, tuple[list[str], list[np.ndarray], list[np.ndarray]]] = {}
    for name, keys, x, last in loader:
        ks, ls, es = parts.setdefault(name, ([], [], []))
        if len(keys):
            logits, emb = runner(x)
            ks += keys
            ls.append(logits)
            if emb is not None:
                es.append(emb)
            if progress is not None:
                progress(len(keys))
        if last:
            del parts[name]
            lg = np.concatenate(ls) if ls else np.zeros((0, runner.num_outputs or 0), np.float32)
            yield name, ks, lg, (np.concatenate(es) if es else None)


def compute(
    model: Any,
    spec: DataSpec,
    *,
    batch_size: int = 256,
    workers: int = 0,
    device: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    """All keys, logits and embeddings of `spec` in shard order, in memory."""
    from .models import Runner

    runner = Runner(model.module, device)
    keys: list[str] = []
    logits: list[np.ndarray] = []
    embs: list[np.ndarray] = []
    done = {}
    for name, ks, lg, emb in run_model(
        runner, spec.shards, model.preprocess, batch_size=batch_size, workers=workers, progress=progress
    ):
        done[name] = (ks, lg, emb)
    for sh in spec.shards:  # shard order, whatever order the workers finished in
        ks, lg, emb = done[sh.name]
        keys += ks
        logits.append(lg)
        if emb is not None:
            embs.append(emb)
    return keys, np.concatenate(logits), (np.concatenate(embs) if embs else None)


# ----------------------------------------------------------------------------- features folders


def _npy_path(root: str, shard: str, kind: str) -> str:
    return os.path.join(root, f"{shard}.{kind}.npy")


def _keys_path(root: str, shard: str) -> str:
    return os.path.join(root, f"{shard}.keys.json")


def write_features(
    model: Any,
    spec: DataSpec,
    out: str,
    *,
    kinds: Sequence[str] = KINDS,
    float16: bool = False,
    batch_size: int = 256,
    workers: int = 0,
    device: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Write features of every shard of `spec` under folder `out`, skipping shards already done
    by the same model; returns the manifest."""
    from .models import Runner

    for k in kinds:
        if k not in KINDS:
            raise FeatureError(f"feature kind must be one of {KINDS}, found {k!r}")
    os.makedirs(out, exist_ok=True)
    manifest_path = os.path.join(out, "features.json")
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "model_id": model.model_id,
        "kinds": list(kinds),
        "dtype": "float16" if float16 else "float32",
        "spec": spec.spec,
        "source_fingerprint": spec.index.fingerprint if spec.index is not None else None,
        "shards": {},
        "dims": {},
        "complete": False,
    }
    if os.path.exists(manifest_path):
        old = FeatureStore.open(out).manifest
        for field in ("model_id", "kinds", "dtype"):
            if old.get(field) != manifest[field]:
                raise FeatureError(
                    f"{out}: holds features with {field} {old.get(field)!r}, this run has {manifest[field]!r}; "
                    "use another folder"
                )
        manifest["shards"] = dict(old.get("shards", {}))
        manifest["dims"] = dict(old.get("dims", {}))
    todo = [s for s in spec.shards if not os.path.exists(_keys_path(out, s.name))]
    if len(todo) < len(spec.shards):
        log.info("%s: %d of %d shards already done", out, len(spec.shards) - len(todo), len(spec.shards))
    _write_json(manifest_path, manifest)
    runner = Runner(model.module, device)
    dtype = np.float16 if float16 else np.float32
    for name, keys, logits, emb in run_model(
        runner, todo, model.preprocess, batch_size=batch_size, workers=workers, progress=progress
    ):
        arrays = {"logits": logits, "emb": emb}
        for k in kinds:
            arr = arrays[k]
            if arr is None:
                raise FeatureError(f"the model has no linear head, so no {k!r} features")
            manifest["dims"][k] = int(arr.shape[1]) if arr.ndim == 2 else 0
            path = _npy_path(out, name, k)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            _save_npy(path, arr.astype(dtype))
        _write_json(_keys_path(out, name), keys)  # written last: the shard is done
        manifest["shards"][name] = len(keys)
    manifest["complete"] = True
    _write_json(manifest_path, manifest)
    return manifest


def _save_npy(path: str, arr: np.ndarray) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        np.save(f, arr, allow_pickle=False)
    os.replace(tmp, path)


def _write_json(path: str, obj: Any) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


class FeatureStore:
    """A features folder, read shard by shard (``np.load(allow_pickle=False)``)."""

    def __init__(self, root: str, manifest: dict[str, Any]) -> None:
        self.root = root
        self.manifest = manifest

    @classmethod
    def open(cls, root: str) -> FeatureStore:
        path = os.path.join(root, "features.json")
        try:
            with open(path) as f:
                manifest = json.load(f)
        except FileNotFoundError:
            raise FeatureError(f"{root}: not a features folder (no features.json)") from None
        except ValueError as exc:
            raise FeatureError(f"{path}: corrupt ({exc})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise FeatureError(f"{root}: not a dp4tl features folder")
        if manifest.get("version") != VERSION:
            raise FeatureError(f"{root}: features version {manifest.get('version')!r}, expected {VERSION}")
        return cls(root, manifest)

    @staticmethod
    def is_store(path: str) -> bool:
        return os.path.isfile(os.path.join(path, "features.json"))

    @property
    def model_id(self) -> str | None:
        mid = self.manifest.get("model_id")
        return mid if isinstance(mid, str) else None

    @property
    def shard_names(self) -> list[str]:
        return sorted(self.manifest.get("shards", {}))

    def keys(self, shard: str) -> list[str]:
        check_shard_name(shard, where=self.root)
        try:
            with open(_keys_path(self.root, shard)) as f:
                keys = json.load(f)
        except FileNotFoundError:
            raise FeatureError(f"{self.root}: no features for shard {shard!r}") from None
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise FeatureError(f"{self.root}: keys of shard {shard!r} are not a list of strings")
        return keys

    def read(self, shard: str, kind: str) -> np.ndarray:
        """One shard's features as float32 (rows follow `keys(shard)`)."""
        check_shard_name(shard, where=self.root)
        if kind not in self.manifest.get("kinds", []):
            raise FeatureError(f"{self.root}: holds {self.manifest.get('kinds')} features, not {kind!r}")
        path = _npy_path(self.root, shard, kind)
        try:
            arr = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise FeatureError(f"{self.root}: no {kind} features for shard {shard!r}") from None
        except ValueError as exc:
            raise FeatureError(f"{path}: corrupt ({exc})") from None
        return np.asarray(arr, dtype=np.float32)

    def matrix(self, kind: str) -> np.ndarray:
        """Every shard's features, stacked in shard-name order."""
        parts = [self.read(s, kind) for s in self.shard_names]
        if not parts:
            raise FeatureError(f"{self.root}: holds no shard")
        return np.concatenate(parts)

    def aligned(self, index: Any, kind: str) -> np.ndarray:
        """Features in the order of source index `index` (by key); FeatureError naming the first
        shard or key that is missing."""
        out = []
        for name in index.shard_names:
            keys = index.keys(name)
            have = self.keys(name)
            arr = self.read(name, kind)
            if len(have) != len(arr):
                raise FeatureError(f"{self.root}: shard {name!r} has {len(have)} keys and {len(arr)} rows")
            if have != keys:
                pos = {k: i for i, k in enumerate(have)}
                missing = [k for k in keys if k not in pos]
                if missing:
                    raise FeatureError(f"{self.root}: shard {name!r} lacks features for key {missing[0]!r}")
                arr = arr[[pos[k] for k in keys]]
            out.append(arr)
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
