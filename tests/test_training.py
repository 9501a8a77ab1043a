"""Feature standardisation of the training loop, against numpy computed independently."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from msabench.data.base import Split
from msabench.training import apply_scaler, fit_scaler


def _split() -> Split:
    gen = torch.Generator().manual_seed(3)
    n, t = 7, 5
    feats = {"l": torch.randn(n, t, 4, generator=gen) * 3 + 1, "a": torch.randn(n, t, 2, generator=gen)}
    feats["a"][:, :, 1] = 2.5  # a constant feature: std 0 -> 1
    lengths = {"l": torch.tensor([5, 3, 1, 5, 2, 4, 0]), "a": torch.tensor([5, 5, 2, 1, 3, 5, 4])}
    return Split("train", feats, lengths, torch.zeros(n), [str(i) for i in range(n)])


def test_fit_scaler_uses_only_non_padding_frames():
    split = _split()
    scaler = fit_scaler(split)
    for m, x in split.features.items():
        x = x.numpy().astype(np.float64)
        frames = np.concatenate([x[i, :int(length)] for i, length in enumerate(split.lengths[m])])
        mean, std = frames.mean(axis=0), frames.std(axis=0)  # population std, as the loop uses
        std = np.where(std > 1e-6, std, 1.0)
        np.testing.assert_allclose(scaler[m][0].numpy(), mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(scaler[m][1].numpy(), std, rtol=1e-5, atol=1e-5)
    assert scaler["a"][1][1].item() == 1.0


def test_apply_scaler_standardises_and_zeroes_padding():
    split = _split()
    scaler = fit_scaler(split)
    out = apply_scaler(split, scaler)
    for m, x in split.features.items():
        mean, std = (v.numpy() for v in scaler[m])
        expected = (x.numpy() - mean) / std
        for i, length in enumerate(split.lengths[m]):
            expected[i, int(length):] = 0.0
        np.testing.assert_allclose(out[m].numpy(), expected, rtol=1e-6, atol=1e-6)


# validation: each condition's mask applied once per fit -------------------------------------------------------------
def _probe_method():
    from msabench.data.base import Task
    from msabench.training import TorchMethod

    method = TorchMethod(standardize=False)
    method.device_, method.task_, method.amp_, method.scaler_ = torch.device("cpu"), Task("regression", "mosi"), False, None
    return method


def test_with_mask_applied_batches_are_the_masked_rows():
    split = _split()
    gen = torch.Generator().manual_seed(4)
    mask = {m: torch.rand(x.shape[:2], generator=gen) > 0.4 for m, x in split.features.items()}
    prepared = _probe_method().prepare(split).with_mask_applied(mask)
    for idx in (slice(2, 6), torch.tensor([6, 0, 3])):
        batch = prepared.masked_batch(None, idx)
        for m, x in split.features.items():
            expected = x.numpy()[idx] * mask[m].numpy()[idx][..., None]
            np.testing.assert_array_equal(batch.features[m].numpy(), expected)
            np.testing.assert_array_equal(batch.mask[m].numpy(), mask[m].numpy()[idx])


def test_masked_batch_without_a_mask_needs_an_applied_one():
    prepared = _probe_method().prepare(_split())
    with pytest.raises(ValueError, match="with_mask_applied"):
        prepared.masked_batch(None, slice(0, 2))


def test_validation_score_is_the_selection_metric_under_each_applied_mask():
    """-MAE of a model predicting the first feature of the first text frame, averaged over two validation masks,
    by hand."""
    split = _split()
    split.labels = torch.linspace(-1, 1, len(split))

    class FirstFeature(torch.nn.Module):
        def forward(self, batch):
            return batch.features["l"][:, 0, 0]

    masks = {"keep": {m: torch.ones(x.shape[:2], dtype=torch.bool) for m, x in split.features.items()},
             "drop-first": {m: torch.arange(x.shape[1]).expand(x.shape[:2]) > 0 for m, x in split.features.items()}}
    method = _probe_method()
    valid_sets = {name: method.prepare(split).with_mask_applied(mask) for name, mask in masks.items()}
    score = method.validation_score(FirstFeature(), valid_sets, method.task_)
    labels = split.labels.numpy()
    first = split.features["l"][:, 0, 0].numpy()
    expected = -(np.abs(first - labels).mean() + np.abs(0.0 - labels).mean()) / 2
    assert score == pytest.approx(expected, rel=1e-6)
