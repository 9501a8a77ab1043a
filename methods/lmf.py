"""LMF: Low-rank Multimodal Fusion (Liu et al., ACL 2018).

TFN's subnetworks, but the weight tensor that maps the outer product [1; h_a] x [1; h_v] x [1; h_l] to the output
is a sum of ``rank`` products of modality-specific factors, so the outer product is never formed:
out = sum_r w_r * prod_m ([1; h_m] W_m^(r)) + b. Sizes and defaults follow MMSA's LMF (MOSI).
"""
from __future__ import annotations

import torch
from torch import nn

from msabench.data.base import Task
from msabench.methods._blocks import SubNet, TextSubNet, fused_adam, masked_mean, output_size
from msabench.training import Batch, TorchMethod

def with_one(h: torch.Tensor) -> torch.Tensor:
    """[1; h] for a batch of vectors (B, d) -> (B, d + 1)."""
    return torch.cat([h.new_ones(h.shape[0], 1), h], dim=1)


class LowRankFusion(nn.Module):
    """out[b, o] = sum_r w_r prod_m ([1; h_m[b]] @ factor_m[r])[o] + bias[o] for modality vectors h_m (B, d_m)."""

    def __init__(self, sizes: list[int], rank: int, n_out: int) -> None:
        super().__init__()
        self.factors = nn.ParameterList([nn.Parameter(torch.empty(rank, d + 1, n_out)) for d in sizes])
        self.fusion_weights = nn.Parameter(torch.empty(1, rank))
        self.fusion_bias = nn.Parameter(torch.zeros(1, n_out))
        for f in self.factors:
            nn.init.xavier_normal_(f)
        nn.init.xavier_normal_(self.fusion_weights)

    def forward(self, vectors: list[torch.Tensor]) -> torch.Tensor:
        product = None
        for h, factor in zip(vectors, self.factors):
            f = torch.matmul(with_one(h), factor)  # (rank, B, n_out)
            product = f if product is None else product * f
        return torch.einsum("r,rbo->bo", self.fusion_weights[0], product) + self.fusion_bias


class LMFModel(nn.Module):
    def __init__(self, dims: dict[str, int], text_hidden: int, audio_hidden: int, video_hidden: int, text_out: int,
                 rank: int, dropouts: tuple[float, float, float], task: Task) -> None:
        super().__init__()
        audio_p, video_p, text_p = dropouts
        self.audio_subnet = SubNet(dims["a"], audio_hidden, audio_p)
        self.video_subnet = SubNet(dims["v"], video_hidden, video_p)
        self.text_subnet = TextSubNet(dims["l"], text_hidden, text_out, text_p)
        self.fusion = LowRankFusion([audio_hidden, video_hidden, text_out], rank, output_size(task))
        self.regression = task.kind == "regression"

    def forward(self, batch: Batch) -> torch.Tensor:
        h_a = self.audio_subnet(masked_mean(batch.features["a"], batch.mask["a"]))
        h_v = self.video_subnet(masked_mean(batch.features["v"], batch.mask["v"]))
        h_l = self.text_subnet(batch.features["l"], batch.mask["l"])
        out = self.fusion([h_a, h_v, h_l])
        return out.squeeze(-1) if self.regression else out


class LMF(TorchMethod):
    """Low-rank Multimodal Fusion: TFN's subnetworks with a rank-r factorised fusion weight tensor."""

    name = "lmf"
    description = "LMF (Liu et al. 2018): low-rank modality-specific factors instead of TFN's full tensor"
    tasks = frozenset({"regression", "multilabel"})

    def __init__(self, text_hidden: int = 128, audio_hidden: int = 16, video_hidden: int = 128, text_out: int = 64,
                 rank: int = 3, audio_dropout: float = 0.3, video_dropout: float = 0.3, text_dropout: float = 0.0,
                 factor_lr: float = 1e-3, lr: float = 1e-3, batch_size: int = 64, epochs: int = 30,
                 patience: int = 8, weight_decay: float = 5e-3, **kwargs) -> None:
        super().__init__(lr=lr, batch_size=batch_size, epochs=epochs, patience=patience,
                         weight_decay=weight_decay, **kwargs)
        self.text_hidden = text_hidden
        self.audio_hidden = audio_hidden
        self.video_hidden = video_hidden
        self.text_out = text_out
        self.rank = rank
        self.audio_dropout = audio_dropout
        self.video_dropout = video_dropout
        self.text_dropout = text_dropout
        self.factor_lr = factor_lr

    def build(self, dims: dict[str, int], seq_lens: dict[str, int], task: Task) -> nn.Module:
        dropouts = (self.audio_dropout, self.video_dropout, self.text_dropout)
        return LMFModel(dims, self.text_hidden, self.audio_hidden, self.video_hidden, self.text_out, self.rank,
                        dropouts, task)

    def make_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        """The modality factors at ``factor_lr``, everything else at ``lr`` (as the authors' code)."""
        model = getattr(self, "model_", None)
        factor_ids = {id(p) for p in model.fusion.factors} if model is not None else set()
        factors = [p for p in params if id(p) in factor_ids]
        rest = [p for p in params if id(p) not in factor_ids]
        groups = [g for g in ({"params": factors, "lr": self.factor_lr}, {"params": rest, "lr": self.lr})
                  if g["params"]]
        return fused_adam(groups, self.lr, self.weight_decay)

    @classmethod
    def search_space(cls, trial) -> dict:
        return {
            "rank": trial.suggest_int("rank", 1, 8),
            "text_out": trial.suggest_categorical("text_out", [32, 64, 128]),
            "lr": trial.suggest_float("lr", 3e-4, 3e-3, log=True),
            "factor_lr": trial.suggest_float("factor_lr", 1e-4, 3e-3, log=True),
            "weight_decay": trial.suggest_categorical("weight_decay", [0.0, 1e-3, 5e-3]),
        }
