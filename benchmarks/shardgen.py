"""Write real WebDataset tar shards of JPEG images for benchmarks, tests and examples.

Every shard mixes classes (labels drawn with a seeded generator), so class-level pruning
touches every shard, as in real data. Each sample has ``.jpg``, ``.cls`` (int label) and
``.json`` ({"label": int, "name": "class_007"}).
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field

import numpy as np


@dataclass
class ShardSet:
    """What was written: shard paths, and per shard the (key, label) of every sample in order."""

    root: str
    paths: list[str] = field(default_factory=list)
    samples: dict[str, list[tuple[str, int]]] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [os.path.relpath(p, self.root).replace(os.sep, "/") for p in self.paths]

    def keys(self, labels: set[int] | None = None) -> set[str]:
        """All keys, or those whose label is in `labels`."""
        return {k for s in self.samples.values() for k, y in s if labels is None or y in labels}


def class_name(label: int) -> str:
    return f"class_{label:03d}"


def jpeg_bytes(rng: np.random.Generator, size: int, label: int) -> bytes:
    """A small real JPEG: smooth noise tinted by the label (so decoding costs what it costs)."""
    from PIL import Image

    base = rng.integers(0, 256, size=(size // 8, size // 8, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((size, size), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.int16)
    arr[..., label % 3] = np.clip(arr[..., label % 3] + 40, 0, 255)
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def write_shards(
    root: str,
    *,
    nshards: int = 20,
    per_shard: int = 1000,
    nclasses: int = 100,
    image_size: int = 160,
    seed: int = 0,
    prefix: str = "shard",
    sizes: list[int] | None = None,
) -> ShardSet:
    """Write `nshards` tars (``{prefix}-{i:05d}.tar``) under `root`; `sizes` overrides per-shard counts."""
    import webdataset as wds

    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = ShardSet(root)
    for s in range(nshards):
        path = os.path.join(root, f"{prefix}-{s:05d}.tar")
        n = sizes[s] if sizes is not None else per_shard
        labels = rng.integers(0, nclasses, size=n)
        rows: list[tuple[str, int]] = []
        with wds.TarWriter(path) as sink:
            for i, y in enumerate(labels.tolist()):
                key = f"{prefix}{s:05d}_{i:06d}"
                sink.write(
                    {
                        "__key__": key,
                        "jpg": jpeg_bytes(rng, image_size, y),
                        "cls": str(y).encode(),
                        "json": json.dumps({"label": y, "name": class_name(y)}).encode(),
                    }
                )
                rows.append((key, y))
        out.paths.append(path)
        out.samples[out.names[-1]] = rows
    return out
