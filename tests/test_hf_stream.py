"""Streaming Hugging Face datasets: kept files only, rows decided before decoding, bad input.

Real tar shards (JPEG, .cls, .json) and real parquet files with ClassLabel features are written
here; sample sets are compared by key.
"""

from __future__ import annotations

import os
from collections import Counter

import datasets  # noqa: E402,F401 - a dev dependency: these tests must run, never skip
import numpy as np
import pytest
from datasets import ClassLabel, Dataset, Features, IterableDataset, Value, load_dataset  # noqa: E402
from dp4tl_data.plugins.hf import load_pruned  # noqa: E402

from benchmarks.shardgen import ShardSet, write_shards  # noqa: E402
from dp4tl_data import (  # noqa: E402
    ClassMismatchError,
    ForeignKeepListError,
    KeepList,
    KeepListError,
    PluginError,
    PrunedStream,
    SampleError,
    ShardError,
    World,
)

NAMES = [f"n{i:08d}" for i in range(10)]
ONE = World()


def make_tars(root: str, nshards: int = 4, per_shard: int = 30) -> ShardSet:
    return write_shards(root, nshards=nshards, per_shard=per_shard, nclasses=10, image_size=16, seed=3)


def make_parquet(root: str, nfiles: int = 4, rows: int = 50, row_group: int = 10) -> dict[str, int]:
    """Parquet files with a ClassLabel 'label' (HF metadata in the schema); returns key -> label."""
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(5)
    feats = Features({"__key__": Value("string"), "label": ClassLabel(names=NAMES), "text": Value("string")})
    out: dict[str, int] = {}
    for f in range(nfiles):
        labels = rng.integers(0, 10, rows).tolist()
        keys = [f"p{f}_{i:03d}" for i in range(rows)]
        out.update(zip(keys, labels))
        ds = Dataset.from_dict({"__key__": keys, "label": labels, "text": [f"t{k}" for k in keys]}, feats)
        ds.to_parquet(os.path.join(root, f"part-{f:05d}.parquet"), batch_size=row_group)
    return out


@pytest.fixture(scope="module")
def tars(tmp_path_factory) -> ShardSet:
    return make_tars(str(tmp_path_factory.mktemp("tars")))


@pytest.fixture(scope="module")
def parquet(tmp_path_factory) -> tuple[str, dict[str, int]]:
    root = str(tmp_path_factory.mktemp("pq"))
    return root, make_parquet(root)


def wds(paths: list[str]) -> IterableDataset:
    return load_dataset("webdataset", data_files={"train": paths}, split="train", streaming=True)


def keys_of(ds) -> list[str]:
    return [ex["__key__"] for ex in ds]


class DecodeCounter:
    """Counts images decoded by `datasets` (Image.decode_example)."""

    def __init__(self, monkeypatch) -> None:
        from datasets.features.image import Image

        self.n = 0
        original = Image.decode_example

        def counting(feat, value, token_per_repo_id=None):
            self.n += 1
            return original(feat, value, token_per_repo_id=token_per_repo_id)

        monkeypatch.setattr(Image, "decode_example", counting)


def test_tars_keep_exact_keys_and_decode_only_kept(tars: ShardSet, monkeypatch) -> None:
    keep = KeepList.from_classes([1, 3, 5], label_field="cls")
    ds = load_pruned(tars.root, keep, world=ONE)
    assert isinstance(ds, IterableDataset)
    counter = DecodeCounter(monkeypatch)
    rows = list(ds)
    expected = tars.keys({1, 3, 5})
    assert sorted(r["__key__"] for r in rows) == sorted(expected)  # no loss, no repeat
    assert counter.n == len(expected)  # pruned samples were never decoded
    assert all(r["jpg"].size == (16, 16) and r["cls"] in (1, 3, 5) for r in rows)
    assert {r["json"]["label"] for r in rows} <= {1, 3, 5}
    assert rows[0]["__url__"].endswith(".tar")


def test_prunedstream_on_a_streaming_dataset_matches(tars: ShardSet) -> None:
    keep = KeepList.from_classes([0, 9], label_field="cls")
    ds = PrunedStream(wds(tars.paths), keep, world=ONE)
    assert isinstance(ds, IterableDataset)
    assert sorted(keys_of(ds)) == sorted(tars.keys({0, 9}))
    json_label = KeepList.from_classes([0, 9], label_field="json.label")
    assert sorted(keys_of(PrunedStream(wds(tars.paths), json_label, world=ONE))) == sorted(tars.keys({0, 9}))


def test_names_resolve_through_dataset_classes(tars: ShardSet) -> None:
    names = [f"class_{i:03d}" for i in range(10)]
    keep = KeepList.from_classes(["class_002", "class_007"], label_field="cls")
    ds = PrunedStream(wds(tars.paths), keep, dataset_classes=names, world=ONE)
    assert sorted(keys_of(ds)) == sorted(tars.keys({2, 7}))
    with pytest.raises(ClassMismatchError, match="class_404"):
        PrunedStream(wds(tars.paths), KeepList.from_classes(["class_404"], label_field="cls"), dataset_classes=names)


