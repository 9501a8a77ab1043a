"""Cross-modal attention blocks shared by MulT and DMD (Tsai et al., ACL 2019): masked multi-head attention that
survives queries with no key left, and the directional cross-modal Transformer built from it."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from msabench.methods._blocks import sinusoidal_positions


def attention_allowed(key_ok: torch.Tensor, n_query: int, causal: bool) -> torch.Tensor:
    """(B, Tq, Tk) bool: query i may attend key j (key present and, if causal, j <= i + |Tk - Tq|).

    The causal rule is MulT's ``buffered_future_mask`` (an upper triangle shifted by the length difference).
    """
    b, n_key = key_ok.shape
    allowed = key_ok[:, None, :].expand(b, n_query, n_key)
    if causal:
        shift = abs(n_key - n_query)
        i = torch.arange(n_query, device=key_ok.device)[:, None]
        j = torch.arange(n_key, device=key_ok.device)[None, :]
        allowed = allowed & (j <= i + shift)[None]
    return allowed


class MaskedAttention(nn.Module):
    """Multi-head attention with an additive (B, 1, Tq, Tk) mask (0 = allowed, -inf = masked).

    Every row must allow at least one key (see :func:`additive_mask`); ``any_key`` (B, Tq, 1) zeroes the output
    of rows that had none.
    """

    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        if d % heads:
            raise ValueError(f"MulT: d={d} is not divisible by heads={heads}")
        self.heads = heads
        self.scale = (d // heads) ** -0.5
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, d)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, source: torch.Tensor, bias: torch.Tensor,
                any_key: torch.Tensor) -> torch.Tensor:
        b, tq, d = x.shape
        tk = source.shape[1]
        h = self.heads
        q = self.q(x).view(b, tq, h, d // h).transpose(1, 2)
        k, v = self.kv(source).view(b, tk, 2, h, d // h).permute(2, 0, 3, 1, 4)
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale + bias
        weights = self.dropout(torch.softmax(scores, dim=-1))
        out = torch.matmul(weights, v).transpose(1, 2).reshape(b, tq, d)
        return self.out(out) * any_key


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 1, Tq, Tk) additive mask and (B, Tq, 1) row indicator from a boolean (B, Tq, Tk) mask.

    A row with no allowed key is opened to every key (so the softmax is finite) and flagged 0 in the indicator,
    which zeroes its attention output.
    """
    any_key = allowed.any(dim=-1, keepdim=True)
    bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    bias = bias.masked_fill(~(allowed | ~any_key), float("-inf"))
    return bias.unsqueeze(1), any_key.to(dtype)


class CrossmodalLayer(nn.Module):
    """Pre-LayerNorm Transformer layer whose queries come from ``x`` and keys/values from ``source``.

    As in MulT, the same LayerNorm normalises queries and keys; ``source=None`` means self-attention.
    """

    def __init__(self, d: int, heads: int, attn_dropout: float, relu_dropout: float, res_dropout: float) -> None:
        super().__init__()
        self.attn = MaskedAttention(d, heads, attn_dropout)
        self.norm_attn = nn.LayerNorm(d)
        self.norm_ff = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)
        self.relu_dropout = nn.Dropout(relu_dropout)
        self.res_dropout = nn.Dropout(res_dropout)

    def forward(self, x: torch.Tensor, source: torch.Tensor | None, bias: torch.Tensor,
                any_key: torch.Tensor) -> torch.Tensor:
        q = self.norm_attn(x)
        kv = q if source is None else self.norm_attn(source)
        x = x + self.res_dropout(self.attn(q, kv, bias, any_key))
        h = self.fc2(self.relu_dropout(F.relu(self.fc1(self.norm_ff(x)))))
        return x + self.res_dropout(h)


class CrossmodalTransformer(nn.Module):
    """Scaled embedding + sinusoidal positions (unless ``positions`` is False) + embedding dropout, ``layers``
    layers, a final LayerNorm."""

    def __init__(self, d: int, heads: int, layers: int, attn_dropout: float, relu_dropout: float,
                 res_dropout: float, embed_dropout: float, positions: bool = True) -> None:
        super().__init__()
        self.d = d
        self.positions = positions
        self.layers = nn.ModuleList(
            CrossmodalLayer(d, heads, attn_dropout, relu_dropout, res_dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(d)
        self.embed_dropout = nn.Dropout(embed_dropout)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if not self.positions:
            return self.embed_dropout(math.sqrt(self.d) * x)
        pos = sinusoidal_positions(x.shape[1], self.d, x.device).to(x.dtype)
        return self.embed_dropout(math.sqrt(self.d) * x + pos)

    def forward(self, x: torch.Tensor, source: torch.Tensor | None, allowed: torch.Tensor) -> torch.Tensor:
        bias, any_key = additive_mask(allowed, x.dtype)
        x = self.embed(x)
        kv = None if source is None else self.embed(source)
        for layer in self.layers:
            x = layer(x, kv, bias, any_key)
        return self.norm(x)


def valid_positions(lengths: torch.Tensor, seq_len: int) -> torch.Tensor:
    """(B, T) bool: position < length (the non-padding positions)."""
    return torch.arange(seq_len, device=lengths.device)[None, :] < lengths.to(torch.long)[:, None]


def last_valid(seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B, H): the state at position length - 1 of each sample (position 0 when the length is 0)."""
    idx = (lengths.to(torch.long) - 1).clamp(0, seq.shape[1] - 1)
    return seq[torch.arange(seq.shape[0], device=seq.device), idx]
