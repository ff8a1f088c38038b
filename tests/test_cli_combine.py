"""`dp4tl combine`: set algebra of keep-lists from the command line, checked by key against
the Python operators; lists of different levels combine through a source index."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from dp4tl_data import KeepList, SourceIndex
from dp4tl_data.index import IndexedShard, shard_samples_table

CLASSES = ["zero", "one", "two", "three"]


def make_index(nshards: int = 3, per: int = 8) -> SourceIndex:
    items = []
    for s in range(nshards):
        keys = [f"s{s}_{i}" for i in range(per)]
        labels = [(s + i) % len(CLASSES) for i in range(per)]
        t = shard_samples_table(keys, labels, [i * 512 for i in range(per)], [512] * per, [[] for _ in keys])
        items.append((IndexedShard(f"{s:03d}.tar", per, nbytes=per * 512, mtime=1.0), t))
    return SourceIndex.build(items, kind="test", label_field="cls", classes=CLASSES)


def kept_keys(keep: KeepList, index: SourceIndex) -> set[str]:
    out = set()
    for name, m in keep.masks(index).items():
        keys = index.keys(name)
        out |= {keys[i] for i in np.flatnonzero(m)}
    return out


def run(*args: str, ok: bool = True):
    from dp4tl_data.cli import main

    res = CliRunner().invoke(main, list(args))
    assert (res.exit_code == 0) == ok, res.output
    return res


@pytest.mark.parametrize("op", ["union", "intersection", "difference"])
def test_same_level_lists_match_the_operators(tmp_path, op):
    a = KeepList.from_samples({"000.tar": ["s0_0", "s0_1", "s0_2"], "001.tar": ["s1_0"]})
    b = KeepList.from_samples({"000.tar": ["s0_2", "s0_3"], "002.tar": ["s2_5"]})
    c = KeepList.from_samples({"000.tar": ["s0_1"], "002.tar": ["s2_5", "s2_6"]})
    urls = []
    for name, keep in zip("abc", (a, b, c)):
        urls.append(keep.save(str(tmp_path / f"{name}.json")))
    out = str(tmp_path / "out.json")
    res = run("combine", op, *urls, "-o", out)
    expected = {"union": a | b | c, "intersection": a & b & c, "difference": a - b - c}[op]
    got = KeepList.load(out)
    index = make_index()
    assert kept_keys(got, index) == kept_keys(expected, index)
    assert got.fingerprint == expected.fingerprint
    assert got.provenance["method"] == op and got.provenance["params"]["inputs"] == urls
    assert out in res.output


def test_class_list_minus_dedup_list_through_the_index(tmp_path):
    index = make_index()
    idx_url = index.save(str(tmp_path / "source.idx"))
    lm = KeepList.from_classes(["one", "three"], label_field="cls", names=CLASSES, source_fingerprint=index.fingerprint)
    dedup = KeepList.from_samples({"000.tar": ["s0_1", "s0_2"], "002.tar": ["s2_7"]})
    lm_url, dedup_url = lm.save(str(tmp_path / "lm.json")), dedup.save(str(tmp_path / "dedup.json"))
    out = str(tmp_path / "out.json")

    # different levels: refused without the index, in one line
    res = run("combine", "difference", lm_url, dedup_url, "-o", out, ok=False)
    assert "same single level" in res.output and "Traceback" not in res.output

    run("combine", "difference", lm_url, dedup_url, "-o", out, "--index", idx_url)
    labels = {k: CLASSES[int(label)] for n in index.shard_names for k, label in zip(index.keys(n), index.labels(n))}
    want = {k for k, c in labels.items() if c in ("one", "three")} - {"s0_1", "s0_2", "s2_7"}
    got = KeepList.load(out)
    assert kept_keys(got, index) == want
    assert got.source_fingerprint == index.fingerprint
    assert got.stats()["samples_kept"] == len(want)


def test_bad_inputs_are_one_line_errors(tmp_path):
    a = KeepList.from_classes([1], label_field="cls", source_fingerprint="a" * 64).save(str(tmp_path / "a.json"))
    b = KeepList.from_classes([2], label_field="cls", source_fingerprint="b" * 64).save(str(tmp_path / "b.json"))
    out = str(tmp_path / "out.json")
    res = run("combine", "union", a, b, "-o", out, ok=False)
    assert "different sources" in res.output and "Traceback" not in res.output
    res = run("combine", "union", a, "-o", out, ok=False)
    assert "at least two" in res.output
    res = run("combine", "union", a, str(tmp_path / "missing.json"), "-o", out, ok=False)
    assert "missing.json" in res.output and len(res.output.strip().splitlines()) == 1
    res = run("combine", "union", a, b, "-o", a, ok=False)
    assert "one of the inputs" in res.output
    res = run("combine", "xor", a, b, "-o", out, ok=False)
    assert "xor" in res.output
    assert not (tmp_path / "out.json").exists()
