"""PrunedStream over webdataset shards yields exactly the kept set, by key: with 0, 2 and 4
DataLoader workers x 1 and 2 simulated ranks, equal per-rank counts, exact len(), fewer shards
than workers, byte-identical samples to plain webdataset, and webdataset stages afterwards."""

from __future__ import annotations

import os
from collections import Counter

import pytest
import torch
import webdataset as wds
from dp4tl_data.plugins.wds import index_shards, pruned_samples
from test_wds_util import KEEP_CLASSES, keys, loader_keys, make_shards, random_keys
from torch.utils.data import DataLoader

from dp4tl_data import KeepList, PrunedStream, World


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    shards = make_shards(str(tmp_path_factory.mktemp("wds_exact")))
    idx = index_shards(shards.root, workers=1, progress=False)
    url = idx.save(os.path.join(shards.root, "src.idx"))
    return shards, idx, url


def class_keep() -> KeepList:
    return KeepList.from_classes(sorted(KEEP_CLASSES), label_field="cls")


def check_ranks(per_rank: list[list[str]], expected: set[str], lengths: list[int]) -> None:
    """Every rank yields len() samples, the same count; together exactly the kept set; the
    only repeats are the pad of uneven totals (< world size of them)."""
    counts = {len(r) for r in per_rank}
    assert len(counts) == 1, [len(r) for r in per_rank]
    assert lengths == [len(r) for r in per_rank]
    got = [k for r in per_rank for k in r]
    assert set(got) == expected
    pad = len(got) - len(expected)
    assert 0 <= pad < len(per_rank)
    assert sum(c - 1 for c in Counter(got).values()) == pad


@pytest.mark.parametrize("num_workers", [0, 2, 4])
@pytest.mark.parametrize("world_size", [1, 2])
def test_exact_kept_set_class_list(data, num_workers, world_size):
    shards, _, url = data
    expected = shards.keys(KEEP_CLASSES)
    per_rank, lengths = [], []
    for rank in range(world_size):
        ds = PrunedStream(shards.paths, class_keep(), index=url, world=World(rank, world_size))
        lengths.append(len(ds))
        per_rank.append(loader_keys(ds, num_workers))
    check_ranks(per_rank, expected, lengths)


@pytest.mark.parametrize("num_workers", [0, 2, 4])
@pytest.mark.parametrize("world_size", [1, 2])
def test_exact_kept_set_sample_list(data, num_workers, world_size):
    shards, idx, _ = data
    samples = random_keys(shards, 0.4, skip=(shards.names[1],))  # one shard fully pruned
    keep = KeepList.from_samples(samples, source_fingerprint=idx.fingerprint)
    expected = {k for ks in samples.values() for k in ks}
    per_rank, lengths = [], []
    for rank in range(world_size):
        ds = PrunedStream(
            wds.WebDataset(shards.paths, shardshuffle=False), keep, index=idx, world=World(rank, world_size)
        )
        lengths.append(len(ds))
        per_rank.append(loader_keys(ds, num_workers))
    check_ranks(per_rank, expected, lengths)


def test_every_keep_list_kind_and_drop_policy(data):
    shards, idx, _ = data
    by_class = class_keep()
    expected = shards.keys(KEEP_CLASSES)
    for keep in (by_class.resolve(idx), by_class.resolve(idx, encoding="bitmap")):
        assert set(keys(PrunedStream(idx, keep))) == expected
    whole = KeepList.from_shards([shards.names[0], shards.names[4]])
    assert set(keys(PrunedStream(shards.paths, whole, index=idx))) == {
        k for n in (shards.names[0], shards.names[4]) for k, _ in shards.samples[n]
    }
    both = by_class & whole  # class level and shard level together
    assert set(keys(PrunedStream(shards.paths, both, index=idx))) == {
        k for n in (shards.names[0], shards.names[4]) for k, y in shards.samples[n] if y in KEEP_CLASSES
    }
    per_rank = [keys(PrunedStream(idx, by_class, world=World(r, 3), uneven="drop")) for r in range(3)]
    got = [k for r in per_rank for k in r]
    assert len({len(r) for r in per_rank}) == 1 and len(got) == len(set(got)) == len(expected) // 3 * 3


