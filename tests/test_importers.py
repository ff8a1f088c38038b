"""Importers and exporters on a simulated LAION, checked by key: DataComp uid lists with
multiplicity, SemDeDup/plain key lists, Megatron-Energon exclude lists; both source layouts
give the same keep-list; lists for another dataset are refused."""

import numpy as np
import pytest
import yaml
from dp4tl_data.plugins.laion import open_source

from benchmarks.laiongen import write_laion
from dp4tl_data.distributed import source_fingerprint
from dp4tl_data.errors import ForeignKeepListError, KeepListError
from dp4tl_data.importers import (
    UID_DTYPE,
    export_datacomp,
    export_energon,
    export_keys,
    import_datacomp,
    import_energon,
    import_keys,
    load_passes,
    read_energon,
    read_uids,
    uid_hex,
    uids_from_hex,
)
from dp4tl_data.keeplist import KeepList


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    return write_laion(str(tmp_path_factory.mktemp("laion")), nshards=4, per_shard=200, dim=8, seed=11)


@pytest.fixture(scope="module")
def source(sim):
    return open_source(sim.emb_root)


def _kept_keys(keep, sim):
    out = set()
    for name in keep.shards or {}:
        e = keep.shards[name]
        pos = range(len(sim.keys[name])) if e.encoding == "all" else np.flatnonzero(e.mask())
        out |= {sim.keys[name][i] for i in pos}
    return out


def test_uid_hex_round_trip():
    hexes = ["0123456789abcdef" * 2, "f" * 32, "0" * 31 + "1"]
    u = uids_from_hex(hexes, "t")
    assert u.dtype == UID_DTYPE and uid_hex(u) == hexes
    assert int(u[0]["f0"]) == 0x0123456789ABCDEF
    with pytest.raises(KeepListError, match="'xyz' is not 32 hex digits"):
        uids_from_hex(["xyz"], "t")
    with pytest.raises(KeepListError, match="is not hexadecimal"):
        uids_from_hex(["g" * 32], "t")


def test_datacomp_with_multiplicity(sim, source, tmp_path):
    rng = np.random.default_rng(0)
    by_key = {u: k for n in sim.shards for k, u in zip(sim.keys[n], sim.uids[n])}
    chosen = rng.choice(sorted(by_key), size=150, replace=False).tolist()
    twice, thrice = chosen[:20], chosen[20:25]
    strangers = ["ab" * 16, "cd" * 16]
    listed = chosen + twice + thrice + thrice + strangers
    arr = np.sort(uids_from_hex(listed, "t"))
    np.save(tmp_path / "keep_uids.npy", arr)
    rep = import_datacomp(str(tmp_path / "keep_uids.npy"), source, str(tmp_path / "keep.json"))
    assert rep.entries == 152 and rep.matched == 150 and rep.unmatched == 2
    assert rep.samples_kept == 150 and rep.emitted == 150 + 20 + 5 + 5
    assert sorted(rep.unmatched_examples) == sorted(strangers)
    passes = load_passes(str(tmp_path / "keep.json"))
    assert len(passes) == 3
    assert _kept_keys(passes[0], sim) == {by_key[u] for u in chosen}
    assert _kept_keys(passes[1], sim) == {by_key[u] for u in twice + thrice}
    assert _kept_keys(passes[2], sim) == {by_key[u] for u in thrice}
    fp = source_fingerprint((s.name, s.digest()) for s in source)
    assert all(p.source_fingerprint == fp for p in passes)
    assert passes[0].provenance["unmatched"] == 2
    # export: the same records, strangers aside, each as many times as listed
    n = export_datacomp(str(tmp_path / "keep.json"), source, str(tmp_path / "out.npy"))
    back = read_uids(str(tmp_path / "out.npy"))
    assert n == len(back) == 180
    assert sorted(uid_hex(back)) == sorted(u for u in listed if u not in strangers)
    assert np.array_equal(back, np.sort(back))


def test_both_layouts_give_the_same_keeplist(sim, source, tmp_path):
    uids = np.sort(uids_from_hex([u for n in sim.shards for u in sim.uids[n][::3]], "t"))
    np.save(tmp_path / "u.npy", uids)
    a = import_datacomp(str(tmp_path / "u.npy"), source, str(tmp_path / "a.json"))
    b = import_datacomp(str(tmp_path / "u.npy"), open_source(sim.img_root), str(tmp_path / "b.json"))
    ka, kb = KeepList.load(a.url), KeepList.load(b.url)
    assert ka.fingerprint == kb.fingerprint and ka.source_fingerprint == kb.source_fingerprint
    assert a.unmatched == 0


def test_datacomp_bad_input(source, tmp_path):
    np.save(tmp_path / "foreign.npy", np.sort(uids_from_hex(["12" * 16, "34" * 16], "t")))
    with pytest.raises(ForeignKeepListError, match="none of its 2 entries is a sample of this source"):
        import_datacomp(str(tmp_path / "foreign.npy"), source, str(tmp_path / "k.json"))
    with pytest.raises(KeepListError, match="keep-list not found"):
        KeepList.load(str(tmp_path / "k.json"))  # nothing written
    some = uids_from_hex([source[0].column("uid")[0].as_py(), "12" * 16], "t")
    np.save(tmp_path / "some.npy", np.sort(some))
    with pytest.raises(KeepListError, match="1 of 2 entries match no sample"):
        import_datacomp(str(tmp_path / "some.npy"), source, str(tmp_path / "k.json"), strict=True)
    np.save(tmp_path / "ints.npy", np.arange(4))
    with pytest.raises(KeepListError, match="expected a 1-D array of \\(u8, u8\\) uid records"):
        read_uids(str(tmp_path / "ints.npy"))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(KeepListError, match="not a DataComp uid .npy"):
        read_uids(str(tmp_path / "obj.npy"))


