"""One small generic plugin registry for methods, protocols and datasets.

Built-ins and third-party plugins register the same way: an entry point in the group ``msabench.methods``,
``msabench.protocols`` or ``msabench.datasets``. ``pkg.module:Class`` works too, without registration.
A plugin that fails to import warns and is skipped; everything else keeps working.
"""
from __future__ import annotations

import difflib
import importlib
import warnings
from dataclasses import dataclass
from importlib import metadata
from typing import Generic, TypeVar

T = TypeVar("T")


class RegistryError(LookupError):
    """An unknown or ambiguous plugin name."""


class PluginWarning(UserWarning):
    """A plugin could not be imported; it is skipped."""


@dataclass(frozen=True)
class PluginInfo:
    """Where a plugin comes from, recorded in every result row."""

    name: str
    target: str  # "module:attr"
    package: str
    version: str


def _load_target(target: str) -> object:
    module_name, _, attr = target.partition(":")
    if not attr:
        raise RegistryError(f"{target!r} is not of the form 'package.module:Class'")
    module = importlib.import_module(module_name)
    obj: object = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _distribution_of(module_name: str) -> tuple[str, str]:
    top = module_name.split(".")[0]
    dists = metadata.packages_distributions().get(top, [])
    for dist in dists:
        try:
            return dist, metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return top, "unknown"


class Registry(Generic[T]):
    """Plugins of one kind, discovered from the entry-point group ``group``; each must subclass ``base``."""

    def __init__(self, kind: str, group: str, base: type) -> None:
        self.kind = kind
        self.group = group
        self.base = base
        self._entries: dict[str, tuple[metadata.EntryPoint, PluginInfo]] | None = None
        self._loaded: dict[str, type] = {}
        self._extra: dict[str, tuple[type, PluginInfo]] = {}

    # discovery ------------------------------------------------------------------------------------------------
    def _discover(self) -> dict[str, tuple[metadata.EntryPoint, PluginInfo]]:
        if self._entries is not None:
            return self._entries
        entries: dict[str, tuple[metadata.EntryPoint, PluginInfo]] = {}
        for ep in metadata.entry_points(group=self.group):
            dist = getattr(ep, "dist", None)
            package = dist.metadata["Name"] if dist is not None else "unknown"
            version = dist.version if dist is not None else "unknown"
            info = PluginInfo(ep.name, ep.value, package, version)
            if ep.name in entries:
                other = entries[ep.name][1]
                if other.target == info.target and other.package == info.package:
                    continue  # the same distribution seen twice on sys.path
                raise RegistryError(
                    f"two plugins claim the {self.kind} name {ep.name!r}: {other.target} from package "
                    f"{other.package!r} and {info.target} from package {info.package!r}; uninstall one of them"
                )
            entries[ep.name] = (ep, info)
        self._entries = entries
        return entries

    def refresh(self) -> None:
        """Forget discovered plugins (after installing one in the same process)."""
        self._entries = None
        self._loaded.clear()

    def register(self, name: str, obj: type, package: str = "__main__", version: str = "unknown") -> None:
        """Register ``obj`` in this process only (tests, notebooks)."""
        self._check_base(name, obj)
        self._extra[name] = (obj, PluginInfo(name, f"{obj.__module__}:{obj.__qualname__}", package, version))

    def _check_base(self, name: str, obj: object) -> None:
        if not (isinstance(obj, type) and issubclass(obj, self.base)):
            raise RegistryError(f"{self.kind} {name!r} ({obj!r}) is not a subclass of {self.base.__name__}")

    # lookup ---------------------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(set(self._discover()) | set(self._extra))

    def info(self, name: str) -> PluginInfo:
        if name in self._extra:
            return self._extra[name][1]
        if ":" in name:
            module = name.split(":")[0]
            package, version = _distribution_of(module)
            return PluginInfo(name, name, package, version)
        entries = self._discover()
        if name not in entries:
            self._unknown(name)
        return entries[name][1]

    def get(self, name: str) -> type:
        """The class registered as ``name`` (or at ``pkg.module:Class``)."""
        if name in self._extra:
            return self._extra[name][0]
        if name in self._loaded:
            return self._loaded[name]
        entries = self._discover()
        if name in entries:
            ep, info = entries[name]
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin must not look like a missing one
                raise RegistryError(
                    f"{self.kind} {name!r} from package {info.package!r} failed to import: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
        elif ":" in name:
            try:
                obj = _load_target(name)
            except (ImportError, AttributeError) as exc:
                raise RegistryError(f"cannot import {self.kind} {name!r}: {exc}") from exc
        else:
            self._unknown(name)
        self._check_base(name, obj)
        self._loaded[name] = obj  # type: ignore[assignment]
        return obj  # type: ignore[return-value]

    def available(self) -> dict[str, type]:
        """Every plugin that imports; broken ones warn (naming plugin and package) and are left out."""
        out: dict[str, type] = {}
        for name in self.names():
            try:
                out[name] = self.get(name)
            except RegistryError as exc:
                warnings.warn(f"skipping {exc}", PluginWarning, stacklevel=2)
        return out

    def _unknown(self, name: str) -> None:
        names = self.names()
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise RegistryError(
            f"unknown {self.kind} {name!r}.{hint} Available: {', '.join(names) or '(none)'}. "
            f"A class outside the registry can be given as 'package.module:Class'."
        )


def split_spec(spec: str, registry: Registry) -> tuple[str, str | None]:
    """Split ``NAME:ARG`` into (NAME, ARG) when NAME is registered; otherwise (spec, None)."""
    head, sep, tail = spec.partition(":")
    if sep and head in registry.names():
        return head, tail
    return spec, None
