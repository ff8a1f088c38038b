"""Stream a pruned Hugging Face dataset: the README recipe, run on local files it writes first.

    python examples/hf_stream.py [--root DIR]

The recipe is the same for a hub repo: pass "user/name" instead of the folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dp4tl_data.plugins.hf import load_pruned  # noqa: E402

from benchmarks.shardgen import write_shards  # noqa: E402
from dp4tl_data import KeepList  # noqa: E402


def make_files(root: str) -> tuple[str, int]:
    """Four webdataset shards of 100 JPEGs (10 classes) under root/train, and a keep-list that
    keeps classes 0-4 of the first three shards (normally: ``dp4tl prune ... -o keep.json``).
    Returns the keep-list path and how many examples it keeps."""
    shards = write_shards(os.path.join(root, "train"), nshards=4, per_shard=100, nclasses=10, image_size=32)
    names = [f"shard-{i:05d}.tar" for i in range(3)]
    keep = KeepList.from_classes(range(5), label_field="cls") & KeepList.from_shards([f"train/{n}" for n in names])
    path = keep.save(os.path.join(root, "keep.json"))
    return path, sum(1 for n in names for _, y in shards.samples[n] if y < 5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=None, help="where to write the example shards (default: a temp dir)")
    root = ap.parse_args().root or tempfile.mkdtemp(prefix="dp4tl-hf-")
    keep_path, expected = make_files(root)

    # --- the README recipe; for a hub dataset pass "user/name" instead of `root` ---
    keep = KeepList.load(keep_path)
    ds = load_pruned(root, keep, split="train")  # lists the files, drops pruned ones; nothing read yet
    n = sum(1 for ex in ds if ex["jpg"].size == (32, 32))  # only kept rows are read and decoded
    # ---

    print(f"kept {n} of 400 examples; 1 of 4 files was never opened ({ds.num_shards} kept)")
    if n != expected:
        raise SystemExit(f"expected {expected} kept examples, got {n}")


if __name__ == "__main__":
    main()
