"""`dp4tl index` for HF dataset specs, streaming with an index, and the hub repo-id path
(resolved from a file listing; no network: the hub is never contacted here)."""

from __future__ import annotations

import json
import os
from collections import Counter

import datasets  # noqa: E402,F401 - a dev dependency: these tests must run, never skip
import numpy as np
import pytest
from click.testing import CliRunner  # noqa: E402
from datasets import ClassLabel, Dataset, Features, Value  # noqa: E402
from dp4tl_data.plugins import hf_files  # noqa: E402
from dp4tl_data.plugins.hf import load_pruned  # noqa: E402
from dp4tl_data.plugins.hf_index import accepts, build  # noqa: E402
from test_hf_stream import NAMES, make_parquet, make_tars  # noqa: E402

from dp4tl_data import IndexFileError, KeepList, ShardError, SourceIndex, World, get_registry  # noqa: E402
from dp4tl_data.cli import main  # noqa: E402

ONE = World()


def test_accepts_hf_specs_and_leaves_tars_to_webdataset(tmp_path) -> None:
    pq_dir, tar_dir = tmp_path / "pq", tmp_path / "tars"
    make_parquet(str(pq_dir), nfiles=1, rows=5)
    make_tars(str(tar_dir), nshards=1, per_shard=2)
    wids = tmp_path / "index.json"
    wids.write_text(json.dumps({"__kind__": "wids-shard-index-v1", "shardlist": []}))
    data = tmp_path / "rows.json"
    data.write_text(json.dumps([{"label": 1}]))
    assert accepts(["hf://datasets/user/name"]) and accepts(["user/name"]) and accepts([str(pq_dir)])
    assert accepts([str(pq_dir / "part-00000.parquet")]) and accepts([str(data)]) and accepts(["s3://b/x/*.parquet"])
    assert not accepts([str(tar_dir)]) and not accepts([str(tar_dir / "shard-00000.tar")]) and not accepts([str(wids)])
    assert not accepts(["user/name", "other/name"]) and not accepts([])
    reg = get_registry()
    assert reg.indexer_for([str(pq_dir)]).name == "hf"
    assert reg.indexer_for([str(tar_dir)]).name == "webdataset"


def test_cli_indexes_a_parquet_folder(tmp_path) -> None:
    root = str(tmp_path / "pq")
    labels = make_parquet(root, nfiles=3, rows=20)
    out = str(tmp_path / "src.idx")
    res = CliRunner().invoke(main, ["index", root, "-o", out])
    assert res.exit_code == 0, res.output
    assert "indexed 3 shards, 60 samples" in res.output
    idx = SourceIndex.load(out)
    assert idx.kind == "hf-parquet" and idx.label_field == "label" and idx.classes == NAMES
    assert idx.shard_names == [f"part-{i:05d}.parquet" for i in range(3)]
    got = {k: int(y) for n in idx.shard_names for k, y in zip(idx.keys(n), idx.labels(n))}
    assert got == labels
    assert all(idx.table(n).column("offset").null_count == 20 for n in idx.shard_names)  # rows are not byte ranges


def test_streaming_with_an_index_drops_files_without_kept_classes(tmp_path, monkeypatch) -> None:
    from dp4tl_data.plugins import hf_read

    root = tmp_path / "pq"
    root.mkdir()
    feats = Features({"__key__": Value("string"), "label": ClassLabel(names=NAMES)})
    for f, classes in enumerate([(0, 1), (2, 3), (1, 4)]):
        keys = [f"f{f}_{i}" for i in range(12)]
        Dataset.from_dict({"__key__": keys, "label": [classes[i % 2] for i in range(12)]}, feats).to_parquet(
            str(root / f"part-{f:05d}.parquet")
        )
    idx = build([str(root)])
    opened: Counter[str] = Counter()
    original = hf_read.open_parquet
    monkeypatch.setattr(
        hf_read, "open_parquet", lambda url, so: opened.update([os.path.basename(url)]) or original(url, so)
    )
    ds = load_pruned(str(root), KeepList.from_classes([NAMES[1]]), index=idx, world=ONE)
    assert len(ds) == 12  # exact from the index, no scan
    assert sorted(ex["__key__"] for ex in ds) == sorted(
        [f"f0_{i}" for i in range(1, 12, 2)] + [f"f2_{i}" for i in range(0, 12, 2)]
    )
    assert set(opened) == {"part-00000.parquet", "part-00002.parquet"}  # part-00001 holds no kept class


