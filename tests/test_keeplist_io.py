"""KeepList storage: round trips through local files, fsspec memory and a real HTTP server,
lazy per-shard reads, and every kind of bad file."""

from __future__ import annotations

import json

import fsspec
import numpy as np
import pytest

from dp4tl_data import KeepList, KeepListError


def _lists() -> dict[str, KeepList]:
    rng = np.random.default_rng(0)
    return {
        "classes": KeepList.from_classes(
            [0, 5, 7],
            label_field="cls",
            names=[f"c{i}" for i in range(8)],
            method="lm",
            ratio=0.5,
            params={"votes": "hard"},
            num_classes=8,
        ),
        "shards": KeepList.from_shards({"train/a.tar": 10, "train/b.tar": None}),
        "samples": KeepList.from_samples(
            {"train/a.tar": ["k1", "k2"], "train/c.tar": ["x"]}, totals={"train/a.tar": 5}
        ),
        "bitmap": KeepList.from_masks({f"s/{i:05d}.tar": rng.random(1000) < 0.3 for i in range(5)}),
        "mixed": KeepList.from_classes([1]) & KeepList.from_samples({"a.tar": ["k"]}),
    }


def _same(a: KeepList, b: KeepList) -> None:
    assert a.fingerprint == b.fingerprint
    assert a.levels == b.levels
    assert a.classes == b.classes
    if a.shards is not None:
        assert sorted(a.shards) == sorted(b.shards)
        for n, e in a.shards.items():
            f = b.shards[n]
            assert (e.encoding, e.kept, e.total) == (f.encoding, f.kept, f.total)
            assert e.payload() == f.payload()
    assert a.provenance["method"] == b.provenance["method"]


@pytest.mark.parametrize("kind", list(_lists()))
def test_round_trip_local(tmp_path, kind):
    keep = _lists()[kind]
    url = str(tmp_path / "keep.json")
    keep.save(url)
    _same(keep, KeepList.load(url))


@pytest.mark.parametrize("kind", list(_lists()))
def test_round_trip_memory_fs(kind):
    keep = _lists()[kind]
    url = f"memory://lists/{kind}/keep.json"
    keep.save(url)
    _same(keep, KeepList.load(url))


def test_round_trip_over_http_reads_only_needed_shards(http_dir):
    root, srv = http_dir
    keep = _lists()["bitmap"]
    keep.save(f"{root}/keep.json")
    srv.reset()
    loaded = KeepList.load(f"{srv.url}/keep.json")
    assert srv.bytes_sent["/keep.samples.bin"] == 0  # nothing of the payload yet
    name = sorted(keep.shards)[2]
    assert np.array_equal(loaded.shard(name).mask(), keep.shard(name).mask())
    compressed = srv.bytes_sent["/keep.samples.bin"]
    total = len(open(f"{root}/keep.samples.bin", "rb").read())
    assert 0 < compressed < total / 2  # one shard's range, not the file
    _same(keep, loaded)


def test_provenance_is_kept(tmp_path):
    keep = _lists()["classes"]
    keep.save(str(tmp_path / "k.json"))
    prov = KeepList.load(str(tmp_path / "k.json")).provenance
    for k in ("method", "params", "ratio", "model_id", "target_id", "library_version", "created", "source_fingerprint"):
        assert k in prov
    assert prov["params"] == {"votes": "hard"}


# ------------------------------------------------------------------------------- bad files


def _saved(tmp_path, kind="samples") -> str:
    url = str(tmp_path / "keep.json")
    _lists()[kind].save(url)
    return url


def _edit(url: str, fn) -> None:
    m = json.load(open(url))
    fn(m)
    json.dump(m, open(url, "w"))


def test_missing_file(tmp_path):
    with pytest.raises(KeepListError, match="keep.json: keep-list not found"):
        KeepList.load(str(tmp_path / "keep.json"))


