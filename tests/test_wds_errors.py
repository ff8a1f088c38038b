"""Bad input, with and without an index: corrupt and truncated tars, a member missing its
label, an index that no longer matches its shard, unreachable URLs, foreign keep-lists,
``pipe:`` URLs. By default a one-line error naming the shard and key; with on_error="skip"
a logged, counted skip that keeps the epoch length; never a silent short epoch."""

from __future__ import annotations

import logging
import os
import shutil
import tarfile

import pytest
from dp4tl_data.plugins.wds import index_shards
from test_wds_util import labelled, write_tar

from dp4tl_data import (
    ForeignKeepListError,
    IndexFileError,
    KeepList,
    KeepListError,
    PrunedStream,
    SampleError,
    ShardError,
    World,
)

KEEP = KeepList.from_classes([0, 1, 2, 3, 4], label_field="cls")


def keys(ds) -> list[str]:
    return [s["__key__"] for s in ds]


@pytest.fixture
def good(tmp_path):
    """Three shards of 12 samples (labels 0..9 repeating) and their index."""
    root = tmp_path / "data"
    paths = []
    for i in range(3):
        paths.append(str(root / f"s{i}.tar"))
        write_tar(paths[-1], labelled(f"s{i}", 12))
    return paths, index_shards(paths, workers=1, progress=False)


def kept_keys(prefixes=("s0", "s1", "s2"), n=12) -> set[str]:
    return {f"{p}_{i:04d}" for p in prefixes for i in range(n) if i % 10 < 5}


def header_offset(path: str, member: int) -> int:
    with open(path, "rb") as f:
        return tarfile.open(fileobj=f).getmembers()[member].offset


