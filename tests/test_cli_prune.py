"""CLI: train-surrogate (and its resume), features, prune with every built-in pruner, several
ratios, target features folders, torchvision weights, import-indices, inspect --plot, and one-line
errors for bad ratios, K, empty targets, NaN features, dimension and width mismatches."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_features import write_digits

from dp4tl_data import KeepList
from dp4tl_data.cli import main
from dp4tl_data.models import load_model
from dp4tl_data.pruners.realdata import mnist5k, write_tar_shards


def run(*args: str, ok: bool = True):
    res = CliRunner().invoke(main, [str(a) for a in args])
    if ok:
        assert res.exit_code == 0, res.output
    return res


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Source: sklearn digits in 3 shards + index; target: real MNIST digits (another set);
    a surrogate trained by the CLI; features of both."""
    base = tmp_path_factory.mktemp("cli")
    src = str(base / "source")
    paths, idx = write_digits(src, nshards=3, n=450)
    idx.save(str(base / "source.idx"))
    x, y = mnist5k(12, seed=0)
    (target,), _ = write_tar_shards(str(base / "target"), "mnist", x, y, shard_size=len(y), key_prefix="m")
    model = str(base / "surrogate.pt")
    common = ["--arch", "small_cnn", "--width", "4", "--batch-size", "64", "--shuffle-buffer", "100"]
    run("train-surrogate", f"{src}/src-*.tar", "--index", base / "source.idx", "-o", model, "--epochs", "1", *common)
    run("features", base / "source.idx", "--model", model, "-o", base / "src_feats")
    run("features", target, "--model", model, "-o", base / "tgt_feats")
    return {"base": base, "src": src, "idx": idx, "index": str(base / "source.idx"), "target": target, "model": model}


def kept_classes(path: str) -> set[int]:
    keep = KeepList.load(path)
    assert keep.classes is not None
    return set(keep.classes.id_set)


def test_surrogate_checkpoint(world) -> None:
    m = load_model(world["model"])
    assert m.num_classes == 10 and m.arch == "small_cnn" and m.classes == [f"digit_{i}" for i in range(10)]
    assert m.meta["source_fingerprint"] == world["idx"].fingerprint
    assert m.model_id.startswith("sha256:") and not os.path.exists(world["model"] + ".partial")


def test_train_surrogate_resumes_after_an_interrupted_epoch(world, monkeypatch, tmp_path) -> None:
    import dp4tl_data.pruners.train as train

    real_fit = train.fit
    seen: list[int] = []

    def crashing_fit(*args, **kwargs):
        save = kwargs["on_epoch_end"]

        def after(epoch, module, opt):
            save(epoch, module, opt)
            seen.append(epoch)
            raise KeyboardInterrupt  # the machine went away after epoch 1

        kwargs["on_epoch_end"] = after
        return real_fit(*args, **kwargs)

    out = str(tmp_path / "s.pt")
    args = ["train-surrogate", world["index"], "--index", world["index"], "-o", out, "--epochs", "2"]
    args += ["--arch", "small_cnn", "--width", "4", "--shuffle-buffer", "50"]
    monkeypatch.setattr(train, "fit", crashing_fit)
    res = CliRunner().invoke(main, args)
    assert res.exit_code != 0 and seen == [1]
    assert os.path.exists(out + ".partial") and not os.path.exists(out)
    monkeypatch.setattr(train, "fit", real_fit)
    res = run(*args)
    assert "resuming from epoch 1" in res.output and "x 1 epochs" in res.output
    assert os.path.exists(out) and not os.path.exists(out + ".partial")
    bad = ["train-surrogate", world["index"], "--index", world["index"], "-o", out, "--epochs", "3", "--width", "4"]
    shutil.copy(out, out + ".partial")  # a partial file from other settings is refused, not mixed in
    res = run(*bad, ok=False)
    assert res.exit_code != 0 and "other settings" in res.output


