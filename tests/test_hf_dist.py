"""Streaming HF datasets under DDP and resume: equal per-rank counts, exact state_dict resume.

Ranks are simulated in one process with `split_dataset_by_node`; sample sets are compared by key.
"""

from __future__ import annotations

from collections import Counter

import datasets  # noqa: E402,F401 - a dev dependency: these tests must run, never skip
import pytest
from datasets.distributed import split_dataset_by_node  # noqa: E402
from dp4tl_data.plugins.hf import load_pruned  # noqa: E402

from benchmarks.shardgen import ShardSet, write_shards  # noqa: E402
from dp4tl_data import KeepList, StateError, World  # noqa: E402

KEEP = KeepList.from_classes([0, 2, 3, 5, 7], label_field="cls")
KEPT = {0, 2, 3, 5, 7}


@pytest.fixture(scope="module")
def tars(tmp_path_factory) -> ShardSet:
    sizes = [37, 5, 23, 41, 12]  # unequal shards: naive splitting gives unequal ranks
    return write_shards(
        str(tmp_path_factory.mktemp("dist")), nshards=5, sizes=sizes, nclasses=10, image_size=8, seed=11
    )


def stream(tars: ShardSet, ws: int, **kw):
    return load_pruned(tars.root, KEEP, world=World(0, ws), **kw)


def keys(ds) -> list[str]:
    return [ex["__key__"] for ex in ds]


@pytest.mark.parametrize("ws", [2, 3, 4, 7])
@pytest.mark.parametrize("uneven", ["pad", "drop"])
def test_every_rank_yields_the_same_count(tars: ShardSet, ws: int, uneven: str) -> None:
    ds = stream(tars, ws, uneven=uneven)
    kept = tars.keys(KEPT)
    per_rank = [keys(split_dataset_by_node(ds, rank=r, world_size=ws)) for r in range(ws)]
    assert {len(p) for p in per_rank} == {len(ds)}  # len is the per-rank count, exactly
    seen = Counter(k for p in per_rank for k in p)
    if uneven == "pad":
        assert set(seen) == kept and sum(seen.values()) - len(kept) < ws
    else:
        assert set(seen) <= kept and max(seen.values()) == 1 and len(kept) - len(seen) < ws


def test_example_strategy_and_more_ranks_than_files(tars: ShardSet) -> None:
    ws = 8  # more ranks than the 5 files
    ds = stream(tars, ws)
    counts = {len(keys(split_dataset_by_node(ds, r, ws, strategy="examples"))) for r in range(ws)}
    assert counts == {len(ds)}
    shards = [keys(split_dataset_by_node(ds, r, ws, strategy="shards")) for r in range(ws)]
    assert {len(s) for s in shards} == {len(ds)} and set().union(*shards) == tars.keys(KEPT)


def test_ranks_with_dataloader_workers(tars: ShardSet) -> None:
    from torch.utils.data import DataLoader

    ws = 2
    ds = stream(tars, ws)
    per_rank = []
    for r in range(ws):
        part = split_dataset_by_node(ds, r, ws).select_columns(["__key__"])
        loader = DataLoader(part, batch_size=5, num_workers=2)
        per_rank.append([k for b in loader for k in b["__key__"]])
    assert len(per_rank[0]) == len(per_rank[1]) == len(ds)
    assert set(per_rank[0]) | set(per_rank[1]) == tars.keys(KEPT)


def test_epoch_reshuffles_files_and_stays_balanced(tars: ShardSet) -> None:
    ws = 3
    ds = stream(tars, ws)
    ranks = [split_dataset_by_node(ds, r, ws) for r in range(ws)]
    first = [keys(d) for d in ranks]
    for d in ranks:
        d.set_epoch(1)
    second = [keys(d) for d in ranks]
    assert first != second
    assert {len(p) for p in second} == {len(ds)}
    assert set().union(*second) == tars.keys(KEPT)


def resume_run(make, stops: list[int]) -> list[str]:
    """Iterate, checkpointing after each count in `stops` and resuming in a fresh dataset."""
    out: list[str] = []
    state = None
    for stop in [*stops, None]:
        ds = make()
        if state is not None:
            ds.load_state_dict(state)
        for i, ex in enumerate(ds):
            out.append(ex["__key__"])
            if stop is not None and i + 1 == stop:
                state = ds.state_dict()
                break
    return out


@pytest.mark.parametrize("stops", [[1], [7, 1, 30], [19, 19]])
def test_resume_is_exact(tars: ShardSet, stops: list[int]) -> None:
    full = keys(stream(tars, 1))
    assert resume_run(lambda: stream(tars, 1), stops) == full


def test_resume_is_exact_per_rank_and_after_map(tars: ShardSet) -> None:
    ws = 3
    for r in range(ws):

        def make(r=r):
            return split_dataset_by_node(stream(tars, ws), r, ws).map(lambda ex: {"twice": ex["cls"] * 2})

        full = keys(make())
        assert resume_run(make, [4, 9]) == full


def test_resume_with_epoch_shuffle(tars: ShardSet) -> None:
    def make():
        ds = stream(tars, 1)
        ds.set_epoch(2)
        return ds

    assert resume_run(make, [11, 3]) == keys(make())


def test_state_from_another_keep_list_is_refused(tars: ShardSet) -> None:
    ds = stream(tars, 1)
    for _ in zip(range(3), ds):
        pass
    state = ds.state_dict()
    other = load_pruned(tars.root, KeepList.from_classes([1], label_field="cls"), world=World())
    other.load_state_dict(state)
    with pytest.raises(StateError, match="state keep: found"):
        next(iter(other))
