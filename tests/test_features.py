"""Features: data specs (globs, braces, index folders, image folders), per-shard features aligned
with keys, float16, resume shard by shard, alignment to an index by key, bad folders."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from dp4tl_data.features import FeatureError, FeatureStore, compute, resolve, write_features
from dp4tl_data.models import LoadedModel, Preprocess, build_model
from dp4tl_data.pruners.realdata import index_source, sklearn_digits, write_tar_shards


def write_digits(root: str, nshards: int = 3, n: int | None = None, prefix: str = "src") -> tuple[list[str], object]:
    """sklearn's real handwritten digits as tar shards (png + cls) under `root`, with an index."""
    x, y = sklearn_digits()
    if n is not None:
        x, y = x[:n], y[:n]
    size = -(-len(y) // nshards)
    paths, written = write_tar_shards(root, prefix, x, y, shard_size=size, key_prefix=prefix)
    idx = index_source(paths, root, [f"digit_{i}" for i in range(10)], written)
    return paths, idx


def tiny_model(num_classes: int = 10, seed: int = 0) -> LoadedModel:
    import torch

    torch.manual_seed(seed)
    m = build_model("small_cnn", num_classes, width=4).eval()
    return LoadedModel(m, Preprocess(), f"test-model-{seed}", "small_cnn", num_classes)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("digits") / "shards")
    paths, idx = write_digits(root, nshards=3, n=300)
    idx.save(os.path.join(os.path.dirname(root), "source.idx"))
    return root, paths, idx


def test_resolve_specs(digits, tmp_path) -> None:
    root, paths, idx = digits
    by_glob = resolve(os.path.join(root, "src-*.tar"))
    assert [s.name for s in by_glob.shards] == ["src-0000.tar", "src-0001.tar", "src-0002.tar"]
    by_brace = resolve(os.path.join(root, "src-{0000..0001}.tar"))
    assert [s.name for s in by_brace.shards] == ["src-0000.tar", "src-0001.tar"]
    by_index = resolve(os.path.join(os.path.dirname(root), "source.idx"))
    assert [s.url for s in by_index.shards] == paths and by_index.index.fingerprint == idx.fingerprint
    folder = tmp_path / "imgs"
    for cls in ("a", "b"):
        (folder / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((10, 10), 40 * i, np.uint8)).save(folder / cls / f"{i}.png")
    spec = resolve(str(folder))
    assert [s.name for s in spec.shards] == ["a", "b"] and all(s.kind == "folder" for s in spec.shards)
    keys, logits, emb = compute(tiny_model(), spec)
    assert keys == ["a/0", "a/1", "a/2", "b/0", "b/1", "b/2"] and logits.shape == (6, 10) and emb.shape == (6, 16)
    with pytest.raises(Exception, match="matches no shard"):
        resolve(os.path.join(root, "nope-*.tar"))
    with pytest.raises(Exception, match="command URLs are refused"):
        resolve("pipe:cat x.tar")


def test_write_features_aligned_with_keys_and_resumes(digits, tmp_path) -> None:
    root, paths, idx = digits
    spec = resolve(os.path.join(root, "src-*.tar"))
    model = tiny_model()
    out = str(tmp_path / "feats")
    manifest = write_features(model, spec, out, float16=True, workers=2, batch_size=64)
    assert manifest["complete"] and manifest["shards"] == {n: idx.count(n) for n in idx.shard_names}
    assert manifest["dims"] == {"logits": 10, "emb": 16}
    store = FeatureStore.open(out)
    raw = np.load(os.path.join(out, "src-0001.tar.emb.npy"))
    assert raw.dtype == np.float16 and store.read("src-0001.tar", "emb").dtype == np.float32
    assert store.keys("src-0001.tar") == idx.keys("src-0001.tar")
    keys, logits, emb = compute(model, spec)  # in memory, one worker: the same numbers
    assert np.allclose(store.aligned(idx, "emb"), emb, atol=2e-2 * np.abs(emb).max())
    assert keys == [k for s in idx.shard_names for k in idx.keys(s)]
    # resume: drop one shard's completion marker; only that shard is recomputed
    before = {n: os.path.getmtime(os.path.join(out, f"{n}.emb.npy")) for n in idx.shard_names}
    os.remove(os.path.join(out, "src-0002.tar.keys.json"))
    write_features(model, spec, out, float16=True)
    after = {n: os.path.getmtime(os.path.join(out, f"{n}.emb.npy")) for n in idx.shard_names}
    assert after["src-0000.tar"] == before["src-0000.tar"] and after["src-0001.tar"] == before["src-0001.tar"]
    assert os.path.exists(os.path.join(out, "src-0002.tar.keys.json"))
    with pytest.raises(FeatureError, match="model_id 'test-model-0', this run has 'test-model-1'"):
        write_features(tiny_model(seed=1), spec, out, float16=True)


def test_aligned_reorders_by_key_and_names_missing(digits, tmp_path) -> None:
    root, paths, idx = digits
    out = str(tmp_path / "feats")
    write_features(tiny_model(), resolve(os.path.join(root, "src-*.tar")), out, kinds=["emb"])
    store = FeatureStore.open(out)
    want = store.aligned(idx, "emb")
    kp = os.path.join(out, "src-0000.tar.keys.json")
    keys = json.load(open(kp))
    arr = np.load(os.path.join(out, "src-0000.tar.emb.npy"))
    perm = np.random.default_rng(0).permutation(len(keys))
    json.dump([keys[i] for i in perm], open(kp, "w"))
    np.save(os.path.join(out, "src-0000.tar.emb.npy"), arr[perm])
    assert np.array_equal(store.aligned(idx, "emb"), want)
    json.dump([keys[i] for i in perm][1:] + ["intruder"], open(kp, "w"))
    with pytest.raises(FeatureError, match=f"shard 'src-0000.tar' lacks features for key '{keys[perm[0]]}'"):
        store.aligned(idx, "emb")
    with pytest.raises(FeatureError, match="not 'logits'"):
        store.read("src-0001.tar", "logits")
    with pytest.raises(FeatureError, match="not a features folder"):
        FeatureStore.open(str(tmp_path))


def test_model_input_chunks_work_in_spawned_workers(digits) -> None:
    """The dataset run_model feeds its DataLoader pickles into spawn/forkserver workers
    (forkserver is Python 3.14's default on Linux) and they read every key once."""
    from torch.utils.data import DataLoader

    from dp4tl_data.features import _chunk_dataset

    root, paths, idx = digits
    spec = resolve(os.path.join(root, "src-*.tar"))
    chunks = _chunk_dataset(spec.shards, Preprocess(), 64)
    loader = DataLoader(chunks, batch_size=None, num_workers=2, multiprocessing_context="spawn")
    got: dict[str, list[str]] = {}
    for name, keys, x, _last in loader:
        got.setdefault(name, []).extend(keys)
        assert x.shape[0] == len(keys)
    assert got == {n: idx.keys(n) for n in idx.shard_names}
