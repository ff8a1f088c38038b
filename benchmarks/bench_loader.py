"""DataLoader epoch with and without PrunedStream: keep-all overhead and keep-half ratio.

Peer = the plain torch DataLoader; ours = the same loader through PrunedStream. Both run in
this one process, interleaved over several rounds; the medians of the per-round ratios print.

    python benchmarks/bench_loader.py [--n 20000] [--rounds 5] [--workers 2]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset

from dp4tl_data import KeepList, PrunedStream

NCLASSES = 100


def _jpeg(rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


class JpegDataset(Dataset):
    """In-memory JPEGs decoded per item: the work a real loader does, minus the disk."""

    def __init__(self, n: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        pool = [_jpeg(rng) for _ in range(256)]
        self.blobs = [pool[i % 256] for i in range(n)]
        self.targets = rng.integers(0, NCLASSES, n).tolist()

    def __len__(self) -> int:
        return len(self.blobs)

    def __getitem__(self, i: int):
        img = np.array(Image.open(io.BytesIO(self.blobs[i])).convert("RGB"))
        return torch.from_numpy(img).permute(2, 0, 1), self.targets[i]


class JpegStream(IterableDataset):
    def __init__(self, ds: JpegDataset) -> None:
        self.ds = ds

    def __iter__(self):
        for i in range(len(self.ds)):
            x, y = self.ds[i]
            yield {"__key__": f"k{i:08d}", "label": y, "x": x}


def epoch(loader) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = 0
    for batch in loader:
        n += len(batch[1]) if isinstance(batch, (list, tuple)) else len(batch["label"])
    return time.perf_counter() - t0, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000, help="samples in the dataset")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    args = ap.parse_args()

    ds = JpegDataset(args.n)
    keep_all = KeepList.from_classes(range(NCLASSES), label_field="label")
    keep_half = KeepList.from_classes(range(0, NCLASSES, 2), label_field="label")

    def plain():
        return DataLoader(
            ds,
            batch_size=args.batch_size,
            shuffle=True,
            num_workers=args.workers,
            generator=torch.Generator().manual_seed(0),
        )

    arms = {
        "map: plain DataLoader": lambda: plain(),
        "map: PrunedStream keep-all": lambda: PrunedStream(plain(), keep_all),
        "map: PrunedStream keep-half": lambda: PrunedStream(plain(), keep_half),
        "iterable: plain": lambda: DataLoader(JpegStream(ds), batch_size=args.batch_size, num_workers=0),
        "iterable: PrunedStream keep-all": lambda: DataLoader(
            PrunedStream(JpegStream(ds), keep_all), batch_size=args.batch_size, num_workers=0
        ),
    }
    times: dict[str, list[float]] = {k: [] for k in arms}
    counts: dict[str, int] = {}
    epoch(arms["map: plain DataLoader"]())  # warm-up (worker start, page cache)
    for r in range(args.rounds):
        order = list(arms) if r % 2 == 0 else list(reversed(arms))
        for name in order:
            t, n = epoch(arms[name]())
            times[name].append(t)
            counts[name] = n

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(times[a], times[b]))

    print(
        f"dataset: {args.n} in-memory 32x32 JPEGs, {NCLASSES} classes, batch {args.batch_size}, "
        f"workers {args.workers}, {args.rounds} interleaved rounds (medians)"
    )
    for name in arms:
        print(f"  {name:34s} {counts[name]:7d} samples  median {statistics.median(times[name]):.3f}s")
    print(
        f"ratio map keep-all / plain        {ratio('map: PrunedStream keep-all', 'map: plain DataLoader'):.3f}  (target <= 1.03)"
    )
    print(
        f"ratio map keep-half / plain       {ratio('map: PrunedStream keep-half', 'map: plain DataLoader'):.3f}  (ideal 0.50)"
    )
    print(
        f"ratio iterable keep-all / plain   {ratio('iterable: PrunedStream keep-all', 'iterable: plain'):.3f}  (target <= 1.03)"
    )


if __name__ == "__main__":
    main()
