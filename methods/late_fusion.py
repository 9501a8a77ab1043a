"""Late fusion: per-modality frame encoder, mean over present frames, concatenation, prediction head.

The simplest reasonable MSA model, and the reference point every other method should beat.
"""
from __future__ import annotations

import torch
from torch import nn

from msabench.data.base import Task
from msabench.methods._blocks import masked_mean, mlp, output_size, present_frames_only
from msabench.training import Batch, TorchMethod


class LateFusionModel(nn.Module):
    def __init__(self, dims: dict[str, int], hidden: int, dropout: float, n_out: int) -> None:
        super().__init__()
        self.modalities = sorted(dims)
        self.encoders = nn.ModuleDict({m: mlp([dims[m], hidden, hidden], dropout) for m in self.modalities})
        self.head = mlp([hidden * len(self.modalities), hidden, n_out], dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, batch: Batch) -> torch.Tensor:
        pooled = [masked_mean(self.encode(m, batch.features[m], batch.mask[m]), batch.mask[m])
                  for m in self.modalities]
        out = self.head(self.dropout(torch.cat(pooled, dim=-1)))
        return out.squeeze(-1) if out.shape[-1] == 1 else out

    def encode(self, modality: str, x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """relu(encoder(frame)) for every frame (training), or for the present frames only (evaluation).

        Both give the same pooled values (bit for bit on CPU); training stays dense because dropout draws one
        random number per frame, so computing fewer frames would change the dropout stream and every trained model.
        """
        def encoder(frames: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.encoders[modality](frames))
        return encoder(x) if self.training else present_frames_only(encoder, x, present)


class LateFusion(TorchMethod):
    """Per-modality MLP encoders pooled over present frames, concatenated, then an MLP head."""

    name = "late-fusion"
    description = "late fusion: per-modality MLP + mean pooling, concatenation, MLP head"

    def __init__(self, hidden: int = 64, dropout: float = 0.2, lr: float = 1e-3, batch_size: int = 64,
                 epochs: int = 30, patience: int = 8, weight_decay: float = 1e-4, **kwargs) -> None:
        super().__init__(lr=lr, batch_size=batch_size, epochs=epochs, patience=patience,
                         weight_decay=weight_decay, **kwargs)
        self.hidden = hidden
        self.dropout = dropout

    def build(self, dims: dict[str, int], seq_lens: dict[str, int], task: Task) -> nn.Module:
        return LateFusionModel(dims, self.hidden, self.dropout, output_size(task))

    @classmethod
    def search_space(cls, trial) -> dict:
        return {
            "hidden": trial.suggest_categorical("hidden", [32, 64, 128]),
            "dropout": trial.suggest_float("dropout", 0.0, 0.5),
            "lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True),
        }
