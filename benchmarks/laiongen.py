"""Write a simulated LAION: N shards of embeddings + metadata (clip-retrieval layout) and,
optionally, small img2dataset shards (tar + parquet + _stats.json), with planted clusters.

Layout under `root`::

    images/{00000}.tar            successful samples only, in key order (.jpg .txt .json)
    images/{00000}.parquet        every attempted sample, failures included, rows shuffled
    images/{00000}_stats.json     img2dataset counters
    emb/img_emb/img_emb_{i}.npy   float16 (n, dim), one row per successful sample, tar order
    emb/metadata/metadata_{i}.parquet   image_path (= key), caption, url, uid, planted
    centers.npy                   the planted cluster centres (float32, unit norm)

Every sample belongs to one planted cluster (column ``planted``); each shard draws its
clusters from its own Dirichlet mixture, so kept fractions vary by shard as in real data.
Run ``python -m benchmarks.laiongen ROOT --shards 8 --per-shard 1000`` to write one.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


@dataclass
class LaionSim:
    """What was written: folders, shard names, planted centres, and per shard the keys and
    planted cluster of every successful sample, in tar / embedding order."""

    root: str
    centers: np.ndarray
    shards: list[str] = field(default_factory=list)
    keys: dict[str, list[str]] = field(default_factory=dict)
    planted: dict[str, np.ndarray] = field(default_factory=dict)
    uids: dict[str, list[str]] = field(default_factory=dict)

    @property
    def emb_root(self) -> str:
        return os.path.join(self.root, "emb")

    @property
    def img_root(self) -> str:
        return os.path.join(self.root, "images")

    @property
    def num_samples(self) -> int:
        return sum(len(k) for k in self.keys.values())

    def masks(self, clusters: set[int]) -> dict[str, np.ndarray]:
        """The right answer: per shard, which samples belong to `clusters`."""
        sel = np.array(sorted(clusters), dtype=np.int64)
        return {s: np.isin(p, sel) for s, p in self.planted.items()}

    def targets(self, clusters: list[int], n: int, *, noise: float = 0.02, seed: int = 1) -> np.ndarray:
        """`n` target embeddings (float32) drawn from the planted `clusters`."""
        rng = np.random.default_rng(seed)
        which = rng.choice(np.asarray(clusters), size=n)
        return _points(rng, self.centers, which, noise).astype(np.float32)


def _points(rng: np.random.Generator, centers: np.ndarray, which: np.ndarray, noise: float) -> np.ndarray:
    x = centers[which] + rng.standard_normal((len(which), centers.shape[1]), dtype=np.float32) * noise
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _tiny_jpeg(k: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), ((37 * k) % 256, (91 * k) % 256, (53 * k) % 256)).save(buf, format="JPEG")
    return buf.getvalue()


def _uid(rng: np.random.Generator, n: int) -> list[str]:
    raw = rng.integers(0, 2**63, size=(n, 2), dtype=np.uint64)
    return [f"{int(a):016x}{int(b):016x}" for a, b in raw]


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def write_laion(
    root: str,
    *,
    nshards: int = 8,
    per_shard: int = 1000,
    dim: int = 32,
    nclusters: int = 8,
    noise: float = 0.02,
    alpha: float = 0.5,
    fail_rate: float = 0.05,
    tars: bool = True,
    seed: int = 0,
) -> LaionSim:
    """Write the simulated LAION under `root` (see the module docstring); returns what it wrote."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((nclusters, dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    sim = LaionSim(root, centers)
    for sub in ("images", "emb/img_emb", "emb/metadata"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    np.save(os.path.join(root, "centers.npy"), centers)
    jpegs = [_tiny_jpeg(k) for k in range(nclusters)] if tars else []
    for s in range(nshards):
        name = f"{s:05d}.tar"
        ok = rng.random(per_shard) >= fail_rate
        all_keys = [f"{s:05d}{i:04d}" for i in range(per_shard)]
        keys = [k for k, good in zip(all_keys, ok) if good]
        mix = rng.dirichlet(np.full(nclusters, alpha))
        planted = rng.choice(nclusters, size=len(keys), p=mix)
        emb = _points(rng, centers, planted, noise).astype(np.float16)
        uids = _uid(rng, len(keys))
        captions = [f"a photo of thing {c} number {k}" for k, c in zip(keys, planted.tolist())]
        urls = [f"https://example.invalid/{k}.jpg" for k in keys]
        np.save(os.path.join(root, "emb", "img_emb", f"img_emb_{s}.npy"), emb)
        meta = pa.table(
            {"image_path": keys, "caption": captions, "url": urls, "uid": uids, "planted": planted.astype(np.int32)}
        )
        pq.write_table(meta, os.path.join(root, "emb", "metadata", f"metadata_{s}.parquet"))
        if tars:
            _write_img2dataset(root, s, all_keys, ok, keys, captions, urls, uids, planted, jpegs, rng)
        sim.shards.append(name)
        sim.keys[name] = keys
        sim.planted[name] = planted
        sim.uids[name] = uids
    return sim


def _write_img2dataset(
    root: str,
    s: int,
    all_keys: list[str],
    ok: np.ndarray,
    keys: list[str],
    captions: list[str],
    urls: list[str],
    uids: list[str],
    planted: np.ndarray,
    jpegs: list[bytes],
    rng: np.random.Generator,
) -> None:
    base = os.path.join(root, "images", f"{s:05d}")
    with tarfile.open(base + ".tar", "w", format=tarfile.USTAR_FORMAT) as tar:
        for k, cap, url, uid, c in zip(keys, captions, urls, uids, planted.tolist()):
            _add(tar, f"{k}.jpg", jpegs[c])
            _add(tar, f"{k}.txt", cap.encode())
            _add(tar, f"{k}.json", json.dumps({"key": k, "url": url, "uid": uid, "status": "success"}).encode())
    good = dict(zip(keys, zip(captions, urls, uids)))
    rows: dict[str, list[object]] = {c: [] for c in ("key", "caption", "url", "uid", "status", "error_message")}
    for k, g in zip(all_keys, ok.tolist()):
        cap, url, uid = good.get(k, (None, f"https://example.invalid/{k}.jpg", None))
        for c, v in (("key", k), ("caption", cap), ("url", url), ("uid", uid)):
            rows[c].append(v)
        rows["status"].append("success" if g else "failed_to_download")
        rows["error_message"].append(None if g else "HTTP Error 404: Not Found")
    order = rng.permutation(len(all_keys))
    table = pa.table({c: pa.array([v[i] for i in order], pa.string()) for c, v in rows.items()})
    pq.write_table(table, base + ".parquet")
    nok = int(ok.sum())
    stats = {
        "count": len(all_keys),
        "successes": nok,
        "failed_to_download": len(all_keys) - nok,
        "failed_to_resize": 0,
        "status_dict": {"success": nok, "HTTP Error 404: Not Found": len(all_keys) - nok},
    }
    with open(base + "_stats.json", "w") as f:
        json.dump(stats, f)


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root")
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--per-shard", type=int, default=1000)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--clusters", type=int, default=8)
    p.add_argument("--no-tars", action="store_true", help="Embeddings and metadata only.")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    sim = write_laion(
        a.root,
        nshards=a.shards,
        per_shard=a.per_shard,
        dim=a.dim,
        nclusters=a.clusters,
        tars=not a.no_tars,
        seed=a.seed,
    )
    print(f"wrote {len(sim.shards)} shards, {sim.num_samples} samples under {a.root}")


if __name__ == "__main__":
    main()