def test_key_lists_keep_and_remove(sim, source, tmp_path):
    chosen = [k for n in sim.shards for k in sim.keys[n][::4]]
    lines = ["# SemDeDup survivors"] + [f"/data/laion/{k[:5]}/{k}.jpg" for k in chosen[::2]] + chosen[1::2] + [""]
    (tmp_path / "keys.txt").write_text("\n".join(lines + ["999999999"]))
    rep = import_keys(str(tmp_path / "keys.txt"), source, str(tmp_path / "keep.json"))
    assert rep.entries == len(chosen) + 1 and rep.matched == len(chosen) and rep.unmatched_examples == ["999999999"]
    keep = KeepList.load(rep.url)
    assert _kept_keys(keep, sim) == set(chosen)
    rem = import_keys(str(tmp_path / "keys.txt"), source, str(tmp_path / "rest.json"), mode="remove")
    everything = {k for n in sim.shards for k in sim.keys[n]}
    assert _kept_keys(KeepList.load(rem.url), sim) == everything - set(chosen)
    n = export_keys(rep.url, source, str(tmp_path / "out.txt"), with_shard=True)
    out = (tmp_path / "out.txt").read_text().split()
    assert n == len(out) == len(chosen)
    assert {line.split("/")[1] for line in out} == set(chosen)
    assert all(line.split("/")[0] == f"{line.split('/')[1][:5]}.tar" for line in out)


def test_energon_round_trip(sim, source, tmp_path):
    a, b = sim.shards[1], sim.shards[2]
    dropped = sim.keys[b][:7]
    doc = {"split_parts": {"train": sim.shards}, "exclude": [a] + [f"{b}/{k}" for k in dropped]}
    (tmp_path / "split.yaml").write_text(yaml.safe_dump(doc))
    rep = import_energon(str(tmp_path / "split.yaml"), source, str(tmp_path / "keep.json"))
    assert rep.entries == 8 and rep.unmatched == 0
    keep = KeepList.load(rep.url)
    everything = {k for n in sim.shards for k in sim.keys[n]}
    assert _kept_keys(keep, sim) == everything - set(sim.keys[a]) - set(dropped)
    assert keep.shards[sim.shards[0]].encoding == "all" and not keep.keeps_shard(a)
    n = export_energon(rep.url, source, str(tmp_path / "out.yaml"))
    assert n == 8
    back = yaml.safe_load((tmp_path / "out.yaml").read_text())
    assert back["split_parts"]["train"] == sim.shards
    assert read_energon(str(tmp_path / "out.yaml")) == ({a}, {b: set(dropped)})
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"exclude": ["nope.tar", "nope.tar/1"]}))
    with pytest.raises(ForeignKeepListError, match="none of its 2 entries"):
        import_energon(str(tmp_path / "bad.yaml"), source, str(tmp_path / "k.json"))
    (tmp_path / "worse.yaml").write_text("exclude: {a: 1}")
    with pytest.raises(KeepListError, match="'exclude' must be a list of strings"):
        read_energon(str(tmp_path / "worse.yaml"))


def test_exports_refuse_a_keeplist_for_another_dataset(sim, source, tmp_path):
    masks = {n: np.ones(len(k), dtype=bool) for n, k in sim.keys.items()}
    KeepList.from_masks(masks, source_fingerprint="00" * 32).save(str(tmp_path / "other.json"))
    with pytest.raises(ForeignKeepListError, match="made for source 0000000000000000"):
        export_keys(str(tmp_path / "other.json"), source, str(tmp_path / "o.txt"))
    assert export_keys(str(tmp_path / "other.json"), source, str(tmp_path / "o.txt"), allow_foreign=True) == sum(
        len(k) for k in sim.keys.values()
    )
    other = write_laion(str(tmp_path / "other"), nshards=5, per_shard=150, dim=8, tars=False, seed=12)
    wrong = {n: np.ones(len(k), dtype=bool) for n, k in other.keys.items()}
    KeepList.from_masks(wrong).save(str(tmp_path / "wrong.json"))
    with pytest.raises(ForeignKeepListError, match="names 1 shards this source lacks, e.g. '00004.tar'"):
        export_energon(str(tmp_path / "wrong.json"), source, str(tmp_path / "o.yaml"))
    del wrong["00004.tar"]
    KeepList.from_masks(wrong).save(str(tmp_path / "wrong.json"))
    with pytest.raises(ForeignKeepListError, match="bitmap covers 1\\d\\d samples, the source has 1\\d\\d"):
        export_datacomp(str(tmp_path / "wrong.json"), source, str(tmp_path / "o.npy"))


def test_undecodable_key_lists_and_uid_archives_are_clear_errors(tmp_path):
    import numpy as np

    from dp4tl_data import KeepListError
    from dp4tl_data.importers import read_key_list, read_uids

    bad = tmp_path / "keys.txt"
    bad.write_bytes(b"ok\n\xff\xfe\n")
    with pytest.raises(KeepListError, match="keys.txt: the key list is not UTF-8 text"):
        read_key_list(str(bad))
    npz = tmp_path / "uids.npy"
    with open(npz, "wb") as f:
        np.savez(f, a=np.zeros(2))
    with pytest.raises(KeepListError, match="uids.npy: not a DataComp uid .npy"):
        read_uids(str(npz))
