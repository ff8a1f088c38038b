"""Training on a pruned stream: exactly the kept samples reach the model (class- and
sample-level lists, generic and indexed readers); epochs vs same-number-of-steps."""

from __future__ import annotations

import pytest
from test_features import write_digits

from dp4tl_data import KeepList, PrunerError
from dp4tl_data.features import resolve
from dp4tl_data.models import Preprocess, build_model
from dp4tl_data.pruners.train import fit, has_byte_ranges, source_stream, stream_batches


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("train") / "src")
    paths, idx = write_digits(root, nshards=4, n=240)
    idx.save(root + ".idx")
    return resolve(root + ".idx")


def expected_keys(idx, keep: KeepList) -> set[str]:
    return {k for s, m in keep.masks(idx).items() for k, kept in zip(idx.keys(s), m) if kept}


@pytest.mark.parametrize("indexed", [False, True])
def test_stream_yields_exactly_the_kept_samples(source, indexed: bool) -> None:
    idx = source.index
    classes = KeepList.from_classes([1, 4, 7], label_field="cls", names=idx.classes, source_fingerprint=idx.fingerprint)
    pick = {s: idx.keys(s)[::3] for s in idx.shard_names[:2]}
    samples = KeepList.from_samples(pick, source_fingerprint=idx.fingerprint)
    for keep in (classes, samples):
        got = [
            s["__key__"] for s in source_stream(source.shards, keep, epoch=1, seed=3, index=idx if indexed else None)
        ]
        assert len(got) == len(set(got)) and set(got) == expected_keys(idx, keep)
    a = [s["__key__"] for s in source_stream(source.shards, classes, epoch=0, seed=3)]
    b = [s["__key__"] for s in source_stream(source.shards, classes, epoch=1, seed=3)]
    assert a != b and sorted(a) == sorted(b)  # each epoch reshuffles, same set
    if indexed:
        assert has_byte_ranges(idx) or idx.kind != "webdataset"


def test_fit_by_epochs_and_by_steps(source) -> None:
    idx = source.index
    keep = KeepList.from_classes([0, 1, 2], label_field="cls", source_fingerprint=idx.fingerprint)
    n = len(expected_keys(idx, keep))
    make = stream_batches(source.shards, keep, Preprocess(), label_field="cls", num_classes=10, batch_size=16, seed=0)
    by_epochs = fit(build_model("small_cnn", 10, width=4), make, epochs=2)
    assert by_epochs.samples == 2 * n and by_epochs.steps == 2 * -(-n // 16) and len(by_epochs.losses) == 2
    same_steps = fit(build_model("small_cnn", 10, width=4), make, steps=by_epochs.steps + 7)
    assert same_steps.steps == by_epochs.steps + 7 and same_steps.epochs == -(-same_steps.steps // -(-n // 16))
    nothing = KeepList.from_samples({}, source_fingerprint=idx.fingerprint)
    empty = stream_batches(
        source.shards, nothing, Preprocess(), label_field="cls", num_classes=10, batch_size=16, seed=0
    )
    with pytest.raises(PrunerError, match="yielded no samples"):
        fit(build_model("small_cnn", 10, width=4), empty, epochs=1)
    with pytest.raises(PrunerError, match="exactly one"):
        fit(build_model("small_cnn", 10, width=4), make)
