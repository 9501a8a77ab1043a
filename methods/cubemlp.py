"""CubeMLP (Sun et al., ACM MM 2022): MLP mixing along the sequence, modality and channel axes.

Each modality is brought to a common channel size (text by a linear map; audio and vision by a bidirectional GRU
run over each sequence's length, its two directions summed, then LayerNorm and ReLU, as in the authors' code) and
zero-padded to a common length; the three are stacked into a (B, L, 3, C) tensor that CubeMLP blocks mix along each
axis in turn.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from msabench.data.base import Task
from msabench.methods._blocks import output_size
from msabench.training import Batch, TorchMethod

MODS = ("l", "a", "v")


class AxisMLP(nn.Module):
    """A two-layer MLP applied along one axis of a tensor, with LayerNorm first and a projected residual.

    ``y = Dropout(W2 GELU(W1 LN(x) + b1) + b2) + R x`` along ``axis`` (the authors' ``ln_first`` and
    ``res_project`` options); every other axis is left alone.
    """

    def __init__(self, axis: int, d_in: int, d_hidden: int, d_out: int, dropout: float, bias: bool = True) -> None:
        super().__init__()
        self.axis = axis
        self.norm = nn.LayerNorm(d_in, eps=1e-6)
        self.fc1 = nn.Linear(d_in, d_hidden, bias=bias)
        self.fc2 = nn.Linear(d_hidden, d_out, bias=bias)
        self.residual = nn.Linear(d_in, d_out, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.movedim(self.axis, -1)
        out = self.fc2(nn.functional.gelu(self.fc1(self.norm(h))))
        return (self.dropout(out) + self.residual(h)).movedim(-1, self.axis)


class CubeBlock(nn.Module):
    """Sequence mixing (axis 1), then modality mixing (axis 2), then channel mixing (axis 3) of (B, L, M, C)."""

    def __init__(self, d_in: tuple[int, int, int], d_out: tuple[int, int, int], dropout: float) -> None:
        super().__init__()
        self.mix = nn.ModuleList([AxisMLP(axis + 1, d_in[axis], d_out[axis], d_out[axis], dropout)
                                  for axis in range(3)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.mix:
            x = layer(x)
        return x


class CubeMLPModel(nn.Module):
    def __init__(self, dims: dict[str, int], seq_lens: dict[str, int], d_common: int, seq_hidden: int,
                 seq_out: int, d_out: int, gru_layers: int, dropout: float, mix_dropout: float, n_out: int) -> None:
        super().__init__()
        self.length = max(seq_lens.values())
        self.d_common = d_common
        self.proj_l = nn.Linear(dims["l"], d_common, bias=False)
        self.rnns = nn.ModuleDict({m: nn.GRU(dims[m], d_common, gru_layers, batch_first=True, bidirectional=True)
                                   for m in ("a", "v")})
        self.norms = nn.ModuleDict({m: nn.LayerNorm(d_common, eps=1e-6) for m in ("a", "v")})
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.Sequential(
            CubeBlock((self.length, len(MODS), d_common), (seq_hidden, len(MODS), d_common), mix_dropout),
            CubeBlock((seq_hidden, len(MODS), d_common), (seq_out, len(MODS), d_out), mix_dropout),
        )
        # the authors' MOSI setting: mean over time, concatenation over modalities; one linear layer when small
        d_fused = len(MODS) * d_out
        self.head = (nn.Linear(d_fused, n_out) if d_fused <= 128 else
                     nn.Sequential(nn.Linear(d_fused, 128), nn.ReLU(), nn.Dropout(dropout), nn.Linear(128, n_out)))

    def encode(self, batch: Batch) -> torch.Tensor:
        """The stacked (B, L, 3, C) tensor; absent frames and padding are zero."""
        seqs = []
        for m in MODS:
            x = batch.features[m]
            if m == "l":
                h = self.proj_l(x)
            else:
                lengths = batch.lengths[m].clamp(min=1, max=x.shape[1]).to("cpu", torch.int64)
                packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
                h, _ = pad_packed_sequence(self.rnns[m](packed)[0], batch_first=True, total_length=x.shape[1])
                h = h[..., :self.d_common] + h[..., self.d_common:]
                h = torch.relu(self.norms[m](h))
            h = self.dropout(h) * batch.mask[m].unsqueeze(-1).to(h.dtype)
            seqs.append(nn.functional.pad(h, (0, 0, 0, self.length - h.shape[1])))
        return torch.stack(seqs, dim=2)

    def forward(self, batch: Batch) -> torch.Tensor:
        x = self.blocks(self.encode(batch))
        fused = x.mean(dim=1).flatten(1)
        out = self.head(fused)
        return out.squeeze(-1) if out.shape[-1] == 1 else out


class CubeMLP(TorchMethod):
    """CubeMLP: GRU/linear encoders to a common size, then MLP mixing along sequence, modality and channel."""

    name = "cubemlp"
    description = "CubeMLP (Sun et al. 2022): MLP mixing along sequence, modality and channel axes"
    tasks = frozenset({"regression", "multilabel"})

    def __init__(self, d_common: int = 32, seq_hidden: int = 50, seq_out: int = 10, d_out: int = 32,
                 gru_layers: int = 1, dropout: float = 0.1, mix_dropout: float = 0.1, lr: float = 4e-3,
                 batch_size: int = 128, epochs: int = 30, patience: int = 8, weight_decay: float = 0.0,
                 grad_clip: float = 1.0, **kwargs) -> None:
        super().__init__(lr=lr, batch_size=batch_size, epochs=epochs, patience=patience,
                         weight_decay=weight_decay, grad_clip=grad_clip, **kwargs)
        self.d_common = d_common
        self.seq_hidden = seq_hidden
        self.seq_out = seq_out
        self.d_out = d_out
        self.gru_layers = gru_layers
        self.dropout = dropout
        self.mix_dropout = mix_dropout

    def build(self, dims: dict[str, int], seq_lens: dict[str, int], task: Task) -> nn.Module:
        return CubeMLPModel(dims, seq_lens, self.d_common, self.seq_hidden, self.seq_out, self.d_out,
                            self.gru_layers, self.dropout, self.mix_dropout, output_size(task))

    @classmethod
    def search_space(cls, trial) -> dict:
        return {
            "d_common": trial.suggest_categorical("d_common", [32, 64, 128]),
            "dropout": trial.suggest_float("dropout", 0.0, 0.5),
            "mix_dropout": trial.suggest_float("mix_dropout", 0.0, 0.5),
            "lr": trial.suggest_float("lr", 5e-4, 5e-3, log=True),
        }
