"""PrunedStream over torch sources: map-style Dataset, DataLoader (every sampler kind) and
iterables, with 0, 2 and 4 workers and simulated ranks; exactness is checked by key."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset

from dp4tl_data import ForeignKeepListError, KeepList, PluginError, PrunedStream, SampleError, StateError, World

N, C = 240, 10
NAMES = [f"class{i}" for i in range(C)]


def label_of(i: int) -> int:
    return (i * 7) % C


class Items(Dataset):
    """A map-style dataset with targets, class names and keys; counts item loads."""

    classes = NAMES

    def __init__(self, n: int = N) -> None:
        self.targets = [label_of(i) for i in range(n)]
        self.loads = 0

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> dict:
        self.loads += 1
        return {"__key__": f"k{i:04d}", "label": self.targets[i], "x": torch.full((2,), float(i))}


class Stream(IterableDataset):
    """An iterable of dict samples (every reader sees the whole stream)."""

    def __init__(self, n: int = N, drop_label_at: int | None = None) -> None:
        self.n, self.drop_label_at = n, drop_label_at

    def __iter__(self):
        for i in range(self.n):
            s = {"__key__": f"k{i:04d}", "label": label_of(i), "x": torch.full((2,), float(i))}
            if i == self.drop_label_at:
                del s["label"]
            yield s


KEEP = KeepList.from_classes([1, 4, 5, 8], label_field="label", names=NAMES)
EXPECTED = {f"k{i:04d}" for i in range(N) if label_of(i) in {1, 4, 5, 8}}


def keys_of(loader) -> list[str]:
    out: list[str] = []
    for batch in loader:
        out.extend(batch["__key__"] if isinstance(batch, dict) else [batch["__key__"]])
    return out


def test_map_dataset_pruned_by_index_without_loading():
    ds = Items()
    pruned = PrunedStream(ds, KEEP)
    assert ds.loads == 0  # labels came from .targets, no item was loaded
    assert len(pruned) == len(EXPECTED)
    assert {pruned[i]["__key__"] for i in range(len(pruned))} == EXPECTED
    assert set(pruned.targets) == {1, 4, 5, 8}


def test_map_dataset_names_match_a_copy_with_other_ids():
    ds = Items()
    ds.classes = list(reversed(NAMES))  # this copy numbers classes the other way round
    pruned = PrunedStream(ds, KEEP)
    wanted_ids = {ds.classes.index(n) for n in KEEP.classes.names}
    assert {pruned[i]["label"] for i in range(len(pruned))} == wanted_ids


@pytest.mark.parametrize("workers", [0, 2, 4])
@pytest.mark.parametrize("shuffle", [False, True])
def test_dataloader_keeps_its_settings(workers, shuffle):
    loader = DataLoader(
        Items(),
        batch_size=16,
        shuffle=shuffle,
        num_workers=workers,
        drop_last=False,
        generator=torch.Generator().manual_seed(3),
    )
    pruned = PrunedStream(loader, KEEP)
    assert (pruned.batch_size, pruned.num_workers, pruned.drop_last) == (16, workers, False)
    assert len(pruned) == -(-len(EXPECTED) // 16)  # exact len()
    got = keys_of(pruned)
    assert Counter(got) == Counter(EXPECTED)  # exactly the kept set, each once
    assert (got == sorted(got)) is (not shuffle)
    if shuffle:  # seeded: the same order twice
        again = PrunedStream(
            DataLoader(
                Items(), batch_size=16, shuffle=True, num_workers=workers, generator=torch.Generator().manual_seed(3)
            ),
            KEEP,
        )
        assert keys_of(again) == got


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_with_distributed_sampler_splits_exactly(workers):
    per_rank = []
    for rank in range(2):
        ds = Items()
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=5, drop_last=True)
        sampler.set_epoch(3)
        loader = DataLoader(ds, batch_size=8, sampler=sampler, num_workers=workers)
        pruned = PrunedStream(loader, KEEP)
        s = pruned.sampler
        assert (s.num_replicas, s.rank, s.shuffle, s.seed, s.drop_last, s.epoch) == (2, rank, True, 5, True, 3)
        per_rank.append(keys_of(pruned))
    assert len(per_rank[0]) == len(per_rank[1]) == len(EXPECTED) // 2
    assert not set(per_rank[0]) & set(per_rank[1])
    assert set(per_rank[0]) | set(per_rank[1]) <= EXPECTED
    assert len(set(per_rank[0]) | set(per_rank[1])) == len(EXPECTED) - len(EXPECTED) % 2


def test_dataloader_with_custom_sampler_is_a_clear_error():
    ds = Items()
    loader = DataLoader(ds, batch_size=4, sampler=torch.utils.data.SubsetRandomSampler(range(10)))
    with pytest.raises(PluginError, match="cannot carry a SubsetRandomSampler over"):
        PrunedStream(loader, KEEP)


@pytest.mark.parametrize("workers", [0, 2, 4])
@pytest.mark.parametrize("world_size", [1, 2])
@pytest.mark.parametrize("uneven", ["pad", "drop"])
def test_iterable_exact_with_workers_and_ranks(workers, world_size, uneven):
    per_rank = []
    for rank in range(world_size):
        pruned = PrunedStream(Stream(), KEEP, world=World(rank, world_size), uneven=uneven)
        loader = DataLoader(pruned, batch_size=5, num_workers=workers)
        per_rank.append(keys_of(loader))
    counts = {len(k) for k in per_rank}
    assert len(counts) == 1  # every rank yields the same number
    allkeys = Counter(k for ks in per_rank for k in ks)
    if uneven == "drop":
        assert set(allkeys) <= EXPECTED and max(allkeys.values()) == 1
        assert len(allkeys) == len(EXPECTED) - len(EXPECTED) % world_size
    else:
        assert set(allkeys) == EXPECTED
        assert sum(allkeys.values()) == -(-len(EXPECTED) // world_size) * world_size


def test_iterable_len_is_exact_when_the_list_counts():
    keep = KeepList.from_samples({"s.tar": sorted(EXPECTED)})
    for rank in range(2):
        pruned = PrunedStream(Stream(), keep, world=World(rank, 2))
        assert len(keys_of(DataLoader(pruned, batch_size=5, num_workers=2))) == len(pruned) == -(-len(EXPECTED) // 2)
    with pytest.raises(TypeError, match="length unknown"):
        len(PrunedStream(Stream(), KEEP))


def test_iterable_deterministic_order_with_workers():
    runs = [keys_of(DataLoader(PrunedStream(Stream(), KEEP), batch_size=4, num_workers=2)) for _ in range(2)]
    assert runs[0] == runs[1]


def test_plain_list_of_dicts_is_accepted():
    samples = [{"__key__": f"k{i:04d}", "label": label_of(i)} for i in range(N)]
    got = [s["__key__"] for s in PrunedStream(samples, KEEP)]
    assert got == sorted(EXPECTED)


def test_label_and_key_functions():
    samples = [(f"k{i:04d}", label_of(i)) for i in range(N)]
    pruned = PrunedStream(samples, KEEP, label_fn=lambda s: s[1], key_fn=lambda s: s[0])
    assert {s[0] for s in pruned} == EXPECTED


def test_sample_level_list_over_a_stream():
    wanted = sorted(EXPECTED)[:7]
    keep = KeepList.from_samples({"only.tar": wanted})
    pruned = PrunedStream(Stream(), keep)
    assert len(pruned) == 7
    assert [s["__key__"] for s in pruned] == wanted


def test_resume_mid_epoch_is_exact():
    full = [s["__key__"] for s in PrunedStream(Stream(), KEEP)]
    stream = PrunedStream(Stream(), KEEP)
    it = iter(stream)
    first = [next(it)["__key__"] for _ in range(11)]
    state = stream.state_dict()
    resumed = PrunedStream(Stream(), KEEP)
    resumed.load_state_dict(state)
    rest = [s["__key__"] for s in resumed]
    assert first + rest == full


def test_resume_state_is_validated():
    stream = PrunedStream(Stream(), KEEP)
    state = stream.state_dict()
    other = PrunedStream(Stream(), KeepList.from_classes([2], label_field="label"))
    with pytest.raises(StateError, match="state keep: found"):
        other.load_state_dict(state)
    two = PrunedStream(Stream(), KEEP, world=World(0, 2))
    with pytest.raises(StateError, match="state world_size: found 1, expected 2"):
        two.load_state_dict(state)


def test_missing_label_names_the_key_or_is_counted():
    with pytest.raises(SampleError, match="key 'k0013': no label field 'label'"):
        list(PrunedStream(Stream(drop_label_at=13), KEEP))
    stream = PrunedStream(Stream(drop_label_at=13), KEEP, on_error="skip")
    got = {s["__key__"] for s in stream}
    assert got == EXPECTED - {"k0013"}
    assert stream.stats()["skipped"] == {"no label": 1}
    assert stream.stats()["kept"] == len(got)


def test_short_epoch_is_an_error_not_silence():
    keep = KeepList.from_samples({"s.tar": ["k0001", "k0002", "zzz-missing"]})
    with pytest.raises(SampleError, match="lists 3 samples but the source yielded only 2"):
        list(PrunedStream(Stream(), keep))


def test_foreign_keep_list_is_refused_unless_allowed():
    keep = KeepList.from_classes([1], label_field="label", source_fingerprint="a" * 64)
    with pytest.raises(ForeignKeepListError):
        PrunedStream(Items(), keep, source_fingerprint="b" * 64)
    assert len(PrunedStream(Items(), keep, source_fingerprint="b" * 64, allow_foreign=True)) > 0


def test_keep_list_url_is_accepted(tmp_path):
    KEEP.save(str(tmp_path / "keep.json"))
    assert len(PrunedStream(Items(), str(tmp_path / "keep.json"))) == len(EXPECTED)


@pytest.mark.parametrize("workers", [0, 2, 4])
def test_dataloader_over_an_iterable_dataset(workers):
    loader = DataLoader(Stream(), batch_size=6, num_workers=workers)
    pruned = PrunedStream(loader, KEEP)
    assert pruned.batch_size == 6 and pruned.num_workers == workers
    assert Counter(keys_of(pruned)) == Counter(EXPECTED)


@pytest.mark.parametrize("workers", [0, 2, 4])
def test_plain_list_in_a_dataloader_with_workers(workers):
    samples = [{"__key__": f"k{i:04d}", "label": label_of(i)} for i in range(N)]
    loader = DataLoader(PrunedStream(samples, KEEP), batch_size=7, num_workers=workers)
    assert Counter(keys_of(loader)) == Counter(EXPECTED)


@pytest.fixture
def image_folder(tmp_path):
    """A real torchvision ImageFolder of PNG files: 3 classes x 5 images."""
    import numpy as np
    from PIL import Image

    root = tmp_path / "train"
    for c in ("n01", "n02", "n03"):
        (root / c).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(np.full((4, 4, 3), i * 40, dtype=np.uint8)).save(root / c / f"img{i}.v1.png")
    return root


def test_image_folder_by_synset_names_and_by_keys(image_folder, monkeypatch):
    from torchvision.datasets import ImageFolder

    loads = []
    ds = ImageFolder(str(image_folder))
    monkeypatch.setattr(ds, "loader", lambda p: loads.append(p))
    by_name = PrunedStream(ds, KeepList.from_classes(["n03", "n01"], label_field="label"))
    assert sorted(set(by_name.targets)) == [ds.class_to_idx["n01"], ds.class_to_idx["n03"]]
    assert len(by_name) == 10 and loads == []  # no image opened to prune
    keep = KeepList.from_samples({"train": ["n02/img1", "n03/img4"]})  # keys: path up to the first dot
    by_key = PrunedStream(ds, keep)
    assert [ds.samples[int(i)][0].rsplit("/", 2)[-2:] for i in by_key.indices] == [
        ["n02", "img1.v1.png"],
        ["n03", "img4.v1.png"],
    ]


def test_map_dataset_without_labels_is_a_clear_error():
    class NoLabels(Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return i

    with pytest.raises(SampleError, match="NoLabels has no 'targets' or 'labels'; pass label_fn="):
        PrunedStream(NoLabels(), KEEP)
    assert len(PrunedStream(NoLabels(), KEEP, label_fn=lambda i: 4 if i == 1 else 0)) == 1


def test_resume_state_belongs_to_its_reader_and_epoch():
    stream = PrunedStream(Stream(), KEEP, world=World(0, 1, 0, 2))
    it = iter(stream)
    next(it)
    state = stream.state_dict()
    single = PrunedStream(Stream(), KEEP)
    with pytest.raises(StateError, match="state position worker|state position num_workers: found 2, expected 1"):
        single.load_state_dict(state)
    # a state taken at the end of an epoch resumes to an empty remainder, not a replay
    done = PrunedStream(Stream(), KEEP)
    assert len(list(done)) == len(EXPECTED)
    again = PrunedStream(Stream(), KEEP)
    again.load_state_dict(done.state_dict())
    assert list(again) == []
    again.set_epoch(1)  # a new epoch starts from the beginning
    assert len(list(again)) == len(EXPECTED)


def test_a_key_repeated_in_the_source_is_not_silent():
    samples = [{"__key__": k, "label": 1} for k in ("a", "b", "a", "c")]
    with pytest.raises(SampleError, match="a key appears more than once"):
        list(PrunedStream(samples, KeepList.from_samples({"s.tar": ["a", "c"]})))


@pytest.mark.parametrize("source", ["map", "iterable"])
def test_spawned_workers_keep_the_context_and_the_exact_set(source):
    """A DataLoader whose workers start with spawn keeps that context when rebuilt, and its
    workers (which unpickle the pruned dataset) deliver exactly the kept set."""
    dataset = Items() if source == "map" else Stream()
    loader = DataLoader(dataset, batch_size=5, num_workers=2, multiprocessing_context="spawn")
    pruned = PrunedStream(loader, KEEP)
    assert pruned.multiprocessing_context is not None
    assert pruned.multiprocessing_context.get_start_method() == "spawn"
    assert Counter(keys_of(pruned)) == Counter(EXPECTED)