def test_parquet_classlabel_names_and_ids(parquet) -> None:
    root, labels = parquet
    expected = sorted(k for k, y in labels.items() if y in (2, 6))
    by_id = load_pruned(root, KeepList.from_classes([2, 6]), world=ONE)
    by_name = load_pruned(root, KeepList.from_classes([NAMES[2], NAMES[6]]), world=ONE)
    assert by_id.features["label"].names == NAMES
    assert sorted(keys_of(by_id)) == expected == sorted(keys_of(by_name))
    with pytest.raises(ClassMismatchError, match="n77777777"):
        load_pruned(root, KeepList.from_classes([NAMES[1], "n77777777"]))


def test_fully_pruned_files_are_dropped_and_never_opened(parquet, monkeypatch) -> None:
    from dp4tl_data.plugins import hf_read

    root, labels = parquet
    opened: Counter[str] = Counter()
    original = hf_read.open_parquet

    def spy(url, storage_options):
        opened[os.path.basename(url)] += 1
        return original(url, storage_options)

    monkeypatch.setattr(hf_read, "open_parquet", spy)
    keep = KeepList.from_samples({"part-00001.parquet": ["p1_004", "p1_010"], "part-00003.parquet": ["p3_049"]})
    ds = load_pruned(root, keep, world=ONE)
    assert len(ds) == 3  # exact len from the sample-level list
    assert sorted(keys_of(ds)) == ["p1_004", "p1_010", "p3_049"]
    assert set(opened) == {"part-00001.parquet", "part-00003.parquet"}  # server-side: test_hf_remote.py


def test_len_is_exact_when_scanned_and_unknown_otherwise(parquet) -> None:
    root, labels = parquet
    keep = KeepList.from_classes([4])
    with pytest.raises(TypeError, match="length unknown"):
        len(load_pruned(root, keep, world=ONE))
    ds = load_pruned(root, keep, world=ONE, scan=True)
    n = sum(1 for y in labels.values() if y == 4)
    assert len(ds) == n == len(keys_of(ds))
    assert ds.info.splits["train"].num_examples == n


def test_map_shuffle_filter_decode_still_work(tars: ShardSet) -> None:
    keep = KeepList.from_classes([1, 2, 3, 4], label_field="cls")
    ds = load_pruned(tars.root, keep, world=ONE)
    expected = tars.keys({1, 2, 3, 4})
    mapped = ds.map(lambda ex: {"size": ex["jpg"].size[0]})
    assert {ex["size"] for ex in mapped} == {16}
    shuffled = ds.shuffle(seed=1, buffer_size=20)
    order = keys_of(shuffled)
    assert sorted(order) == sorted(expected) and order != sorted(order)
    assert sorted(keys_of(ds.filter(lambda ex: ex["cls"] == 1))) == sorted(tars.keys({1}))
    raw = next(iter(ds.decode(False)))
    assert isinstance(raw["jpg"]["bytes"], bytes)


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_dataloader_workers_read_every_kept_row_once(tars: ShardSet, start: str) -> None:
    from torch.utils.data import DataLoader

    keep = KeepList.from_classes([5, 6], label_field="cls")
    ds = load_pruned(tars.root, keep, world=ONE).remove_columns(["jpg", "json"])
    loader = DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context=start)
    seen = [k for batch in loader for k in batch["__key__"]]
    assert sorted(seen) == sorted(tars.keys({5, 6}))


# ----------------------------------------------------------------------------- bad input


def test_missing_label_column_names_the_file(parquet) -> None:
    root, _ = parquet
    with pytest.raises(SampleError, match=r"no label column 'fine_label'.*\['__key__', 'label', 'text'\]") as err:
        load_pruned(root, KeepList.from_classes([1], label_field="fine_label"))
    assert "part-00000.parquet" in str(err.value)


def test_sample_without_label_names_file_and_key(tmp_path) -> None:
    import webdataset as wdsw

    path = str(tmp_path / "bad.tar")
    with wdsw.TarWriter(path) as sink:
        sink.write({"__key__": "a", "cls": b"1", "txt": b"x"})
        sink.write({"__key__": "b", "txt": b"y"})
        sink.write({"__key__": "c", "cls": b"2", "txt": b"z"})
    keep = KeepList.from_classes([1, 2], label_field="cls")
    feats = Features(
        {"cls": Value("int64"), "txt": Value("string"), "__key__": Value("string"), "__url__": Value("string")}
    )
    ds = load_pruned(None, keep, data_files=[path], features=feats, world=ONE)
    with pytest.raises(SampleError, match=r"bad.tar'? key 'b'.*no label"):
        list(ds)
    skipping = load_pruned(None, keep, data_files=[path], features=feats, world=ONE, on_error="skip")
    assert keys_of(skipping) == ["a", "c"]
    assert skipping._ex_iterable.stats()["skipped"] == {"no label": 1}


