"""LAION readers on a simulated LAION: embedding parts and img2dataset shards, locally and over
loopback HTTP, and each kind of bad input with a one-line error naming the file."""

import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dp4tl_data.plugins.laion_emb import list_parts
from dp4tl_data.plugins.laion_i2d import list_shards

from benchmarks.laiongen import write_laion
from dp4tl_data.distributed import source_fingerprint
from dp4tl_data.errors import ShardError
from dp4tl_data.index import IndexedShard, SourceIndex, shard_samples_table


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    return write_laion(str(tmp_path_factory.mktemp("laion")), nshards=4, per_shard=300, dim=16, seed=3)


@pytest.fixture
def copy(sim, tmp_path):
    """A private copy of the simulated LAION that a test may damage."""
    dst = str(tmp_path / "laion")
    shutil.copytree(sim.root, dst)
    return dst


def test_embedding_parts_align_with_keys_and_planted_clusters(sim):
    parts = list_parts(sim.emb_root)
    assert [p.name for p in parts] == sim.shards
    for p in parts:
        x = p.read()
        assert x.dtype == np.float16 and x.shape == (len(sim.keys[p.name]), 16)
        assert p.rows() == len(x)
        assert p.keys() == sim.keys[p.name]
        assert np.array_equal(p.column("planted").to_numpy(), sim.planted[p.name])


def test_fingerprint_matches_a_source_index_of_the_same_shards(sim):
    parts = list_parts(sim.emb_root)
    fp = source_fingerprint((p.name, p.digest()) for p in parts)
    idx = SourceIndex.build(
        ((IndexedShard(n, len(k)), shard_samples_table(k)) for n, k in sim.keys.items()), kind="webdataset"
    )
    assert fp == idx.fingerprint


def test_img2dataset_join_on_key_gives_tar_order(sim):
    shards = list_shards(sim.img_root)
    assert [s.name for s in shards] == sim.shards
    for s in shards:
        raw = pq.read_table(s.parquet_url)
        ok_keys = [
            k for k, st in zip(raw.column("key").to_pylist(), raw.column("status").to_pylist()) if st == "success"
        ]
        assert ok_keys != sim.keys[s.name]  # the parquet is not in tar order...
        t = s.read()
        assert t.column("key").to_pylist() == sim.keys[s.name]  # ...the join is
        assert set(t.column("status").to_pylist()) == {"success"}
        assert t.column("uid").to_pylist() == sim.uids[s.name]
        first = t.column("members")[0].as_py()
        assert [m["name"].split(".", 1)[1] for m in first] == ["jpg", "txt", "json"]
        with open(s.tar_url, "rb") as f:  # offsets point at the member bytes
            f.seek(first[2]["offset"])
            assert json.loads(f.read(first[2]["size"]))["key"] == sim.keys[s.name][0]


def test_readers_over_http(sim, http_dir):
    root, srv = http_dir
    shutil.copytree(sim.root, f"{root}/laion")
    parts = list_parts(f"{srv.url}/laion/emb")
    assert [p.name for p in parts] == sim.shards
    srv.reset()
    assert parts[2].rows() == len(sim.keys[parts[2].name])
    emb_path = "/laion/emb/img_emb/img_emb_2.npy"
    assert 0 < srv.bytes_sent[emb_path] < os.path.getsize(f"{root}{emb_path}")  # header only
    assert parts[2].keys() == sim.keys[parts[2].name]
    shards = list_shards(f"{srv.url}/laion/images")
    assert shards[1].read().column("key").to_pylist() == sim.keys[shards[1].name]


# ---------------------------------------------------------------- bad input


def test_row_count_mismatch_names_both_files(copy):
    meta = f"{copy}/emb/metadata/metadata_1.parquet"
    t = pq.read_table(meta)
    pq.write_table(t.slice(0, t.num_rows - 2), meta)
    part = list_parts(f"{copy}/emb")[1]
    for call in (part.rows, part.read):
        with pytest.raises(ShardError, match=r"img_emb_1\.npy: \d+ embedding rows, but .*metadata_1\.parquet has"):
            call()


def test_missing_metadata_or_embedding_file(copy):
    os.remove(f"{copy}/emb/metadata/metadata_2.parquet")
    with pytest.raises(ShardError, match=r"img_emb_2\.npy: no matching metadata file"):
        list_parts(f"{copy}/emb")
    os.remove(f"{copy}/emb/img_emb/img_emb_2.npy")
    os.remove(f"{copy}/emb/img_emb/img_emb_3.npy")
    with pytest.raises(ShardError, match=r"metadata_3\.parquet: no matching embedding file"):
        list_parts(f"{copy}/emb")


def test_missing_folder_and_file_removed_after_listing(copy):
    with pytest.raises(ShardError, match="missing folder"):
        list_parts(f"{copy}/nothing")
    part = list_parts(f"{copy}/emb")[0]
    os.remove(part.emb_url)
    with pytest.raises(ShardError, match=r"img_emb_0\.npy: missing \(part '00000.tar'\)"):
        part.read()


def test_not_embeddings(copy):
    np.save(f"{copy}/emb/img_emb/img_emb_1.npy", np.zeros((5, 2, 2), dtype=np.float32))
    with pytest.raises(ShardError, match="must be 2-D"):
        list_parts(f"{copy}/emb")[1].read()
    np.save(f"{copy}/emb/img_emb/img_emb_1.npy", np.array([["a", "b"]]))
    with pytest.raises(ShardError, match="must be floats"):
        list_parts(f"{copy}/emb")[1].header()
    with open(f"{copy}/emb/img_emb/img_emb_1.npy", "wb") as f:
        f.write(b"not numpy at all")
    with pytest.raises(ShardError, match="not a .npy file"):
        list_parts(f"{copy}/emb")[1].header()


def test_img2dataset_disagreements(copy):
    s = list_shards(f"{copy}/images")[0]
    raw = pq.read_table(s.parquet_url)
    status = raw.column("status").to_pylist()
    victim = status.index("success")
    flipped = status[:victim] + ["failed_to_download"] + status[victim + 1 :]
    pq.write_table(raw.set_column(raw.column_names.index("status"), "status", pa.array(flipped)), s.parquet_url)
    key = raw.column("key")[victim].as_py()
    with pytest.raises(ShardError, match=rf"00000\.tar: sample '{key}' has no success row in .*00000\.parquet"):
        s.read()
    failed = status.index("failed_to_download")
    forged = status[:failed] + ["success"] + status[failed + 1 :]
    pq.write_table(raw.set_column(raw.column_names.index("status"), "status", pa.array(forged)), s.parquet_url)
    with pytest.raises(ShardError, match=r"00000\.parquet: success '\d+' is not in .*00000\.tar"):
        s.read()
    pq.write_table(raw, s.parquet_url)
    with open(s.stats_url) as f:
        stats = json.load(f)
    stats["successes"] += 1
    with open(s.stats_url, "w") as f:
        json.dump(stats, f)
    with pytest.raises(ShardError, match=r"00000_stats\.json: says \d+ successes"):
        s.read()
    os.remove(s.stats_url)
    with pytest.raises(ShardError, match=r"00000_stats\.json: missing"):
        s.read()


def test_corrupt_tar(copy):
    s = list_shards(f"{copy}/images")[2]
    with open(s.tar_url, "r+b") as f:
        f.seek(0)
        f.write(b"\xff" * 600)
    with pytest.raises(ShardError, match=r"00002\.tar: corrupt tar"):
        s.read()
