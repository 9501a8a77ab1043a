"""Self-MM (Yu et al., AAAI 2021): a multimodal task plus three unimodal subtasks with self-generated labels.

Each modality is encoded to a vector (an LSTM's final state over the present frames, as MMSA's ``AuViSubNet``);
a fusion head and three unimodal heads each predict the sentiment. The unimodal targets are produced during
training by the unimodal label generation module (:class:`ULGM`) from distances to positive/negative class centres
in the fused and unimodal representation spaces, and moved with the paper's momentum rule across epochs.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from msabench.data.base import Split, Task
from msabench.method import FitContext
from msabench.methods._blocks import TextSubNet
from msabench.protocol import TrainingSchedule
from msabench.training import Batch, TorchMethod

log = logging.getLogger(__name__)

UNIMODAL = ("l", "a", "v")
FUSION = "m"


class ULGM:
    """Unimodal label generation module: per-sample label stores, stored features and per-class centres.

    Keys: ``"m"`` (fusion; its labels stay the ground truth) and ``"l"``, ``"a"``, ``"v"``. Each training batch
    calls :meth:`step` after computing its loss: from the second epoch on, the batch's unimodal labels are
    regenerated from the current centres and blended with momentum, ``y(n) = (n-1)/(n+1) y(n-1) + 2/(n+1) y_new``;
    then the batch's features are stored and every centre is recomputed as the mean stored feature of the samples
    whose label (of that key) is positive (> 0, or >= 0 when ``exclude_zero`` is False) or negative (< 0).
    """

    EPS = 1e-8

    def __init__(self, labels: torch.Tensor, dims: dict[str, int], bound: float, exclude_zero: bool = True) -> None:
        labels = labels.detach().float()
        n = labels.shape[0]
        self.bound = float(bound)
        self.exclude_zero = exclude_zero
        self.labels = {k: labels.clone() for k in dims}
        self.features = {k: torch.zeros(n, d, device=labels.device) for k, d in dims.items()}
        self.centers = {k: (torch.zeros(d, device=labels.device), torch.zeros(d, device=labels.device))
                        for k, d in dims.items()}

    def loss_weights(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-sample weights of the unimodal losses: tanh(|y_s - y_m|)."""
        ym = self.labels[FUSION][index]
        return {k: torch.tanh((self.labels[k][index] - ym).abs()) for k in self.labels if k != FUSION}

    def relative_distance(self, key: str, feats: torch.Tensor) -> torch.Tensor:
        """(d_neg - d_pos) / d_pos for features of ``key`` against that key's class centres."""
        pos, neg = self.centers[key]
        d_pos = torch.linalg.vector_norm(feats - pos, dim=-1)
        d_neg = torch.linalg.vector_norm(feats - neg, dim=-1)
        return (d_neg - d_pos) / (d_pos + self.EPS)

    @torch.no_grad()
    def update_labels(self, feats: dict[str, torch.Tensor], index: torch.Tensor, epoch: int) -> None:
        """Regenerate the unimodal labels of the batch ``index`` (epoch counted from 1)."""
        y_m = self.labels[FUSION][index]
        delta_m = self.relative_distance(FUSION, feats[FUSION])
        for k in self.labels:
            if k == FUSION:
                continue
            delta_s = self.relative_distance(k, feats[k])
            alpha = delta_s / (delta_m + self.EPS)
            new = 0.5 * alpha * y_m + 0.5 * (y_m + delta_s - delta_m)
            new = new.clamp(-self.bound, self.bound)
            old = self.labels[k][index]
            self.labels[k][index] = (epoch - 1) / (epoch + 1) * old + 2 / (epoch + 1) * new

    @torch.no_grad()
    def update_centers(self) -> None:
        """Class centres from all stored features; a class with no sample keeps its previous centre."""
        for k, feats in self.features.items():
            y = self.labels[k]
            pos_rows = y > 0 if self.exclude_zero else y >= 0
            neg_rows = y < 0
            pos, neg = self.centers[k]
            if pos_rows.any():
                pos = feats[pos_rows].mean(dim=0)
            if neg_rows.any():
                neg = feats[neg_rows].mean(dim=0)
            self.centers[k] = (pos, neg)

    @torch.no_grad()
    def step(self, feats: dict[str, torch.Tensor], index: torch.Tensor, epoch: int) -> None:
        """After a training batch: update labels (epoch > 1), store the features, recompute the centres."""
        feats = {k: f.detach().float() for k, f in feats.items()}
        if epoch > 1:
            self.update_labels(feats, index, epoch)
        for k, f in feats.items():
            self.features[k][index] = f
        self.update_centers()


