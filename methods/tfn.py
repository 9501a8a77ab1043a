"""TFN: Tensor Fusion Network (Zadeh et al., EMNLP 2017).

Unimodal subnetworks (an LSTM for text; mean over present frames + BatchNorm MLP for audio and vision), the
flattened 3-fold outer product of the three modality vectors each extended with a constant 1, and a post-fusion
MLP. Sizes and defaults follow MMSA's TFN (thuiar/MMSA, config_regression.json, MOSI).
"""
from __future__ import annotations

import torch
from torch import nn

from msabench.data.base import Task
from msabench.methods._blocks import SubNet, TextSubNet, fused_adam, masked_mean, output_size
from msabench.training import Batch, TorchMethod


def tensor_fusion(vectors: list[torch.Tensor]) -> torch.Tensor:
    """Flattened outer product of [1; v] over the (B, d_i) vectors: (B, prod(d_i + 1)), the first index slowest."""
    out: torch.Tensor | None = None
    for v in vectors:
        z = torch.cat([v.new_ones(v.shape[0], 1), v], dim=1)
        out = z if out is None else (out.unsqueeze(2) * z.unsqueeze(1)).flatten(1)
    assert out is not None
    return out


def sentiment_range(task: Task) -> float:
    """Half-width of the sentiment label range: 1 for CH-SIMS, 3 for MOSI/MOSEI."""
    return 1.0 if task.metric_set == "sims" else 3.0


class TFNModel(nn.Module):
    def __init__(self, dims: dict[str, int], text_hidden: int, audio_hidden: int, video_hidden: int, text_out: int,
                 post_fusion_dim: int, dropouts: tuple[float, float, float, float], task: Task) -> None:
        super().__init__()
        audio_p, video_p, text_p, post_p = dropouts
        self.audio_subnet = SubNet(dims["a"], audio_hidden, audio_p)
        self.video_subnet = SubNet(dims["v"], video_hidden, video_p)
        self.text_subnet = TextSubNet(dims["l"], text_hidden, text_out, text_p)
        fused = (audio_hidden + 1) * (video_hidden + 1) * (text_out + 1)
        self.post_fusion = nn.Sequential(
            nn.Dropout(post_p), nn.Linear(fused, post_fusion_dim), nn.ReLU(),
            nn.Linear(post_fusion_dim, post_fusion_dim), nn.ReLU(), nn.Linear(post_fusion_dim, output_size(task)),
        )
        self.regression = task.kind == "regression"
        self.half_range = sentiment_range(task)

    def forward(self, batch: Batch) -> torch.Tensor:
        h_a = self.audio_subnet(masked_mean(batch.features["a"], batch.mask["a"]))
        h_v = self.video_subnet(masked_mean(batch.features["v"], batch.mask["v"]))
        h_l = self.text_subnet(batch.features["l"], batch.mask["l"])
        out = self.post_fusion(tensor_fusion([h_a, h_v, h_l]))
        if self.regression:  # MMSA/TFN: a sigmoid scaled to the label range
            return torch.sigmoid(out.squeeze(-1)) * (2 * self.half_range) - self.half_range
        return out


class TFN(TorchMethod):
    """Tensor Fusion Network: subnetworks, outer product of [1; h_a] x [1; h_v] x [1; h_l], post-fusion MLP."""

    name = "tfn"
    description = "TFN (Zadeh et al. 2017): 3-fold outer-product tensor fusion of unimodal embeddings"
    tasks = frozenset({"regression", "multilabel"})

    def __init__(self, text_hidden: int = 128, audio_hidden: int = 32, video_hidden: int = 128, text_out: int = 32,
                 post_fusion_dim: int = 64, audio_dropout: float = 0.3, video_dropout: float = 0.3,
                 text_dropout: float = 0.0, post_fusion_dropout: float = 0.5, lr: float = 1e-3, batch_size: int = 32,
                 epochs: int = 30, patience: int = 8, weight_decay: float = 0.0, **kwargs) -> None:
        super().__init__(lr=lr, batch_size=batch_size, epochs=epochs, patience=patience,
                         weight_decay=weight_decay, **kwargs)
        self.text_hidden = text_hidden
        self.audio_hidden = audio_hidden
        self.video_hidden = video_hidden
        self.text_out = text_out
        self.post_fusion_dim = post_fusion_dim
        self.audio_dropout = audio_dropout
        self.video_dropout = video_dropout
        self.text_dropout = text_dropout
        self.post_fusion_dropout = post_fusion_dropout

    def build(self, dims: dict[str, int], seq_lens: dict[str, int], task: Task) -> nn.Module:
        dropouts = (self.audio_dropout, self.video_dropout, self.text_dropout, self.post_fusion_dropout)
        return TFNModel(dims, self.text_hidden, self.audio_hidden, self.video_hidden, self.text_out,
                        self.post_fusion_dim, dropouts, task)

    def make_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        return fused_adam(params, self.lr, self.weight_decay)

    @classmethod
    def search_space(cls, trial) -> dict:
        return {
            "text_out": trial.suggest_categorical("text_out", [16, 32, 64]),
            "post_fusion_dim": trial.suggest_categorical("post_fusion_dim", [16, 32, 64, 128]),
            "post_fusion_dropout": trial.suggest_float("post_fusion_dropout", 0.0, 0.6),
            "lr": trial.suggest_float("lr", 1e-4, 5e-3, log=True),
        }
