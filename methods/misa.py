"""MISA: Modality-Invariant and -Specific Representations (Hazarika, Zimmermann & Poria, ACM MM 2020).

Each modality's utterance vector (two stacked bidirectional LSTMs with LayerNorm in between, over present frames)
is projected to a common size, then split into a shared (modality-invariant) code by one encoder common to all
modalities and a private (modality-specific) code by a per-modality encoder. Training adds a similarity loss
(central moment discrepancy between the shared codes), a difference loss (soft orthogonality between the codes)
and a reconstruction loss to the task loss. The six codes pass through a one-layer Transformer and an MLP.
Defaults follow MMSA's MISA (MOSI); text uses the feature-based encoder, not fine-tuned BERT.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from msabench.data.base import Task
from msabench.methods._blocks import compact_present, fused_adam, output_size
from msabench.training import Batch, TorchMethod, task_loss

ORDER = ("l", "v", "a")  # MISA's order of the six codes: private t, v, a then shared t, v, a


# the regularisers --------------------------------------------------------------------------------------------------
def _match_norm(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """Euclidean distance, with a tiny floor under the root so the gradient at zero distance is finite."""
    return ((x1 - x2) ** 2).sum().clamp_min(1e-12).sqrt()


def cmd(x1: torch.Tensor, x2: torch.Tensor, n_moments: int = 5) -> torch.Tensor:
    """Central moment discrepancy (Zellinger et al., 2017) of two samples (N, H) of values in [0, 1].

    ||E x1 - E x2|| + sum_{k=2..K} ||E (x1 - E x1)^k - E (x2 - E x2)^k||, moments taken per dimension.
    """
    m1, m2 = x1.mean(dim=0), x2.mean(dim=0)
    c1, c2 = x1 - m1, x2 - m2
    total = _match_norm(m1, m2)
    for k in range(2, n_moments + 1):
        total = total + _match_norm((c1 ** k).mean(dim=0), (c2 ** k).mean(dim=0))
    return total


def difference_loss(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """Soft orthogonality: mean squared entry of A^T B, A and B the batch-centred rows of x1, x2 scaled to unit norm.

    As in MISA (after Bousmalis et al., 2016), the row norms are treated as constants (no gradient).
    """
    a = x1 - x1.mean(dim=0, keepdim=True)
    b = x2 - x2.mean(dim=0, keepdim=True)
    a = a / (a.norm(dim=1, keepdim=True).detach() + 1e-6)
    b = b / (b.norm(dim=1, keepdim=True).detach() + 1e-6)
    return (a.t() @ b).pow(2).mean()


# the model -----------------------------------------------------------------------------------------------------------
class StackedBiLSTM(nn.Module):
    """MISA's utterance encoder: BiLSTM, LayerNorm, BiLSTM over present frames; final states of both (B, 4h)."""

    def __init__(self, in_size: int, hidden: int) -> None:
        super().__init__()
        self.rnn1 = nn.LSTM(in_size, hidden, bidirectional=True, batch_first=True)
        self.norm = nn.LayerNorm(2 * hidden)
        self.rnn2 = nn.LSTM(2 * hidden, hidden, bidirectional=True, batch_first=True)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        xc, counts = compact_present(x, mask)
        lengths = counts.clamp_min(1).cpu()
        packed1, (h1, _) = self.rnn1(pack_padded_sequence(xc, lengths, batch_first=True, enforce_sorted=False))
        out1, _ = pad_packed_sequence(packed1, batch_first=True, total_length=xc.shape[1])
        packed2 = pack_padded_sequence(self.norm(out1), lengths, batch_first=True, enforce_sorted=False)
        _, (h2, _) = self.rnn2(packed2)
        # (2 directions, B, h) each -> (B, [h1 fwd, h1 bwd, h2 fwd, h2 bwd])
        final = torch.cat([h1, h2], dim=0).permute(1, 0, 2).reshape(x.shape[0], -1)
        return final * (counts > 0).unsqueeze(-1).to(final.dtype)


def _project(in_size: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_size, hidden), nn.ReLU(), nn.LayerNorm(hidden))


