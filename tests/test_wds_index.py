"""The webdataset indexer: real tar shards scanned in parallel, labels from .cls / .json /
names, byte offsets that point at the members' bytes, re-index that skips unchanged shards
(checked by the bytes a loopback HTTP server sends), wids shard-index import, and the CLI."""

from __future__ import annotations

import json
import os
import tarfile

import pytest
import webdataset as wds
from click.testing import CliRunner
from dp4tl_data.plugins.wds import accepts, index_shards
from test_wds_util import labelled, make_shards, write_tar

from dp4tl_data import IndexFileError, KeepList, ShardError, SourceIndex
from dp4tl_data.cli import main
from dp4tl_data.registry import get_registry


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(str(tmp_path_factory.mktemp("wds_index")))


def test_index_matches_shards_and_webdataset(shards):
    idx = index_shards(shards.root, workers=2, progress=False)
    assert idx.kind == "webdataset" and idx.label_field == "cls"
    assert idx.shard_names == shards.names
    assert idx.root == os.path.abspath(shards.root)
    for name in shards.names:
        assert idx.keys(name) == [k for k, _ in shards.samples[name]]
        assert idx.labels(name).tolist() == [y for _, y in shards.samples[name]]
    # every member's (offset, size) points at exactly the bytes webdataset yields for it
    name = shards.names[2]
    table = idx.table(name).to_pylist()
    plain = {s["__key__"]: s for s in wds.WebDataset(os.path.join(shards.root, name), shardshuffle=False)}
    with open(os.path.join(shards.root, name), "rb") as f:
        blob = f.read()
    for row in table:
        exts = set()
        for m in row["members"]:
            ext = m["name"].split(".", 1)[1]
            exts.add(ext)
            assert blob[m["offset"] : m["offset"] + m["size"]] == plain[row["key"]][ext]
        assert exts == {"jpg", "cls", "json"}
        assert row["offset"] <= min(m["offset"] for m in row["members"]) - 512
        assert row["offset"] + row["size"] >= max(m["offset"] + m["size"] for m in row["members"])


def test_parallel_equals_serial_and_label_fields(shards):
    serial = index_shards(shards.paths, workers=1, progress=False)
    parallel = index_shards(shards.paths, workers=2, progress=False)
    assert serial.fingerprint == parallel.fingerprint
    assert serial.table(shards.names[0]).equals(parallel.table(shards.names[0]))
    by_json = index_shards(shards.paths, label_field="json.label", workers=1, progress=False)
    assert by_json.label_field == "json.label"
    assert by_json.labels(shards.names[1]).tolist() == serial.labels(shards.names[1]).tolist()
    by_name = index_shards(shards.paths, label_field="json.name", workers=1, progress=False)
    assert by_name.classes == sorted({f"class_{y:03d}" for s in shards.samples.values() for _, y in s})
    name = shards.names[0]
    assert [by_name.classes[i] for i in by_name.labels(name)] == [f"class_{y:03d}" for _, y in shards.samples[name]]


def test_brace_glob_and_registry(shards):
    brace = os.path.join(shards.root, "shard-{00000..00005}.tar")
    glob = os.path.join(shards.root, "shard-*.tar")
    a = index_shards(brace, progress=False, workers=1)
    b = index_shards(glob, progress=False, workers=1)
    assert a.fingerprint == b.fingerprint and a.num_samples == sum(len(s) for s in shards.samples.values())
    reg = get_registry()
    assert reg.indexer_for([brace]).name == "webdataset"
    assert reg.adapter_for([glob.replace("*", "00000")]).name == "webdataset"
    assert accepts(wds.WebDataset(shards.paths, shardshuffle=False))
    assert not accepts([{"x": 1}]) and not accepts("data.parquet")


def test_reindex_skips_unchanged_shards_over_http(shards, http_dir):
    www, srv = http_dir
    for p in shards.paths[:3]:
        os.link(p, os.path.join(www, os.path.basename(p)))
    urls = [f"{srv.url}/{os.path.basename(p)}" for p in shards.paths[:3]]
    first = index_shards(urls, workers=2, progress=False)
    assert first.shard(first.shard_names[0]).mtime is not None  # Last-Modified
    assert all(srv.bytes_sent[f"/{n}"] > 0 for n in first.shard_names)
    srv.reset()
    again = index_shards(urls, previous=first, workers=2, progress=False)
    assert again.fingerprint == first.fingerprint and again.meta["reused_shards"] == 3
    assert sum(srv.bytes_sent.values()) == 0  # unchanged shards: a HEAD each, no byte of them read
    # rewrite one shard: it alone is read again
    changed = os.path.join(www, first.shard_names[1])
    os.unlink(changed)
    write_tar(changed, labelled("new", 7))
    os.utime(changed, (1_000_000_000, 1_000_000_000))
    srv.reset()
    third = index_shards(urls, previous=again, workers=2, progress=False)
    assert third.meta["reused_shards"] == 2
    assert set(k for k, v in srv.bytes_sent.items() if v) == {f"/{first.shard_names[1]}"}
    assert third.keys(first.shard_names[1]) == [f"new_{i:04d}" for i in range(7)]
    assert third.keys(first.shard_names[0]) == first.keys(first.shard_names[0])


