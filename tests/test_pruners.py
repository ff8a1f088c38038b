"""Pruners: LM (known answers, tie-break, soft votes, many ratios from one count), reverse LM,
multi-target, FM (votes follow the data), baselines, importers, plots, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dp4tl_data import KeepList, PrunerError, get_registry
from dp4tl_data.index import IndexedShard, SourceIndex, shard_samples_table
from dp4tl_data.pruners import PruneRequest, SourceInfo, Target, VoteCounter
from dp4tl_data.pruners.base import budgets
from dp4tl_data.pruners.combine import combine_votes, intersection, union
from dp4tl_data.pruners.fm import cluster_votes
from dp4tl_data.pruners.importers import import_indices
from dp4tl_data.pruners.plots import plot_votes
from dp4tl_data.pruners.votes import ROWS

NAMES = ["zero", "one", "two", "three", "four"]


def make_index(labels_per_shard: dict[str, list[int]], classes: list[str] | None = None) -> SourceIndex:
    """An in-memory index: keys are '<shard>_<i>'."""
    items = []
    for name, labels in labels_per_shard.items():
        stem = name.split(".")[0]
        keys = [f"{stem}_{i:04d}" for i in range(len(labels))]
        items.append((IndexedShard(name, len(labels)), shard_samples_table(keys, labels)))
    return SourceIndex.build(items, kind="test", label_field="cls", classes=classes)


@pytest.fixture
def index5() -> SourceIndex:
    # class sizes: 0:3, 1:2, 2:4, 3:1, 4:2
    return make_index({"a.tar": [0, 1, 2, 2, 0, 3], "b.tar": [2, 4, 0, 1, 2, 4]}, NAMES)


def one_hot_logits(preds: list[int], c: int = 5, hi: float = 8.0) -> np.ndarray:
    x = np.zeros((len(preds), c), dtype=np.float32)
    x[np.arange(len(preds)), preds] = hi
    return x


def lm(request: PruneRequest, **kw: object) -> dict[float, KeepList]:
    return get_registry().pruner("lm")(request, **kw)  # type: ignore[no-any-return]


# ----------------------------------------------------------------------------- LM


def test_lm_known_answer_with_deterministic_tie_break(index5: SourceIndex) -> None:
    # hard votes: class 2 x3, class 0 x2, class 4 x1; classes 1 and 3 get none.
    logits = one_hot_logits([2, 2, 2, 0, 0, 4])
    # one extra voter for class 4 that leans towards class 3 -> 3 outranks 1 on summed softmax
    lean = np.array([[0, 0, 0, 6, 7]], dtype=np.float32)
    calls = []

    def batches() -> list[np.ndarray]:
        calls.append(1)
        return [logits[:4], logits[4:], lean]

    src = SourceInfo.from_index(index5)
    req = PruneRequest(src, ratios=[0.8, 0.6, 0.4, 0.2], targets=[Target("digits", logits=batches)], model_id="m1")
    out = lm(req)
    assert len(calls) == 1  # one pass of votes for every ratio
    kept = {r: sorted(k.classes.id_set) for r, k in out.items()}  # type: ignore[union-attr]
    assert kept == {0.8: [2], 0.6: [0, 2], 0.4: [0, 2, 4], 0.2: [0, 2, 3, 4]}
    k = out[0.6]
    assert k.classes is not None and list(k.classes.names) == ["zero", "two"]
    assert k.classes.label_field == "cls"
    p = k.provenance
    assert (p["method"], p["ratio"], p["model_id"], p["target_id"]) == ("lm", 0.6, "m1", "digits")
    assert p["source_fingerprint"] == index5.fingerprint and p["num_classes"] == 5
    assert p["samples_kept"] == 3 + 4 and p["num_samples"] == 12  # images kept, not only classes
    assert k.stats()["sample_fraction"] == pytest.approx(7 / 12)
    assert k.scores is not None and k.scores["votes"] == [2, 0, 3, 0, 2] and k.scores["kept"] == [0, 2]
    assert k.scores["names"] == NAMES


def test_lm_exact_tie_goes_to_lower_class_id(index5: SourceIndex) -> None:
    # classes 1 and 3 get no vote and identical softmax mass: the lower id wins
    logits = np.array([[5, 1, 0, 1, 0], [0, 1, 5, 1, 0]], dtype=np.float32)
    req = PruneRequest(SourceInfo.from_index(index5), keeps=[3], targets=[Target("t", logits=lambda: [logits])])
    out = lm(req)
    (keep,) = out.values()
    assert sorted(keep.classes.id_set) == [0, 1, 2]  # type: ignore[union-attr]
    assert list(out) == [0.4]


def test_soft_votes_rank_by_probability_mass(index5: SourceIndex) -> None:
    # class 0 wins 2 hard votes narrowly; class 1 is a strong runner-up in all 3 rows
    logits = np.array([[2.0, 1.9, -9, -9, -9], [2.0, 1.9, -9, -9, -9], [-9, 1.9, -9, -9, 2.0]], dtype=np.float32)
    req = PruneRequest(SourceInfo.from_index(index5), keeps=[1], targets=[Target("t", logits=lambda: [logits])])
    hard = lm(req)
    soft = lm(req, mode="soft")
    assert hard[0.8].classes.id_set == {0}  # type: ignore[union-attr]
    assert soft[0.8].classes.id_set == {1}  # type: ignore[union-attr]
    assert soft[0.8].provenance["params"]["votes"] == "soft"


def test_reverse_lm_keeps_the_least_voted(index5: SourceIndex) -> None:
    logits = one_hot_logits([2, 2, 2, 0, 0, 4, 1])
    logits[6, 1] = 3.0  # class 1's voter is less sure than class 4's: LM ranks 2, 0, 4, 1, 3
    src = SourceInfo.from_index(index5)
    target = [Target("t", logits=lambda: [logits])]
    order = lm(PruneRequest(src, keeps=[1, 2, 3, 4], targets=target))
    assert [sorted(k.classes.id_set) for k in order.values()] == [[2], [0, 2], [0, 2, 4], [0, 1, 2, 4]]  # type: ignore[union-attr]
    out = get_registry().pruner("reverse-lm")(PruneRequest(src, keeps=[1, 2], targets=target))
    assert out[0.8].classes.id_set == {3}
    assert out[0.6].classes.id_set == {1, 3}
    assert out[0.6].provenance["method"] == "reverse-lm"


def test_multi_target_sums_normalised_votes(index5: SourceIndex) -> None:
    big = one_hot_logits([0] * 60 + [1] * 40)
    small = one_hot_logits([2] * 10)
    src = SourceInfo.from_index(index5)
    both = [Target("big", logits=lambda: [big]), Target("small", logits=lambda: [small])]
    out = lm(PruneRequest(src, keeps=[2], targets=both))
    assert out[0.6].classes.id_set == {0, 2}  # raw counts would keep {0, 1}
    assert out[0.6].provenance["target_id"] == "big+small"
    raw = VoteCounter(5)
    raw.add_logits(np.concatenate([big, small]))
    assert set(raw.votes().top(2).tolist()) == {0, 1}


def test_vote_counter_accepts_predictions_and_torch() -> None:
    c = VoteCounter(4)
    c.add_predictions(np.array([3, 3, 1]))
    c.add_logits(torch.tensor([[0.0, 0.0, 9.0, 0.0]]))
    v = c.votes()
    assert v.hard.tolist() == [0, 1, 1, 2] and v.n == 4
    assert math.isclose(float(v.soft.sum()), 1.0, rel_tol=1e-6)  # only the logits batch adds soft mass
    with pytest.raises(PrunerError, match="not a class id"):
        c.add_predictions(np.array([4]))


@pytest.mark.parametrize("n", [1, ROWS, ROWS + 7, 3 * ROWS - 1])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_soft_votes_equal_float64_softmax_across_blocks(n: int, temperature: float) -> None:
    logits = torch.randn(n, 50, generator=torch.Generator().manual_seed(n)) * 6
    before = logits.clone()
    c = VoteCounter(50)
    c.add_logits(logits, temperature=temperature)
    v = c.votes()
    assert torch.equal(logits, before)  # the caller's outputs are not touched
    want = torch.softmax(logits.double() / temperature, dim=1).sum(dim=0).numpy()
    np.testing.assert_allclose(v.soft, want, rtol=1e-5, atol=1e-7)
    assert v.hard.tolist() == np.bincount(logits.numpy().argmax(axis=1), minlength=50).tolist()


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_logit_in_a_later_block_names_its_row(bad: float) -> None:
    logits = np.zeros((ROWS + 10, 4), dtype=np.float32)
    logits[:, 0] = -np.inf if bad != float("-inf") else 0.0  # -inf beside finite values is a valid logit
    for soft in (True, False):
        VoteCounter(4, soft=soft).add_logits(logits)  # valid so far
    logits[ROWS + 3, :] = bad
    for soft in (True, False):
        c = VoteCounter(4, where="target t", soft=soft)
        with pytest.raises(PrunerError, match=f"target t: model outputs hold NaN or inf \\(first at row {ROWS + 3}\\)"):
            c.add_logits(logits)


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5, float("nan"), float("inf")])
def test_bad_ratio(index5: SourceIndex, ratio: float) -> None:
    req = PruneRequest(SourceInfo.from_index(index5), ratios=[ratio], targets=[Target("t", logits=lambda: [])])
    with pytest.raises(PrunerError, match=r"outside \[0, 1\)"):
        lm(req)


def test_budget_errors() -> None:
    with pytest.raises(PrunerError, match="K=6 is larger than the 5 source classes"):
        budgets(5, keeps=[6])
    with pytest.raises(PrunerError, match="keeps none"):
        budgets(5, ratios=[0.95])
    with pytest.raises(PrunerError, match="at least one"):
        budgets(5)
    assert budgets(90, ratios=[0.5, 0.8, 0.9]) == [(0.5, 45), (0.8, 18), (0.9, 9)]


def test_lm_bad_inputs(index5: SourceIndex) -> None:
    src = SourceInfo.from_index(index5)
    empty = PruneRequest(src, ratios=[0.5], targets=[Target("empty", logits=lambda: [np.zeros((0, 5))])])
    with pytest.raises(PrunerError, match="target empty: the target has no samples"):
        lm(empty)
    nan = np.zeros((3, 5), dtype=np.float32)
    nan[2, 1] = np.nan
    with pytest.raises(PrunerError, match="NaN or inf.*row 2"):
        lm(PruneRequest(src, ratios=[0.5], targets=[Target("t", logits=lambda: [nan])]))
    wide = np.zeros((3, 7), dtype=np.float32)
    with pytest.raises(PrunerError, match="outputs 7 classes but the source has 5"):
        lm(PruneRequest(src, ratios=[0.5], targets=[Target("t", logits=lambda: [wide])]))
    with pytest.raises(PrunerError, match="needs a target"):
        lm(PruneRequest(src, ratios=[0.5]))


def test_lm_list_applies_and_round_trips(index5: SourceIndex, tmp_path) -> None:
    logits = one_hot_logits([2, 2, 0, 4])
    out = lm(PruneRequest(SourceInfo.from_index(index5), ratios=[0.4], targets=[Target("t", logits=lambda: [logits])]))
    path = out[0.4].save(str(tmp_path / "keep.json"))
    back = KeepList.load(path)
    assert back.scores == out[0.4].scores and back.fingerprint == out[0.4].fingerprint
    keys = {k for s, m in back.masks(index5).items() for k, kept in zip(index5.keys(s), m) if kept}
    expected = {f"{s[0]}_{i:04d}" for s in ("a.tar", "b.tar") for i, y in enumerate(index5.labels(s)) if y in (0, 2, 4)}
    assert keys == expected


# ----------------------------------------------------------------------------- FM


def blobs(centres: list[list[float]], per: int, rng: np.random.Generator) -> np.ndarray:
    return np.concatenate([np.asarray(c) + 0.05 * rng.standard_normal((per, len(c))) for c in centres]).astype(
        np.float32
    )


def test_cluster_votes_follow_the_data_not_the_cluster_order() -> None:
    centroids = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], dtype=np.float32)
    rng = np.random.default_rng(0)
    # 7 target samples near centroid 3, 2 near centroid 2, none near 0 or 1
    target = np.concatenate([[10, 10] + 0.1 * rng.standard_normal((7, 2)), [0, 10] + 0.1 * rng.standard_normal((2, 2))])
    v = cluster_votes(target.astype(np.float32), centroids, where="t")
    assert v.hard.tolist() == [0, 0, 2, 7]
    perm = np.array([3, 1, 0, 2])  # relabel the clusters: the votes move with them
    v2 = cluster_votes(target.astype(np.float32), centroids[perm], where="t")
    assert v2.hard.tolist() == [7, 0, 0, 2]
    # one target sample: a buggy per-sample index would vote for cluster 0
    assert cluster_votes(target[:1].astype(np.float32), centroids, where="t").hard.tolist() == [0, 0, 0, 1]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_fm_keeps_the_cluster_the_target_falls_into(seed: int) -> None:
    rng = np.random.default_rng(seed)
    centres = [[0, 0, 0], [6, 0, 0], [0, 6, 0], [0, 0, 6]]
    per = 30
    feats = blobs(centres, per, rng)
    order = rng.permutation(len(feats))  # the source stores samples in a shuffled order
    feats = feats[order]
    blob_of = np.repeat(np.arange(4), per)[order]
    half = len(feats) // 2
    index = make_index({"s0.tar": [0] * half, "s1.tar": [0] * (len(feats) - half)})
    target_blob = int(rng.integers(1, 4))
    target = blobs([centres[target_blob]], 5, rng)
    req = PruneRequest(
        SourceInfo.from_index(index),
        keeps=[1],
        targets=[Target("t", features=lambda: target)],
        source_features=lambda: feats,
        seed=seed,
    )
    out = get_registry().pruner("fm")(req, clusters=4, niter=10)
    keep = out[0.75]
    keys = [k for s in index.shard_names for k in index.keys(s)]
    expected = {keys[i] for i in np.flatnonzero(blob_of == target_blob)}
    got = {k for e in keep.shards.values() for k in e.keys()}
    assert got == expected
    assert keep.provenance["samples_kept"] == per and keep.levels == ["shard", "sample"]
    assert keep.scores["unit"] == "clusters" and sum(keep.scores["cluster_sizes"]) == len(feats)
    assert keep.scores["votes"][keep.scores["kept"][0]] == 5


def test_fm_shard_level_bitmap_and_errors() -> None:
    rng = np.random.default_rng(5)
    feats = np.concatenate([blobs([[0, 0]], 20, rng), blobs([[8, 8]], 20, rng)])
    index = make_index({"near.tar": [0] * 20, "far.tar": [0] * 20})  # shards sort: far, near
    feats = np.concatenate([feats[20:], feats[:20]])  # index order: far.tar rows, then near.tar rows
    target = blobs([[0, 0]], 4, rng)
    src = SourceInfo.from_index(index)

    def req(**kw: object) -> PruneRequest:
        base: dict[str, object] = dict(
            keeps=[1], targets=[Target("t", features=lambda: target)], source_features=lambda: feats
        )
        base.update(kw)
        return PruneRequest(src, **base)  # type: ignore[arg-type]

    fm = get_registry().pruner("fm")
    shard_list = fm(req(), clusters=2, level="shard", shard_min_fraction=0.5)[0.5]
    assert shard_list.levels == ["shard"] and set(shard_list.shards) == {"near.tar"}
    bitmap = fm(req(), clusters=2, encoding="bitmap")[0.5]
    assert bitmap.shards["near.tar"].mask().all() and "far.tar" not in bitmap.shards
    with pytest.raises(PrunerError, match="K=3 is larger than the 2 source clusters"):
        fm(req(keeps=[3]), clusters=2)
    bad = feats.copy()
    bad[7, 1] = np.inf
    with pytest.raises(PrunerError, match="source features: 1 rows hold NaN or inf"):
        fm(req(source_features=lambda: bad), clusters=2)
    with pytest.raises(PrunerError, match="dimension 3 differs from the expected 2"):
        fm(req(targets=[Target("t3", features=lambda: np.zeros((2, 3), np.float32))]), clusters=2)
    with pytest.raises(PrunerError, match="no samples"):
        fm(req(targets=[Target("e", features=lambda: np.zeros((0, 2), np.float32))]), clusters=2)
    with pytest.raises(PrunerError, match="source features have 39 rows"):
        fm(req(source_features=lambda: feats[:39]), clusters=2)


# ----------------------------------------------------------------------------- baselines


def test_random_class_is_seeded_nested_and_counts_images(index5: SourceIndex) -> None:
    rc = get_registry().pruner("random-class")
    src = SourceInfo.from_index(index5)
    a = rc(PruneRequest(src, ratios=[0.4, 0.8], seed=3))
    b = rc(PruneRequest(src, ratios=[0.4, 0.8], seed=3))
    assert a[0.4].classes == b[0.4].classes and len(a[0.4].classes) == 3 and len(a[0.8].classes) == 1
    assert a[0.8].classes.id_set <= a[0.4].classes.id_set
    sizes = np.bincount(src.labels(), minlength=5)
    assert a[0.4].provenance["samples_kept"] == int(sizes[sorted(a[0.4].classes.id_set)].sum())
    seeds = {frozenset(rc(PruneRequest(src, keeps=[2], seed=s))[0.6].classes.id_set) for s in range(8)}
    assert len(seeds) > 1


def test_random_sample_exact_fraction(index5: SourceIndex) -> None:
    out = get_registry().pruner("random-sample")(PruneRequest(SourceInfo.from_index(index5), ratios=[0.5, 0.75]))
    n = {r: sum(len(e.keys()) for e in k.shards.values()) for r, k in out.items()}
    assert n == {0.5: 6, 0.75: 3}
    small = {k for e in out[0.75].shards.values() for k in e.keys()}
    big = {k for e in out[0.5].shards.values() for k in e.keys()}
    assert small <= big


def test_moderate_sample_keeps_the_middle_band() -> None:
    index = make_index({"a.tar": [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]})
    # class 0: distances to the median feature (2) are 2,1,0,1,98 -> median distance 1
    f0 = np.array([[0.0], [1.0], [2.0], [3.0], [100.0]])
    f1 = np.array([[0.0], [9.0], [10.0], [12.0], [50.0]])
    feats = np.concatenate([f0, f1]).astype(np.float32)
    out = get_registry().pruner("moderate-sample")(
        PruneRequest(SourceInfo.from_index(index), ratios=[0.4], source_features=lambda: feats)
    )
    keys = sorted(out[0.4].shards["a.tar"].keys())
    # class 0 keeps 3 of 5: |d - 1| = 1,0,1,0,97 -> rows 1,3 and then row 0 (lower row wins the tie)
    # class 1: median 10, d = 10,1,0,2,40, median d = 2, |d - 2| = 8,1,2,0,38 -> rows 8, 6, 7
    assert keys == ["a_0000", "a_0001", "a_0003", "a_0006", "a_0007", "a_0008"]


def test_moderate_class_ranks_classes_by_distance_band(index5: SourceIndex) -> None:
    labels = SourceInfo.from_index(index5).labels()
    centre = np.array([0.0, 1.0, 2.0, 3.0, 4.0])  # class c's mean feature sits at c
    feats = centre[labels][:, None].astype(np.float32)
    target = np.zeros((5, 1), dtype=np.float32)  # core at 0 -> distances 0..4, median 2
    out = get_registry().pruner("moderate-class")(
        PruneRequest(
            SourceInfo.from_index(index5),
            keeps=[1, 3],
            targets=[Target("t", features=lambda: target)],
            source_features=lambda: feats,
        )
    )
    assert out[0.8].classes.id_set == {2}
    assert out[0.4].classes.id_set == {1, 2, 3}


# ----------------------------------------------------------------------------- combine, import, plot


def test_union_and_intersection(index5: SourceIndex) -> None:
    src = SourceInfo.from_index(index5)
    a = get_registry().pruner("lm")(
        PruneRequest(src, keeps=[2], targets=[Target("a", logits=lambda: [one_hot_logits([0, 1])])])
    )
    b = get_registry().pruner("lm")(
        PruneRequest(src, keeps=[2], targets=[Target("b", logits=lambda: [one_hot_logits([1, 2])])])
    )
    assert union([a[0.6], b[0.6]]).classes.id_set == {0, 1, 2}
    assert intersection([a[0.6], b[0.6]]).classes.id_set == {1}
    with pytest.raises(PrunerError):
        combine_votes([])


def test_import_reference_indices(index5: SourceIndex, tmp_path) -> None:
    path = str(tmp_path / "top.indices")
    torch.save(torch.tensor([0, 7, 11, 3]), path)
    keep = import_indices(path, index5)
    assert sorted(keep.shards["a.tar"].keys()) == ["a_0000", "a_0003"]
    assert sorted(keep.shards["b.tar"].keys()) == ["b_0001", "b_0005"]
    assert keep.provenance["source_fingerprint"] == index5.fingerprint and keep.provenance["samples_kept"] == 4
    order = [k for s in reversed(index5.shard_names) for k in index5.keys(s)]  # the reference file's order
    keep2 = import_indices(path, index5, order=order)
    assert sorted(keep2.shards["b.tar"].keys()) == ["b_0000", "b_0003"]
    torch.save(torch.tensor([1, 1]), path)
    with pytest.raises(PrunerError, match="more than once"):
        import_indices(path, index5)
    torch.save(torch.tensor([12]), path)
    with pytest.raises(PrunerError, match="outside the 12 indexed samples"):
        import_indices(path, index5)
    torch.save(torch.tensor([-1, 0]), path)
    with pytest.raises(PrunerError, match="position -1 is negative"):
        import_indices(path, index5, order=order)
    torch.save(torch.tensor([True, False]), path)
    with pytest.raises(PrunerError, match="a mask of 2 entries for 12 indexed samples"):
        import_indices(path, index5)


class Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pwned",))


def test_import_refuses_pickled_objects(index5: SourceIndex, tmp_path, capsys) -> None:
    path = str(tmp_path / "evil.indices")
    torch.save({"indices": Evil()}, path)
    with pytest.raises(PrunerError, match="not a readable index tensor"):
        import_indices(path, index5)
    assert "pwned" not in capsys.readouterr().out


def test_plot_votes_writes_png(index5: SourceIndex, tmp_path) -> None:
    out = lm(
        PruneRequest(
            SourceInfo.from_index(index5),
            ratios=[0.4],
            targets=[Target("t", logits=lambda: [one_hot_logits([1, 2, 2])])],
        )
    )
    path = tmp_path / "votes.png"
    plot_votes(out[0.4], str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 2000
    with pytest.raises(Exception, match="no per-class vote scores"):
        plot_votes(KeepList.from_classes([1]), str(tmp_path / "x.png"))


def test_plot_votes_for_a_thousand_classes_stays_readable(tmp_path) -> None:
    source = SourceInfo(num_classes=1000, names=tuple(f"n{i:08d}" for i in range(1000)))
    logits = np.zeros((30, 1000), dtype=np.float32)
    logits[np.arange(30), np.arange(30) * 7] = 5.0
    out = lm(PruneRequest(source, ratios=[0.9], targets=[Target("t", logits=lambda: [logits])]))
    path = tmp_path / "votes.png"
    plot_votes(out[0.9], str(path))
    png = path.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(png[16:20], "big") == 1200  # a 10-inch figure at 120 dpi, not one bar-width per class
