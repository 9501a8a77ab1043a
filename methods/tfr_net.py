"""TFR-Net (Yuan, Li, Xu and Yu, ACM MM 2021): Transformer-based feature reconstruction network.

Per modality, a temporal Conv1d projection, an intra-modal (self-attention) Transformer and two cross-modal
Transformers from the other modalities, concatenated (3d per frame). A gated fusion (bi-GRU, convolutional gate,
max-pooling per modality, a classifier) predicts from these; a reconstruction branch (a further Transformer whose
embedding axis is time, then a linear generator back to the input features) is trained only on the missing
positions with SmoothL1 + CMD, from the second epoch on. Written from thuiar/MMSA
(``models/missingTask/TFR_NET/*``, ``trains/missingTask/TFR_NET.py``, ``config/config_regression.json``).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from msabench.data.base import MultimodalDataset, Split, Task
from msabench.masks import derive_rng, restrict_to_padding
from msabench.method import FitContext
from msabench.methods._crossmodal import CrossmodalTransformer, attention_allowed
from msabench.protocol import TrainingSchedule
from msabench.methods._complete import CompleteFeatures
from msabench.training import Batch, task_loss

MODS = ("l", "a", "v")


# reconstruction loss -------------------------------------------------------------------------------------------------
def cmd(x1: torch.Tensor, x2: torch.Tensor, n_moments: int = 3) -> torch.Tensor:
    """Central moment discrepancy (Zellinger et al., 2017) as MMSA computes it: rows are samples over the last axis;
    ``||mean1 - mean2|| + sum_{k=2..n} ||E(x1 - mean1)^k - E(x2 - mean2)^k||``, each norm ``sqrt(sum^2 + 1e-12)``."""
    x1, x2 = x1.reshape(-1, x1.shape[-1]), x2.reshape(-1, x2.shape[-1])
    m1, m2 = x1.mean(0), x2.mean(0)
    norm = lambda a, b: (((a - b) ** 2).sum() + 1e-12) ** 0.5  # noqa: E731
    total = norm(m1, m2)
    for k in range(2, n_moments + 1):
        total = total + norm(((x1 - m1) ** k).mean(0), ((x2 - m2) ** k).mean(0))
    return total


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, missing: torch.Tensor, sim_weight: float,
                        eps: float = 1e-4) -> torch.Tensor:
    """MMSA's RECLoss ('combine'): SmoothL1 (summed) over the missing positions (B, T) of pred/target (B, T, D),
    divided by the number of masked elements, plus ``sim_weight`` times the CMD of the masked tensors divided by
    the same count."""
    w = missing.to(pred.dtype).unsqueeze(-1).expand_as(pred)
    count = w.sum() + eps
    p, t = pred * w, target * w
    loss = F.smooth_l1_loss(p, t, reduction="sum") / count
    if sim_weight:
        loss = loss + sim_weight * cmd(p, t) / count
    return loss


# gated fusion ------------------------------------------------------------------------------------------------------
class CGate(nn.Module):
    """MMSA's C_GATE: bi-GRU over the valid frames, sigmoid Conv1d gate, ``tanh(fc([x, tanh(h) * gate]))``, max over
    every position (padding included, as the authors), dropout."""

    def __init__(self, d_in: int, hidden: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.gru = nn.GRU(d_in, hidden, num_layers=layers, bidirectional=True, batch_first=True)
        self.gate = nn.Conv1d(2 * hidden, 1, kernel_size=3, padding=1)
        self.fc = nn.Linear(2 * hidden + d_in, hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        lengths = lengths.clamp(1, x.shape[1]).cpu()
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        h = pad_packed_sequence(self.gru(packed)[0], batch_first=True, total_length=x.shape[1])[0]
        gate = torch.sigmoid(self.gate(h.transpose(1, 2)).transpose(1, 2))
        rep = torch.tanh(self.fc(torch.cat([x, torch.tanh(h) * gate], -1)))
        return self.dropout(rep.max(dim=1).values)


def largest_divisor(n: int, at_most: int) -> int:
    """The largest divisor of n not above ``at_most`` (head count for an embedding of width n)."""
    return max(h for h in range(1, min(n, at_most) + 1) if n % h == 0)


# the model ---------------------------------------------------------------------------------------------------------
class TFRNetModel(nn.Module):
    def __init__(self, dims: dict[str, int], seq_lens: dict[str, int], p: "TFRNet", n_out: int) -> None:
        super().__init__()
        d, kernels = p.d, {"l": p.kernel_l, "a": p.kernel_a, "v": p.kernel_v}
        attn = {"l": p.attn_dropout, "a": p.attn_dropout_a, "v": p.attn_dropout_v}
        drops = dict(relu_dropout=p.relu_dropout, res_dropout=p.res_dropout, embed_dropout=p.embed_dropout)
        self.d, self.text_dropout, self.temporal_over, self.causal = d, p.text_dropout, p.temporal_over, p.causal
        self.proj = nn.ModuleDict({m: nn.Identity() if dims[m] == d else
                                   nn.Conv1d(dims[m], d, kernels[m], padding=(kernels[m] - 1) // 2, bias=False)
                                   for m in MODS})

        def net(att: float, layers: int, width: int = d, heads: int = p.heads, positions: bool = True):
            return CrossmodalTransformer(width, heads, layers, att, positions=positions, **drops)

        layers = max(p.layers, 3)  # MMSA: max(nlevels, 3) for the memory and final networks
        # the cross-modal network into target t from source s uses the source's attention dropout (MMSA/MulT)
        self.cross = nn.ModuleDict({t + s: net(attn[s], p.layers) for t in MODS for s in MODS if s != t})
        self.mem = nn.ModuleDict({m: net(p.attn_dropout, layers) for m in MODS})
        self.final = nn.ModuleDict({m: net(p.attn_dropout, layers, seq_lens[m],
                                           largest_divisor(seq_lens[m], p.temporal_heads), positions=False)
                                    for m in MODS})
        self.generator = nn.ModuleDict({m: nn.Linear(3 * d, dims[m]) for m in MODS})
        hid = {"l": p.fusion_hid_l, "a": p.fusion_hid_a, "v": p.fusion_hid_v}
        self.fusion = nn.ModuleDict({m: CGate(3 * d, hid[m], p.fusion_layers, p.fusion_dropout) for m in MODS})
        total = sum(hid.values())
        self.classifier = nn.Sequential(nn.BatchNorm1d(total), nn.Linear(total, p.cls_hidden), nn.LeakyReLU(),
                                        nn.Dropout(p.cls_dropout), nn.Linear(p.cls_hidden, n_out))

    def _attend(self, net: CrossmodalTransformer, x: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
        keys = x if source is None else source  # MMSA masks no keys (dropped frames are zeros): causal mask only
        ok = torch.ones(keys.shape[:2], dtype=torch.bool, device=x.device)
        return net(x, source, attention_allowed(ok, x.shape[1], self.causal))

    def forward(self, batch: Batch) -> dict[str, Any]:
        x = dict(batch.features)
        x["l"] = F.dropout(x["l"], self.text_dropout, self.training)
        proj = {m: self.proj[m](x[m].transpose(1, 2)).transpose(1, 2) for m in MODS}
        h, rec = {}, {}
        for t in MODS:
            others = [self._attend(self.cross[t + s], proj[t], proj[s]) for s in MODS if s != t]
            h[t] = torch.cat([self._attend(self.mem[t], proj[t], None), *others], -1)  # (B, T, 3d)
            if self.training:
                # MMSA feeds (T, B, 3d).permute(1, 2, 0) to a (seq, batch, embed) encoder: the sequence is the batch
                # and each of the 3d channels a separate item; "features" attends over the channels of one sample
                seq = h[t].permute(2, 0, 1) if self.temporal_over == "batch" else h[t].transpose(1, 2)
                out = self._attend(self.final[t], seq, None)
                out = out.permute(1, 0, 2) if self.temporal_over == "batch" else out
                rec[t] = self.generator[t](out.transpose(1, 2))  # (B, T, D_t)
        reps = [self.fusion[m](h[m], batch.lengths[m]) for m in MODS]
        return {"pred": self.classifier(torch.cat(reps, -1)).squeeze(-1), "rec": rec}


class _TrainingMasks:
    """The protocol's schedule, or TFR-Net's own fixed training mask (rate ``r`` on every modality, one draw per
    fit, as MMSA's data loader); remembers the epoch being trained."""

    def __init__(self, schedule: TrainingSchedule, owner: "TFRNet", rate: float | None, seed: int) -> None:
        self.schedule, self.owner, self.rate, self.seed, self._fixed = schedule, owner, rate, seed, None

    def mask(self, epoch: int):
        self.owner._epoch = epoch
        if self.rate is None:
            return self.schedule.mask(epoch)
        if self._fixed is None:
            split = self.schedule.split
            keep = {m: derive_rng("tfr-net", "train", self.seed, m).random(tuple(x.shape[:2])) >= self.rate
                    for m, x in split.features.items()}
            self._fixed = restrict_to_padding(split, keep)
        return self._fixed

    def __getattr__(self, name: str) -> Any:
        return getattr(self.schedule, name)


class TFRNet(CompleteFeatures):
    name = "tfr-net"
    description = "TFR-Net (ACM MM 2021): Transformer-based feature reconstruction of missing frames"

    def __init__(self, d: int = 30, heads: int = 6, layers: int = 3, kernel_l: int = 1, kernel_a: int = 5,
                 kernel_v: int = 3, text_dropout: float = 0.2, attn_dropout: float = 0.2, attn_dropout_a: float = 0.1,
                 attn_dropout_v: float = 0.0, relu_dropout: float = 0.2, embed_dropout: float = 0.2,
                 res_dropout: float = 0.2, causal: bool = True, temporal_heads: int = 25,
                 temporal_over: str = "batch", fusion_hid_l: int = 36, fusion_hid_a: int = 20, fusion_hid_v: int = 48,
                 fusion_layers: int = 3, fusion_dropout: float = 0.2, cls_hidden: int = 128, cls_dropout: float = 0.0,
                 rec_weight_l: float = 5.0, rec_weight_a: float = 2.0, rec_weight_v: float = 20.0,
                 sim_weight: float = 5.0, train_missing_rate: float | None = None, lr_patience: int = 5,
                 grad_clip_value: float = 0.8, lr: float = 1e-3, weight_decay: float = 1e-3, batch_size: int = 24,
                 epochs: int = 50, patience: int = 6, grad_clip: float = 0.0, standardize: bool = True,
                 **kwargs) -> None:
        super().__init__(lr=lr, batch_size=batch_size, epochs=epochs, patience=patience, weight_decay=weight_decay,
                         grad_clip=grad_clip, standardize=standardize, **kwargs)
        self.d, self.heads, self.layers = d, heads, layers
        self.kernel_l, self.kernel_a, self.kernel_v = kernel_l, kernel_a, kernel_v
        self.text_dropout, self.attn_dropout, self.attn_dropout_a, self.attn_dropout_v = (
            text_dropout, attn_dropout, attn_dropout_a, attn_dropout_v)
        self.relu_dropout, self.embed_dropout, self.res_dropout = relu_dropout, embed_dropout, res_dropout
        self.causal, self.temporal_heads, self.temporal_over = causal, temporal_heads, temporal_over
        self.fusion_hid_l, self.fusion_hid_a, self.fusion_hid_v = fusion_hid_l, fusion_hid_a, fusion_hid_v
        self.fusion_layers, self.fusion_dropout, self.cls_hidden, self.cls_dropout = (
            fusion_layers, fusion_dropout, cls_hidden, cls_dropout)
        self.rec_weight_l, self.rec_weight_a, self.rec_weight_v = rec_weight_l, rec_weight_a, rec_weight_v
        self.sim_weight, self.train_missing_rate, self.lr_patience = sim_weight, train_missing_rate, lr_patience
        self.grad_clip_value = grad_clip_value

    @classmethod
    def dataset_defaults(cls, dataset: MultimodalDataset) -> dict[str, Any]:
        """MMSA's config_regression.json: MOSEI and CH-SIMS learning rates and reconstruction weights."""
        if dataset.task.metric_set == "sims":
            return {"lr": 2e-3, "batch_size": 16, "layers": 2, "relu_dropout": 0.0, "embed_dropout": 0.1,
                    "cls_dropout": 0.1, "lr_patience": 10, "rec_weight_l": 1.0, "rec_weight_a": 0.01,
                    "rec_weight_v": 1e-4}
        if "mosei" in dataset.name.lower():
            return {"lr": 2e-3, "rec_weight_l": 5e-6, "rec_weight_a": 2e-6, "rec_weight_v": 2e-5}
        return {}

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        return {"lr": trial.suggest_float("lr", 2e-4, 5e-3, log=True),
                "rec_weight_l": trial.suggest_float("rec_weight_l", 1e-3, 20.0, log=True),
                "rec_weight_a": trial.suggest_float("rec_weight_a", 1e-3, 20.0, log=True),
                "rec_weight_v": trial.suggest_float("rec_weight_v", 1e-3, 20.0, log=True)}

    def build(self, dims: dict[str, int], seq_lens: dict[str, int], task: Task) -> nn.Module:
        if self.d % self.heads:
            raise ValueError(f"TFR-Net: d={self.d} is not divisible by heads={self.heads}; pick d a multiple of heads")
        if self.temporal_over not in ("batch", "features"):
            raise ValueError(f"TFR-Net: temporal_over must be 'batch' or 'features', not {self.temporal_over!r}")
        return TFRNetModel(dims, seq_lens, self, task.n_outputs)

    def fit(self, train: Split, valid: Split, schedule: TrainingSchedule, context: FitContext) -> "TFRNet":
        if self.train_missing_rate is not None and not 0.0 <= float(self.train_missing_rate) <= 1.0:
            raise ValueError(f"TFR-Net: train_missing_rate must lie in [0, 1], got {self.train_missing_rate}")
        self._begin_fit(train, context)
        self.model_ = self.build(train.dims(), train.seq_lens(), context.task).to(self.device_)
        if self.grad_clip_value:
            c = float(self.grad_clip_value)
            for p in self.model_.parameters():  # clip_grad_value_ (MMSA) on every parameter's gradient
                p.register_hook(lambda g: g.clamp(-c, c))
        self.begin_complete(train)
        self._epoch = 0
        outer = context.on_epoch

        def on_epoch(epoch: int, train_loss: float, score: float) -> None:
            self._plateau.step(score)
            if outer is not None:
                outer(epoch, train_loss, score)

        masks = _TrainingMasks(schedule, self, self.train_missing_rate, context.seed)
        self.train_model(self.model_, train, valid, masks, dataclasses.replace(context, on_epoch=on_epoch))
        del self._plateau
        self.end_complete()
        return self

    def make_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        """Adam (lr, weight decay 1e-3) with ReduceLROnPlateau on the validation score (factor 0.1)."""
        opt = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        self._plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.1,
                                                                   patience=self.lr_patience)
        return opt

    def loss(self, output: dict[str, Any], batch: Batch, task: Task) -> torch.Tensor:
        """Task loss (L1 for regression); from the second epoch on plus the weighted reconstruction losses."""
        total = task_loss(output["pred"], batch.labels, task)
        if self._epoch < 1:  # MMSA: epoch 1 trains the prediction loss only
            return total
        weights = {"l": self.rec_weight_l, "a": self.rec_weight_a, "v": self.rec_weight_v}
        complete = self.complete_rows(batch)  # text through an encoder: no complete target, left out
        for m, rec in output["rec"].items():
            if m not in complete:
                continue
            target = complete[m]
            exists = torch.arange(rec.shape[1], device=rec.device)[None, :] < batch.lengths[m][:, None]
            missing = exists & ~batch.mask[m]
            total = total + weights[m] * reconstruction_loss(rec.float(), target.float(), missing, self.sim_weight)
        return total

