"""Shared fixtures: the plugin packages under tests/plugins, installed the way users install plugins."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PLUGINS = Path(__file__).parent / "plugins"
REPO = Path(__file__).resolve().parents[1]
SHARED_MOSI = REPO.parent / "shared" / "data" / "mosi-utterance" / "mosi_utterance.pkl"


def pip_install_target(package_dir: Path, target: Path) -> Path:
    """``pip install`` a plugin package into ``target`` (no network: no deps, no build isolation)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--target", str(target), str(package_dir)],
        check=True, capture_output=True, text=True,
    )
    return target


def activate(path: Path) -> None:
    sys.path.insert(0, str(path))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(path), os.environ.get("PYTHONPATH")]))
    _refresh_registries()


def deactivate(path: Path) -> None:
    if str(path) in sys.path:
        sys.path.remove(str(path))
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(path)]
    os.environ["PYTHONPATH"] = os.pathsep.join(parts)
    _refresh_registries()


def _refresh_registries() -> None:
    import importlib

    from msabench.plugins import DATASETS, METHODS, PROTOCOLS

    importlib.invalidate_caches()
    for registry in (METHODS, PROTOCOLS, DATASETS):
        registry.refresh()


@pytest.fixture(scope="session")
def test_plugin(tmp_path_factory) -> Path:
    """The package tests/plugins/msabench-testplugin installed for this session (method test-spy,
    protocol test-half); its directory is on sys.path and PYTHONPATH (for subprocesses)."""
    target = pip_install_target(PLUGINS / "msabench-testplugin", tmp_path_factory.mktemp("testplugin"))
    activate(target)
    yield target
    deactivate(target)


@pytest.fixture
def broken_plugin(tmp_path_factory) -> Path:
    """The package tests/plugins/msabench-brokenplugin (fails on import), installed for one test only."""
    target = pip_install_target(PLUGINS / "msabench-brokenplugin", tmp_path_factory.mktemp("brokenplugin"))
    activate(target)
    yield target
    deactivate(target)


@pytest.fixture
def spy_log(tmp_path, monkeypatch) -> Path:
    """A file the spy method writes its calls to."""
    path = tmp_path / "spy.jsonl"
    monkeypatch.setenv("MSABENCH_SPY_LOG", str(path))
    return path


def shared_mosi_path() -> Path:
    """The real CMU-MOSI file in ../shared; skip when absent, except under CI where absence fails."""
    if SHARED_MOSI.exists():
        return SHARED_MOSI
    if os.environ.get("CI"):
        pytest.fail(f"{SHARED_MOSI} is missing; CI must have ../shared beside the clone")
    pytest.skip(f"{SHARED_MOSI} not present")


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test, restored afterwards (small models run faster without thread overhead)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