def test_truncated_manifest(tmp_path):
    url = _saved(tmp_path)
    text = open(url).read()
    open(url, "w").write(text[: len(text) // 2])
    with pytest.raises(KeepListError, match=r"keep.json: corrupt or truncated keep-list manifest"):
        KeepList.load(url)


def test_pickle_is_never_loaded(tmp_path):
    import pickle

    url = str(tmp_path / "keep.json")
    open(url, "wb").write(pickle.dumps({"format": "dp4tl-keeplist"}))
    with pytest.raises(KeepListError, match="not valid JSON"):
        KeepList.load(url)


def test_wrong_format_and_version(tmp_path):
    url = _saved(tmp_path)
    _edit(url, lambda m: m.update(version=99))
    with pytest.raises(KeepListError, match="version 99 is not supported"):
        KeepList.load(url)
    _edit(url, lambda m: m.update(format="something-else"))
    with pytest.raises(KeepListError, match="not a dp4tl keep-list"):
        KeepList.load(url)


@pytest.mark.parametrize("bad", ["../x.parquet", "/etc/passwd", "sub/x.bin", ".."])
def test_payload_file_names_cannot_escape(tmp_path, bad):
    url = _saved(tmp_path)
    _edit(url, lambda m: m["shards"].update(table=bad))
    with pytest.raises(KeepListError, match="plain file name"):
        KeepList.load(url)


def test_unsafe_shard_name_in_table(tmp_path):
    import pyarrow.parquet as pq

    url = _saved(tmp_path)
    tpath = str(tmp_path / "keep.shards.parquet")
    t = pq.read_table(tpath)
    names = t.column("name").to_pylist()
    names[0] = "pipe:rm -rf /"
    import pyarrow as pa

    pq.write_table(t.set_column(0, "name", pa.array(names)), tpath)
    with pytest.raises(KeepListError, match="URL or command"):
        KeepList.load(url)


def test_truncated_payload(tmp_path):
    url = _saved(tmp_path, "bitmap")
    p = tmp_path / "keep.samples.bin"
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(KeepListError, match="payload file is truncated"):
        KeepList.load(url)


def test_corrupt_payload_names_the_shard(tmp_path):
    url = _saved(tmp_path, "samples")
    p = tmp_path / "keep.samples.bin"
    raw = bytearray(p.read_bytes())
    raw[3] ^= 0xFF
    p.write_bytes(bytes(raw))
    keep = KeepList.load(url)
    with pytest.raises(KeepListError, match="payload of shard 'train/a.tar' is corrupt"):
        keep.shard("train/a.tar").keys()


def test_missing_shard_table(tmp_path):
    url = _saved(tmp_path)
    (tmp_path / "keep.shards.parquet").unlink()
    with pytest.raises(KeepListError, match="keep.json: missing keep-list file"):
        KeepList.load(url)


def test_count_mismatch_between_manifest_and_payload(tmp_path):
    url = _saved(tmp_path)
    _edit(url, lambda m: m["shards"].update(count=7))
    with pytest.raises(KeepListError, match="shard table has 2 rows, manifest says 7"):
        KeepList.load(url)


def test_bad_class_section(tmp_path):
    url = _saved(tmp_path, "classes")
    _edit(url, lambda m: m["classes"].update(ids=[1, "x", 2]))
    with pytest.raises(KeepListError, match="class id 'x'"):
        KeepList.load(url)


def test_provenance_must_be_json_data(tmp_path):
    keep = KeepList.from_classes([1], params={"fn": object()})
    with pytest.raises(KeepListError, match="not plain JSON"):
        keep.save(str(tmp_path / "k.json"))


def test_memory_fs_files_are_what_the_docs_say():
    KeepList.from_samples({"a.tar": ["x"]}).save("memory://doc/keep.json")
    fs = fsspec.filesystem("memory")
    assert sorted(p.rsplit("/", 1)[1] for p in fs.ls("/doc", detail=False)) == [
        "keep.json",
        "keep.samples.bin",
        "keep.shards.parquet",
    ]


def _rewrite_table(tmp_path, url: str, edit) -> None:
    """Apply `edit(cols)` to the shard table and re-sign the manifest like an attacker would."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dp4tl_data._keeplist_io import _TABLE_SCHEMA
    from dp4tl_data.keeplist import content_fingerprint

    tpath = str(tmp_path / "keep.shards.parquet")
    cols = pq.read_table(tpath).to_pydict()
    edit(cols)
    pq.write_table(pa.table(cols, schema=_TABLE_SCHEMA), tpath)
    rows = [
        (n, e, None if k < 0 else k, d)
        for n, e, k, d in zip(cols["name"], cols["encoding"], cols["kept"], cols["sha256"])
    ]
    _edit(url, lambda m: m.update(fingerprint=content_fingerprint(m["classes"], rows)))


def test_decompression_bomb_is_refused_before_inflating(tmp_path):
    import hashlib
    import zlib

    url = str(tmp_path / "keep.json")
    KeepList.from_masks({"s.tar": np.array([True] * 8)}).save(url)
    raw = b"\xff" * (64 * 1024 * 1024)  # 64 MiB of bits for a shard of 8 samples
    blob = zlib.compress(raw, 9)
    (tmp_path / "keep.samples.bin").write_bytes(blob)

    def edit(cols):
        cols.update(length=[len(blob)], crc32=[zlib.crc32(blob)], sha256=[hashlib.sha256(raw).digest()])

    _rewrite_table(tmp_path, url, edit)
    keep = KeepList.load(url)
    with pytest.raises(KeepListError, match="payload of shard 's.tar' inflates beyond its expected size"):
        keep.shard("s.tar").mask()


def test_edited_shard_table_no_longer_matches_its_fingerprint(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    url = _saved(tmp_path, "samples")
    tpath = str(tmp_path / "keep.shards.parquet")
    t = pq.read_table(tpath)
    pq.write_table(t.set_column(2, "kept", pa.array([1, 1], pa.int64())), tpath)  # lie about counts
    with pytest.raises(KeepListError, match="does not match the list's content"):
        KeepList.load(url)


def test_payload_must_match_its_sha256(tmp_path):
    import zlib

    url = _saved(tmp_path, "samples")
    blob = zlib.compress(b"k1\nk9")  # same length class of payload, other keys
    data = (tmp_path / "keep.samples.bin").read_bytes()
    e = KeepList.load(url).shards
    off, length = int(e._off[0]), int(e._len[0])
    (tmp_path / "keep.samples.bin").write_bytes(data[:off] + blob + data[off + length :])

    def edit(cols):  # offsets and checksums follow the swapped payload; its sha256 does not
        cols["length"][0] = len(blob)
        cols["crc32"][0] = zlib.crc32(blob)
        cols["offset"][1] = off + len(blob)

    _rewrite_table(tmp_path, url, edit)
    with pytest.raises(KeepListError, match="payload of shard 'train/a.tar' does not match its sha256"):
        KeepList.load(url).shard("train/a.tar").keys()


def test_shard_table_types_and_nulls_are_checked(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    url = _saved(tmp_path, "samples")
    tpath = str(tmp_path / "keep.shards.parquet")
    t = pq.read_table(tpath)
    pq.write_table(t.set_column(2, "kept", pa.array([None, 1], pa.int64())), tpath)
    with pytest.raises(KeepListError, match="column 'kept' must be non-null int64"):
        KeepList.load(url)


def test_non_utf8_keys_are_a_clear_error(tmp_path):
    import hashlib
    import zlib

    url = str(tmp_path / "keep.json")
    KeepList.from_samples({"a.tar": ["k"]}).save(url)
    raw = b"\xff\xfe"
    blob = zlib.compress(raw)
    (tmp_path / "keep.samples.bin").write_bytes(blob)
    _rewrite_table(
        tmp_path,
        url,
        lambda c: c.update(length=[len(blob)], crc32=[zlib.crc32(blob)], sha256=[hashlib.sha256(raw).digest()]),
    )
    with pytest.raises(KeepListError, match="key payload is not UTF-8"):
        KeepList.load(url).shard("a.tar").keys()
