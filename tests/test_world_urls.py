"""World detection, stable seeds, and shard-name / URL safety."""

from __future__ import annotations

import pytest

from dp4tl_data import Dp4tlError, KeepListError, ShardError, World
from dp4tl_data.urls import check_url, common_root, join_root, stable_name
from dp4tl_data.world import stable_seed


def test_world_validates_and_detects(monkeypatch):
    with pytest.raises(Dp4tlError, match="rank 2 of world_size 2"):
        World(2, 2)
    with pytest.raises(Dp4tlError, match="worker 1 of num_workers 1"):
        World(0, 1, 1, 1)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert World.detect() == World(1, 4, 0, 1)
    assert World.detect(rank=0, world_size=2) == World(0, 2, 0, 1)
    assert World(1, 2, 1, 3).slot == 4 and World(1, 2, 1, 3).slots == 6


def test_stable_seed_is_stable():
    assert stable_seed("a", 1) == stable_seed("a", 1) != stable_seed("a", 2)
    # the same in a fresh process with another hash salt (Python's hash() would differ)
    import os
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", "from dp4tl_data.world import stable_seed; print(stable_seed('shards', 0, 0))"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "123"},
    )
    assert int(out.stdout) == stable_seed("shards", 0, 0)
    assert 0 <= stable_seed(1) < 2**63


def test_stable_names_are_relative_to_the_root():
    urls = ["s3://b/laion/00/a.tar", "s3://b/laion/01/b.tar"]
    root = common_root(urls)
    assert root == "s3://b/laion"
    assert [stable_name(u, root) for u in urls] == ["00/a.tar", "01/b.tar"]
    assert stable_name("/mnt/laion/00/a.tar", "/mnt/laion") == "00/a.tar"  # same name, other mount
    assert join_root("/mnt/laion", "00/a.tar") == "/mnt/laion/00/a.tar"
    with pytest.raises(ShardError, match="not under the dataset root"):
        stable_name("/elsewhere/x.tar", "/mnt/laion")
    with pytest.raises(KeepListError, match="escapes"):
        join_root("/mnt/laion", "../../etc/passwd")


def test_command_urls_need_explicit_consent():
    with pytest.raises(ShardError, match="command URLs are refused"):
        check_url("pipe:curl -s http://x/a.tar")
    assert check_url("pipe:cat a.tar", allow_commands=True) == "pipe:cat a.tar"
    assert check_url("/data/a.tar") == "/data/a.tar"
