"""The restricted unpickler loads numpy/containers and refuses everything else without executing it."""
from __future__ import annotations

import io
import os
import pickle
import pickletools
from collections import OrderedDict

import numpy as np
import pytest

from msabench.data.base import DataError
from msabench.data.safe_pickle import UnsafePickleError, safe_load


class Point:
    """A custom class: not plain data."""

    def __init__(self, x: int) -> None:
        self.x = x


class RunsShell:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _plain_data() -> dict:
    return {
        "train": {
            "text": np.arange(24, dtype=np.float32).reshape(2, 3, 4),
            "audio": np.full((2, 1, 2), -np.inf),
            "lengths": [1, 2],
            "ids": np.array([b"a", b"bb"]),
            "names": np.array(["x", "yy"]),
            "objects": np.array(["mixed", 1], dtype=object),
            "strided": np.arange(12.0).reshape(3, 4)[:, ::2],
            "label": np.float32(0.5),
            "count": np.int64(3),
            "flag": np.bool_(True),
        },
        "meta": OrderedDict(a=(1, 2.5, complex(1, 2)), b={1, 2}, c=frozenset({"z"}), d=b"raw", e=None, f=True),
    }


def _assert_same(a, b) -> None:
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, dict):
        assert type(a) is type(b) and a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    else:
        assert type(a) is type(b) and a == b


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_plain_data_round_trip(tmp_path, protocol):
    data = _plain_data()
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    _assert_same(data, safe_load(path))


def test_os_system_reduce_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"train": RunsShell(str(marker))}))
    with pytest.raises(UnsafePickleError) as info:
        safe_load(path)
    message = str(info.value)
    assert str(path) in message
    assert f"{os.system.__module__}.system" in message  # posix.system on Linux
    assert "plain numpy/dict form" in message
    assert not marker.exists()
    assert isinstance(info.value, DataError)


def test_custom_class_is_refused(tmp_path):
    path = tmp_path / "custom.pkl"
    path.write_bytes(pickle.dumps({"p": Point(3)}))
    with pytest.raises(UnsafePickleError, match=rf"custom\.pkl.*{__name__}\.Point"):
        safe_load(path)


@pytest.mark.parametrize(
    "payload",
    [
        b"cbuiltins\neval\n(S'1+1'\ntR.",
        b"c__builtin__\ngetattr\n(S'x'\nS'upper'\ntR.",
        b"cnumpy\nload\n(S'x.npy'\ntR.",
        b"cnumpy.core.multiarray\nfromfile\n(S'x'\ntR.",
        b"cbuiltins\ntype\n.",
    ],
)
def test_dangerous_globals_refused(tmp_path, payload):
    pickletools.dis(io.BytesIO(payload), out=io.StringIO())  # the payloads are well-formed pickles
    path = tmp_path / "g.pkl"
    path.write_bytes(payload)
    with pytest.raises(UnsafePickleError):
        safe_load(path)


def test_numpy_1x_and_2x_module_names_both_load(tmp_path):
    data = {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.float64(2.5)}
    raw = pickle.dumps(data, protocol=2)  # GLOBAL opcodes carry newline-terminated module names
    names = {b"numpy._core.multiarray", b"numpy.core.multiarray"}
    present = [n for n in names if n + b"\n" in raw]
    assert len(present) == 1
    for module in names:
        path = tmp_path / f"{module.decode()}.pkl"
        path.write_bytes(raw.replace(present[0] + b"\n", module + b"\n"))
        assert module + b"\n_reconstruct\n" in path.read_bytes()
        assert module + b"\nscalar\n" in path.read_bytes()
        loaded = safe_load(path)
        _assert_same(data, loaded)


class _FromBuffer:
    """Pickles as a call to numpy's ``_frombuffer``, the form numpy writes for protocol-5 arrays."""

    def __reduce__(self):
        from numpy._core.numeric import _frombuffer

        return (_frombuffer, (b"\x01\x02", np.dtype("u1"), (2,), "C"))


@pytest.mark.parametrize("module", [b"numpy._core.numeric", b"numpy.core.numeric"])
def test_numpy_frombuffer_names_load(tmp_path, module):
    pytest.importorskip("numpy._core.numeric")
    raw = pickle.dumps(_FromBuffer(), protocol=2)
    assert b"numpy._core.numeric\n_frombuffer\n" in raw
    path = tmp_path / "fb.pkl"
    path.write_bytes(raw.replace(b"numpy._core.numeric\n", module + b"\n"))
    loaded = safe_load(path)
    assert loaded.dtype == np.uint8
    assert loaded.tolist() == [1, 2]


def test_garbage_and_missing_files_are_data_errors(tmp_path):
    path = tmp_path / "junk.pkl"
    path.write_bytes(b"this is not a pickle")
    with pytest.raises(DataError, match="junk.pkl"):
        safe_load(path)
    with pytest.raises(DataError, match="nope.pkl"):
        safe_load(tmp_path / "nope.pkl")
