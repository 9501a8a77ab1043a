"""Feature standardisation of the training loop, against numpy computed independently."""
from __future__ import annotations

import numpy as np
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
