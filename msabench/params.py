"""Keyword hyperparameters, scikit-learn style: read them from ``__init__`` and coerce strings from the CLI."""
from __future__ import annotations

import hashlib
import inspect
import json
from typing import Any


class ParameterError(ValueError):
    """A hyperparameter that does not exist or has a value of the wrong type."""


def param_defaults(cls: type) -> dict[str, Any]:
    """The keyword parameters of ``cls.__init__`` (over its class hierarchy) with their defaults."""
    out: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.name == "self" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                continue
            out[p.name] = None if p.default is inspect.Parameter.empty else p.default
    return out


def _coerce_value(name: str, raw: Any, default: Any, owner: str) -> Any:
    if not isinstance(raw, str):
        if default is not None and isinstance(default, bool) and not isinstance(raw, bool):
            raise ParameterError(f"{owner}: {name}={raw!r} should be true or false")
        if default is not None and isinstance(default, (int, float)) and not isinstance(default, bool):
            if isinstance(raw, bool) or not isinstance(raw, (int, float)):
                raise ParameterError(f"{owner}: {name}={raw!r} should be a number like {default!r}")
            if isinstance(default, int) and isinstance(raw, float) and not raw.is_integer():
                raise ParameterError(f"{owner}: {name}={raw!r} should be an integer like {default!r}")
            return type(default)(raw)
        return raw
    text = raw.strip()
    if isinstance(default, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ParameterError(f"{owner}: {name}={raw!r} should be true or false")
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            raise ParameterError(f"{owner}: {name}={raw!r} should be an integer like {default!r}") from None
    if isinstance(default, float):
        try:
            return float(text)
        except ValueError:
            raise ParameterError(f"{owner}: {name}={raw!r} should be a number like {default!r}") from None
    if isinstance(default, (list, tuple, dict)) or default is None:
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return None if default is None and text.lower() == "none" else text
        return value
    return text


def coerce_params(cls: type, raw: dict[str, Any], owner: str | None = None) -> dict[str, Any]:
    """Check ``raw`` against the parameters of ``cls`` and convert CLI strings to the defaults' types."""
    owner = owner or getattr(cls, "name", "") or cls.__name__
    defaults = param_defaults(cls)
    out = {}
    for key, value in raw.items():
        if key not in defaults:
            import difflib

            close = difflib.get_close_matches(key, list(defaults), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ParameterError(
                f"{owner} has no hyperparameter {key!r}.{hint} It has: {', '.join(sorted(defaults)) or '(none)'}"
            )
        out[key] = _coerce_value(key, value, defaults[key], owner)
    return out


def resolve_params(cls: type, raw: dict[str, Any]) -> dict[str, Any]:
    """Defaults updated with the coerced ``raw`` values: the full, resolved hyperparameters."""
    resolved = param_defaults(cls)
    resolved.update(coerce_params(cls, raw))
    return resolved


def params_hash(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:12]


def parse_assignments(items: list[str] | None, what: str = "--set") -> dict[str, str]:
    """``["lr=0.01", "d=40"]`` → ``{"lr": "0.01", "d": "40"}``."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ParameterError(f"{what} expects key=value, got {item!r}")
        out[key.strip()] = value
    return out
