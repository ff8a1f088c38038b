"""Order and resume: seeded shard and buffer shuffles that set_epoch changes; mid-epoch
state_dict / load_state_dict that loses and repeats nothing, in-process, through a webdataset
pipeline with .batched(), and through a DataLoader with 0, 2 and 4 workers (where batches come
out in the same order whatever the number of workers)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import webdataset as wds
from dp4tl_data.plugins.wds import index_shards
from dp4tl_data.plugins.wds_stream import buffer_order, worker_positions
from test_wds_util import KEEP_CLASSES, keys, make_shards
from torch.utils.data import DataLoader

from dp4tl_data import KeepList, PrunedStream, StateError, World

KEEP = KeepList.from_classes(sorted(KEEP_CLASSES), label_field="cls")
SHUFFLED = dict(shuffle=True, shuffle_buffer=20, seed=7)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    shards = make_shards(str(tmp_path_factory.mktemp("wds_resume")))
    idx = index_shards(shards.root, workers=1, progress=False)
    return shards, idx, idx.save(os.path.join(shards.root, "src.idx"))


def test_buffer_order_and_worker_positions():
    perm = buffer_order(1000, 50, seed=1)
    assert sorted(perm.tolist()) == list(range(1000)) and perm.tolist() != list(range(1000))
    assert np.array_equal(perm, buffer_order(1000, 50, seed=1))
    assert not np.array_equal(perm, buffer_order(1000, 50, seed=2))
    assert all(perm[k] <= k + 50 for k in range(1000))  # a buffer, not a full shuffle
    chunks = [worker_positions(10, 100, w, 3, 8) for w in range(3)]
    assert sorted(np.concatenate(chunks).tolist()) == list(range(10, 100))
    assert chunks[1][:8].tolist() == list(range(18, 26)) and chunks[0][8:16].tolist() == list(range(34, 42))
    parts = [worker_positions(0, 10, w, 4, None) for w in range(4)]
    assert [p.tolist() for p in parts] == [[0, 1], [2, 3, 4], [5, 6], [7, 8, 9]]


def test_seeded_shuffles_and_set_epoch(data):
    shards, idx, _ = data
    plain = keys(PrunedStream(idx, KEEP))
    a = PrunedStream(idx, KEEP, **SHUFFLED)
    first = keys(a)
    assert sorted(first) == sorted(plain) and first != plain
    assert keys(PrunedStream(idx, KEEP, **SHUFFLED)) == first  # same seed, same epoch: same order
    a.set_epoch(1)
    second = keys(a)
    assert sorted(second) == sorted(first) and second != first
    a.set_epoch(0)
    assert keys(a) == first
    shard_order = [k.split("_")[0] for k in keys(PrunedStream(idx, KEEP, shuffle=True, seed=7))]
    assert list(dict.fromkeys(shard_order)) != sorted(dict.fromkeys(shard_order))  # shards reordered
    # ranks still get equal, disjoint halves of the shuffled epoch
    ranks = [keys(PrunedStream(idx, KEEP, world=World(r, 2), **SHUFFLED)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) and set(ranks[0]) | set(ranks[1]) == set(plain)


@pytest.mark.parametrize("stop", [0, 1, 23, -1])
@pytest.mark.parametrize("rank", [0, 1])
def test_resume_in_process_is_exact(data, stop, rank):
    _, idx, url = data
    world = World(rank, 2)
    whole = PrunedStream(idx, KEEP, world=world, **SHUFFLED)
    full = keys(whole)
    stop = stop % len(full)  # -1: all but the last
    ds = PrunedStream(idx, KEEP, world=world, **SHUFFLED)
    ds.set_epoch(0)
    it = iter(ds)
    head = [next(it)["__key__"] for _ in range(stop)]
    state = ds.state_dict()
    assert state["position"]["samples"] == stop
    resumed = PrunedStream(url, KEEP, world=world, **SHUFFLED)  # a fresh process would do this
    resumed.load_state_dict(state)
    tail = keys(resumed)
    assert head + tail == full
    skipped = whole.stats()["bytes_read"] - resumed.stats()["bytes_read"]
    assert (skipped > 0) == (stop > 0)  # what was consumed before the state is not read again


def test_resume_through_batched_pipeline(data):
    _, idx, _ = data
    make = lambda: PrunedStream(idx, KEEP, **SHUFFLED).to_tuple("__key__", "cls").batched(8)  # noqa: E731
    full = [k for b in make() for k in b[0]]
    ds = make()
    it = iter(ds)
    head = [k for _ in range(3) for k in next(it)[0]]  # .batched pulls one sample ahead: not counted
    state = ds.state_dict()
    assert state["position"]["samples"] == 24
    again = make()
    again.load_state_dict(state)
    assert head + [k for b in again for k in b[0]] == full


@pytest.mark.parametrize("num_workers, start", [(0, None), (2, None), (4, None), (2, "spawn")])
def test_resume_through_dataloader_workers(data, num_workers, start):
    shards, idx, url = data

    def make():
        src = wds.WebDataset(shards.paths, shardshuffle=False).to_tuple("__key__", "cls")
        loader = DataLoader(src, batch_size=8, num_workers=num_workers, multiprocessing_context=start)
        pruned = PrunedStream(loader, KEEP, index=url, **SHUFFLED)
        assert pruned.multiprocessing_context is loader.multiprocessing_context
        return pruned

    reference = [k for b in make() for k in b[0]]  # batches in the rank's order, any worker count
    loader = make()
    assert len(loader) == -(-len(reference) // 8)
    assert [k for b in loader for k in b[0]] == reference
    expected_order = [k for b in PrunedStream(idx, KEEP, **SHUFFLED).to_tuple("__key__").batched(8) for k in b[0]]
    assert reference == expected_order
    head = []
    for i, batch in enumerate(loader):
        head += list(batch[0])
        if i == 2:
            break
    state = loader.state_dict()
    assert state["position"]["samples"] == 24
    fresh = make()
    fresh.load_state_dict(state)
    tail = [k for b in fresh for k in b[0]]
    assert head + tail == reference
    # the next epoch starts from its beginning, in a new order
    fresh.set_epoch(1)
    nxt = [k for b in fresh for k in b[0]]
    assert sorted(nxt) == sorted(reference) and nxt != reference


def test_state_end_of_epoch_and_mismatches(data):
    _, idx, _ = data
    ds = PrunedStream(idx, KEEP, **SHUFFLED)
    n = len(keys(ds))
    state = ds.state_dict()
    assert state["position"]["samples"] == n
    again = PrunedStream(idx, KEEP, **SHUFFLED)
    again.load_state_dict(state)
    assert keys(again) == []  # the epoch was complete
    again.set_epoch(1)
    assert len(keys(again)) == n
    with pytest.raises(StateError, match="state order: found"):
        PrunedStream(idx, KEEP, shuffle=True, shuffle_buffer=20, seed=8).load_state_dict(state)
    with pytest.raises(StateError, match="state world_size: found 1, expected 2"):
        PrunedStream(idx, KEEP, world=World(0, 2), **SHUFFLED).load_state_dict(state)
    with pytest.raises(StateError, match="state keep: found"):
        PrunedStream(idx, KeepList.from_classes([1], label_field="cls"), **SHUFFLED).load_state_dict(state)
    with pytest.raises(StateError, match="one of several workers"):
        PrunedStream(idx, KEEP, world=World(0, 1, 1, 2)).state_dict()


def test_resume_without_index(data):
    shards, _, _ = data
    full = keys(PrunedStream(shards.paths, KEEP, shuffle=True, shuffle_buffer=10, seed=1))
    ds = PrunedStream(shards.paths, KEEP, shuffle=True, shuffle_buffer=10, seed=1)
    it = iter(ds)
    head = [next(it)["__key__"] for _ in range(21)]
    again = PrunedStream(shards.paths, KEEP, shuffle=True, shuffle_buffer=10, seed=1)
    again.load_state_dict(ds.state_dict())
    assert head + keys(again) == full
