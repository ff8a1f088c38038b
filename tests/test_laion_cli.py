"""The LAION commands end to end on a simulated LAION: cluster -> assign (Dask, resumable) ->
shards policy -> inspect plot -> import/export; bad input exits non-zero with one line."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from benchmarks.laiongen import write_laion
from dp4tl_data.cli import main
from dp4tl_data.keeplist import KeepList

COMMANDS = ["cluster", "assign", "shards", "import", "export"]


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    return write_laion(str(tmp_path_factory.mktemp("laion")), nshards=5, per_shard=300, dim=16, seed=21)


def run(*args, ok=True):
    res = CliRunner().invoke(main, [str(a) for a in args])
    if ok:
        assert res.exit_code == 0, res.output
    return res


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help(cmd):
    assert "Usage" in run(cmd, "--help").output


def test_cluster_assign_resume_shards_inspect(sim, tmp_path):
    c, t = tmp_path / "c.npy", tmp_path / "t.npy"
    run("cluster", sim.emb_root, "-k", 16, "--sample", 1500, "--per-shard", 300, "-o", c)
    assert np.load(c).shape == (16, 16)
    np.save(t, sim.targets([2, 5], 200))
    args = [
        "assign",
        sim.emb_root,
        "--centroids",
        c,
        "--target",
        t,
        "--work",
        tmp_path / "w",
        "-o",
        tmp_path / "k.json",
    ]
    out = json.loads(run(*args, "--workers", 2, "--json").output)
    assert out["assigned"] == 5 and out["resumed"] == 0 and out["workers"] == 2
    keep = KeepList.load(str(tmp_path / "k.json"))
    truth = sim.masks({2, 5})
    assert out["samples_kept"] == sum(int(m.sum()) for m in truth.values())
    for name, m in truth.items():
        if m.any():
            assert np.array_equal(keep.shards[name].mask(), m)
    again = json.loads(run(*args, "--engine", "local", "--json").output)
    assert again["assigned"] == 0 and again["resumed"] == 5 and again["samples_kept"] == out["samples_kept"]
    # shard-level policy: the trade-off table, then the dense list
    rows = json.loads(run("shards", tmp_path / "k.json", "--images", sim.img_root, "--json").output)["tradeoff"]
    assert [r["min_fraction"] for r in rows] == [0, 0.05, 0.1, 0.2, 0.3, 0.5]
    assert rows[0]["samples_lost"] == 0 and not rows[0]["bytes_estimated"]
    assert all(a["bytes_read"] >= b["bytes_read"] for a, b in zip(rows, rows[1:]))
    res = run("shards", tmp_path / "k.json", "--min-fraction", 0.3, "-o", tmp_path / "dense.json")
    assert "wrote" in res.output and "min fraction" in res.output
    dense = KeepList.load(str(tmp_path / "dense.json"))
    assert all(e.kept / e.total >= 0.3 for e in dense.shards.values())
    assert "go together" in run("shards", tmp_path / "k.json", "--min-fraction", 0.3, ok=False).output
    res = run("inspect", tmp_path / "k.json", "--plot", tmp_path / "f.png", "--images", sim.img_root)
    assert "saves" in res.output and (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_import_export_and_bad_input(sim, tmp_path):
    keys = [k for n in sim.shards for k in sim.keys[n][::5]]
    (tmp_path / "keys.txt").write_text("\n".join(keys))
    out = json.loads(
        run(
            "import", "keys", tmp_path / "keys.txt", "--source", sim.img_root, "-o", tmp_path / "k.json", "--json"
        ).output
    )
    assert out["matched"] == len(keys) and out["samples_kept"] == len(keys)
    res = run("export", "keys", tmp_path / "k.json", "--source", sim.emb_root, "-o", tmp_path / "back.txt")
    assert f"wrote {len(keys)} keys" in res.output
    assert sorted((tmp_path / "back.txt").read_text().split()) == sorted(keys)
    (tmp_path / "foreign.txt").write_text("nope1\nnope2\n")
    res = run("import", "keys", tmp_path / "foreign.txt", "--source", sim.emb_root, "-o", tmp_path / "f.json", ok=False)
    assert res.exit_code != 0 and "ForeignKeepListError" in res.output and len(res.output.strip().splitlines()) == 1
    res = run(
        "assign",
        sim.emb_root,
        "--centroids",
        tmp_path / "keys.txt",
        "--target",
        tmp_path / "keys.txt",
        "--work",
        tmp_path / "w",
        "-o",
        tmp_path / "x.json",
        ok=False,
    )
    assert res.exit_code != 0 and "not a .npy array" in res.output
    res = run(
        "import", "keys", tmp_path / "keys.txt", "--source", tmp_path / "missing", "-o", tmp_path / "x.json", ok=False
    )
    assert res.exit_code != 0 and "no such source folder" in res.output