def _head(d_in: int, d_post: int, dropout: float) -> nn.ModuleDict:
    return nn.ModuleDict({"dropout": nn.Dropout(dropout), "l1": nn.Linear(d_in, d_post),
                          "l2": nn.Linear(d_post, d_post), "out": nn.Linear(d_post, 1)})


def _run_head(head: nn.ModuleDict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(representation after the first layer, prediction)."""
    feat = torch.relu(head["l1"](head["dropout"](x)))
    return feat, head["out"](torch.relu(head["l2"](feat))).squeeze(-1)


class SelfMMModel(nn.Module):
    def __init__(self, dims: dict[str, int], hidden: dict[str, int], out: dict[str, int], post: dict[str, int],
                 post_dropout: dict[str, float], post_fusion_dim: int, post_fusion_dropout: float) -> None:
        super().__init__()
        # MMSA's AuViSubNet (LSTM final state, dropout, linear) = TextSubNet here, reading the present frames only
        self.encoders = nn.ModuleDict({m: TextSubNet(dims[m], hidden[m], out[m], 0.0) for m in UNIMODAL})
        self.heads = nn.ModuleDict({m: _head(out[m], post[m], post_dropout[m]) for m in UNIMODAL})
        self.fusion = _head(sum(out.values()), post_fusion_dim, post_fusion_dropout)

    def forward(self, batch: Batch) -> dict[str, Any]:
        enc = {m: self.encoders[m](batch.features[m], batch.mask[m]) for m in UNIMODAL}
        feats, preds = {}, {}
        feats[FUSION], preds[FUSION] = _run_head(self.fusion, torch.cat([enc[m] for m in UNIMODAL], dim=-1))
        for m in UNIMODAL:
            feats[m], preds[m] = _run_head(self.heads[m], enc[m])
        return {"pred": preds[FUSION], "preds": preds, "feats": feats}


class SelfMM(TorchMethod):
    """Self-MM: fusion and unimodal heads trained on ground-truth and ULGM-generated labels (regression only)."""

    name = "self-mm"
    description = "Self-MM (Yu et al. 2021): multi-task learning with self-supervised unimodal labels (ULGM)"
    tasks = frozenset({"regression"})

    def __init__(self, text_hidden: int = 64, text_out: int = 64, audio_hidden: int = 16, audio_out: int = 16,
                 video_hidden: int = 32, video_out: int = 32, post_fusion_dim: int = 128, post_text_dim: int = 32,
                 post_audio_dim: int = 16, post_video_dim: int = 32, post_fusion_dropout: float = 0.0,
                 post_text_dropout: float = 0.1, post_audio_dropout: float = 0.1, post_video_dropout: float = 0.0,
                 exclude_zero: bool = True, lr_av: float = 5e-3, lr: float = 1e-3, batch_size: int = 64,
                 epochs: int = 30, patience: int = 8, weight_decay: float = 1e-3, **kwargs) -> None:
        super().__init__(lr=lr, batch_size=batch_size, epochs=epochs, patience=patience,
                         weight_decay=weight_decay, **kwargs)
        self.text_hidden = text_hidden
        self.text_out = text_out
        self.audio_hidden = audio_hidden
        self.audio_out = audio_out
        self.video_hidden = video_hidden
        self.video_out = video_out
        self.post_fusion_dim = post_fusion_dim
        self.post_text_dim = post_text_dim
        self.post_audio_dim = post_audio_dim
        self.post_video_dim = post_video_dim
        self.post_fusion_dropout = post_fusion_dropout
        self.post_text_dropout = post_text_dropout
        self.post_audio_dropout = post_audio_dropout
        self.post_video_dropout = post_video_dropout
        self.exclude_zero = exclude_zero
        self.lr_av = lr_av

    def _post_dims(self) -> dict[str, int]:
        return {FUSION: self.post_fusion_dim, "l": self.post_text_dim, "a": self.post_audio_dim,
                "v": self.post_video_dim}

    def build(self, dims: dict[str, int], seq_lens: dict[str, int], task: Task) -> nn.Module:
        post = self._post_dims()
        return SelfMMModel(
            dims,
            hidden={"l": self.text_hidden, "a": self.audio_hidden, "v": self.video_hidden},
            out={"l": self.text_out, "a": self.audio_out, "v": self.video_out},
            post={m: post[m] for m in UNIMODAL},
            post_dropout={"l": self.post_text_dropout, "a": self.post_audio_dropout, "v": self.post_video_dropout},
            post_fusion_dim=self.post_fusion_dim, post_fusion_dropout=self.post_fusion_dropout,
        )

    def fit(self, train: Split, valid: Split, schedule: TrainingSchedule, context: FitContext) -> "SelfMM":
        self._begin_fit(train, context)
        self.model_ = self.build(train.dims(), train.seq_lens(), context.task).to(self.device_)
        bound = 1.0 if context.task.metric_set == "sims" else 3.0
        ulgm = ULGM(train.labels.to(self.device_), self._post_dims(), bound, self.exclude_zero)
        epoch = {"n": 1}  # ULGM counts epochs from 1
        outer = context.on_epoch

        def on_epoch(e: int, train_loss: float, score: float) -> None:
            epoch["n"] += 1
            if outer is not None:
                outer(e, train_loss, score)

        def loss_fn(output: dict[str, Any], batch: Batch, task: Task) -> torch.Tensor:
            loss = self_mm_loss(output, batch, ulgm)
            ulgm.step(output["feats"], batch.index, epoch["n"])
            return loss

        self.train_model(self.model_, train, valid, schedule, replace(context, on_epoch=on_epoch), loss_fn=loss_fn)
        return self

    def make_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        """MMSA's groups: the audio and vision subnets at ``lr_av``, everything else at ``lr``."""
        av = {id(p) for m in ("a", "v") for p in self.model_.encoders[m].parameters()}
        groups = [{"params": [p for p in params if id(p) in av], "lr": self.lr_av},
                  {"params": [p for p in params if id(p) not in av], "lr": self.lr}]
        return torch.optim.Adam([g for g in groups if g["params"]], weight_decay=self.weight_decay)

    @classmethod
    def search_space(cls, trial) -> dict:
        return {
            "lr": trial.suggest_float("lr", 1e-4, 3e-3, log=True),
            "lr_av": trial.suggest_float("lr_av", 5e-4, 1e-2, log=True),
            "post_fusion_dim": trial.suggest_categorical("post_fusion_dim", [64, 128]),
            "post_fusion_dropout": trial.suggest_float("post_fusion_dropout", 0.0, 0.3),
        }


def self_mm_loss(output: dict[str, Any], batch: Batch, ulgm: ULGM) -> torch.Tensor:
    """L1 on the fusion output plus tanh(|y_s - y_m|)-weighted L1 of each unimodal output to its ULGM label."""
    preds = output["preds"]
    loss = (preds[FUSION].float() - batch.labels.float()).abs().mean()
    weights = ulgm.loss_weights(batch.index)
    for m in UNIMODAL:
        target = ulgm.labels[m][batch.index]
        loss = loss + (weights[m] * (preds[m].float() - target).abs()).mean()
    return loss
