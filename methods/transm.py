"""TransModality (Wang, Wan & Wan, WWW 2020): Transformer translation between modality pairs, fused encoders.

For each pair (text, audio) and (text, vision), one Transformer translates in each direction (l→a, a→l, l→v, v→l).
A translator is a Transformer encoder over the source sequence and a Transformer decoder that reconstructs the
target sequence with teacher forcing (the target shifted by one frame, under a causal mask). The translation error
is counted on present target frames only. The encoder outputs of the four translators are pooled over their present
source frames, concatenated and fed to the prediction head; the decoders are used only for the training loss.
"""
from __future__ import annotations

import torch
from torch import nn

from msabench.data.base import Task
from msabench.methods._blocks import (
    TransformerSeqEncoder,
    masked_mean,
    masked_mse,
    mlp,
    output_size,
    sinusoidal_positions,
)
from msabench.training import Batch, TorchMethod, task_loss

PAIRS: tuple[tuple[str, str], ...] = (("l", "a"), ("a", "l"), ("l", "v"), ("v", "l"))


def shift_right(x: torch.Tensor) -> torch.Tensor:
    """Teacher-forcing input: frame t of the output is frame t-1 of ``x``; frame 0 is zero (a start frame)."""
    return torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)


def attention_padding(present: torch.Tensor) -> torch.Tensor:
    """Key padding mask (True = ignore) that never masks every key of a row: an all-absent row attends to all."""
    return ~present & present.any(dim=1, keepdim=True)


class Translator(nn.Module):
    """Transformer translation source → target; its encoder output is the source's fused representation."""

    def __init__(self, src_dim: int, tgt_dim: int, d: int, heads: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.encoder = TransformerSeqEncoder(src_dim, d, heads, layers, kernel=1, dropout=dropout)
        self.tgt_in = nn.Linear(tgt_dim, d)
        layer = nn.TransformerDecoderLayer(d, heads, dim_feedforward=4 * d, dropout=dropout, batch_first=True)
        self.decoder = nn.TransformerDecoder(layer, layers)
        self.tgt_out = nn.Linear(d, tgt_dim)
        self.d = d

    def forward(self, src: torch.Tensor, src_present: torch.Tensor) -> torch.Tensor:
        return self.encoder(src, src_present)

    def translate(self, memory: torch.Tensor, src_present: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """Predicted target frames (B, T_tgt, D_tgt) from the encoder memory, teacher-forced on ``tgt``."""
        t = tgt.shape[1]
        h = self.tgt_in(shift_right(tgt)) + sinusoidal_positions(t, self.d, tgt.device).to(tgt.dtype)
        causal = nn.Transformer.generate_square_subsequent_mask(t, device=tgt.device, dtype=h.dtype)
        out = self.decoder(h, memory, tgt_mask=causal, tgt_is_causal=True,
                           memory_key_padding_mask=attention_padding(src_present))
        return self.tgt_out(out)


class TransMModel(nn.Module):
    def __init__(self, dims: dict[str, int], d: int, heads: int, layers: int, dropout: float, n_out: int) -> None:
        super().__init__()
        self.translators = nn.ModuleDict({f"{s}2{t}": Translator(dims[s], dims[t], d, heads, layers, dropout)
                                          for s, t in PAIRS})
        self.head = mlp([d * len(PAIRS), d, n_out], dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        pooled, translations = [], {}
        for s, t in PAIRS:
            tr = self.translators[f"{s}2{t}"]
            memory = tr(batch.features[s], batch.mask[s])
            pooled.append(masked_mean(memory, batch.mask[s]))
            if self.training:
                translations[f"{s}2{t}"] = tr.translate(memory, batch.mask[s], batch.features[t])
        out = self.head(self.dropout(torch.cat(pooled, dim=-1)))
        return {"pred": out.squeeze(-1) if out.shape[-1] == 1 else out, **translations}


class TransM(TorchMethod):
    """TransModality: bidirectional Transformer translation for (l, a) and (l, v); fused encoder outputs."""

    name = "transm"
    description = "TransModality (Wang et al. 2020): Transformer translations l<->a, l<->v, fused encoder outputs"
    tasks = frozenset({"regression", "multilabel"})

    def __init__(self, d_model: int = 32, heads: int = 4, layers: int = 1, dropout: float = 0.0,
                 translation_weight: float = 0.1, lr: float = 1e-3, batch_size: int = 64, epochs: int = 30,
                 patience: int = 8, weight_decay: float = 0.0, **kwargs) -> None:
        super().__init__(lr=lr, batch_size=batch_size, epochs=epochs, patience=patience,
                         weight_decay=weight_decay, **kwargs)
        self.d_model = d_model
        self.heads = heads
        self.layers = layers
        self.dropout = dropout
        self.translation_weight = translation_weight

    def build(self, dims: dict[str, int], seq_lens: dict[str, int], task: Task) -> nn.Module:
        return TransMModel(dims, self.d_model, self.heads, self.layers, self.dropout, output_size(task))

    def loss(self, output: dict[str, torch.Tensor], batch: Batch, task: Task) -> torch.Tensor:
        """Task loss + mean translation error (MSE over present target frames) of the four translators."""
        translation = sum(masked_mse(output[f"{s}2{t}"], batch.features[t], batch.mask[t]) for s, t in PAIRS)
        return task_loss(output["pred"], batch.labels, task) + self.translation_weight * translation / len(PAIRS)

    @classmethod
    def search_space(cls, trial) -> dict:
        return {
            "d_model": trial.suggest_categorical("d_model", [16, 32, 64]),
            "dropout": trial.suggest_float("dropout", 0.0, 0.3),
            "translation_weight": trial.suggest_float("translation_weight", 0.01, 1.0, log=True),
            "lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True),
        }
