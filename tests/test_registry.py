"""Plugin discovery: a third-party package adds an adapter and a pruner through the entry point,
without touching the core; a broken plugin is reported, not fatal."""

from __future__ import annotations

import sys
import textwrap

import pytest

import dp4tl_data.registry as registry_mod
from dp4tl_data import KeepList, PluginError, PrunedStream, get_registry


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    pkg = tmp_path / "site"
    (pkg / "acme_dp4tl").mkdir(parents=True)
    (pkg / "acme_dp4tl" / "__init__.py").write_text(
        textwrap.dedent("""
        class Bag:
            def __init__(self, items):
                self.items = items

        def register(registry):
            registry.add_adapter(
                "acme.Bag",
                lambda s: isinstance(s, Bag),
                lambda s, keep, **o: Bag([x for x in s.items if keep.classes.matcher()(x)]),
                priority=100,
            )
            registry.add_pruner("keep-odd", lambda n: None)
    """)
    )
    (pkg / "broken_dp4tl.py").write_text("raise RuntimeError('boom')\n")
    (pkg / "needs_extra_dp4tl.py").write_text("import not_installed_dependency_xyz\n")
    dist = pkg / "acme_dp4tl-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-dp4tl\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[dp4tl_data.plugins]\nacme = acme_dp4tl:register\nbroken = broken_dp4tl:register\n"
        "needs-extra = needs_extra_dp4tl:register\n"
    )
    monkeypatch.syspath_prepend(str(pkg))
    monkeypatch.setattr(registry_mod, "_REGISTRY", None)
    yield
    registry_mod._REGISTRY = None
    sys.modules.pop("acme_dp4tl", None)


def test_third_party_adapter_and_pruner(third_party, caplog):
    with caplog.at_level("DEBUG", logger="dp4tl_data.registry"):
        reg = get_registry()
    assert "acme" in reg.loaded and "torch" in reg.loaded
    assert "boom" in reg.failed["broken"]
    # a broken plugin warns; one whose optional dependency is not installed is only a debug line
    levels = {r.getMessage().split()[1]: r.levelname for r in caplog.records if "plugin" in r.getMessage()}
    assert levels == {"broken": "WARNING", "needs-extra": "DEBUG"}
    assert "not_installed_dependency_xyz" in reg.failed["needs-extra"]
    bag = sys.modules["acme_dp4tl"].Bag([1, 2, 3, 4])
    out = PrunedStream(bag, KeepList.from_classes([2, 4]))
    assert out.items == [2, 4]
    assert reg.pruner("keep-odd") is not None


def test_unknown_source_and_pruner_are_clear_errors():
    reg = get_registry()
    with pytest.raises(PluginError, match="no adapter accepts a builtins.int"):
        PrunedStream(42, KeepList.from_classes([1]))
    with pytest.raises(PluginError, match="unknown pruner 'nope'"):
        reg.pruner("nope")


def test_torch_plugin_loads_without_importing_torch():
    """Core-only installs (no torch) load the torch plugin without error: it imports torch
    only when a source is a torch object, and its dataset class is made on first use."""
    import subprocess

    code = (
        "import sys, dp4tl_data; from dp4tl_data import get_registry; reg = get_registry(); "
        "print('torch' in reg.loaded, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "False"]


def test_without_torch_plain_iterables_take_the_generic_path(monkeypatch):
    from dp4tl_data.plugins import torch_data

    from dp4tl_data.iterable import PrunedIterable

    monkeypatch.setattr(torch_data, "_has_torch", lambda: False)
    samples = [{"__key__": f"k{i}", "label": i % 3} for i in range(9)]
    out = PrunedStream(samples, KeepList.from_classes([1], label_field="label"))
    assert type(out) is PrunedIterable
    assert [s["__key__"] for s in out] == ["k1", "k4", "k7"]
