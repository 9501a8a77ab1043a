"""MulT: contract check, masking of dropped frames and padding, unaligned lengths, attention direction."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from msabench.data.base import REGRESSION_MOSI
from msabench.methods._crossmodal import MaskedAttention, additive_mask, attention_allowed, last_valid
from msabench.methods.mult import MulT
from msabench.testing import check_method
from msabench.training import Batch

SMALL = dict(d=8, heads=2, layers=1, kernel_l=3, kernel_a=3, kernel_v=3)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tests share two cores with others; one thread avoids oversubscription stalls."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_batch(lengths: dict[str, list[int]], seq: dict[str, int], dims: dict[str, int], seed: int = 0,
               drop: float = 0.0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    feats, mask, lens = {}, {}, {}
    for m in ("l", "a", "v"):
        n = len(lengths[m])
        lens[m] = torch.tensor(lengths[m])
        pad = torch.arange(seq[m])[None, :] < lens[m][:, None]
        mask[m] = pad & (torch.rand(n, seq[m], generator=gen) >= drop)
        feats[m] = torch.randn(n, seq[m], dims[m], generator=gen) * mask[m].unsqueeze(-1)
    n = len(lengths["l"])
    return Batch(features=feats, mask=mask, lengths=lens, labels=torch.zeros(n), index=torch.arange(n))


def small_model(**kw) -> nn.Module:
    torch.manual_seed(0)
    model = MulT(**{**SMALL, **kw}).build({"l": 6, "a": 4, "v": 5}, {"l": 7, "a": 13, "v": 10}, REGRESSION_MOSI)
    return model.eval()


SEQ = {"l": 7, "a": 13, "v": 10}
DIMS = {"l": 6, "a": 4, "v": 5}
LENGTHS = {"l": [7, 4, 5], "a": [13, 9, 2], "v": [10, 3, 8]}


def test_check_method():
    check_method(MulT, quick_params={**SMALL, "epochs": 2, "batch_size": 16})


def test_init_stores_mmsa_mosi_defaults():
    m = MulT()
    assert (m.d, m.heads, m.layers, m.batch_size) == (50, 10, 4, 16)
    assert (m.kernel_l, m.kernel_a, m.kernel_v) == (5, 5, 5)


@pytest.mark.parametrize("causal", [True, False])
def test_masked_frames_do_not_change_output(causal):
    model = small_model(causal=causal)
    batch = make_batch(LENGTHS, SEQ, DIMS, seed=1, drop=0.4)
    with torch.no_grad():
        ref = model(batch)
        noisy = {m: torch.where(batch.mask[m].unsqueeze(-1), x, 100.0 * torch.randn_like(x))
                 for m, x in batch.features.items()}
        out = model(Batch(noisy, batch.mask, batch.lengths, batch.labels, batch.index))
    assert not torch.equal(noisy["a"], batch.features["a"])
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


def test_present_frames_do_change_output():
    model = small_model()
    batch = make_batch(LENGTHS, SEQ, DIMS, seed=1)
    with torch.no_grad():
        ref = model(batch)
        feats = dict(batch.features)
        feats["v"] = feats["v"].clone()
        feats["v"][0, 0] += 5.0  # a present frame of sample 0
        out = model(Batch(feats, batch.mask, batch.lengths, batch.labels, batch.index))
    assert abs(float(out[0] - ref[0])) > 1e-6
    torch.testing.assert_close(out[1:], ref[1:])


def test_unaligned_lengths_and_absent_modalities_are_finite():
    model = small_model()
    model.train()
    batch = make_batch(LENGTHS, SEQ, DIMS, seed=2, drop=0.3)
    batch.mask["a"][0] = False  # sample 0: no audio
    batch.mask["v"][1] = False  # sample 1: no vision
    batch.mask["l"][2] = False  # sample 2: no text
    batch.features["a"][0] = 0.0
    batch.features["v"][1] = 0.0
    batch.features["l"][2] = 0.0
    out = model(batch)
    assert out.shape == (3,)
    assert torch.isfinite(out).all()
    out.sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_nothing_present_is_finite():
    model = small_model()
    batch = make_batch(LENGTHS, SEQ, DIMS, seed=3)
    for m in batch.mask:
        batch.mask[m][:] = False
        batch.features[m][:] = 0.0
    with torch.no_grad():
        assert torch.isfinite(model(batch)).all()


def test_crossmodal_direction_keeps_target_length():
    model = small_model()
    batch = make_batch(LENGTHS, SEQ, DIMS, seed=4)
    with torch.no_grad():
        h = model.project(batch)
        states = model.target_states(h, batch)
        for t, s in [("l", "a"), ("a", "v"), ("v", "l")]:
            allowed = attention_allowed(batch.mask[s], SEQ[t], True)
            out = model.cross[t + s](h[t], h[s], allowed)
            assert out.shape == (3, SEQ[t], 8)
    assert {t: tuple(x.shape) for t, x in states.items()} == {t: (3, SEQ[t], 16) for t in SEQ}


def test_crossmodal_stream_reads_only_its_source():
    """The l<-a stream changes with audio and not with vision."""
    model = small_model()
    batch = make_batch(LENGTHS, SEQ, DIMS, seed=5)
    with torch.no_grad():
        h = model.project(batch)
        allowed = attention_allowed(batch.mask["a"], SEQ["l"], False)
        ref = model.cross["la"](h["l"], h["a"], allowed)
        other = model.cross["la"](h["l"], h["a"] + 1.0, allowed)
    assert not torch.allclose(ref, other)
    assert "lv" in model.cross and "al" in model.cross and len(model.cross) == 6


@pytest.mark.parametrize("tq,tk", [(5, 5), (4, 7), (7, 4)])
def test_causal_mask_matches_mult_future_mask(tq, tk):
    key_ok = torch.tensor([[True] * tk, [j % 2 == 0 for j in range(tk)]])
    allowed = attention_allowed(key_ok, tq, causal=True).numpy()
    # MulT: future positions are those with j >= i + 1 + |tk - tq| (np.triu of the -inf matrix)
    future = np.triu(np.ones((tq, tk), dtype=bool), 1 + abs(tk - tq))
    np.testing.assert_array_equal(allowed[0], ~future)
    np.testing.assert_array_equal(allowed[1], ~future & key_ok[1].numpy()[None, :])
    np.testing.assert_array_equal(attention_allowed(key_ok, tq, causal=False).numpy()[1],
                                  np.broadcast_to(key_ok[1].numpy(), (tq, tk)))


def test_masked_attention_matches_torch_multihead_attention():
    torch.manual_seed(0)
    d, heads = 8, 2
    ours = MaskedAttention(d, heads, dropout=0.0).eval()
    ref = nn.MultiheadAttention(d, heads, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([ours.q.weight, ours.kv.weight]))
        ref.in_proj_bias.copy_(torch.cat([ours.q.bias, ours.kv.bias]))
        ref.out_proj.weight.copy_(ours.out.weight)
        ref.out_proj.bias.copy_(ours.out.bias)
    x, src = torch.randn(2, 3, d), torch.randn(2, 5, d)
    key_ok = torch.tensor([[1, 1, 0, 1, 0], [0, 1, 1, 1, 1]], dtype=torch.bool)
    bias, any_key = additive_mask(attention_allowed(key_ok, 3, causal=False), torch.float32)
    with torch.no_grad():
        got = ours(x, src, bias, any_key)
        want, _ = ref(x, src, src, key_padding_mask=~key_ok)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_additive_mask_opens_and_flags_rows_without_keys():
    allowed = torch.tensor([[[True, False], [False, False]]])
    bias, any_key = additive_mask(allowed, torch.float32)
    np.testing.assert_array_equal(bias[0, 0].numpy(), np.array([[0.0, -np.inf], [0.0, 0.0]]))
    np.testing.assert_array_equal(any_key[0, :, 0].numpy(), np.array([1.0, 0.0]))


def test_query_without_keys_gets_zero_attention():
    model = small_model()
    layer = model.cross["la"]
    h_l, h_a = torch.randn(2, 7, 8), torch.randn(2, 13, 8)
    key_ok = torch.ones(2, 13, dtype=torch.bool)
    key_ok[1] = False
    with torch.no_grad():
        out = layer(h_l, h_a, attention_allowed(key_ok, 7, False))
        # sample 1 has no audio: same as a transformer whose attention outputs zero, i.e. any audio gives the same
        out2 = layer(h_l, h_a * 3.0 - 1.0, attention_allowed(key_ok, 7, False))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[1], out2[1])
    assert not torch.allclose(out[0], out2[0])


def test_last_valid_picks_position_length_minus_one():
    seq = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    got = last_valid(seq, torch.tensor([2, 0]))
    want = np.stack([seq.numpy()[0, 1], seq.numpy()[1, 0]])
    np.testing.assert_array_equal(got.numpy(), want)


def test_mean_pool_variant_runs():
    model = small_model(pool="mean")
    batch = make_batch(LENGTHS, SEQ, DIMS, seed=6, drop=0.2)
    with torch.no_grad():
        assert torch.isfinite(model(batch)).all()
    with pytest.raises(ValueError):
        small_model(pool="max")