def test_foreign_keep_list_is_refused(parquet) -> None:
    root, _ = parquet
    keep = KeepList.from_classes([1], source_fingerprint="f" * 64)
    with pytest.raises(ForeignKeepListError, match="ffffffffffffffff"):
        load_pruned(root, keep, source_fingerprint="0" * 64)
    assert keys_of(load_pruned(root, keep, source_fingerprint="0" * 64, allow_foreign=True, world=ONE))


def test_empty_result_is_an_error_unless_allowed(parquet, tmp_path) -> None:
    root, _ = parquet
    none_kept = KeepList.from_samples({"other.parquet": ["x"]})
    with pytest.raises(KeepListError, match="keeps none of its 4 files"):
        load_pruned(root, none_kept)
    ds = load_pruned(None, none_kept, data_files=os.path.join(root, "*.parquet"), allow_empty=True, world=ONE)
    assert keys_of(ds) == []
    feats = Features({"__key__": Value("string"), "label": ClassLabel(names=NAMES)})
    path = str(tmp_path / "only01.parquet")
    Dataset.from_dict({"__key__": ["a", "b", "c"], "label": [0, 1, 0]}, feats).to_parquet(path)
    stream = load_dataset("parquet", data_files={"train": [path]}, split="train", streaming=True)
    unknown_count = PrunedStream(stream, KeepList.from_classes([NAMES[9]]), world=ONE)
    with pytest.raises(KeepListError, match="only01.parquet: the keep-list keeps none of its rows"):
        keys_of(unknown_count)  # no counts known: found out at the end of the epoch
    allowed = PrunedStream(stream, KeepList.from_classes([NAMES[9]]), world=ONE, allow_empty=True)
    assert keys_of(allowed) == []


def test_corrupt_parquet_names_the_file(tmp_path, parquet) -> None:
    root, _ = parquet
    bad_root = tmp_path / "bad"
    bad_root.mkdir()
    for name in sorted(os.listdir(root))[:2]:
        (bad_root / name).write_bytes(open(os.path.join(root, name), "rb").read())
    (bad_root / "part-00001.parquet").write_bytes(b"PAR1 this is not parquet")
    feats = load_pruned(root, KeepList.from_classes([1]), world=ONE).features
    ds = load_pruned(str(bad_root), KeepList.from_classes([1]), features=feats, world=ONE)
    with pytest.raises(ShardError, match=r"part-00001.parquet: corrupt parquet"):
        list(ds)


def test_transformed_dataset_is_refused(tars: ShardSet) -> None:
    keep = KeepList.from_classes([1], label_field="cls")
    with pytest.raises(PluginError, match="prune it before"):
        PrunedStream(wds(tars.paths).shuffle(seed=0), keep)
    pruned = PrunedStream(wds(tars.paths), keep, world=ONE)
    with pytest.raises(PluginError, match="already pruned"):
        PrunedStream(pruned, keep)


def test_long_member_names_are_read_in_full(tmp_path) -> None:
    import webdataset as wdsw

    path = str(tmp_path / "long.tar")
    long_key = "d" * 60 + "/" + "k" * 70  # > 100 characters: the name lives in a pax record
    with wdsw.TarWriter(path) as sink:
        for i, key in enumerate(["a", long_key + "1", "b", long_key + "2"]):
            sink.write({"__key__": key, "cls": str(i % 2).encode(), "txt": b"x"})
    feats = Features(
        {"cls": Value("int64"), "txt": Value("string"), "__key__": Value("string"), "__url__": Value("string")}
    )
    ds = load_pruned(None, KeepList.from_classes([1], label_field="cls"), data_files=[path], features=feats, world=ONE)
    assert keys_of(ds) == [long_key + "1", long_key + "2"]


def test_keep_list_listing_missing_keys_is_an_error(parquet) -> None:
    root, _ = parquet
    keep = KeepList.from_samples({"part-00000.parquet": ["p0_001", "p0_gone"]})
    ds = load_pruned(root, keep, world=ONE)
    assert len(ds) == 2
    with pytest.raises(SampleError, match=r"part-00000.parquet: holds fewer kept rows than the 2"):
        keys_of(ds)


def test_a_kept_key_repeated_in_a_file_is_an_error(tmp_path) -> None:
    root = tmp_path / "dup"
    root.mkdir()
    feats = Features({"__key__": Value("string"), "label": ClassLabel(names=NAMES)})
    Dataset.from_dict({"__key__": ["a", "a", "b"], "label": [1, 1, 2]}, feats).to_parquet(str(root / "f.parquet"))
    keep = KeepList.from_samples({"f.parquet": ["a", "b"]})
    with pytest.raises(SampleError, match=r"key 'a' appears twice in shard 'f.parquet'"):
        keys_of(load_pruned(str(root), keep, world=ONE))
