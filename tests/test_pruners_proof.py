"""The real-data builder and the proof's measuring tools: per-class subsets (never a prefix),
MNIST-style centring, a small build with its index, probes, summaries and the table."""

from __future__ import annotations

import numpy as np
from PIL import Image

from dp4tl_data import SourceIndex
from dp4tl_data.pruners.proof import probe, probe_draws, summarise, table_markdown
from dp4tl_data.pruners.realdata import build, mnist_style, per_class_subset


def test_per_class_subset_is_not_a_prefix() -> None:
    labels = np.repeat(np.arange(3), 10)  # sorted by class, like Animal-MNIST
    rows = per_class_subset(labels, 4, np.random.default_rng(0), "t")
    assert np.bincount(labels[rows]).tolist() == [4, 4, 4]
    assert not set(rows) <= set(range(12))


def test_mnist_style_centres_the_ink() -> None:
    canvas = np.zeros((60, 60), np.uint8)
    canvas[5:15, 40:44] = 255  # a bar in a corner
    out = mnist_style(Image.fromarray(canvas))
    ys, xs = np.nonzero(out)
    assert out.shape == (28, 28) and ys.max() - ys.min() + 1 <= 20
    cy, cx = (np.indices(out.shape) * out).reshape(2, -1).sum(1) / out.sum()
    assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1


def test_small_build(tmp_path) -> None:
    b = build(str(tmp_path), per_class=7, families=("animal", "mnist"), shard_size=50)
    assert b.classes[:2] == ["animal_bear", "animal_bird"] and b.classes[-1] == "mnist_9"
    idx = SourceIndex.load(b.index)
    assert idx.num_samples == 140 and idx.classes == b.classes
    labels = np.concatenate([idx.labels(s) for s in idx.shard_names])
    assert np.bincount(labels).tolist() == [7] * 20  # equal images per class
    assert b.target_counts["train"] + b.target_counts["test"] == 1797


def test_probe_and_table() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    centres = np.eye(3) * 5
    train = centres[y] + rng.standard_normal((60, 3))
    test = centres[y] + rng.standard_normal((60, 3))
    draws = probe_draws(y, (1, 5), 3)
    assert [len(r) for r in draws[5]] == [15, 15, 15] and not np.array_equal(draws[5][0], draws[5][1])
    again = probe_draws(y, (1, 5), 3)  # the same draws for every arm
    assert all(np.array_equal(a, b) for k in draws for a, b in zip(draws[k], again[k]))
    acc = probe(train, y, test, y, draws)
    assert set(acc) == {"1-shot", "5-shot", "full"} and acc["full"] > 95
    noise = probe(rng.standard_normal((60, 3)), y, rng.standard_normal((60, 3)), y, draws)
    assert noise["full"] < 60
    rows = [
        {
            "arm": "full",
            "method": "full",
            "ratio": None,
            "seed": s,
            "classes_kept": None,
            "images_kept": 100,
            "steps": 10,
            "seconds": 2.0,
            "cpu_seconds": 4.0,
            "acc": {"1-shot": 50.0 + s},
        }  # fmt: skip
        for s in range(2)
    ] + [
        {
            "arm": "lm @0.5",
            "method": "lm",
            "ratio": 0.5,
            "seed": 0,
            "classes_kept": 5,
            "images_kept": 50,
            "steps": 5,
            "seconds": 1.0,
            "cpu_seconds": 2.0,
            "acc": {"1-shot": 60.0},
        }  # fmt: skip
    ]
    s = summarise({"rows": rows, "total_images": 100})
    assert s[0]["acc"]["1-shot"] == (50.5, float(np.std([50, 51], ddof=1))) and s[1]["image_fraction"] == 0.5
    table = table_markdown({"rows": rows, "total_images": 100})
    assert "| lm @0.5 | 1 | 5 | 50 (50%) | 5 | 1.0 | 2.0 | 0.50x | 60.0 ± 0.0 |" in table