def test_tar_index_and_resolved_bitmap_list(tmp_path) -> None:
    shards = make_tars(str(tmp_path / "tars"), nshards=3, per_shard=20)
    idx = build(shards.paths, label_field="cls")
    assert idx.kind == "hf-webdataset"
    assert {k: int(y) for n in idx.shard_names for k, y in zip(idx.keys(n), idx.labels(n))} == {
        k: y for rows in shards.samples.values() for k, y in rows
    }
    keep = KeepList.from_classes([1, 2, 6], label_field="cls")
    expected = sorted(shards.keys({1, 2, 6}))
    with_index = load_pruned(shards.root, keep, index=idx, world=World(0, 2))
    assert len(with_index) == -(-len(expected) // 2)
    bitmap = keep.resolve(idx, encoding="bitmap")  # positions in the index order, no labels needed
    ds = load_pruned(shards.root, bitmap, world=ONE)
    assert len(ds) == len(expected)
    assert sorted(ex["__key__"] for ex in ds) == expected
    foreign = KeepList.from_classes([1], label_field="cls", source_fingerprint="9" * 64)
    with pytest.raises(Exception, match="99999999"):
        load_pruned(shards.root, foreign, index=idx)


def test_stale_index_and_unindexed_file_are_errors(tmp_path) -> None:
    root = str(tmp_path / "pq")
    make_parquet(root, nfiles=2, rows=20)
    idx = build([root])
    feats = Features({"__key__": Value("string"), "label": ClassLabel(names=NAMES), "text": Value("string")})
    # same row count, other rows: the index's masks would land on the wrong rows
    Dataset.from_dict({"__key__": ["x"] * 20, "label": [1] * 20, "text": ["t"] * 20}, feats).to_parquet(
        os.path.join(root, "part-00001.parquet")
    )
    ds = load_pruned(root, KeepList.from_classes([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]), index=idx, world=ONE)
    with pytest.raises(IndexFileError, match=r"part-00001.parquet: is \d+ bytes, the index recorded \d+"):
        list(ds)
    make_parquet(str(tmp_path / "pq2"), nfiles=1, rows=5)
    os.replace(tmp_path / "pq2" / "part-00000.parquet", os.path.join(root, "part-00009.parquet"))
    with pytest.raises(IndexFileError, match="does not list data file 'part-00009.parquet'"):
        load_pruned(root, KeepList.from_classes([1]), index=idx)


def test_corrupt_parquet_fails_the_cli_naming_the_file(tmp_path) -> None:
    root = tmp_path / "pq"
    make_parquet(str(root), nfiles=2, rows=5)
    (root / "part-00001.parquet").write_bytes(b"PAR1 not really")
    res = CliRunner().invoke(main, ["index", str(root), "-o", str(tmp_path / "x.idx")])
    assert res.exit_code != 0
    assert "part-00001.parquet: corrupt parquet" in res.output


# ----------------------------------------------------------------------------- hub repo ids

LISTING = [
    ".gitattributes",
    "README.md",
    "data/train-00000-of-00003.parquet",
    "data/train-00001-of-00003.parquet",
    "data/train-00002-of-00003.parquet",
    "data/validation-00000-of-00001.parquet",
]


def test_split_files_follow_the_datasets_conventions() -> None:
    assert hf_files.split_files(LISTING, "validation") == ["data/validation-00000-of-00001.parquet"]
    dirs = ["train/a.tar", "train/b.tar", "test/c.tar", "README.md"]
    assert hf_files.split_files(dirs, "train") == ["train/a.tar", "train/b.tar"]
    assert hf_files.split_files(["x/1.parquet", "y/2.parquet"], "train", data_files={"train": "y/*"}) == ["y/2.parquet"]
    with pytest.raises(ShardError, match="split 'test' not found"):
        hf_files.split_files(LISTING, "test")


def test_repo_id_resolves_to_hub_urls_and_drops_pruned_files(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(hf_files, "list_hub_files", lambda repo, rev: calls.append((repo, rev)) or LISTING)
    source = hf_files.resolve_source("user/imagenet-pq", split="train", revision="abc123")
    assert calls == [("user/imagenet-pq", "abc123")]
    assert source.builder == "parquet" and source.root == "hf://datasets/user/imagenet-pq@abc123"
    assert [f.name for f in source.files] == [f"data/train-0000{i}-of-00003.parquet" for i in range(3)]
    assert source.urls[0] == "hf://datasets/user/imagenet-pq@abc123/data/train-00000-of-00003.parquet"
    keep = KeepList.from_samples({"data/train-00001-of-00003.parquet": ["k1"]})
    kept = hf_files.kept_files(source, keep)
    assert [(r.url, r.kept) for r in kept] == [(source.urls[1], 1)]
    same = hf_files.source_from_urls(source.urls, "parquet")  # URLs a hub streaming dataset holds
    assert [f.name for f in same.files] == [f.name for f in source.files]


def offline(monkeypatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_offline_hub_is_a_clean_error(monkeypatch) -> None:
    offline(monkeypatch)
    with pytest.raises(ShardError, match="'user/name': cannot list its files, the hub is offline"):
        hf_files.resolve_source("user/name")
    res = CliRunner().invoke(main, ["index", "user/name", "-o", "unused.idx"])
    assert res.exit_code != 0 and "hub is offline" in res.output
    # with the listing resolved, the first kept file (not a pruned one) is the first file touched
    monkeypatch.setattr(hf_files, "list_hub_files", lambda repo, rev: LISTING)
    keep = KeepList.from_shards(["data/train-00002-of-00003.parquet"])
    with pytest.raises(ShardError, match=r"hf://datasets/user/name@main/data/train-00002-of-00003.parquet: cannot"):
        load_pruned("user/name", keep)


def test_equal_rank_counts_from_index_without_scanning(tmp_path, caplog) -> None:
    root = str(tmp_path / "pq")
    labels = make_parquet(root, nfiles=3, rows=17)
    idx = build([root])
    ds = load_pruned(root, KeepList.from_classes([0, 3, 5]), index=idx, world=World(0, 4), uneven="drop")
    assert "counting kept rows" not in caplog.text
    kept = sum(1 for y in labels.values() if y in (0, 3, 5))
    assert len(ds) == kept // 4
    assert np.sum([1 for _ in ds]) == 4 * (kept // 4)  # the unsplit stream: every rank's share
