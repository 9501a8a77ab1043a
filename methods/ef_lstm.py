"""EF-LSTM: early fusion of word-aligned frames into one LSTM (the MMSA baseline).

The three modalities' frames at each aligned time step are concatenated and read by a multi-layer LSTM; the final
state of its top layer goes through dropout, Linear + ReLU, dropout and the output layer. Needs equal-length
aligned sequences. Defaults follow MMSA's EF_LSTM (MOSI).
"""
from __future__ import annotations

import torch
from torch import nn

from msabench.data.base import MODALITIES, Task
from msabench.method import UnsupportedTaskError
from msabench.methods._blocks import fused_adam, last_present_output, output_size
from msabench.training import Batch, TorchMethod


def early_fusion(features: dict[str, torch.Tensor], mask: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate aligned frames (B, T, D_l + D_a + D_v); a step is present when any modality is present there."""
    mods = [m for m in MODALITIES if m in features]
    x = torch.cat([features[m] for m in mods], dim=-1)
    present = torch.stack([mask[m] for m in mods]).any(dim=0)
    return x, present


class EFLSTMModel(nn.Module):
    def __init__(self, in_size: int, hidden: int, layers: int, dropout: float, n_out: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(in_size, hidden, num_layers=layers, dropout=dropout if layers > 1 else 0.0,
                            batch_first=True)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Linear(hidden, n_out))

    def forward(self, batch: Batch) -> torch.Tensor:
        x, present = early_fusion(batch.features, batch.mask)
        out = self.head(last_present_output(self.lstm, x, present))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


class EFLSTM(TorchMethod):
    """Early fusion: concatenated aligned frames, one multi-layer LSTM, an MLP head."""

    name = "ef-lstm"
    description = "EF-LSTM: early fusion of word-aligned frames into one LSTM"
    tasks = frozenset({"regression", "multilabel"})
    requires_aligned = True

    def __init__(self, hidden: int = 128, num_layers: int = 4, dropout: float = 0.5, lr: float = 1e-3,
                 batch_size: int = 32, epochs: int = 30, patience: int = 8, weight_decay: float = 0.0,
                 **kwargs) -> None:
        super().__init__(lr=lr, batch_size=batch_size, epochs=epochs, patience=patience,
                         weight_decay=weight_decay, **kwargs)
        self.hidden = hidden
        self.num_layers = num_layers
        self.dropout = dropout

    def build(self, dims: dict[str, int], seq_lens: dict[str, int], task: Task) -> nn.Module:
        if len(set(seq_lens.values())) != 1:
            raise UnsupportedTaskError(
                f"ef-lstm concatenates aligned frames and needs equal sequence lengths, got {seq_lens}; "
                f"use the word-aligned release of the data")
        n_out = output_size(task)
        return EFLSTMModel(sum(dims.values()), self.hidden, self.num_layers, self.dropout, n_out)

    def make_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        return fused_adam(params, self.lr, self.weight_decay)

    @classmethod
    def search_space(cls, trial) -> dict:
        return {
            "hidden": trial.suggest_categorical("hidden", [64, 128, 256]),
            "num_layers": trial.suggest_int("num_layers", 1, 4),
            "dropout": trial.suggest_float("dropout", 0.0, 0.5),
            "lr": trial.suggest_float("lr", 3e-4, 3e-3, log=True),
        }
