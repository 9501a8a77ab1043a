"""Building blocks shared by the built-in methods."""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x (B, T, H) over the present frames of mask (B, T); zero where nothing is present."""
    w = mask.to(x.dtype).unsqueeze(-1)
    return (x * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)


def present_frames_only(framewise: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                        present: torch.Tensor) -> torch.Tensor:
    """``framewise`` applied to the present frames of x (B, T, D) only, zeros at the other frames: (B, T, H).

    For a function of each frame alone (an MLP), the present frames get exactly the values ``framewise(x)`` gives
    them, from fewer rows of arithmetic (under random-missing, a third of the frames on average). Absent frames are 0,
    which a masked pooling ignores anyway.
    """
    b, t, d = x.shape
    rows = present.reshape(-1).nonzero().squeeze(1)
    h = framewise(x.reshape(b * t, d).index_select(0, rows))
    return h.new_zeros(b * t, h.shape[-1]).index_copy_(0, rows, h).view(b, t, h.shape[-1])


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


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the present positions of ``mask`` (pred/target (..., D), mask (...)); 0 if none."""
    w = mask.to(pred.dtype).unsqueeze(-1)
    sq = ((pred - target) ** 2 * w).sum()
    return sq / (w.sum() * pred.shape[-1]).clamp_min(1.0)


# recurrent encoders over present frames (TFN, LMF, MISA, EF-LSTM) ------------------------------------------------
def compact_present(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move the present frames of x (B, T, D) to the front, in their original order; zero the rest.

    Returns the compacted tensor, cut to the largest count (at least one frame), and the counts (B,).
    """
    order = torch.argsort((~mask).to(torch.int32), dim=1, stable=True)
    counts = mask.sum(dim=1)
    width = max(int(counts.max()) if counts.numel() else 1, 1)
    order = order[:, :width]
    out = torch.gather(x, 1, order.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    keep = torch.arange(width, device=x.device)[None, :] < counts[:, None]
    return out * keep.unsqueeze(-1).to(out.dtype), counts


def last_present_output(rnn: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The top-layer state of a unidirectional batch-first RNN after the last present frame of x (B, T, D).

    The RNN reads only the present frames, in order (padding and dropped frames are skipped), which equals its
    final hidden state on a packed sequence of those frames. A sample without any present frame gets zeros
    (the initial state).
    """
    xc, counts = compact_present(x, mask)
    out, _ = rnn(xc)
    idx = (counts - 1).clamp_min(0).view(-1, 1, 1).expand(-1, 1, out.shape[-1])
    last = out.gather(1, idx).squeeze(1)
    return last * (counts > 0).unsqueeze(-1).to(last.dtype)


class SubNet(nn.Module):
    """TFN's pre-fusion network for a pooled vector: BatchNorm, dropout, three Linear + ReLU layers."""

    def __init__(self, in_size: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(in_size)
        self.drop = nn.Dropout(dropout)
        self.net = nn.Sequential(nn.Linear(in_size, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.drop(self.norm(x)))


class TextSubNet(nn.Module):
    """TFN's text network: a one-layer LSTM over the present words, its final state, dropout, a Linear layer."""

    def __init__(self, in_size: int, hidden: int, out_size: int, dropout: float) -> None:
        super().__init__()
        self.rnn = nn.LSTM(in_size, hidden, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, out_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(last_present_output(self.rnn, x, mask)))


def fused_adam(param_groups: list, lr: float, weight_decay: float = 0.0) -> torch.optim.Adam:
    """Adam (same update rule as torch's default) with the fused kernel where the parameters' device has one.

    The fused kernel makes a step several times faster for large layers such as TFN's post-fusion layer.
    """
    groups = param_groups if param_groups and isinstance(param_groups[0], dict) else [{"params": param_groups}]
    devices = {p.device.type for g in groups for p in g["params"]}
    fused = bool(devices) and devices <= {"cpu", "cuda"}
    return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay, fused=fused or None)


# gradient reversal (LNLN's proxy generator, HRLF's adversary) -------------------------------------------------------
class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, alpha: float) -> torch.Tensor:
        ctx.alpha = alpha
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad.neg() * ctx.alpha, None


def grad_reverse(x: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Identity forward; the gradient is multiplied by ``-alpha`` backward (Ganin and Lempitsky, 2015)."""
    return _GradReverse.apply(x, alpha)
