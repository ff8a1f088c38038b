"""WebDataset benchmark: PrunedStream against plain webdataset on the same tar shards, in one
process (no DataLoader workers), configurations interleaved round by round; prints RATIOS of
median CPU times of the process (user + system), which stay put while others share the machine.

    python benchmarks/bench_wds.py                       # the issue's setting: 20 x 1000 JPEGs, 100 classes, keep 50%
    python benchmarks/bench_wds.py --nshards 4 --per-shard 200 --rounds 2   # a quick look

Ratios (lower is better unless said):
  keep-all / plain webdataset          full epoch with decode, PrunedStream keeping everything (target <= 1.02)
  pruned / own full                    50% of classes kept, with decode, against our own full epoch (target <= 0.55)
  .select() / plain webdataset         the hand-written answer: select on .cls before decode
  kept read-only throughput            kept samples/s without decode, against webdataset's tar parsing (aim >= 3x)
  HTTP bytes, 50% sample pruning       bytes a loopback HTTP server sent, against the full epoch (target <= 0.6)
  memory per unread shard              tracemalloc peak while reading one shard, index listing N shards
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

from benchmarks.shardgen import ShardSet, write_shards  # noqa: E402


def shards_for(args: argparse.Namespace) -> ShardSet:
    """The benchmark shards, written once per setting under --data."""
    tag = f"{args.nshards}x{args.per_shard}_c{args.nclasses}_s{args.image_size}"
    root = os.path.join(args.data, tag)
    meta = os.path.join(root, "samples.json")
    if os.path.exists(meta):
        with open(meta) as f:
            samples = {k: [tuple(r) for r in v] for k, v in json.load(f).items()}
        out = ShardSet(root, [os.path.join(root, n) for n in sorted(samples)], samples)  # type: ignore[arg-type]
        return out
    t = time.perf_counter()
    out = write_shards(
        root, nshards=args.nshards, per_shard=args.per_shard, nclasses=args.nclasses, image_size=args.image_size
    )
    with open(meta, "w") as f:
        json.dump(out.samples, f)
    print(f"wrote {args.nshards} shards x {args.per_shard} JPEGs in {time.perf_counter() - t:.1f}s -> {root}")
    return out


def count(iterable: Any) -> int:
    n = 0
    for _ in iterable:
        n += 1
    return n


def timed(runs: dict[str, Callable[[], Any]], rounds: int) -> dict[str, tuple[float, int, float]]:
    """Per run: median CPU seconds of this process (user + system: steady while others share
    the machine), item count, median wall seconds. Runs are interleaved round by round."""
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    wall: dict[str, list[float]] = {k: [] for k in runs}
    counts: dict[str, int] = {}
    for r in range(rounds):
        order = list(runs) if r % 2 == 0 else list(reversed(runs))
        for name in order:
            t, c = time.perf_counter(), time.process_time()
            counts[name] = count(runs[name]())
            cpu[name].append(time.process_time() - c)
            wall[name].append(time.perf_counter() - t)
    return {k: (statistics.median(cpu[k]), counts[k], statistics.median(wall[k])) for k in runs}


def bench_local(shards: ShardSet, keep_classes: list[int], args: argparse.Namespace) -> dict[str, float]:
    import webdataset as wds
    from dp4tl_data.plugins.wds import index_shards

    from dp4tl_data import KeepList, PrunedStream

    t = time.perf_counter()
    idx = index_shards(shards.paths, workers=args.workers, progress=False)
    index_s = time.perf_counter() - t
    everything = KeepList.from_shards(idx.shard_names)
    keep = KeepList.from_classes(keep_classes, label_field="cls")
    kept = set(keep_classes)
    urls = shards.paths

    def plain(decode: bool) -> Any:
        ds = wds.WebDataset(urls, shardshuffle=False, empty_check=False)
        return ds.decode("rgb8").to_tuple("jpg", "cls") if decode else ds

    def select() -> Any:
        ds = wds.WebDataset(urls, shardshuffle=False, empty_check=False)
        return ds.select(lambda s: int(s["cls"]) in kept).decode("rgb8").to_tuple("jpg", "cls")

    def ours(k: Any, decode: bool) -> Any:
        ds = PrunedStream(wds.WebDataset(urls, shardshuffle=False), k, index=idx)
        return ds.decode("rgb8").to_tuple("jpg", "cls") if decode else ds

    res = timed(
        {
            "wds full": lambda: plain(True),
            "ours keep-all": lambda: ours(everything, True),
            "ours pruned": lambda: ours(keep, True),
            "wds select": select,
            "wds parse": lambda: plain(False),
            "ours kept read-only": lambda: ours(keep, False),
            "ours all read-only": lambda: ours(everything, False),
        },
        args.rounds,
    )
    n_all, n_kept = res["wds full"][1], res["ours pruned"][1]
    assert res["ours keep-all"][1] == n_all and res["wds select"][1] == n_kept
    print(
        f"\nlocal: {len(urls)} shards, {n_all} samples, keep {len(kept)} of {args.nclasses} classes = {n_kept} samples"
    )
    print(f"  index: {index_s:.2f}s ({n_all / index_s:,.0f} samples/s, {args.workers} workers)")
    print(f"  {'':<22} {'cpu':>8} {'wall':>8}  {'items':>7}  {'items/cpu s':>11}")
    for name, (sec, n, w) in res.items():
        print(f"  {name:<22} {sec:7.3f}s {w:7.3f}s  {n:>7}  {n / sec:>11,.0f}")
    parse_rate = res["wds parse"][1] / res["wds parse"][0]
    out = {
        "keep-all / plain webdataset (decode)": res["ours keep-all"][0] / res["wds full"][0],
        "pruned / own full (decode)": res["ours pruned"][0] / res["ours keep-all"][0],
        ".select() before decode / plain webdataset": res["wds select"][0] / res["wds full"][0],
        "kept read-only throughput / webdataset tar parsing (x)": (n_kept / res["ours kept read-only"][0]) / parse_rate,
        "webdataset parse time / kept read-only time (x)": res["wds parse"][0] / res["ours kept read-only"][0],
        "all read-only throughput / webdataset tar parsing (x)": (n_all / res["ours all read-only"][0]) / parse_rate,
    }
    return out


def bench_http(shards: ShardSet, args: argparse.Namespace) -> dict[str, float]:
    from dp4tl_data.plugins.wds import index_shards
    from servers import serve

    from dp4tl_data import KeepList, PrunedStream

    srv = serve(shards.root)
    try:
        idx = index_shards(shards.paths, workers=args.workers, progress=False)
        rng = np.random.default_rng(0)
        half = {n: [k for k, _ in rows if rng.random() < args.keep] for n, rows in shards.samples.items()}
        gap = int(np.median(np.concatenate([idx.table(n).column("size").to_numpy() for n in idx.shard_names])))
        runs = {
            "full": (KeepList.from_shards(idx.shard_names), 0),
            "50% samples": (KeepList.from_samples(half), 0),
            f"50%, gap {gap // 1024}K": (KeepList.from_samples(half), gap),
        }
        sent: dict[str, tuple[int, int, int, float]] = {}
        for name, (k, g) in runs.items():
            srv.reset()
            t = time.perf_counter()
            n = count(PrunedStream(idx, k, root=srv.url, coalesce_gap=g))
            sent[name] = (sum(srv.bytes_sent.values()), sum(srv.requests.values()), n, time.perf_counter() - t)
    finally:
        srv.shutdown()
        srv.server_close()
    total = sum(os.path.getsize(p) for p in shards.paths)
    print(f"\nHTTP loopback: {len(shards.paths)} shards, {total / 2**20:.1f} MiB on disk")
    for name, (b, r, n, sec) in sent.items():
        print(f"  {name:<16} {b / 2**20:8.1f} MiB sent  {r:>6} requests  {n:>7} samples  {sec:6.2f}s")
    gapped = list(sent)[2]
    return {
        "HTTP bytes at 50% sample pruning / full epoch": sent["50% samples"][0] / sent["full"][0],
        f"HTTP bytes, coalescing gaps up to one median sample ({gapped})": sent[gapped][0] / sent["full"][0],
        f"HTTP requests, {gapped} / without gap": sent[gapped][1] / sent["50% samples"][1],
    }


def bench_memory(shards: ShardSet, args: argparse.Namespace) -> dict[str, float]:
    """Peak Python memory while one reader reads one shard, as the index lists more shards it never opens."""
    from dp4tl_data.plugins.wds import index_shards

    from dp4tl_data import KeepList, PrunedStream, SourceIndex, World
    from dp4tl_data.index import IndexedShard

    real = index_shards(shards.paths[:1], workers=1, progress=False)
    name = real.shard_names[0]
    table = real.table(name)
    peaks = {}
    for n in args.memory_shards:
        others = [f"unread-{i:06d}.tar" for i in range(n - 1)]
        pairs = [(real.shard(name), table)] + [(IndexedShard(o, table.num_rows, 1, None, None), table) for o in others]
        idx = SourceIndex.build(pairs, kind="webdataset", root=real.root, label_field="cls")
        keep = KeepList.from_shards({s: table.num_rows for s in idx.shard_names})
        ds = PrunedStream(idx, keep, world=World(0, n))  # rank 0 of n reads the first shard only
        tracemalloc.start()
        got = count(ds)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        pickled = len(pickle.dumps(ds.reader.refs))
        peaks[n] = (peak, pickled, got)
        print(
            f"  index lists {n:>6} shards: read {got} samples, peak {peak / 2**20:6.2f} MiB, shard list {pickled / 1024:7.1f} KiB"
        )
    lo, hi = min(peaks), max(peaks)
    per = (peaks[hi][0] - peaks[lo][0]) / (hi - lo)
    print(f"  -> {per:,.0f} bytes of peak memory per unread shard (a read shard: {peaks[lo][0] / 2**20:.2f} MiB)")
    return {"peak memory growth per unread shard (bytes)": per}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nshards", type=int, default=20)
    p.add_argument("--per-shard", type=int, default=1000)
    p.add_argument("--nclasses", type=int, default=100)
    p.add_argument("--image-size", type=int, default=160)
    p.add_argument("--keep", type=float, default=0.5, help="fraction of classes (and of samples, for HTTP) kept")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians are compared")
    p.add_argument("--workers", type=int, default=2, help="indexing workers")
    p.add_argument("--data", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "dp4tl_bench_wds"))
    p.add_argument("--memory-shards", type=int, nargs="+", default=[20, 2000])
    p.add_argument("--skip", nargs="*", default=[], choices=["local", "http", "memory"])
    args = p.parse_args()
    shards = shards_for(args)
    rng = np.random.default_rng(0)
    keep_classes = sorted(rng.choice(args.nclasses, size=round(args.nclasses * args.keep), replace=False).tolist())
    ratios: dict[str, float] = {}
    if "local" not in args.skip:
        ratios.update(bench_local(shards, keep_classes, args))
    if "http" not in args.skip:
        ratios.update(bench_http(shards, args))
    if "memory" not in args.skip:
        print("\nmemory (one reader, one shard read):")
        ratios.update(bench_memory(shards, args))
    print("\nratios:")
    for k, v in ratios.items():
        print(f"  {k:<66} {v:8.3f}")


if __name__ == "__main__":
    main()
