"""KeepList: levels, matching, set algebra (property tests) and statistics."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dp4tl_data import ClassMismatchError, ForeignKeepListError, KeepList, KeepListError

NAMES = [f"n{i:08d}" for i in range(10)]


def test_from_classes_records_ids_and_names():
    keep = KeepList.from_classes([3, 1, 3], label_field="cls", names=NAMES, method="lm", ratio=0.8)
    assert keep.classes is not None
    assert keep.classes.ids == (1, 3)
    assert keep.classes.names == (NAMES[1], NAMES[3])
    assert keep.classes.label_field == "cls"
    assert keep.provenance["method"] == "lm" and keep.provenance["ratio"] == 0.8
    assert keep.levels == ["class"]


def test_class_matcher_accepts_ids_names_and_cls_bytes():
    keep = KeepList.from_classes([1, 3], names=NAMES)
    keeps = keep.classes.matcher()
    assert keeps(1) and keeps(np.int64(3)) and not keeps(2)
    assert keeps(NAMES[3]) and not keeps(NAMES[2])
    assert keeps(b"3\n") and not keeps(b"4")


def test_names_resolve_against_a_copy_with_other_ids():
    keep = KeepList.from_classes([1, 3], names=NAMES)
    shuffled = list(reversed(NAMES))  # another copy orders classes differently
    assert keep.classes.resolve(shuffled) == {shuffled.index(NAMES[1]), shuffled.index(NAMES[3])}


def test_unknown_class_names_are_listed():
    keep = KeepList.from_classes(["n00000001", "zebra", "yak"])
    with pytest.raises(ClassMismatchError, match="2 classes the dataset lacks: yak, zebra"):
        keep.classes.resolve(NAMES)


def test_string_classes_must_be_among_given_names():
    with pytest.raises(ClassMismatchError, match="'nope'"):
        KeepList.from_classes(["nope"], names=NAMES)


@pytest.mark.parametrize("bad", [-1, 1.5, None, True])
def test_bad_class_values_are_refused(bad):
    with pytest.raises(KeepListError):
        KeepList.from_classes([bad])


def test_shard_and_sample_levels():
    keep = KeepList.from_samples({"a/0.tar": ["k1", "k2"], "a/1.tar": []}) | KeepList.from_samples({"a/2.tar": ["k9"]})
    assert sorted(keep.shards) == ["a/0.tar", "a/2.tar"]  # empty shards are dropped
    assert keep.levels == ["shard", "sample"]
    assert keep.shard("a/0.tar").contains("k1") and not keep.shard("a/0.tar").contains("k3")
    assert keep.keeps_shard("a/2.tar") and not keep.keeps_shard("a/1.tar")
    whole = KeepList.from_shards({"a/0.tar": 10, "a/5.tar": 4})
    assert whole.levels == ["shard"] and whole.stats()["samples_kept"] == 14


def test_bitmap_entries_need_positions():
    keep = KeepList.from_masks({"s.tar": np.array([True, False, True])})
    e = keep.shard("s.tar")
    assert e.kept == 2 and e.total == 3
    assert [e.contains(position=i) for i in range(3)] == [True, False, True]
    with pytest.raises(KeepListError, match="position"):
        e.contains("key")
    with pytest.raises(KeepListError, match="outside"):
        e.contains(position=3)


@pytest.mark.parametrize("name", ["../etc/passwd", "/abs.tar", "pipe:curl x", "http://h/x.tar", "a/../b", "a\\b", ""])
def test_unsafe_shard_names_are_refused(name):
    with pytest.raises(KeepListError):
        KeepList.from_shards([name])


def test_mixed_level_union_needs_resolution():
    with pytest.raises(KeepListError, match="resolve"):
        KeepList.from_classes([1]) | KeepList.from_shards(["a.tar"])
    both = KeepList.from_classes([1]) & KeepList.from_shards(["a.tar"])
    assert both.levels == ["class", "shard"]


def test_combining_lists_of_different_sources_fails():
    a = KeepList.from_classes([1], source_fingerprint="a" * 64)
    b = KeepList.from_classes([2], source_fingerprint="b" * 64)
    with pytest.raises(ForeignKeepListError, match="different sources"):
        a | b
    assert (a | KeepList.from_classes([2])).source_fingerprint == "a" * 64


def test_check_source_and_override():
    keep = KeepList.from_classes([1], source_fingerprint="a" * 64)
    keep.check_source("a" * 64)
    with pytest.raises(ForeignKeepListError, match="allow_foreign"):
        keep.check_source("b" * 64)
    keep.check_source("b" * 64, allow_foreign=True)


def test_stats_report_fractions():
    keep = KeepList.from_classes(range(4), num_classes=10, num_samples=1000, samples_kept=400)
    st_ = keep.stats()
    assert st_["classes_kept"] == 4 and st_["class_fraction"] == pytest.approx(0.4)
    assert st_["sample_fraction"] == pytest.approx(0.4)
    rows = KeepList.from_samples({"s.tar": ["a", "b"]}, totals={"s.tar": 8}).shard_stats()
    assert rows == [{"shard": "s.tar", "encoding": "keys", "kept": 2, "total": 8, "fraction": 0.25}]


def test_fingerprint_depends_on_content_not_provenance():
    a = KeepList.from_classes([1, 2], method="lm")
    b = KeepList.from_classes([2, 1], method="random")
    c = KeepList.from_classes([1, 3])
    assert a.fingerprint == b.fingerprint != c.fingerprint


# ---------------------------------------------------------------------- property tests: set algebra

class_sets = st.sets(st.integers(0, 20), max_size=12)
key_maps = st.dictionaries(
    st.sampled_from(["s0.tar", "s1.tar", "d/s2.tar"]),
    st.sets(st.sampled_from(list("abcdefgh")), max_size=8),
    max_size=3,
)


@settings(max_examples=60, deadline=None)
@given(class_sets, class_sets)
def test_class_algebra_matches_python_sets(a, b):
    ka, kb = KeepList.from_classes(sorted(a)), KeepList.from_classes(sorted(b))
    for op, expected in (("|", a | b), ("&", a & b), ("-", a - b)):
        got = {"|": ka | kb, "&": ka & kb, "-": ka - kb}[op]
        assert set(got.classes.ids) == expected


def _as_set(keep: KeepList) -> set[tuple[str, str]]:
    return {(s, k) for s, e in keep.shards.items() for k in e.keys()}


@settings(max_examples=60, deadline=None)
@given(key_maps, key_maps)
def test_sample_algebra_matches_python_sets(a, b):
    ka, kb = KeepList.from_samples(a), KeepList.from_samples(b)
    sa = {(s, k) for s, ks in a.items() for k in ks}
    sb = {(s, k) for s, ks in b.items() for k in ks}
    assert _as_set(ka | kb) == sa | sb
    assert _as_set(ka & kb) == sa & sb
    assert _as_set(ka - kb) == sa - sb


@settings(max_examples=40, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=40), st.lists(st.booleans(), min_size=1, max_size=40))
def test_bitmap_algebra_matches_numpy(a, b):
    n = min(len(a), len(b))
    ma, mb = np.array(a[:n]), np.array(b[:n])
    ka, kb = KeepList.from_masks({"s.tar": ma}), KeepList.from_masks({"s.tar": mb})
    for got, want in ((ka | kb, ma | mb), (ka & kb, ma & mb), (ka - kb, ma & ~mb)):
        if want.any():
            assert np.array_equal(got.shard("s.tar").mask(), want)
        else:
            assert "s.tar" not in got.shards


def test_whole_shards_absorb_and_subtract():
    whole = KeepList.from_shards(["s.tar"])
    part = KeepList.from_samples({"s.tar": ["a"]})
    assert (whole | part).shard("s.tar").encoding == "all"
    assert (whole & part).shard("s.tar").keys() == {"a"}
    assert "s.tar" not in (part - whole).shards
    with pytest.raises(KeepListError, match="source index"):
        whole - part
