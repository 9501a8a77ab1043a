"""MulT: the Multimodal Transformer of Tsai et al. (ACL 2019) for unaligned multimodal sequences.

Each modality is projected to ``d`` by a temporal Conv1d; six directional cross-modal Transformers let every target
modality attend to each of the two others (l<-a, l<-v, a<-l, a<-v, v<-l, v<-a); per target, the two cross-modal
streams are concatenated and passed through a self-attention memory Transformer; the last-step outputs of the three
memories are concatenated and go through a residual output block. Sequences may have different lengths.

Missing data: the features of dropped frames are zeroed before the projection, so their content cannot matter;
dropped frames and padding are masked as keys in cross-modal attention; a query with no key left (its source
modality entirely absent) receives a zero attention output instead of NaN, so only its residual stream goes on.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from msabench.data.base import Task
from msabench.methods._blocks import masked_mean, output_size
from msabench.methods._crossmodal import CrossmodalTransformer, attention_allowed, last_valid, valid_positions
from msabench.training import Batch, TorchMethod

MODALITIES: tuple[str, ...] = ("l", "a", "v")


class MulTModel(nn.Module):
    def __init__(self, dims: dict[str, int], d: int, heads: int, layers: int, kernels: dict[str, int],
                 attn_dropout: dict[str, float], mem_attn_dropout: float, relu_dropout: float, res_dropout: float,
                 embed_dropout: float, text_dropout: float, output_dropout: float, causal: bool, pool: str,
                 n_out: int) -> None:
        super().__init__()
        if pool not in ("last", "mean"):
            raise ValueError(f"MulT: pool must be 'last' or 'mean', not {pool!r}")
        self.causal = causal
        self.pool = pool
        self.proj = nn.ModuleDict({
            m: nn.Conv1d(dims[m], d, kernel_size=kernels[m], padding="same", bias=False) for m in MODALITIES})
        # cross[t + s]: target t attends to source s; attention dropout is the source's (as in MulT)
        self.cross = nn.ModuleDict({
            t + s: CrossmodalTransformer(d, heads, layers, attn_dropout[s], relu_dropout, res_dropout,
                                         embed_dropout)
            for t in MODALITIES for s in MODALITIES if s != t})
        self.mem = nn.ModuleDict({
            t: CrossmodalTransformer(2 * d, heads, max(layers, 3), mem_attn_dropout, relu_dropout, res_dropout,
                                     embed_dropout)
            for t in MODALITIES})
        combined = 2 * d * len(MODALITIES)
        self.proj1 = nn.Linear(combined, combined)
        self.proj2 = nn.Linear(combined, combined)
        self.out_layer = nn.Linear(combined, n_out)
        self.text_dropout = nn.Dropout(text_dropout)
        self.output_dropout = nn.Dropout(output_dropout)

    def project(self, batch: Batch) -> dict[str, torch.Tensor]:
        """(B, T, d) per modality; dropped frames and padding are zeroed before the Conv1d."""
        out = {}
        for m in MODALITIES:
            x = batch.features[m] * batch.mask[m].unsqueeze(-1).to(batch.features[m].dtype)
            if m == "l":
                x = self.text_dropout(x)
            out[m] = self.proj[m](x.transpose(1, 2)).transpose(1, 2)
        return out

    def target_states(self, h: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
        """Per target modality the memory Transformer's output sequence (B, T_target, 2d)."""
        states = {}
        for t in MODALITIES:
            streams = []
            for s in MODALITIES:
                if s == t:
                    continue
                allowed = attention_allowed(batch.mask[s], h[t].shape[1], self.causal)
                streams.append(self.cross[t + s](h[t], h[s], allowed))
            valid = valid_positions(batch.lengths[t], h[t].shape[1])
            allowed = attention_allowed(valid, h[t].shape[1], self.causal)
            states[t] = self.mem[t](torch.cat(streams, dim=-1), None, allowed)
        return states

    def forward(self, batch: Batch) -> torch.Tensor:
        states = self.target_states(self.project(batch), batch)
        pooled = []
        for t in MODALITIES:
            seq = states[t]
            if self.pool == "last":
                pooled.append(last_valid(seq, batch.lengths[t]))
            else:
                pooled.append(masked_mean(seq, valid_positions(batch.lengths[t], seq.shape[1])))
        last_hs = torch.cat(pooled, dim=-1)
        h = self.proj2(self.output_dropout(F.relu(self.proj1(last_hs)))) + last_hs
        out = self.out_layer(h)
        return out.squeeze(-1) if out.shape[-1] == 1 else out


class MulT(TorchMethod):
    """Multimodal Transformer: directional cross-modal attention between unaligned sequences."""

    name = "mult"
    description = "MulT (Tsai et al., ACL 2019): six cross-modal Transformers + memory Transformers, unaligned"

    def __init__(self, d: int = 50, heads: int = 10, layers: int = 4, kernel_l: int = 5, kernel_a: int = 5,
                 kernel_v: int = 5, attn_dropout: float = 0.3, attn_dropout_a: float = 0.2,
                 attn_dropout_v: float = 0.0, relu_dropout: float = 0.0, res_dropout: float = 0.0,
                 embed_dropout: float = 0.2, text_dropout: float = 0.5, output_dropout: float = 0.5,
                 causal: bool = True, pool: str = "last", lr: float = 2e-3, batch_size: int = 16,
                 epochs: int = 30, patience: int = 8, weight_decay: float = 0.0, grad_clip: float = 0.6,
                 **kwargs) -> None:
        super().__init__(lr=lr, batch_size=batch_size, epochs=epochs, patience=patience,
                         weight_decay=weight_decay, grad_clip=grad_clip, **kwargs)
        self.d = d
        self.heads = heads
        self.layers = layers
        self.kernel_l = kernel_l
        self.kernel_a = kernel_a
        self.kernel_v = kernel_v
        self.attn_dropout = attn_dropout
        self.attn_dropout_a = attn_dropout_a
        self.attn_dropout_v = attn_dropout_v
        self.relu_dropout = relu_dropout
        self.res_dropout = res_dropout
        self.embed_dropout = embed_dropout
        self.text_dropout = text_dropout
        self.output_dropout = output_dropout
        self.causal = causal
        self.pool = pool

    def build(self, dims: dict[str, int], seq_lens: dict[str, int], task: Task) -> nn.Module:
        return MulTModel(
            dims, self.d, self.heads, self.layers,
            kernels={"l": self.kernel_l, "a": self.kernel_a, "v": self.kernel_v},
            attn_dropout={"l": self.attn_dropout, "a": self.attn_dropout_a, "v": self.attn_dropout_v},
            mem_attn_dropout=self.attn_dropout, relu_dropout=self.relu_dropout, res_dropout=self.res_dropout,
            embed_dropout=self.embed_dropout, text_dropout=self.text_dropout,
            output_dropout=self.output_dropout, causal=self.causal, pool=self.pool, n_out=output_size(task))

    @classmethod
    def search_space(cls, trial) -> dict:
        return {
            "d": trial.suggest_categorical("d", [30, 40, 50]),
            "heads": trial.suggest_categorical("heads", [5, 10]),
            "layers": trial.suggest_int("layers", 2, 5),
            "embed_dropout": trial.suggest_float("embed_dropout", 0.0, 0.4),
            "output_dropout": trial.suggest_float("output_dropout", 0.0, 0.5),
            "lr": trial.suggest_float("lr", 2e-4, 3e-3, log=True),
        }
