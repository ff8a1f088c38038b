"""The dp4tl CLI: every command has help; inspect prints tables and JSON; errors are one line
with a non-zero exit and no traceback unless --debug."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from dp4tl_data import KeepList
from dp4tl_data.cli import COMMANDS, main


@pytest.fixture
def runner():
    return CliRunner()


def test_every_command_has_help(runner):
    res = runner.invoke(main, ["--help"])
    assert res.exit_code == 0
    for name in COMMANDS:
        assert name in res.output
        sub = runner.invoke(main, [name, "--help"])
        assert sub.exit_code == 0, (name, sub.output)
        assert "Usage:" in sub.output and len(sub.output.splitlines()) > 3


def test_inspect_table_and_json(runner, tmp_path):
    keep = KeepList.from_classes(
        [1, 2, 3],
        label_field="cls",
        names=[f"n{i}" for i in range(10)],
        method="lm",
        ratio=0.7,
        num_classes=10,
        params={"votes": "hard"},
    )
    url = str(tmp_path / "keep.json")
    keep.save(url)
    res = runner.invoke(main, ["inspect", url])
    assert res.exit_code == 0, res.output
    assert re.search(r"classes kept\s+3 of 10 \(30\.0%\)", res.output)
    assert "method" in res.output and "lm" in res.output and "votes=hard" in res.output
    assert "n1, n2, n3" in res.output
    res = runner.invoke(main, ["inspect", url, "--json"])
    data = json.loads(res.output)
    assert data["stats"]["classes_kept"] == 3 and data["provenance"]["ratio"] == 0.7
    assert data["classes"][0] == {"id": 1, "name": "n1"}


def test_inspect_lists_shards(runner, tmp_path):
    url = str(tmp_path / "keep.json")
    KeepList.from_samples({"a.tar": ["x", "y"], "b.tar": ["z"]}, totals={"a.tar": 4}).save(url)
    res = runner.invoke(main, ["inspect", url, "--shards", "5"])
    assert res.exit_code == 0
    assert "a.tar  keys  kept=2  total=4  50.0%" in res.output
    assert re.search(r"samples kept\s+3\n", res.output)


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "keep-list not found"),
        ("{not json", "corrupt or truncated keep-list manifest"),
        ('{"format": "dp4tl-keeplist", "version": 2}', "version 2 is not supported"),
    ],
)
def test_errors_are_one_line(runner, tmp_path, content, message):
    url = tmp_path / "keep.json"
    if content is not None:
        url.write_text(content)
    res = runner.invoke(main, ["inspect", str(url)])
    assert res.exit_code != 0
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0] and "keep.json" in lines[0]
    assert "Traceback" not in res.output


def test_debug_shows_the_exception(runner, tmp_path):
    res = runner.invoke(main, ["--debug", "inspect", str(tmp_path / "none.json")])
    assert res.exit_code != 0 and res.exception is not None


def test_plot_without_data_is_an_error(runner, tmp_path):
    url = str(tmp_path / "keep.json")
    KeepList.from_classes([1]).save(url)
    res = runner.invoke(main, ["inspect", url, "--plot", str(tmp_path / "p.png")])
    assert res.exit_code != 0 and "nothing to plot" in res.output


def test_missing_optional_dependency_is_one_line_naming_the_extra(runner, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "braceexpand", None)  # as if the webdataset extra were not installed
    res = runner.invoke(main, ["index", str(tmp_path / "shard-{0..3}.tar"), "-o", str(tmp_path / "x.idx")])
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert "braceexpand is not installed; pip install 'dp4tl-data[webdataset]'" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_missing_extra_message_names_the_extra_or_says_install_it():
    from dp4tl_data.errors import missing_extra

    assert missing_extra("faiss.contrib") == "faiss is not installed; pip install 'dp4tl-data[pruners]'"
    assert missing_extra("yaml", "laion") == "yaml is not installed; pip install 'dp4tl-data[laion]'"
    assert missing_extra("some_private_lib") == "some_private_lib is not installed; install it"
