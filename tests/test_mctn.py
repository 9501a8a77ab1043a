"""MCTN: contract, text-only inference, behaviour without the source, translation/cycle loss on present frames."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from msabench.masks import full_mask
from msabench.method import FitContext
from msabench.methods.mctn import MCTN, last_state
from msabench.plugins import PROTOCOLS
from msabench.testing import check_method, tiny_datasets
from msabench.training import Batch


def test_check_method() -> None:
    check_method(MCTN, quick_params={"hidden": 8, "epochs": 2})


@pytest.fixture(scope="module")
def fitted():
    data = tiny_datasets(aligned=False)["regression"]
    proto = PROTOCOLS.get("random-missing")()
    method = MCTN(hidden=8, epochs=2, patience=0)
    context = FitContext(task=data.task, seed=3, aligned=data.aligned,
                         valid_masks=proto.masks(data.valid, data.fingerprint, ["0.5"]))
    method.fit(data.train, data.valid, proto.training_schedule(data.train, 3, data.fingerprint), context)
    return method, data.test


def test_last_state_picks_last_existing_step() -> None:
    out = torch.randn(3, 5, 2)
    lengths = torch.tensor([5, 1, 0])
    expected = np.stack([out[0, 4].numpy(), out[1, 0].numpy(), out[2, 0].numpy()])
    assert np.allclose(last_state(out, lengths).numpy(), expected)


def test_prediction_reads_only_the_source(fitted) -> None:
    method, test = fitted
    other = replace(test, features={**test.features, "a": torch.randn_like(test.features["a"]),
                                    "v": torch.randn_like(test.features["v"])})
    mask = full_mask(test)
    no_av = {**mask, "a": torch.zeros_like(mask["a"]), "v": torch.zeros_like(mask["v"])}
    base = method.predict(test, mask)
    assert np.array_equal(base, method.predict(other, mask))
    assert np.array_equal(base, method.predict(test, no_av))


def test_missing_source_is_a_zero_sequence(fitted) -> None:
    """Without text the model predicts from zeros: the same as zeroed text, and constant per text length."""
    method, test = fitted
    mask = full_mask(test)
    no_text = {**mask, "l": torch.zeros_like(mask["l"])}
    pred = method.predict(test, no_text)
    zeroed = replace(test, features={**test.features, "l": torch.zeros_like(test.features["l"])})
    # standardisation maps a raw zero to -mean/std; masking (not the raw value) is what makes the input zero,
    # so compare against zero text that is also masked out
    assert np.allclose(pred, method.predict(zeroed, no_text))
    lengths = test.lengths["l"].numpy()
    for length in np.unique(lengths):
        group = pred[lengths == length]
        assert np.allclose(group, group[0], atol=1e-6)
    assert np.std(method.predict(test, mask)) > 0  # with text, predictions vary


def test_loss_counts_present_frames_only() -> None:
    torch.manual_seed(0)
    method = MCTN(translation_weight=0.3, cycle_weight=0.7)
    b, t, dims = 4, 6, {"l": 3, "a": 2, "v": 5}
    feats = {m: torch.randn(b, t, d) for m, d in dims.items()}
    mask = {m: torch.rand(b, t) > 0.4 for m in dims}
    batch = Batch(features=feats, mask=mask, lengths={m: torch.full((b,), t) for m in dims},
                  labels=torch.randn(b), index=torch.arange(b))
    out = {"pred": torch.randn(b), "t1_hat": torch.randn(b, t, 2), "s_cycle": torch.randn(b, t, 3),
           "t2_hat": torch.randn(b, t, 5)}
    from msabench.data.base import REGRESSION_MOSI

    def mse(p, x, m):
        p, x, m = p.numpy(), x.numpy(), m.numpy()
        return ((p - x) ** 2)[m].mean()

    expected = (np.abs(out["pred"].numpy() - batch.labels.numpy()).mean()
                + 0.3 * (mse(out["t1_hat"], feats["a"], mask["a"]) + mse(out["t2_hat"], feats["v"], mask["v"]))
                + 0.7 * mse(out["s_cycle"], feats["l"], mask["l"]))
    assert float(method.loss(out, batch, REGRESSION_MOSI)) == pytest.approx(expected, rel=1e-5)