def test_prune_lm_several_ratios_and_plot(world) -> None:
    out = world["base"] / "lm"
    res = run("prune", "lm", "--source", world["index"], "--target", world["target"], "--model", world["model"],
              "--ratio", "0.5", "--ratio", "0.8", "-o", out)  # fmt: skip
    assert "lm ratio 0.5: 5 classes" in res.output and "lm ratio 0.8: 2 classes" in res.output
    half, fifth = kept_classes(str(out / "lm-0.5.json")), kept_classes(str(out / "lm-0.8.json"))
    assert len(half) == 5 and fifth <= half
    keep = KeepList.load(str(out / "lm-0.5.json"))
    p = keep.provenance
    assert p["method"] == "lm" and p["model_id"] == load_model(world["model"]).model_id
    assert p["target_id"] == world["target"] and p["source_fingerprint"] == world["idx"].fingerprint
    assert sum(keep.scores["votes"]) == 120 and keep.scores["voters"] == 120
    # the same votes from a features folder of the target
    run("prune", "lm", "--source", world["index"], "--target", world["base"] / "tgt_feats",
        "--ratio", "0.5", "-o", out / "from-feats.json")  # fmt: skip
    assert kept_classes(str(out / "from-feats.json")) == half
    png = world["base"] / "votes.png"
    run("inspect", out / "lm-0.5.json", "--plot", png)
    assert png.read_bytes()[:4] == b"\x89PNG"
    res = run("prune", "reverse-lm", "--source", world["index"], "--target", world["target"], "--model", world["model"],
              "--keep", "5", "-o", out / "rev-{ratio}.json")  # fmt: skip
    assert kept_classes(str(out / "rev-0.5.json")) == set(range(10)) - half


def test_prune_fm_sample_level_from_features(world) -> None:
    out = str(world["base"] / "fm.json")
    run("prune", "fm", "--source", world["index"], "--target", world["base"] / "tgt_feats",
        "--source-features", world["base"] / "src_feats", "--clusters", "8", "--keep", "4", "-o", out)  # fmt: skip
    keep = KeepList.load(out)
    assert keep.levels == ["shard", "sample"] and keep.provenance["method"] == "fm"
    kept = {k for e in keep.shards.values() for k in e.keys()}
    assert len(kept) == keep.provenance["samples_kept"] > 0
    assert kept <= {k for s in world["idx"].shard_names for k in world["idx"].keys(s)}
    assert len(keep.scores["votes"]) == 8 and sum(keep.scores["votes"]) == 120
    # computing the source features with the model gives the same clusters and list
    out2 = str(world["base"] / "fm2.json")
    run("prune", "fm", "--source", world["index"], "--target", world["target"], "--model", world["model"],
        "--clusters", "8", "--keep", "4", "-o", out2)  # fmt: skip
    assert {k for e in KeepList.load(out2).shards.values() for k in e.keys()} == kept


def test_prune_baselines(world) -> None:
    base = world["base"]
    run("prune", "random-class", "--source", world["index"], "--ratio", "0.3", "--seed", "4", "-o", base / "rc.json")
    assert len(kept_classes(str(base / "rc.json"))) == 7
    run("prune", "random-sample", "--source", world["index"], "--ratio", "0.5", "-o", base / "rs.json")
    assert KeepList.load(str(base / "rs.json")).provenance["samples_kept"] == 225
    run("prune", "moderate-sample", "--source", world["index"], "--source-features", base / "src_feats",
        "--ratio", "0.5", "--encoding", "bitmap", "-o", base / "ms.json")  # fmt: skip
    ms = KeepList.load(str(base / "ms.json"))
    assert all(e.encoding == "bitmap" for e in ms.shards.values())
    counts = ms.kept_counts(world["idx"])
    assert sum(counts.values()) == ms.provenance["samples_kept"]
    run("prune", "moderate-class", "--source", world["index"], "--source-features", base / "src_feats",
        "--target", base / "tgt_feats", "--keep", "3", "-o", base / "mc.json")  # fmt: skip
    assert len(kept_classes(str(base / "mc.json"))) == 3


def test_prune_torchvision_weights(world, tmp_path) -> None:
    from torchvision.models import mobilenet_v3_small

    w = str(tmp_path / "mnv3.pth")
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in mobilenet_v3_small(num_classes=10).state_dict().items()}}, w
    )
    res = run("prune", "lm", "--source", world["index"], "--target", world["target"], "--arch", "mobilenet_v3_small",
              "--weights", w, "--size", "32", "--ratio", "0.5", "-o", tmp_path / "k.json")  # fmt: skip
    assert "5 classes" in res.output
    wrong = str(tmp_path / "wrong.pth")
    torch.save(mobilenet_v3_small(num_classes=7).state_dict(), wrong)
    res = run("prune", "lm", "--source", world["index"], "--target", world["target"], "--arch", "mobilenet_v3_small",
              "--weights", wrong, "--size", "32", "--ratio", "0.5", "-o", tmp_path / "k.json", ok=False)  # fmt: skip
    assert "the model outputs 7 classes but the source has 10" in res.output


def test_import_indices_cli(world, tmp_path) -> None:
    f = str(tmp_path / "top.indices")
    torch.save(torch.tensor([0, 1, 200, 449]), f)
    out = str(tmp_path / "imp.json")
    res = run("prune", "import-indices", "--source", world["index"], "--indices", f, "-o", out)
    assert "imported 4 samples" in res.output
    keys = [k for s in world["idx"].shard_names for k in world["idx"].keys(s)]
    got = {k for e in KeepList.load(out).shards.values() for k in e.keys()}
    assert got == {keys[0], keys[1], keys[200], keys[449]}