def test_index_no_longer_matching_its_shard(good, tmp_path):
    paths, idx = good
    assert set(keys(PrunedStream(paths, KEEP, index=idx))) == kept_keys()
    write_tar(paths[1], labelled("s1", 14))  # rewritten: more samples, new size
    with pytest.raises(IndexFileError, match=r"s1.tar: shard 's1.tar' changed since it was indexed .*re-index"):
        keys(PrunedStream(paths, KEEP, index=idx))
    # same size, same mtime, two samples swapped: the member headers give it away, naming the key
    samples = labelled("s1", 12)
    samples[1]["bin"] = samples[0]["bin"]
    write_tar(paths[1], samples)
    fresh = index_shards(paths, workers=1, progress=False)
    st = os.stat(paths[1])
    write_tar(paths[1], [samples[1], samples[0], *samples[2:]])
    assert os.path.getsize(paths[1]) == st.st_size
    os.utime(paths[1], ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(IndexFileError, match=r"'s1.tar' no longer matches its index at key 's1_0000'"):
        keys(PrunedStream(paths, KEEP, index=fresh))
    os.utime(paths[1], (1_000_000_000, 1_000_000_000))  # touched: the mtime check names the shard
    with pytest.raises(IndexFileError, match="'s1.tar' changed since it was indexed"):
        keys(PrunedStream(paths, KEEP, index=fresh))


def test_corrupt_and_truncated_tar_without_index(good, tmp_path):
    paths, _ = good
    blob = open(paths[2], "rb").read()
    at = header_offset(paths[2], 9)  # s2_0003's first member
    open(paths[2], "wb").write(blob[:at] + b"\x01garbage" * 64 + blob[at + 512 :])
    with pytest.raises(ShardError, match=r"s2.tar: corrupt tar header at byte \d+ after key 's2_0002'"):
        keys(PrunedStream(paths, KEEP))
    open(paths[2], "wb").write(blob[: len(blob) // 2 + 300])
    with pytest.raises(ShardError, match=r"s2.tar: (corrupt or )?truncated tar"):
        keys(PrunedStream(paths, KEEP))
    with pytest.raises(ShardError, match="s2.tar"):
        index_shards(paths[2], workers=1, progress=False)


def test_corrupt_shard_skip_policy_keeps_length_and_counts(good, caplog):
    paths, idx = good
    n = len(PrunedStream(paths, KEEP, index=idx, world=World(0, 2)))
    open(paths[1], "wb").write(b"\0" * os.path.getsize(paths[1]))  # same size, zeroed
    with pytest.raises(IndexFileError, match="s1.tar"):
        keys(PrunedStream(paths, KEEP, index=idx, strict_identity=False))
    caplog.set_level(logging.WARNING)
    per_rank = []
    for rank in range(2):
        ds = PrunedStream(paths, KEEP, index=idx, world=World(rank, 2), on_error="skip", strict_identity=False)
        got = keys(ds)
        per_rank.append(got)
        assert len(got) == len(ds) == n  # the epoch keeps its length: repeats stand in
        stats = ds.stats()
        assert stats["skipped"].get("shard error", 0) == int(any(k.startswith("s1") for k in ds_expected(rank)))
    got = [k for r in per_rank for k in r]
    assert not any(k.startswith("s1") for k in got)
    assert set(got) == kept_keys(("s0", "s2"))
    assert "skipped the rest of shard 's1.tar'" in caplog.text


def ds_expected(rank: int) -> list[str]:
    """Which kept keys rank `rank` of 2 reads from the `good` shards (kept sequence split in half)."""
    seq = sorted(kept_keys())
    return seq[rank * len(seq) // 2 : (rank + 1) * len(seq) // 2]


def test_member_missing_label(tmp_path):
    samples = labelled("m", 10)
    del samples[6]["cls"]
    path = str(tmp_path / "d" / "m.tar")
    write_tar(path, samples)
    with pytest.raises(SampleError, match=r"shard 'm.tar' key 'm_0006': no label field 'cls'"):
        keys(PrunedStream([path], KEEP))
    ds = PrunedStream([path], KEEP, on_error="skip")
    assert keys(ds) == [f"m_{i:04d}" for i in range(10) if i % 10 < 5 and i != 6]
    assert ds.stats()["skipped"] == {"no label": 1}
    idx = index_shards(path, label_field="cls", workers=1, progress=False)
    with pytest.raises(KeepListError, match=r"'m.tar' sample 'm_0006' has no label"):
        PrunedStream([path], KEEP, index=idx)
    ds = PrunedStream([path], KEEP, index=idx, on_error="skip")
    assert keys(ds) == [f"m_{i:04d}" for i in range(5)] and len(ds) == 5
    assert ds.stats()["skipped"] == {"no label": 1}
    # a keyed list needs no label: the sample is kept
    by_key = KeepList.from_samples({"m.tar": ["m_0006", "m_0007"]})
    assert keys(PrunedStream([path], by_key, index=idx)) == ["m_0006", "m_0007"]


def test_unreachable_urls(good, http_dir):
    paths, idx = good
    www, srv = http_dir
    for p in paths[:2]:
        shutil.copy(p, www)
    urls = [f"{srv.url}/{os.path.basename(p)}" for p in paths]  # s2.tar is not served: 404
    with pytest.raises(ShardError, match=r"/s2.tar: shard not found"):
        keys(PrunedStream(urls, KEEP))
    with pytest.raises(ShardError, match=r"/s2.tar: shard (not found|unreachable)"):
        keys(PrunedStream(urls, KEEP, index=idx, root=srv.url))
    ds = PrunedStream(urls, KEEP, index=idx, root=srv.url, on_error="skip")
    got = keys(ds)
    assert len(got) == len(ds) == len(kept_keys())
    assert set(got) == kept_keys(("s0", "s1")) and ds.stats()["padded"] == len(kept_keys(("s2",)))
    dead = f"http://127.0.0.1:{_free_port()}/s0.tar"
    with pytest.raises(ShardError, match=r"127.0.0.1:\d+/s0.tar: shard unreachable"):
        keys(PrunedStream([dead], KEEP))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_pipe_urls_only_when_allowed_in_code(good):
    paths, idx = good
    url = f"pipe:cat {paths[0]}"
    with pytest.raises(ShardError, match="command URLs are refused"):
        PrunedStream([url], KEEP)
    got = keys(PrunedStream([url], KEEP, allow_commands=True))
    assert set(got) == kept_keys(("s0",))
    with pytest.raises(ShardError, match="byte range"):
        PrunedStream([url], KEEP, index=idx, allow_commands=True)
    with pytest.raises(KeepListError, match="URL or command"):
        KeepList.from_shards(["pipe:rm -rf x"])


def test_foreign_and_mismatched_keep_lists(good):
    paths, idx = good
    foreign = KeepList.from_classes([1], label_field="cls", source_fingerprint="f" * 64)
    with pytest.raises(ForeignKeepListError, match="made for source ffff"):
        PrunedStream(paths, foreign, index=idx)
    assert set(keys(PrunedStream(paths, foreign, index=idx, allow_foreign=True))) == {
        f"s{j}_{i:04d}" for j in range(3) for i in (1, 11)
    }
    other = KeepList.from_samples({"elsewhere.tar": ["x"]})
    with pytest.raises(KeepListError, match="'elsewhere.tar' .* the index .* lacks"):
        PrunedStream(paths, other, index=idx)
    missing = KeepList.from_samples({"s0.tar": ["s0_0001", "nope"]})
    with pytest.raises(KeepListError, match="keeps 2 samples of shard 's0.tar', the index holds 1 .*'nope'"):
        PrunedStream(paths, missing, index=idx)
    # without an index the same list cannot be checked up front: the short shard is an error, not a short epoch
    with pytest.raises(SampleError, match="keep-list keeps 2 samples of shard 's0.tar'"):
        keys(PrunedStream(paths, missing))
    wrong_field = KeepList.from_classes([1], label_field="label")
    with pytest.raises(KeepListError, match="label field 'label', the index to 'cls'"):
        PrunedStream(paths, wrong_field, index=idx)


def test_repeated_key_without_index_is_an_error(tmp_path):
    samples = labelled("r", 4)
    samples[2] = dict(samples[0])  # keys r_0000, r_0001, r_0000, r_0003
    path = str(tmp_path / "d" / "r.tar")
    write_tar(path, samples)
    with pytest.raises(ShardError, match=r"r.tar: key 'r_0000' appears twice"):
        keys(PrunedStream([path], KeepList.from_samples({"r.tar": ["r_0000", "r_0003"]})))


def test_whole_shard_counts_in_a_list_do_not_cut_a_shard_short(good):
    paths, _ = good
    claimed = KeepList.from_shards({"s0.tar": 2})  # a list that under-counts the shard
    got = keys(PrunedStream([paths[0]], claimed))
    assert got == [f"s0_{i:04d}" for i in range(12)]
