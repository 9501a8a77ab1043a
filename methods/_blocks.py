"""Building blocks shared by the built-in methods."""
from __future__ import annotations

import math

import torch
from torch import nn


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x (B, T, H) over the present frames of mask (B, T); zero where nothing is present."""
    w = mask.to(x.dtype).unsqueeze(-1)
    return (x * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)


def mlp(sizes: list[int], dropout: float = 0.0, act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Linear layers with activations and dropout between them (none after the last)."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers += [act(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


def sinusoidal_positions(length: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """The (length, dim) sinusoidal positional encoding of Vaswani et al. (2017)."""
    pos = torch.arange(length, dtype=torch.float32, device=device).unsqueeze(1)
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div[: dim // 2])
    return pe


def output_size(task) -> int:
    """Width of the prediction layer: 1 for regression, K emotions or C classes otherwise."""
    return task.n_outputs


class TransformerSeqEncoder(nn.Module):
    """Conv1d(kernel) projection to d, sinusoidal positions, a Transformer encoder with padding masked."""

    def __init__(self, in_dim: int, d: int, heads: int, layers: int, kernel: int = 3, dropout: float = 0.1) -> None:
        super().__init__()
        self.proj = nn.Conv1d(in_dim, d, kernel_size=kernel, padding=kernel // 2, bias=False)
        layer = nn.TransformerEncoderLayer(d, heads, dim_feedforward=4 * d, dropout=dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.d = d

    def forward(self, x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        h = self.proj(x.transpose(1, 2)).transpose(1, 2) * math.sqrt(self.d)
        h = h + sinusoidal_positions(h.shape[1], self.d, h.device).to(h.dtype)
        # a sample with no present frame attends to everything (its output is pooled away anyway)
        pad = ~present
        pad = pad & present.any(dim=1, keepdim=True)
        return self.encoder(h, src_key_padding_mask=pad)
