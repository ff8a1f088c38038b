"""SourceIndex: build, save/load (local and memory fs), lazy per-shard reads, resolution of
keep-lists against it, and bad index files."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from dp4tl_data import ClassMismatchError, ForeignKeepListError, IndexFileError, KeepList, SourceIndex
from dp4tl_data.index import IndexedShard, shard_samples_table

CLASSES = [f"c{i}" for i in range(5)]


def make_index(nshards: int = 4, per: int = 30) -> SourceIndex:
    items = []
    for s in range(nshards):
        keys = [f"s{s}_{i:03d}" for i in range(per)]
        labels = [(s * per + i) % 5 for i in range(per)]
        offsets = [i * 1024 for i in range(per)]
        members = [[{"name": f"{k}.jpg", "offset": o + 512, "size": 100}] for k, o in zip(keys, offsets)]
        t = shard_samples_table(keys, labels, offsets, [1024] * per, members)
        items.append((IndexedShard(f"part/{s:03d}.tar", per, nbytes=per * 1024, mtime=1.5), t))
    return SourceIndex.build(reversed(items), kind="test", root="/data", label_field="label", classes=CLASSES)


def test_build_sorts_and_fingerprints():
    idx = make_index()
    assert idx.shard_names == [f"part/{s:03d}.tar" for s in range(4)]
    assert idx.num_samples == 120 and idx.count("part/002.tar") == 30
    assert idx.keys("part/001.tar")[0] == "s1_000"
    assert idx.labels("part/001.tar").tolist()[:3] == [0, 1, 2]
    assert idx.fingerprint == make_index().fingerprint != make_index(per=29).fingerprint


@pytest.mark.parametrize("where", ["local", "memory"])
def test_save_load_round_trip(tmp_path, where):
    idx = make_index()
    url = str(tmp_path / "source.idx") if where == "local" else "memory://idx/source.idx"
    idx.save(url)
    back = SourceIndex.load(url)
    assert back.fingerprint == idx.fingerprint and back.classes == CLASSES and back.label_field == "label"
    for name in idx.shard_names:
        assert back.keys(name) == idx.keys(name)
        assert np.array_equal(back.labels(name), idx.labels(name))
    assert back.table("part/003.tar").column("members")[0].as_py() == [
        {"name": "s3_000.jpg", "offset": 512, "size": 100}
    ]
    assert back.shard("part/000.tar").mtime == 1.5


def test_reads_only_the_row_groups_of_a_shard(tmp_path, monkeypatch):
    import dp4tl_data.index as index_mod

    monkeypatch.setattr(index_mod, "ROW_GROUP", 30)  # one shard per row group
    make_index().save(str(tmp_path / "i"))
    back = SourceIndex.load(str(tmp_path / "i"))
    seen = []
    orig = back._samples.read_row_groups
    back._samples.read_row_groups = lambda groups, **kw: (seen.append(list(groups)), orig(groups, **kw))[1]
    back.keys("part/002.tar")
    assert seen == [[2]]


def test_resolve_class_list_against_index():
    idx = make_index()
    keep = KeepList.from_classes(["c1", "c3"], names=CLASSES)
    counts = keep.kept_counts(idx)
    assert sum(counts.values()) == 48
    resolved = keep.resolve(idx)
    assert resolved.source_fingerprint == idx.fingerprint
    assert resolved.levels == ["shard", "sample"]
    assert resolved.provenance["resolved_classes"]["names"] == ["c1", "c3"]
    for name in idx.shard_names:
        want = {k for k, y in zip(idx.keys(name), idx.labels(name)) if y in (1, 3)}
        assert resolved.shard(name).keys() == want
    as_bits = keep.resolve(idx, encoding="bitmap")
    assert as_bits.stats()["samples_kept"] == 48
    # once resolved, mixed levels combine
    union = resolved | KeepList.from_classes(["c0"], names=CLASSES).resolve(idx)
    assert union.stats()["samples_kept"] == 72


def test_unknown_class_names_against_index():
    with pytest.raises(ClassMismatchError, match="zebra"):
        KeepList.from_classes(["zebra"]).kept_counts(make_index())


def test_foreign_list_cannot_resolve():
    keep = KeepList.from_classes([1], source_fingerprint="f" * 64)
    with pytest.raises(ForeignKeepListError):
        keep.resolve(make_index())


def test_bad_index_files(tmp_path):
    url = str(tmp_path / "i")
    with pytest.raises(IndexFileError, match="not an index folder"):
        SourceIndex.load(url)
    make_index().save(url)
    meta = json.load(open(f"{url}/index.json"))
    json.dump({**meta, "version": 7}, open(f"{url}/index.json", "w"))
    with pytest.raises(IndexFileError, match="index version 7 is not supported"):
        SourceIndex.load(url)
    json.dump(meta, open(f"{url}/index.json", "w"))
    t = pq.read_table(f"{url}/samples.parquet")
    pq.write_table(t.slice(0, 100), f"{url}/samples.parquet")
    with pytest.raises(IndexFileError, match="samples.parquet has 100 rows, shards list 120"):
        SourceIndex.load(url)
    open(f"{url}/shards.parquet", "wb").write(b"garbage")
    with pytest.raises(IndexFileError, match="corrupt index table"):
        SourceIndex.load(url)


def test_index_refuses_duplicate_and_unsafe_shards():
    t = shard_samples_table(["a"], [0])
    with pytest.raises(IndexFileError, match="listed twice"):
        SourceIndex.build([(IndexedShard("x.tar", 1), t), (IndexedShard("x.tar", 1), t)], kind="t")
    with pytest.raises(Exception, match="escapes"):
        SourceIndex.build([(IndexedShard("../x.tar", 1), t)], kind="t")


def _rewrite_shards(url: str, edit) -> None:
    import pyarrow as pa

    from dp4tl_data.index import SHARD_SCHEMA

    cols = pq.read_table(f"{url}/shards.parquet").to_pydict()
    edit(cols)
    pq.write_table(pa.table(cols, schema=SHARD_SCHEMA), f"{url}/shards.parquet")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c.update(name=[c["name"][0]] * 4), "lists a shard twice"),
        (lambda c: c.update(row_start=[0, 0, 30, 60]), "not contiguous"),
        (lambda c: c.update(nsamples=[-30, 60, 60, 30]), "negative or not contiguous"),
        (lambda c: c.update(name=["../x.tar", *c["name"][1:]]), "escapes"),
    ],
)
def test_untrusted_shard_tables_are_checked(tmp_path, edit, message):
    url = str(tmp_path / "i")
    make_index().save(url)
    _rewrite_shards(url, edit)
    with pytest.raises(IndexFileError, match=message):
        SourceIndex.load(url)


@pytest.mark.parametrize(
    "root, message",
    [
        ("pipe:curl http://x/", "is a command or a chained URL"),
        ("simplecache::http://host/data", "is a command or a chained URL"),
        ("ftp://host/data", "not a data filesystem"),
        (7, "must be a string"),
    ],
)
def test_untrusted_roots_are_refused(tmp_path, root, message):
    url = str(tmp_path / "i")
    make_index().save(url)
    meta = json.load(open(f"{url}/index.json"))
    json.dump({**meta, "root": root}, open(f"{url}/index.json", "w"))
    with pytest.raises(IndexFileError, match=message):
        SourceIndex.load(url)
    json.dump({**meta, "root": "s3://bucket/laion"}, open(f"{url}/index.json", "w"))
    assert SourceIndex.load(url).root == "s3://bucket/laion"
