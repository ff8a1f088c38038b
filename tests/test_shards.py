"""Shard stage: filtering, seeded order, and exact balanced splitting (property tests)."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dp4tl_data import Dp4tlError, KeepList, World
from dp4tl_data.shards import ShardRef, filter_shards, order_shards, per_rank_count, pieces_length, split_shards


def refs(counts):
    return [ShardRef(f"s{i:03d}.tar", f"/d/s{i:03d}.tar", kept=c, total=c) for i, c in enumerate(counts)]


def test_filter_drops_unlisted_and_empty_shards():
    keep = KeepList.from_shards(["s000.tar", "s002.tar"])
    assert [r.name for r in filter_shards(refs([3, 4, 0]), keep)] == ["s000.tar"]
    assert [r.name for r in filter_shards(refs([3, 4, 0]), KeepList.from_classes([1]))] == ["s000.tar", "s001.tar"]


def test_order_is_seeded_and_changes_with_epoch():
    rs = refs([1] * 30)
    a = [r.name for r in order_shards(rs, shuffle=True, seed=1, epoch=0)]
    assert a == [r.name for r in order_shards(list(reversed(rs)), shuffle=True, seed=1, epoch=0)]
    assert a != [r.name for r in order_shards(rs, shuffle=True, seed=1, epoch=1)]
    assert sorted(a) == [r.name for r in order_shards(rs, shuffle=False, seed=1, epoch=0)]


def _read_all(rs, world_size, workers, uneven):
    per_rank = []
    seen: Counter[tuple[str, int]] = Counter()
    for rank in range(world_size):
        n = 0
        for w in range(workers):
            pieces = split_shards(rs, World(rank, world_size, w, workers), uneven=uneven)
            n += pieces_length(pieces)
            for p in pieces:
                for k in range(p.start, p.stop):
                    seen[(p.shard.name, k)] += 1
        per_rank.append(n)
    return per_rank, seen


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.integers(0, 40), min_size=1, max_size=12),
    st.integers(1, 5),
    st.integers(1, 4),
    st.sampled_from(["pad", "drop"]),
)
def test_split_is_exact_and_balanced(counts, world_size, workers, uneven):
    rs = refs(counts)
    total = sum(counts)
    per_rank, seen = _read_all(rs, world_size, workers, uneven)
    target = per_rank_count(total, world_size, uneven)
    assert per_rank == [target] * world_size  # every rank the same count
    every = {(r.name, k) for r in rs for k in range(r.kept)}
    if uneven == "drop":
        assert set(seen) <= every and all(v == 1 for v in seen.values())
        assert len(seen) == total - total % world_size
    else:
        assert set(seen) == every  # nothing lost
        assert sum(seen.values()) - total == target * world_size - total  # only the padding repeats
        assert all(v <= 1 + (target * world_size - total) // max(total, 1) + 1 for v in seen.values())


def test_fewer_shards_than_readers_starves_no_rank():
    rs = refs([10])
    per_rank, seen = _read_all(rs, 2, 4, "drop")
    assert per_rank == [5, 5] and len(seen) == 10


def test_uneven_error_policy():
    with pytest.raises(Dp4tlError, match="do not split evenly over 2 ranks"):
        split_shards(refs([3]), World(0, 2), uneven="error")
    with pytest.raises(Dp4tlError, match="uneven must be one of"):
        per_rank_count(3, 1, "sometimes")


def test_unknown_counts_fall_back_to_round_robin_shards():
    rs = [ShardRef(f"s{i}", f"s{i}") for i in range(5)]
    got = [[p.shard.name for p in split_shards(rs, World(0, 1, w, 2))] for w in range(2)]
    assert got == [["s0", "s2", "s4"], ["s1", "s3"]]
    assert pieces_length(split_shards(rs, World())) is None
