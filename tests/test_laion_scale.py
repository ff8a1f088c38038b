"""Scale keep-lists: the streaming writer writes what KeepList.load reads (same fingerprint,
same bits), in flat memory; cluster votes find the planted answer; shard policies count exactly."""

import os
import random
import tracemalloc

import numpy as np
import pytest

from benchmarks.laiongen import write_laion
from dp4tl_data.errors import KeepListError, PrunerError
from dp4tl_data.keeplist import KeepList
from dp4tl_data.scale import (
    KeepListWriter,
    drop_sparse_shards,
    plot_shard_fractions,
    select_clusters,
    shard_tradeoff,
    vote_clusters,
)


def _masks(nshards=30, n=1000, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for s in range(nshards):
        p = rng.random()
        out[f"part/{s:05d}.tar"] = rng.random(n + s) < p * (s % 5 != 0)  # some shards keep nothing
    return out


def test_writer_matches_in_memory_keeplist(tmp_path):
    masks = _masks()
    ref = KeepList.from_masks(masks, method="t", source_fingerprint="ab" * 32)
    ref.save(str(tmp_path / "ref.json"))
    names = list(masks)
    random.Random(1).shuffle(names)  # shards may arrive in any order
    with KeepListWriter(str(tmp_path / "w.json"), provenance={"method": "t", "source_fingerprint": "ab" * 32}) as w:
        for name in names:
            w.add_mask(name, masks[name])
    got = KeepList.load(str(tmp_path / "w.json"))
    assert got.fingerprint == ref.fingerprint == KeepList.load(str(tmp_path / "ref.json")).fingerprint
    assert list(got.shards) == sorted(n for n, m in masks.items() if m.any())
    for name, m in masks.items():
        if m.any():
            assert np.array_equal(got.shards[name].mask(), m)
        else:
            assert not got.keeps_shard(name)
    st = got.stats()
    assert st["samples_kept"] == sum(int(m.sum()) for m in masks.values())
    assert got.provenance["num_samples"] == sum(len(m) for m in masks.values())
    assert got.provenance["num_shards"] == len(masks)
    assert got.source_fingerprint == "ab" * 32
    assert os.path.getsize(tmp_path / "w.samples.bin") == os.path.getsize(tmp_path / "ref.samples.bin")


def test_writer_mixed_encodings_and_set_algebra(tmp_path):
    with KeepListWriter(str(tmp_path / "k.json")) as w:
        w.add_all("a.tar", 10)
        w.add_keys("b.tar", ["x", "y"], total=5)
        w.add_mask("c.tar", np.array([1, 0, 1], dtype=bool))
    k = KeepList.load(str(tmp_path / "k.json"))
    ref = KeepList(
        shards={
            **KeepList.from_shards({"a.tar": 10}).shards,
            **KeepList.from_samples({"b.tar": ["x", "y"]}, totals={"b.tar": 5}).shards,
            **KeepList.from_masks({"c.tar": np.array([1, 0, 1], dtype=bool)}).shards,
        }
    )
    assert k.fingerprint == ref.fingerprint
    assert k.shards["b.tar"].keys() == {"x", "y"} and k.shards["a.tar"].kept == 10
    assert (k & ref).fingerprint == ref.fingerprint


def test_writer_refuses_duplicates_and_leaves_nothing_when_interrupted(tmp_path):
    url = str(tmp_path / "k.json")
    with pytest.raises(KeepListError, match="'a.tar' added twice"):
        with KeepListWriter(url) as w:
            w.add_all("a.tar", 3)
            w.add_all("a.tar", 3)
    assert not os.path.exists(url)
    with pytest.raises(KeepListError, match="keep-list not found"):
        KeepList.load(url)
    with pytest.raises(KeepListError, match="escapes"):
        KeepListWriter(str(tmp_path / "j.json")).add_mask("../evil.tar", np.ones(3, dtype=bool))


def _peak_bytes(url, nshards, n=10_000):
    rng = np.random.default_rng(0)
    tracemalloc.start()
    with KeepListWriter(url) as w:
        for s in range(nshards):
            w.add_mask(f"{s:06d}.tar", rng.random(n) < 0.3)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak, w.samples_seen


def test_writer_memory_does_not_grow_with_the_list(tmp_path):
    _peak_bytes(str(tmp_path / "warm.json"), 2)  # first use imports pyarrow's writers
    small, n_small = _peak_bytes(str(tmp_path / "s.json"), 100)
    big, n_big = _peak_bytes(str(tmp_path / "b.json"), 1000)
    assert n_big == 10 * n_small == 10_000_000
    # 10x the samples: the peak grows only by one small table row per shard...
    assert (big - small) / 900 < 1024, (small, big)
    # ...and stays under even the packed bitmaps of the whole list (1.25 MB)
    assert big < 10_000_000 / 8, big


def test_reader_touches_only_its_shard_over_http(tmp_path, http_dir):
    root, srv = http_dir
    masks = _masks(nshards=12, n=5000)
    with KeepListWriter(f"{root}/k.json") as w:
        for name, m in masks.items():
            w.add_mask(name, m)
    keep = KeepList.load(f"{srv.url}/k.json")
    name = next(iter(keep.shards))
    srv.reset()
    assert np.array_equal(keep.shards[name].mask(), masks[name])
    sent = srv.bytes_sent["/k.samples.bin"]
    assert 0 < sent < os.path.getsize(f"{root}/k.samples.bin") / 4


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    return write_laion(str(tmp_path_factory.mktemp("laion")), nshards=6, per_shard=400, dim=16, tars=False, seed=5)


def test_votes_find_the_planted_clusters(sim):
    target = sim.targets([1, 4], 200)
    votes = vote_clusters(target, sim.centers)
    assert set(np.flatnonzero(votes)) == {1, 4} and votes.sum() == 200
    assert list(select_clusters(votes)) == [1, 4]
    assert list(select_clusters(votes, top=1)) == [int(np.argmax(votes))]
    votes3 = vote_clusters(target, sim.centers, nearest=3)
    assert votes3.sum() == 600 and votes3[1] == votes[1] + (votes3[1] - votes[1])
    with pytest.raises(PrunerError, match="target embeddings: 1 rows hold NaN"):
        vote_clusters(np.vstack([target, np.full((1, 16), np.nan, np.float32)]), sim.centers)
    with pytest.raises(PrunerError, match="dimension 8 differs"):
        vote_clusters(target[:, :8], sim.centers)


def _three_shards(tmp_path):
    masks = {
        "a.tar": np.arange(100) < 5,  # 5%
        "b.tar": np.arange(100) < 50,  # 50%
        "c.tar": np.ones(200, dtype=bool),  # 100%
        "d.tar": np.zeros(100, dtype=bool),  # left out
    }
    with KeepListWriter(str(tmp_path / "k.json")) as w:
        for n, m in masks.items():
            w.add_mask(n, m)
    return KeepList.load(str(tmp_path / "k.json"))


def test_shard_tradeoff_counts(tmp_path):
    keep = _three_shards(tmp_path)
    sizes = {"a.tar": 1000, "b.tar": 1000, "c.tar": 2000, "d.tar": 1000}
    rows = shard_tradeoff(keep, (0.0, 0.1, 0.6), shard_bytes=sizes, read_mb_s=0.001)
    assert [(r["shards_read"], r["samples_kept"], r["samples_lost"]) for r in rows] == [
        (3, 255, 0),
        (2, 250, 5),
        (1, 200, 55),
    ]
    assert [r["bytes_read"] for r in rows] == [4000, 3000, 2000]
    assert [r["bytes_saved"] for r in rows] == [1000, 2000, 3000]
    assert rows[1]["time_saved_s"] == pytest.approx(2.0)
    # reading kept byte ranges only: 5% of a, 50% of b, all of c -> 50 + 500 + 2000 read of 5000
    assert rows[0]["bytes_saved_ranges"] == pytest.approx(5000 - 2550)
    est = shard_tradeoff(keep, (0.0,), bytes_per_sample=10)[0]
    assert est["bytes_estimated"] and est["bytes_read"] == 4000 and est["bytes_saved"] == 1000
    with pytest.raises(KeepListError, match="no size for 1 kept shards, e.g. 'c.tar'"):
        shard_tradeoff(keep, shard_bytes={"a.tar": 1, "b.tar": 1})


def test_drop_sparse_shards(tmp_path):
    keep = _three_shards(tmp_path)
    out = drop_sparse_shards(keep, 0.1, str(tmp_path / "dense.json"))
    assert out == {
        "url": str(tmp_path / "dense.json"),
        "shards_kept": 2,
        "shards_dropped": 1,
        "samples_kept": 250,
        "samples_lost": 5,
    }
    dense = KeepList.load(out["url"])
    assert list(dense.shards) == ["b.tar", "c.tar"]
    assert np.array_equal(dense.shards["b.tar"].mask(), np.arange(100) < 50)
    assert dense.provenance["parents"] == [keep.fingerprint]
    assert dense.provenance["num_shards"] == 4 and dense.provenance["num_samples"] == 500
    with pytest.raises(KeepListError, match="min_fraction must be in"):
        drop_sparse_shards(keep, 1.5, str(tmp_path / "x.json"))


def test_plot_shard_fractions(tmp_path):
    keep = _three_shards(tmp_path)
    png = str(tmp_path / "frac.png")
    info = plot_shard_fractions(keep, png, bytes_per_sample=100)
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert sum(info["histogram"]["counts"]) == 3 and info["shards_left_out"] == 1
    assert info["histogram"]["counts"][1] == 1 and info["histogram"]["counts"][-1] == 1  # 5% and 100%
    assert info["bytes_saved"] == 100 * 100 and info["bytes_estimated"]
