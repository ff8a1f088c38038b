"""Hugging Face datasets benchmark: a pruned streaming epoch vs the unpruned one, and map-style pruning.

Streaming: the shared 20-shard x 1,000 JPEG, 100-class webdataset set (benchmarks/shardgen.py)
through ``load_dataset("webdataset", ..., streaming=True)``, keeping 50% of the classes. Every
class occurs in every shard, so no file can be dropped: the gain must come from deciding rows
before they are read and decoded. Three epochs, interleaved and repeated in one process:

- unpruned: every example, images decoded;
- naive:    ``.filter(lambda ex: ex["cls"] in keep)`` (datasets decodes every image first);
- ours:     ``PrunedStream(ds, keep)`` (pruned members skipped unread, kept rows decoded);
- ours-all: ``PrunedStream`` with a list keeping every class: our reader without pruning, so
            the gain of pruning (ours / ours-all) is seen apart from the gain of the reader.

Printed: each epoch's time as a ratio of the unpruned epoch of the same repeat, median over
repeats, in wall time and in this process's CPU time (the epochs run in one thread, so CPU time
is the same work measured without the noise of other jobs on a shared machine).

Map-style: a 1M-row Dataset with a 1,000-class ClassLabel, 50% of the classes kept, by
``PrunedStream`` (Arrow is_in + select) and by a batched ``Dataset.filter`` for reference.

    python benchmarks/bench_hf.py                       # the full set (written once under --root)
    python benchmarks/bench_hf.py --shards 4 --per-shard 200 --rows 100000 --repeats 1   # quick
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.shardgen import write_shards  # noqa: E402


def epoch(ds: Iterable[dict[str, Any]]) -> tuple[float, float, int]:
    """Wall and CPU seconds for one pass that touches every decoded image, and the example count."""
    t, c = time.perf_counter(), time.process_time()
    n = 0
    for ex in ds:
        ex["jpg"].size  # noqa: B018 - the image is decoded
        n += 1
    return time.perf_counter() - t, time.process_time() - c, n


def shard_paths(root: str, nshards: int, per_shard: int, image_size: int) -> list[str]:
    paths = [os.path.join(root, f"shard-{i:05d}.tar") for i in range(nshards)]
    stamp = os.path.join(root, f".done-{nshards}x{per_shard}x{image_size}")
    if not os.path.exists(stamp):
        write_shards(root, nshards=nshards, per_shard=per_shard, image_size=image_size)
        open(stamp, "w").close()
    return paths


def streaming(paths: list[str], repeats: int) -> dict[str, list[tuple[float, float]]]:
    from datasets import load_dataset

    from dp4tl_data import KeepList, PrunedStream, World

    keep_ids = set(range(0, 100, 2))
    keep = KeepList.from_classes(sorted(keep_ids), label_field="cls")
    keep_all = KeepList.from_classes(range(100), label_field="cls")

    def base() -> Any:
        return load_dataset("webdataset", data_files={"train": paths}, split="train", streaming=True)

    runs: dict[str, Callable[[], Any]] = {
        "unpruned": base,
        "naive": lambda: base().filter(lambda ex: ex["cls"] in keep_ids),
        "ours": lambda: PrunedStream(base(), keep, world=World()),
        "ours-all": lambda: PrunedStream(base(), keep_all, world=World()),
    }
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in runs}
    counts: dict[str, int] = {}
    epoch(runs["ours-all"]())  # warm the page cache and imports once
    for r in range(repeats):
        for name, make in runs.items():
            ds = make()
            wall, cpu, n = epoch(ds)
            times[name].append((wall, cpu))
            counts[name] = n
            print(f"  repeat {r + 1}/{repeats} {name:9s} {n:6d} examples", flush=True)
    if counts["naive"] != counts["ours"] or counts["unpruned"] != counts["ours-all"]:
        raise SystemExit(f"epochs differ in length: {counts}")
    return times


def map_style(rows: int, repeats: int) -> dict[str, float]:
    import numpy as np
    from datasets import ClassLabel, Dataset, Features, Value

    from dp4tl_data import KeepList, PrunedStream, World

    names = [f"n{i:08d}" for i in range(1000)]
    labels = np.random.default_rng(0).integers(0, 1000, rows)
    feats = Features({"__key__": Value("string"), "label": ClassLabel(names=names)})
    ds = Dataset.from_dict({"__key__": [f"k{i:07d}" for i in range(rows)], "label": labels}, feats)
    keep = KeepList.from_classes(names[::2])
    kept = set(range(0, 1000, 2))
    PrunedStream(ds.select(range(10)), keep, world=World(), allow_empty=True)  # load the plugins first
    ours, naive = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        out = PrunedStream(ds, keep, world=World())
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        ref = ds.filter(lambda ys: [y in kept for y in ys], batched=True, input_columns=["label"], keep_in_memory=True)
        naive.append(time.perf_counter() - t)
        if len(out) != len(ref):
            raise SystemExit(f"map-style: ours kept {len(out)} rows, the filter {len(ref)}")
    return {"ours": statistics.median(ours), "filter": statistics.median(naive), "kept": float(len(out))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=os.path.join(os.path.expanduser("~"), ".cache", "dp4tl-bench", "wds-jpeg"))
    ap.add_argument("--shards", type=int, default=20)
    ap.add_argument("--per-shard", type=int, default=1000)
    ap.add_argument("--image-size", type=int, default=160)
    ap.add_argument("--rows", type=int, default=1_000_000, help="map-style rows (0: skip)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    root = args.root if (args.shards, args.per_shard) == (20, 1000) else f"{args.root}-{args.shards}x{args.per_shard}"
    paths = shard_paths(root, args.shards, args.per_shard, args.image_size)
    n = args.shards * args.per_shard
    print(f"streaming: {args.shards} shards x {args.per_shard} JPEGs ({n} examples), 50% of 100 classes kept")
    times = streaming(paths, args.repeats)
    print(f"epoch time / unpruned epoch of the same repeat (median of {args.repeats}, interleaved):")
    print("                  wall    cpu    (wall per repeat)")
    for name, ref in (
        ("unpruned", "unpruned"),
        ("naive", "unpruned"),
        ("ours", "unpruned"),
        ("ours-all", "unpruned"),
        ("ours", "ours-all"),
    ):
        wall = [t[0] / u[0] for t, u in zip(times[name], times[ref])]
        cpu = [t[1] / u[1] for t, u in zip(times[name], times[ref])]
        label = name if ref == "unpruned" else f"{name}/{ref}"
        per = ", ".join(f"{r:.2f}" for r in wall)
        print(f"  {label:14s} {statistics.median(wall):5.2f}  {statistics.median(cpu):5.2f}   ({per})")
    print("  (ours/ours-all: the gain of pruning alone, ideal 0.50 for half the rows)")
    if args.rows:
        m = map_style(args.rows, args.repeats)
        print(f"map-style: {args.rows} rows, 50% of 1000 classes kept ({int(m['kept'])} rows)")
        print(
            f"  PrunedStream {m['ours']:.3f} s   batched Dataset.filter {m['filter']:.3f} s   ratio {m['ours'] / m['filter']:.3f}"
        )


if __name__ == "__main__":
    main()
