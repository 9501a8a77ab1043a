"""Load dataset pickles without executing code: only numpy arrays/scalars and plain containers are admitted.

``pickle.load`` on a downloaded file runs whatever callables the file names. :func:`safe_load` uses a restricted
unpickler whose ``find_class`` resolves only the few globals that numpy arrays, numpy scalars and builtin
containers need; any other global is refused before anything is called.
"""
from __future__ import annotations

import importlib
import os
import pickle
from typing import Any

import numpy as np

from msabench.data.base import DataError


class UnsafePickleError(DataError):
    """The pickle names a global outside the allow-list (it could run code); nothing was executed."""


_BUILTIN_NAMES = frozenset(
    {"dict", "list", "tuple", "set", "frozenset", "str", "bytes", "bytearray", "int", "float", "bool", "complex"}
)
# numpy's pickles name these; numpy 1.x writes ``numpy.core.*``, numpy 2.x writes ``numpy._core.*``.
_NUMPY_CORE_NAMES = {
    "multiarray": frozenset({"_reconstruct", "scalar"}),
    "numeric": frozenset({"_frombuffer"}),  # protocol-5 pickles of contiguous arrays
}


def _numpy_core_attr(submodule: str, name: str) -> Any:
    """``numpy._core.<submodule>.<name>`` (numpy 2) or ``numpy.core.<submodule>.<name>`` (numpy 1)."""
    for package in ("numpy._core", "numpy.core"):
        try:
            module = importlib.import_module(f"{package}.{submodule}")
        except ImportError:
            continue
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"numpy has no {submodule}.{name}")


def _resolve(module: str, name: str) -> Any | None:
    """The object for an admitted global, or None when ``module.name`` is not admitted."""
    if module in ("builtins", "__builtin__") and name in _BUILTIN_NAMES:
        return getattr(__import__("builtins"), name)
    if module == "collections" and name == "OrderedDict":
        from collections import OrderedDict

        return OrderedDict
    # Protocol <= 2 pickles encode bytes as _codecs.encode(str, 'latin1'); a pure data transform.
    if module == "_codecs" and name == "encode":
        import codecs

        return codecs.encode
    if module == "numpy" and name == "ndarray":
        return np.ndarray
    if module == "numpy" and name == "dtype":
        return np.dtype
    for package in ("numpy._core.", "numpy.core."):
        if module.startswith(package):
            submodule = module[len(package):]
            if name in _NUMPY_CORE_NAMES.get(submodule, ()):
                return _numpy_core_attr(submodule, name)
    if module == "numpy.dtypes":
        dtypes = importlib.import_module("numpy.dtypes")
        obj = getattr(dtypes, name, None)
        if isinstance(obj, type) and issubclass(obj, np.dtype):
            return obj
    return None


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, source: str) -> None:
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        obj = _resolve(module, name)
        if obj is None:
            raise UnsafePickleError(
                f"{self._source}: refused to load global {module}.{name}; only numpy arrays/scalars and plain "
                "containers (dict, list, tuple, str, numbers) are allowed, so nothing in the file was executed. "
                "Convert the file to plain numpy/dict form (numpy arrays, lists and dicts) and load it again."
            )
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self._source}: refused persistent id {pid!r}; the pickle is not plain data")


def safe_load(path: str | os.PathLike[str]) -> object:
    """Unpickle ``path`` admitting only numpy arrays/scalars and builtin containers; see :class:`UnsafePickleError`."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            return _RestrictedUnpickler(f, source).load()
    except UnsafePickleError:
        raise
    except FileNotFoundError as exc:
        raise DataError(f"{source}: file not found") from exc
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as exc:
        raise DataError(f"{source}: not a readable pickle ({type(exc).__name__}: {exc})") from exc