def test_without_index_exact_set(data):
    shards, idx, _ = data
    expected = shards.keys(KEEP_CLASSES)
    ds = PrunedStream(wds.WebDataset(shards.paths, shardshuffle=False), class_keep())
    with pytest.raises(TypeError, match="length unknown"):
        len(ds)
    assert sorted(loader_keys(ds, 2)) == sorted(expected)
    per_rank = [keys(PrunedStream(shards.paths, class_keep(), world=World(r, 2))) for r in range(2)]
    assert sorted(per_rank[0] + per_rank[1]) == sorted(expected)
    # a counted sample-level list balances ranks exactly even without an index
    samples = random_keys(shards, 0.5, seed=3)
    keep = KeepList.from_samples(samples)
    streams = [PrunedStream(shards.paths, keep, world=World(r, 2)) for r in range(2)]
    per_rank = [keys(s) for s in streams]
    check_ranks(per_rank, {k for ks in samples.values() for k in ks}, [len(s) for s in streams])
    assert len(streams[0]) == -(-sum(len(ks) for ks in samples.values()) // 2)  # exact, from the list alone


def test_samples_are_byte_identical_to_webdataset(data):
    shards, idx, _ = data
    plain = {s["__key__"]: s for s in wds.WebDataset(shards.paths, shardshuffle=False)}
    got = list(PrunedStream(shards.paths, class_keep(), index=idx))
    assert got and all(s == plain[s["__key__"]] for s in got)
    only_cls = list(PrunedStream(shards.paths, class_keep(), index=idx, select=lambda n: n.endswith(".cls")))
    assert [sorted(s) for s in only_cls[:3]] == [["__key__", "__local_path__", "__url__", "cls"]] * 3
    assert [s["cls"] for s in only_cls] == [s["cls"] for s in got]


@pytest.mark.parametrize("num_workers", [2, 4])
def test_fewer_shards_than_workers(data, num_workers):
    shards, idx, _ = data
    one = [shards.paths[3]]  # 10 samples, one shard, 2 ranks x 4 workers
    keep = KeepList.from_shards([shards.names[3]])
    per_rank = [loader_keys(PrunedStream(one, keep, index=idx, world=World(r, 2)), num_workers) for r in range(2)]
    check_ranks(per_rank, {k for k, _ in shards.samples[shards.names[3]]}, [5, 5])


def test_webdataset_stages_after_and_dataloader(data):
    shards, idx, _ = data
    expected = shards.keys(KEEP_CLASSES)
    src = wds.WebDataset(shards.paths, shardshuffle=False).decode("torchrgb").to_tuple("__key__", "jpg", "cls")
    ds = PrunedStream(src, class_keep(), index=idx).batched(16)
    assert len(ds) == -(-len(expected) // 16)
    batches = list(DataLoader(ds, batch_size=None, num_workers=2))
    assert len(batches) == len(ds)
    got = [k for b in batches for k in b[0]]
    assert sorted(got) == sorted(expected)
    assert isinstance(batches[0][1], torch.Tensor) and batches[0][1].shape[1:] == (3, 16, 16)
    assert all(int(c) in KEEP_CLASSES for b in batches for c in b[2])
    # a DataLoader over a webdataset pipeline is rebuilt around the pruned one
    loader = DataLoader(src, batch_size=8, num_workers=2)
    pruned = PrunedStream(loader, class_keep(), index=idx)
    assert len(pruned) == -(-len(expected) // 8)
    got = [k for b in pruned for k in b[0]]
    assert sorted(got) == sorted(expected)


def test_stage_in_own_pipeline(data):
    shards, idx, _ = data
    expected = shards.keys(KEEP_CLASSES)
    pipe = wds.DataPipeline(
        wds.SimpleShardList(shards.paths),
        pruned_samples(class_keep(), index=idx),
        wds.to_tuple("__key__", "cls"),
    )
    assert sorted(k for k, _ in pipe) == sorted(expected)
    assert sorted(k for k, _ in DataLoader(pipe, batch_size=None, num_workers=2)) == sorted(expected)
    first = wds.DataPipeline(pruned_samples(class_keep(), index=idx), wds.to_tuple("__key__"))
    assert sorted(k for (k,) in first) == sorted(expected)


@pytest.mark.parametrize("use_index", [True, False])
def test_spawned_workers_exact_set(data, use_index):
    """Workers started with spawn (macOS's default; CUDA jobs use it) rebuild the stream from
    its pickled state: the same exact kept set."""
    shards, _, url = data
    ds = PrunedStream(shards.paths, class_keep(), index=url if use_index else None)
    got = keys(DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="spawn"))
    assert sorted(got) == sorted(shards.keys(KEEP_CLASSES))
