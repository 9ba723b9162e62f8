"""The layout is the architecture: one folder per layer, imports only downwards, no cycles (issue #14)."""

from __future__ import annotations

from tests.architecture.layers import LAYERS, ROOT, cycles, violations


def test_package_root_holds_only_the_layers():
    files = sorted(p.name for p in ROOT.glob("*.py"))
    assert files == ["__init__.py", "__main__.py", "_version.py"]
    folders = sorted(p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert folders == sorted(LAYERS)


def test_no_layer_imports_a_layer_above_it():
    assert violations() == []


def test_no_import_cycles_at_module_level_or_inside_functions():
    assert cycles() == []


def test_the_checks_can_fail(tmp_path, monkeypatch):
    """An upward import and a two-module cycle, planted in a copy of the scan's view, are both reported."""
    import tests.architecture.layers as layers

    fake = tmp_path / "fairsample"
    for layer in ("core", "cli"):
        (fake / layer).mkdir(parents=True)
        (fake / layer / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    (fake / "core" / "a.py").write_text("def f():\n    from fairsample.cli import b\n")
    (fake / "cli" / "b.py").write_text("from fairsample.core import a\n")
    monkeypatch.setattr(layers, "ROOT", fake)
    assert layers.violations() == ["fairsample/core/a.py:2: core imports cli (fairsample.cli.b)"]
    assert layers.cycles() == [["fairsample.cli.b", "fairsample.core.a"]]
