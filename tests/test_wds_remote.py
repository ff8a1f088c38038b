"""Remote shards on real loopback servers: an HTTP server with byte ranges and per-path
counters, and moto's S3 server through s3fs. Fully pruned shards get zero requests and zero
bytes; sample pruning transfers only kept byte ranges, in coalesced requests."""

from __future__ import annotations

import os

import pytest
import webdataset as wds
from dp4tl_data.plugins.wds import index_shards
from test_keeplist_s3 import s3  # noqa: F401 - the moto S3 server fixture
from test_wds_util import KEEP_CLASSES, keys, loader_keys, make_shards, random_keys

from dp4tl_data import KeepList, PrunedStream, World


@pytest.fixture
def served(http_dir):
    www, srv = http_dir
    shards = make_shards(www)
    idx = index_shards([f"{srv.url}/{n}" for n in shards.names], workers=2, progress=False)
    srv.reset()
    return shards, idx, srv


def test_pruned_shards_get_no_request_and_no_byte(served):
    shards, idx, srv = served
    pruned = {shards.names[1], shards.names[4]}
    samples = random_keys(shards, 0.5, skip=tuple(pruned))
    keep = KeepList.from_samples(samples, source_fingerprint=idx.fingerprint)
    expected = {k for ks in samples.values() for k in ks}
    urls = [f"{srv.url}/{n}" for n in shards.names]
    got = []
    for rank in range(2):
        ds = PrunedStream(wds.WebDataset(urls, shardshuffle=False), keep, index=idx, world=World(rank, 2))
        got += loader_keys(ds, 2)
    assert set(got) == expected
    for name in shards.names:
        if name in pruned:
            assert srv.requests[f"/{name}"] == 0 and srv.bytes_sent[f"/{name}"] == 0, name
        else:
            assert srv.bytes_sent[f"/{name}"] > 0, name


def test_sample_pruning_reads_only_kept_ranges_coalesced(served):
    shards, idx, srv = served
    size = sum(os.path.getsize(p) for p in shards.paths)
    everything = KeepList.from_shards(shards.names)
    full = keys(PrunedStream(idx, everything))
    full_bytes, full_requests = sum(srv.bytes_sent.values()), sum(srv.requests.values())
    assert len(full) == 200 and full_bytes <= size
    assert full_requests <= 2 * len(shards.names)  # one HEAD and one coalesced range per shard
    srv.reset()
    keep = KeepList.from_classes(sorted(KEEP_CLASSES), label_field="cls")
    ds = PrunedStream(idx, keep)
    got = keys(ds)
    assert sorted(got) == sorted(shards.keys(KEEP_CLASSES))
    half_bytes = sum(srv.bytes_sent.values())
    ranges = sum(srv.requests.values()) - len(shards.names)
    assert half_bytes <= 0.6 * full_bytes, (half_bytes, full_bytes)
    assert ranges < len(got)  # neighbouring kept samples share a request
    stats = ds.stats()
    assert stats["bytes_read"] == half_bytes and stats["requests"] == ranges
    srv.reset()
    # without an index the streaming filter still yields the exact set over HTTP
    urls = [f"{srv.url}/{n}" for n in shards.names]
    assert sorted(keys(PrunedStream(urls, keep))) == sorted(got)


def test_remote_root_override_reads_local_index_over_http(served, tmp_path):
    shards, _, srv = served
    local = index_shards(shards.paths, workers=1, progress=False)  # indexed from the files
    keep = KeepList.from_classes(sorted(KEEP_CLASSES), label_field="cls")
    got = keys(PrunedStream(local, keep, root=srv.url))  # read from the server: size is checked
    assert sorted(got) == sorted(shards.keys(KEEP_CLASSES))
    assert set(srv.bytes_sent) <= {f"/{n}" for n in shards.names} and sum(srv.bytes_sent.values()) > 0


def test_s3_index_and_pruned_stream(s3, tmp_path):  # noqa: F811 - s3 is the imported fixture
    import s3fs

    shards = make_shards(str(tmp_path / "local"), sizes=[20, 15, 25])
    fs = s3fs.S3FileSystem(**s3)
    for p, n in zip(shards.paths, shards.names):
        fs.put(p, f"lists/train/{n}")
    urls = [f"s3://lists/train/{n}" for n in shards.names]
    idx = index_shards("s3://lists/train/*.tar", workers=2, progress=False, storage_options=s3)
    assert idx.shard_names == shards.names and idx.shard(shards.names[0]).etag
    keep = KeepList.from_classes(sorted(KEEP_CLASSES), label_field="cls")
    got = keys(PrunedStream(urls, keep, index=idx, storage_options=s3))
    assert sorted(got) == sorted(shards.keys(KEEP_CLASSES))
    plain = {s["__key__"]: s["jpg"] for s in wds.WebDataset(shards.paths, shardshuffle=False)}
    assert all(s["jpg"] == plain[s["__key__"]] for s in PrunedStream(urls, keep, index=idx, storage_options=s3))
    again = index_shards(urls, previous=idx, workers=1, progress=False, storage_options=s3)
    assert again.meta["reused_shards"] == 3 and again.fingerprint == idx.fingerprint
