"""CubeMLP: the contract, and the axis-mixing MLPs against an independent einsum computation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from msabench.methods.cubemlp import AxisMLP, CubeBlock, CubeMLP
from msabench.testing import check_method


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_check_method() -> None:
    check_method(CubeMLP, quick_params={"epochs": 2, "d_common": 8, "seq_hidden": 6, "seq_out": 3, "d_out": 8})


def _gelu(x: np.ndarray) -> np.ndarray:
    from scipy.special import erf

    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def test_sequence_mixing_equals_einsum() -> None:
    torch.manual_seed(0)
    layer = AxisMLP(axis=1, d_in=7, d_hidden=5, d_out=4, dropout=0.0).eval()
    with torch.no_grad():
        layer.norm.weight.uniform_(0.5, 1.5)
        layer.norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 7, 3, 6)
    got = layer(x).detach().numpy()
    xn = x.numpy().astype(np.float64)
    mu = xn.mean(axis=1, keepdims=True)
    var = xn.var(axis=1, keepdims=True)
    g, b = layer.norm.weight.detach().numpy(), layer.norm.bias.detach().numpy()
    normed = (xn - mu) / np.sqrt(var + 1e-6) * g[None, :, None, None] + b[None, :, None, None]
    w1, b1 = layer.fc1.weight.detach().numpy(), layer.fc1.bias.detach().numpy()
    w2, b2 = layer.fc2.weight.detach().numpy(), layer.fc2.bias.detach().numpy()
    r = layer.residual.weight.detach().numpy()
    hidden = _gelu(np.einsum("ht,btkd->bhkd", w1, normed) + b1[None, :, None, None])
    want = (np.einsum("oh,bhkd->bokd", w2, hidden) + b2[None, :, None, None]
            + np.einsum("ot,btkd->bokd", r, xn))
    assert got.shape == (2, 4, 3, 6)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("axis", [1, 2, 3])
def test_each_mixer_mixes_only_its_axis(axis: int) -> None:
    torch.manual_seed(1)
    shape = (2, 5, 3, 6)
    layer = AxisMLP(axis=axis, d_in=shape[axis], d_hidden=4, d_out=shape[axis], dropout=0.0).eval()
    x = torch.randn(*shape)
    y = layer(x)
    for other in {1, 2, 3} - {axis}:
        perm = torch.randperm(shape[other])
        permuted = layer(x.index_select(other, perm))
        torch.testing.assert_close(permuted, y.index_select(other, perm), rtol=1e-5, atol=1e-5)
    # and it does mix along its own axis: changing one position changes the others
    x2 = x.clone()
    x2.select(axis, 0).add_(1.0)
    changed = (layer(x2) - y).abs().sum(dim=[d for d in range(4) if d != axis])
    assert (changed[1:] > 1e-6).all()


def test_block_order_and_shapes() -> None:
    block = CubeBlock((5, 3, 6), (4, 3, 2), dropout=0.0).eval()
    assert [m.axis for m in block.mix] == [1, 2, 3]
    assert block(torch.randn(2, 5, 3, 6)).shape == (2, 4, 3, 2)