def test_prune_errors_are_one_line(world, tmp_path) -> None:
    idx, tgt, model = world["index"], world["target"], world["model"]
    cases = [
        (["lm", "--target", tgt, "--model", model, "--ratio", "1.0"], "pruning ratio 1.0 is outside [0, 1)"),
        (["lm", "--target", tgt, "--model", model, "--keep", "11"], "K=11 is larger than the 10 source classes"),
        (["lm", "--target", tgt, "--model", model, "--ratio", "0.5", "--clusters", "3"], "lm does not take --clusters"),
        (["nope", "--ratio", "0.5"], "unknown pruner 'nope'"),
        (["lm", "--model", model, "--ratio", "0.5"], "lm needs a target"),
        (["lm", "--target", tgt, "--model", model, "--ratio", "0.5", "--ratio", "0.8"], "several ratios"),
    ]
    empty, _ = write_tar_shards(
        str(tmp_path / "empty"), "e", np.zeros((0, 28, 28), np.uint8), np.zeros(0), shard_size=1, key_prefix="e"
    )
    open(str(tmp_path / "empty" / "e-0000.tar"), "wb").write(b"\0" * 1024)
    cases.append(
        (
            ["lm", "--target", str(tmp_path / "empty" / "e-0000.tar"), "--model", model, "--ratio", "0.5"],
            "the target has no samples",
        )
    )
    feats = tmp_path / "nan_feats"
    shutil.copytree(world["base"] / "src_feats", feats)
    name = world["idx"].shard_names[1]
    arr = np.load(feats / f"{name}.emb.npy")
    arr[3, 0] = np.nan
    np.save(feats / f"{name}.emb.npy", arr)
    cases.append((["fm", "--target", world["base"] / "tgt_feats", "--source-features", feats, "--clusters", "4", "--keep", "2"],
                  "source features: 1 rows hold NaN or inf"))  # fmt: skip
    narrow = tmp_path / "narrow_feats"
    shutil.copytree(world["base"] / "tgt_feats", narrow)
    for f in os.listdir(narrow):
        if f.endswith(".emb.npy"):
            np.save(narrow / f, np.load(narrow / f)[:, :5])
    cases.append((["fm", "--target", narrow, "--source-features", world["base"] / "src_feats", "--clusters", "4", "--keep", "2"],
                  "feature dimension 5 differs from the expected 16"))  # fmt: skip
    for args, message in cases:
        res = run("prune", args[0], "--source", idx, *args[1:], "-o", tmp_path / "x.json", ok=False)
        assert res.exit_code != 0, args
        errors = [line for line in res.output.splitlines() if line.startswith("Error")]
        assert len(errors) == 1 and message in errors[0], (args, res.output)
        assert "Traceback" not in res.output


def test_features_refuses_unsafe_checkpoint(world, tmp_path) -> None:
    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    bad = str(tmp_path / "bad.pt")
    torch.save({"format": "dp4tl-model", "x": Boom()}, bad)
    res = run("features", world["target"], "--model", bad, "-o", tmp_path / "f", ok=False)
    assert "not a readable weights-only checkpoint" in res.output and not os.path.exists(tmp_path / "pwned")
    manifest = json.load(open(world["base"] / "tgt_feats" / "features.json"))
    assert manifest["complete"] and manifest["dims"] == {"logits": 10, "emb": 16}


def test_demo_end_to_end_small(tmp_path) -> None:
    res = run("demo", "--out", tmp_path, "--per-class", "12", "--seeds", "1", "--epochs", "1", "--ratio", "0.8")
    out = res.output
    assert "$ dp4tl train-surrogate" in out and "$ dp4tl prune lm" in out
    assert "LM keeps at ratio 0.8 (" in out and "| lm @0.8 | 1 |" in out and "| full | 1 |" in out
    assert "ratio 0.8: pretraining" in out and "less CPU time" in out and "10-shot accuracy LM" in out
    results = json.load(open(tmp_path / "results.json"))
    arms = {r["arm"] for r in results["rows"]}
    assert arms == {"full", "untrained", "lm @0.8", "random-class @0.8", "reverse-lm @0.8"}
    lm = next(r for r in results["rows"] if r["arm"] == "lm @0.8")
    n = len(results["classes"])
    assert lm["classes_kept"] == n - round(0.8 * n) and lm["images_kept"] == 12 * lm["classes_kept"]
