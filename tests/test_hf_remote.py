"""Remote HF streaming through fsspec and `datasets`: a real HTTP server on loopback (request
counters per path) and an S3-compatible server (moto). Pruned files are never requested."""

from __future__ import annotations

import os

import datasets  # noqa: E402,F401 - a dev dependency: these tests must run, never skip
import pytest
from datasets import load_dataset  # noqa: E402
from datasets.distributed import split_dataset_by_node  # noqa: E402
from dp4tl_data.plugins.hf import load_pruned  # noqa: E402
from test_hf_stream import make_parquet, make_tars  # noqa: E402
from test_keeplist_s3 import s3 as s3_server  # noqa: E402,F401 - the shared moto S3 fixture

from dp4tl_data import KeepList, PrunedStream, ShardError, World  # noqa: E402

ONE = World()


def urls(srv, root: str, sub: str) -> list[str]:
    return [f"{srv.url}/{sub}/{n}" for n in sorted(os.listdir(os.path.join(root, sub)))]


def requested(srv, sub: str) -> dict[str, int]:
    return {p.rsplit("/", 1)[-1]: n for p, n in srv.requests.items() if p.startswith(f"/{sub}/")}


def test_parquet_over_http_never_requests_pruned_files(http_dir) -> None:
    root, srv = http_dir
    labels = make_parquet(os.path.join(root, "pq"))
    keep = KeepList.from_classes([1, 4]) & KeepList.from_shards(["part-00000.parquet", "part-00002.parquet"])
    srv.reset()
    ds = load_pruned(None, keep, data_files=urls(srv, root, "pq"), world=ONE)
    got = sorted(ex["__key__"] for ex in ds)
    expected = sorted(k for k, y in labels.items() if y in (1, 4) and k[:3] in ("p0_", "p2_"))
    assert got == expected
    hits = requested(srv, "pq")
    assert set(hits) == {"part-00000.parquet", "part-00002.parquet"}  # the others: not one request


def test_tars_over_http_never_requests_pruned_files(http_dir) -> None:
    root, srv = http_dir
    shards = make_tars(os.path.join(root, "tars"))
    keep = KeepList.from_classes([2, 3, 8], label_field="cls") & KeepList.from_shards(
        ["shard-00001.tar", "shard-00003.tar"]
    )
    srv.reset()
    ds = load_pruned(None, keep, data_files=urls(srv, root, "tars"), world=ONE)
    got = sorted(ex["__key__"] for ex in ds)
    expected = sorted(
        k for k, y in shards.samples["shard-00001.tar"] + shards.samples["shard-00003.tar"] if y in (2, 3, 8)
    )
    assert got == expected
    assert set(requested(srv, "tars")) == {"shard-00001.tar", "shard-00003.tar"}


def test_prunedstream_on_an_http_streaming_dataset(http_dir) -> None:
    root, srv = http_dir
    shards = make_tars(os.path.join(root, "tars"))
    stream = load_dataset("webdataset", data_files={"train": urls(srv, root, "tars")}, split="train", streaming=True)
    keep = KeepList.from_samples({"shard-00002.tar": [k for k, _ in shards.samples["shard-00002.tar"][:9]]})
    srv.reset()  # load_dataset itself looked at every file; from here on only kept files may be read
    pruned = PrunedStream(stream, keep, world=World(0, 2))
    per_rank = [[ex["__key__"] for ex in split_dataset_by_node(pruned, r, 2)] for r in range(2)]
    assert [len(p) for p in per_rank] == [5, 5] and len(pruned) == 5  # 9 kept, padded to 10
    assert set(per_rank[0]) | set(per_rank[1]) == {k for k, _ in shards.samples["shard-00002.tar"][:9]}
    assert set(requested(srv, "tars")) == {"shard-00002.tar"}


def test_balanced_scan_over_http_reads_only_kept_files(http_dir) -> None:
    root, srv = http_dir
    labels = make_parquet(os.path.join(root, "pq"))
    keep = KeepList.from_classes([0, 5]) & KeepList.from_shards(["part-00001.parquet", "part-00003.parquet"])
    srv.reset()
    ds = load_pruned(None, keep, data_files=urls(srv, root, "pq"), world=World(0, 3))
    parts = [[ex["__key__"] for ex in split_dataset_by_node(ds, r, 3)] for r in range(3)]
    assert {len(p) for p in parts} == {len(ds)}
    assert set().union(*parts) == {k for k, y in labels.items() if y in (0, 5) and k[:3] in ("p1_", "p3_")}
    assert set(requested(srv, "pq")) == {"part-00001.parquet", "part-00003.parquet"}


def test_unreachable_file_names_the_url(http_dir) -> None:
    root, srv = http_dir
    make_parquet(os.path.join(root, "pq"), nfiles=2)
    good = urls(srv, root, "pq")
    features = load_pruned(None, KeepList.from_classes([1]), data_files=good[:1], world=ONE).features
    missing = f"{srv.url}/pq/part-00009.parquet"
    ds = load_pruned(None, KeepList.from_classes([1]), data_files=[*good, missing], features=features, world=ONE)
    with pytest.raises(ShardError, match=r"part-00009.parquet: unreachable"):
        list(ds)


def test_parquet_from_s3(s3_server, tmp_path) -> None:  # noqa: F811 - the fixture
    import s3fs

    opts = s3_server  # a moto S3 server on loopback, bucket "lists" (tests/test_keeplist_s3.py)
    fs = s3fs.S3FileSystem(**opts)
    labels = make_parquet(str(tmp_path / "pq"), nfiles=3)
    for name in sorted(os.listdir(tmp_path / "pq")):
        fs.put(str(tmp_path / "pq" / name), f"lists/hf/train/{name}")
    files = [f"s3://lists/hf/train/part-{i:05d}.parquet" for i in range(3)]
    keep = KeepList.from_classes([3]) & KeepList.from_shards(["part-00000.parquet", "part-00002.parquet"])
    ds = load_pruned(None, keep, data_files=files, storage_options=opts, world=ONE)
    got = sorted(ex["__key__"] for ex in ds)
    assert got == sorted(k for k, y in labels.items() if y == 3 and k[:3] in ("p0_", "p2_"))
