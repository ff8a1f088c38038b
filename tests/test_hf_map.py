"""Map-style Hugging Face datasets: Arrow-level pruning by labels and keys, bad input."""

from __future__ import annotations

import datasets  # noqa: E402,F401 - a dev dependency: these tests must run, never skip
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value, load_dataset  # noqa: E402
from datasets.distributed import split_dataset_by_node  # noqa: E402

from dp4tl_data import (  # noqa: E402
    ClassMismatchError,
    ForeignKeepListError,
    KeepList,
    KeepListError,
    PrunedStream,
    SampleError,
    World,
)

NAMES = [f"n{i:08d}" for i in range(10)]  # synset-like class names


def make_ds(n: int = 200, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    feats = Features({"__key__": Value("string"), "label": ClassLabel(names=NAMES), "x": Value("int64")})
    return Dataset.from_dict({"__key__": [f"k{i:04d}" for i in range(n)], "label": labels, "x": np.arange(n)}, feats)


def keys_with(ds: Dataset, labels: set[int]) -> set[str]:
    return {k for k, y in zip(ds["__key__"], ds["label"]) if y in labels}


def test_names_and_ids_resolve_to_the_same_rows() -> None:
    ds = make_ds()
    by_id = PrunedStream(ds, KeepList.from_classes([1, 3, 5]), world=World())
    by_name = PrunedStream(ds, KeepList.from_classes([NAMES[1], NAMES[3], NAMES[5]]), world=World())
    assert isinstance(by_id, Dataset) and isinstance(by_name, Dataset)
    expected = keys_with(ds, {1, 3, 5})
    assert set(by_id["__key__"]) == expected == set(by_name["__key__"])
    assert len(by_id) == len(expected)  # exact len, no duplicates
    assert by_id.features == ds.features
    assert by_id["x"] == sorted(by_id["x"])  # dataset order kept


def test_mixed_names_and_ids_and_string_label_column() -> None:
    ds = make_ds()
    keep = KeepList.from_classes([0, NAMES[2]])
    out = PrunedStream(ds, keep, world=World())
    assert set(out["__key__"]) == keys_with(ds, {0, 2})
    as_str = ds.cast_column("label", Value("string")).map(lambda ex: {"label": NAMES[int(ex["label"])]})
    out2 = PrunedStream(as_str, KeepList.from_classes([NAMES[4], NAMES[7]]), world=World())
    assert set(out2["__key__"]) == keys_with(ds, {4, 7})


def test_result_keeps_working_like_a_dataset() -> None:
    ds = make_ds()
    out = PrunedStream(ds, KeepList.from_classes([2, 4]), world=World())
    mapped = out.map(lambda ex: {"y": ex["x"] * 2})
    assert mapped["y"] == [x * 2 for x in out["x"]]
    shuffled = out.shuffle(seed=0)
    assert sorted(shuffled["__key__"]) == sorted(out["__key__"])
    again = PrunedStream(out, KeepList.from_classes([2]), world=World())  # prune a pruned dataset
    assert set(again["__key__"]) == keys_with(ds, {2})


def test_dataset_dict_prunes_every_split() -> None:
    dd = DatasetDict({"train": make_ds(seed=1), "test": make_ds(50, seed=2)})
    out = PrunedStream(dd, KeepList.from_classes([1]), world=World())
    assert isinstance(out, DatasetDict)
    for split in dd:
        assert set(out[split]["__key__"]) == keys_with(dd[split], {1})


def test_sample_level_keys_with_shard_column() -> None:
    n = 60
    ds = Dataset.from_dict(
        {
            "__key__": [f"s{i // 20}_{i % 20:02d}" for i in range(n)],
            "__url__": [f"/data/train/shard-{i // 20}.tar" for i in range(n)],
            "label": [i % 3 for i in range(n)],
        }
    )
    keep = KeepList.from_samples({"shard-0.tar": ["s0_01", "s0_05"], "shard-2.tar": ["s2_19"]})
    out = PrunedStream(ds, keep, label_field="label", world=World())
    assert set(out["__key__"]) == {"s0_01", "s0_05", "s2_19"}
    whole = PrunedStream(ds, KeepList.from_shards(["shard-1.tar"]), world=World())
    assert set(whole["__key__"]) == {f"s1_{i:02d}" for i in range(20)}
    bits = np.zeros(20, dtype=bool)
    bits[[0, 7]] = True
    by_bits = PrunedStream(ds, KeepList.from_masks({"shard-2.tar": bits}), world=World())
    assert set(by_bits["__key__"]) == {"s2_00", "s2_07"}
    no_url = ds.remove_columns("__url__")
    assert set(PrunedStream(no_url, keep, world=World())["__key__"]) == {"s0_01", "s0_05", "s2_19"}
    with pytest.raises(KeepListError, match="needs each row's data file"):
        PrunedStream(no_url, KeepList.from_shards(["shard-1.tar"]), world=World())


@pytest.mark.parametrize("ws", [2, 3, 7])
@pytest.mark.parametrize("uneven", ["pad", "drop"])
def test_equal_counts_per_rank_after_split(ws: int, uneven: str) -> None:
    ds = make_ds(101)
    keep = KeepList.from_classes([1, 2, 3])
    kept = keys_with(ds, {1, 2, 3})
    out = PrunedStream(ds, keep, world=World(0, ws), uneven=uneven)
    assert len(out) % ws == 0
    parts = [split_dataset_by_node(out, rank=r, world_size=ws) for r in range(ws)]
    assert len({len(p) for p in parts}) == 1
    seen = [k for p in parts for k in p["__key__"]]
    if uneven == "pad":
        assert set(seen) == kept and len(seen) - len(kept) < ws  # all kept, fewer than ws repeats
    else:
        assert len(set(seen)) == len(seen) and set(seen) <= kept and len(kept) - len(seen) < ws


def test_unknown_class_names_are_listed() -> None:
    ds = make_ds()
    with pytest.raises(ClassMismatchError, match="n99999999.*n88888888|n88888888.*n99999999"):
        PrunedStream(ds, KeepList.from_classes([NAMES[0], "n99999999", "n88888888"]), world=World())
    plain = ds.cast_column("label", Value("int64"))
    with pytest.raises(ClassMismatchError, match="id 42"):
        PrunedStream(plain, KeepList.from_classes([1, 42]), world=World())
    with pytest.raises(ClassMismatchError, match="dataset_classes"):
        PrunedStream(plain, KeepList.from_classes([NAMES[1]]), world=World())
    out = PrunedStream(plain, KeepList.from_classes([NAMES[1]]), dataset_classes=NAMES, world=World())
    assert set(out["__key__"]) == keys_with(ds, {1})


def write_parquet(path: str, n: int = 30) -> None:
    pq.write_table(pa.table({"__key__": [f"k{i}" for i in range(n)], "y": [i % 3 for i in range(n)]}), path)


def test_missing_label_column_names_the_file(tmp_path) -> None:
    path = str(tmp_path / "part-0.parquet")
    write_parquet(path)
    ds = load_dataset("parquet", data_files={"train": [path]}, split="train", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(SampleError, match=r"no label column 'label'.*columns: \['__key__', 'y'\]") as err:
        PrunedStream(ds, KeepList.from_classes([1]), world=World())
    assert str(tmp_path / "cache") in str(err.value)  # names the dataset's Arrow file
    out = PrunedStream(ds, KeepList.from_classes([1], label_field="y"), world=World())
    assert set(out["__key__"]) == {f"k{i}" for i in range(30) if i % 3 == 1}


def test_null_label_names_the_key() -> None:
    ds = Dataset.from_dict({"__key__": ["a", "b", "c"], "label": [1, None, 2]})
    with pytest.raises(SampleError, match="key 'b' has no label"):
        PrunedStream(ds, KeepList.from_classes([1]), world=World())


def test_foreign_keep_list_is_refused() -> None:
    ds = make_ds()
    keep = KeepList.from_classes([1], source_fingerprint="a" * 64)
    with pytest.raises(ForeignKeepListError, match="aaaaaaaaaaaaaaaa.*bbbbbbbbbbbbbbbb"):
        PrunedStream(ds, keep, source_fingerprint="b" * 64, world=World())
    out = PrunedStream(ds, keep, source_fingerprint="b" * 64, allow_foreign=True, world=World())
    assert set(out["__key__"]) == keys_with(ds, {1})


def test_empty_result_is_an_error_unless_allowed() -> None:
    ds = make_ds()
    keep = KeepList.from_samples({"other.tar": ["zzz"]})
    with pytest.raises(KeepListError, match="keeps none of its 200 rows"):
        PrunedStream(ds, keep, world=World())
    assert len(PrunedStream(ds, keep, world=World(), allow_empty=True)) == 0


def test_unknown_option_is_refused() -> None:
    from dp4tl_data import PluginError

    with pytest.raises(PluginError, match="labelfield"):
        PrunedStream(make_ds(), KeepList.from_classes([1]), labelfield="label")
