"""Hyperparameters: discovery from __init__, coercion of CLI strings, clear errors."""
from __future__ import annotations

import pytest

from msabench.methods.late_fusion import LateFusion
from msabench.params import ParameterError, coerce_params, param_defaults, parse_assignments, resolve_params


def test_defaults_merge_the_class_hierarchy():
    defaults = param_defaults(LateFusion)
    assert defaults["hidden"] == 64 and defaults["dropout"] == 0.2  # the method's own
    assert defaults["weight_decay"] == 1e-4  # overridden default
    assert defaults["standardize"] is True and defaults["grad_clip"] == 0.0  # inherited from TorchMethod


def test_coercion_from_strings():
    got = coerce_params(LateFusion, {"hidden": "32", "lr": "0.01", "standardize": "false"})
    assert got == {"hidden": 32, "lr": 0.01, "standardize": False}
    assert isinstance(got["hidden"], int)


@pytest.mark.parametrize("raw, message", [
    ({"hiden": "3"}, "has no hyperparameter 'hiden'. Did you mean 'hidden'"),
    ({"hidden": "many"}, "should be an integer"),
    ({"lr": "fast"}, "should be a number"),
    ({"standardize": "maybe"}, "true or false"),
    ({"hidden": 3.5}, "should be an integer"),
])
def test_errors_name_the_problem(raw, message):
    with pytest.raises(ParameterError, match=message):
        coerce_params(LateFusion, raw)


def test_resolve_and_assignments():
    resolved = resolve_params(LateFusion, parse_assignments(["hidden=16", "epochs=3"]))
    assert resolved["hidden"] == 16 and resolved["epochs"] == 3 and resolved["lr"] == 1e-3
    with pytest.raises(ParameterError, match="key=value"):
        parse_assignments(["hidden"])