def test_wids_shard_index_import(shards, tmp_path):
    entries = [
        {"url": os.path.basename(p), "nsamples": len(shards.samples[n])} for p, n in zip(shards.paths, shards.names)
    ]
    spec = os.path.join(shards.root, "wids.json")
    with open(spec, "w") as f:
        json.dump({"__kind__": "wids-shard-index-v1", "wids_version": 1, "shardlist": entries}, f)
    idx = index_shards(spec, progress=False, workers=1)
    assert idx.shard_names == shards.names and idx.meta["wids"] is True
    entries[0]["nsamples"] += 1
    bad = str(tmp_path / "bad.json")
    with open(bad, "w") as f:
        json.dump({"__kind__": "wids-shard-index-v1", "base": shards.root, "shardlist": entries}, f)
    with pytest.raises(IndexFileError, match="nsamples"):
        index_shards(bad, progress=False, workers=1)
    with open(bad, "w") as f:
        json.dump({"__kind__": "something-else"}, f)
    with pytest.raises(IndexFileError, match="not a wids shard index"):
        index_shards(bad, progress=False, workers=1)


def test_missing_label_is_indexed_as_null_and_refused_by_class_lists(tmp_path):
    samples = labelled("s", 6)
    del samples[3]["cls"]
    path = str(tmp_path / "d" / "a.tar")
    write_tar(path, samples)
    idx = index_shards(path, label_field="cls", progress=False, workers=1)
    assert idx.labels("a.tar").tolist()[3] == -1
    with pytest.raises(Exception, match="'a.tar' sample 's_0003' has no label"):
        idx.check_labels("a.tar")


def test_corrupt_and_truncated_shards_name_the_shard(tmp_path):
    path = str(tmp_path / "d" / "ok.tar")
    write_tar(path, labelled("s", 12))
    blob = open(path, "rb").read()
    trunc = str(tmp_path / "d" / "trunc.tar")
    with open(trunc, "wb") as f:
        f.write(blob[: len(blob) // 2 + 100])
    with pytest.raises(ShardError, match="trunc.tar: .*truncated"):
        index_shards(trunc, progress=False, workers=1)
    corrupt = str(tmp_path / "d" / "corrupt.tar")
    with open(path, "rb") as f:
        members = tarfile.open(fileobj=f).getmembers()
    hdr = members[7].offset  # a header in the middle of the archive
    with open(corrupt, "wb") as f:
        f.write(blob[:hdr] + b"garbage!" * 64 + blob[hdr + 512 :])
    with pytest.raises(ShardError, match="corrupt.tar: corrupt tar header .* after key 's_0002'"):
        index_shards(corrupt, progress=False, workers=1)
    with pytest.raises(ShardError, match="nothere.tar: shard not found"):
        index_shards(str(tmp_path / "d" / "nothere.tar"), progress=False, workers=1)
    with pytest.raises(ShardError, match="command URLs"):
        index_shards("pipe:cat x.tar", progress=False, workers=1)


def test_cli_index_progress_reuse_and_errors(shards, tmp_path):
    runner = CliRunner()
    out = str(tmp_path / "src.idx")
    res = runner.invoke(main, ["index", *shards.paths, "-o", out, "--workers", "2"])
    assert res.exit_code == 0, res.output
    assert "indexing shards" in res.output and f"indexed 6 shards, {200} samples" in res.output
    idx = SourceIndex.load(out)
    assert idx.meta["reused_shards"] == 0
    res = runner.invoke(main, ["index", *shards.paths, "-o", out, "--workers", "1"])
    assert res.exit_code == 0, res.output
    again = SourceIndex.load(out)
    assert again.meta["reused_shards"] == 6 and again.fingerprint == idx.fingerprint
    keep = KeepList.from_classes([1], label_field="cls")
    assert sum(keep.kept_counts(again).values()) == sum(1 for s in shards.samples.values() for _, y in s if y == 1)
    bad = str(tmp_path / "bad.tar")
    with open(bad, "wb") as f:
        f.write(b"this is not a tar file" * 40)
    res = runner.invoke(main, ["index", bad, "-o", str(tmp_path / "bad.idx")])
    assert res.exit_code != 0
    assert res.output.strip().splitlines()[-1].startswith("Error: ShardError: ") and "bad.tar" in res.output
    assert "Traceback" not in res.output
