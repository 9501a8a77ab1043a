"""The plugin registry: entry points, pkg.module:Class, errors, broken and duplicate plugins."""
from __future__ import annotations

import warnings

import pytest

from msabench.method import Method
from msabench.plugins import DATASETS, METHODS, PROTOCOLS
from msabench.registry import PluginWarning, Registry, RegistryError


def test_builtins_are_registered_through_entry_points():
    assert "late-fusion" in METHODS.names()
    assert {"none", "random-missing", "modality-missing", "uncertain-missing", "block-missing"} <= set(PROTOCOLS.names())
    assert {"synthetic-small", "synthetic-mosi", "synthetic-mosei", "synthetic-iemocap", "mmsa", "mult-iemocap"} <= set(
        DATASETS.names())
    info = METHODS.info("late-fusion")
    assert info.package == "msabench"
    assert info.target == "msabench.methods.late_fusion:LateFusion"


def test_unknown_name_suggests_closest_and_lists_available():
    with pytest.raises(RegistryError) as err:
        METHODS.get("late-fusoin")
    msg = str(err.value)
    assert "Did you mean 'late-fusion'" in msg
    assert "Available:" in msg and "late-fusion" in msg


def test_module_colon_class_without_registration():
    cls = METHODS.get("msabench.methods.late_fusion:LateFusion")
    assert cls.__name__ == "LateFusion"
    assert METHODS.info("msabench.methods.late_fusion:LateFusion").package == "msabench"


def test_module_colon_class_must_subclass_base():
    with pytest.raises(RegistryError, match="not a subclass of Method"):
        METHODS.get("collections:OrderedDict")


def test_third_party_plugin_registers_method_and_protocol(test_plugin):
    assert "test-spy" in METHODS.names()
    assert "test-half" in PROTOCOLS.names()
    info = METHODS.info("test-spy")
    assert (info.package, info.version) == ("msabench-testplugin", "0.3.1")
    assert PROTOCOLS.get("test-half")().conditions() == ["first-half", "second-half"]


def test_broken_plugin_warns_and_others_keep_working(broken_plugin):
    assert "broken-method" in METHODS.names()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = METHODS.available()
    assert "late-fusion" in available and "broken-method" not in available
    messages = [str(w.message) for w in caught if issubclass(w.category, PluginWarning)]
    assert any("broken-method" in m and "msabench-brokenplugin" in m for m in messages)
    with pytest.raises(RegistryError, match="failed to import"):
        METHODS.get("broken-method")


def _fake_dist(root, name, group, entries):
    info = root / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entries.items())
    (info / "entry_points.txt").write_text(f"[{group}]\n{lines}\n")


def test_two_plugins_claiming_one_name_is_an_error(tmp_path, monkeypatch):
    group = "msabench.test-duplicates"
    _fake_dist(tmp_path, "pkg-one", group, {"same": "pkg_one:Thing"})
    _fake_dist(tmp_path, "pkg-two", group, {"same": "pkg_two:Thing"})
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry("method", group, Method)
    with pytest.raises(RegistryError) as err:
        registry.names()
    assert "pkg-one" in str(err.value) and "pkg-two" in str(err.value) and "'same'" in str(err.value)


def test_cli_list_shows_plugins_and_warns_on_broken(broken_plugin, test_plugin, capsys):
    from msabench.cli import main

    assert main(["list", "methods"]) == 0
    out, err = capsys.readouterr()
    assert "late-fusion" in out and "test-spy" in out and "msabench-testplugin 0.3.1" in out
    assert "broken-method" in err and "msabench-brokenplugin" in err
    assert main(["list", "protocols"]) == 0
    out, _ = capsys.readouterr()
    assert "first-half second-half" in out
    assert "{l} {a} {v} {l,a} {l,v} {a,v} {l,a,v}" in out