class MISAModel(nn.Module):
    def __init__(self, dims: dict[str, int], text_rnn_hidden: int, hidden: int, dropout: float, n_out: int) -> None:
        super().__init__()
        rnn_hidden = {"l": text_rnn_hidden, "a": dims["a"], "v": dims["v"]}
        self.encoders = nn.ModuleDict({m: StackedBiLSTM(dims[m], rnn_hidden[m]) for m in ORDER})
        self.project = nn.ModuleDict({m: _project(4 * rnn_hidden[m], hidden) for m in ORDER})
        self.private = nn.ModuleDict({m: nn.Sequential(nn.Linear(hidden, hidden), nn.Sigmoid()) for m in ORDER})
        self.shared = nn.Sequential(nn.Linear(hidden, hidden), nn.Sigmoid())
        self.recon = nn.ModuleDict({m: nn.Linear(hidden, hidden) for m in ORDER})
        layer = nn.TransformerEncoderLayer(hidden, nhead=2, batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
        self.fusion = nn.Sequential(nn.Linear(6 * hidden, 3 * hidden), nn.Dropout(dropout), nn.ReLU(),
                                    nn.Linear(3 * hidden, n_out))

    def forward(self, batch: Batch) -> dict[str, Any]:
        orig = {m: self.project[m](self.encoders[m](batch.features[m], batch.mask[m])) for m in ORDER}
        private = {m: self.private[m](orig[m]) for m in ORDER}
        shared = {m: self.shared(orig[m]) for m in ORDER}
        recon = {m: self.recon[m](private[m] + shared[m]) for m in ORDER}
        codes = torch.stack([private[m] for m in ORDER] + [shared[m] for m in ORDER], dim=1)  # (B, 6, H)
        out = self.fusion(self.transformer(codes).flatten(1))
        pred = out.squeeze(-1) if out.shape[-1] == 1 else out
        return {"pred": pred, "orig": orig, "private": private, "shared": shared, "recon": recon}


# the method ----------------------------------------------------------------------------------------------------------
def misa_regularisers(output: dict[str, Any], n_moments: int) -> dict[str, torch.Tensor]:
    """MISA's similarity (mean pairwise CMD of shared codes), difference and reconstruction losses."""
    shared, private, orig, recon = output["shared"], output["private"], output["orig"], output["recon"]
    pairs = [("l", "v"), ("l", "a"), ("a", "v")]
    sim = sum(cmd(shared[x], shared[y], n_moments) for x, y in pairs) / 3.0
    diff = sum(difference_loss(private[m], shared[m]) for m in ORDER)
    diff = diff + difference_loss(private["a"], private["l"]) + difference_loss(private["a"], private["v"]) \
        + difference_loss(private["l"], private["v"])
    rec = sum(nn.functional.mse_loss(recon[m], orig[m]) for m in ORDER) / 3.0
    return {"sim": sim, "diff": diff, "recon": rec}


class MISA(TorchMethod):
    """MISA: shared and private subspaces with CMD similarity, orthogonality and reconstruction losses."""

    name = "misa"
    description = "MISA (Hazarika et al. 2020): modality-invariant and -specific subspaces, CMD + orthogonality"
    tasks = frozenset({"regression", "multilabel"})

    def __init__(self, hidden_size: int = 128, text_rnn_hidden: int = 64, dropout: float = 0.2,
                 diff_weight: float = 0.1, sim_weight: float = 0.3, recon_weight: float = 1.0, cmd_moments: int = 5,
                 lr: float = 1e-4, batch_size: int = 32, epochs: int = 30, patience: int = 8,
                 weight_decay: float = 0.0, grad_clip: float = 0.8, **kwargs) -> None:
        super().__init__(lr=lr, batch_size=batch_size, epochs=epochs, patience=patience,
                         weight_decay=weight_decay, grad_clip=grad_clip, **kwargs)
        self.hidden_size = hidden_size
        self.text_rnn_hidden = text_rnn_hidden
        self.dropout = dropout
        self.diff_weight = diff_weight
        self.sim_weight = sim_weight
        self.recon_weight = recon_weight
        self.cmd_moments = cmd_moments

    def build(self, dims: dict[str, int], seq_lens: dict[str, int], task: Task) -> nn.Module:
        return MISAModel(dims, self.text_rnn_hidden, self.hidden_size, self.dropout, output_size(task))

    def loss(self, output: dict[str, Any], batch: Batch, task: Task) -> torch.Tensor:
        reg = misa_regularisers(output, self.cmd_moments)
        return (task_loss(output["pred"], batch.labels, task) + self.diff_weight * reg["diff"]
                + self.sim_weight * reg["sim"] + self.recon_weight * reg["recon"])

    def make_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        return fused_adam(params, self.lr, self.weight_decay)

    @classmethod
    def search_space(cls, trial) -> dict:
        return {
            "lr": trial.suggest_float("lr", 5e-5, 2e-3, log=True),
            "dropout": trial.suggest_float("dropout", 0.0, 0.5),
            "diff_weight": trial.suggest_float("diff_weight", 0.05, 0.5, log=True),
            "sim_weight": trial.suggest_float("sim_weight", 0.1, 1.0, log=True),
            "recon_weight": trial.suggest_float("recon_weight", 0.1, 1.0, log=True),
        }
