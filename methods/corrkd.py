"""CorrKD: correlation-decoupled knowledge distillation (Li et al., CVPR 2024), the msabench reference version.

A teacher trains on complete data and is frozen; a student of the same architecture trains on incomplete data while
the teacher sees the same samples complete. The student learns from the task loss plus three distillation terms:
sample-level contrastive distillation (SCD), category-guided prototype distillation (CPD) and response-disentangled
consistency distillation (RCD). Only the student predicts. See methods/corrkd.md for every choice the paper leaves
open.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from msabench.data.base import MultimodalDataset, Split, Task
from msabench.masks import derive_seed
from msabench.method import FitContext
from msabench.methods import _distill
from msabench.methods._blocks import TransformerSeqEncoder, masked_mean
from msabench.methods._mi import StatisticsNet, derangement, jsd_mi
from msabench.protocol import TRAINING_RECIPES, TrainingSchedule
from msabench.training import Batch, TorchMethod, task_loss

log = logging.getLogger(__name__)

RCD_MODES = ("mi", "kl", "off")
# how SCD and CPD see the joint representation h: "normalized" (default) L2-normalises h_s and h_t first, so the terms
# are bounded (squared distances <= 4) whatever the width and magnitude of h; "legacy" distils the raw h (the
# behaviour of the first published runs, whose SCD outweighed the task loss tenfold and collapsed some students)
DISTILL_SCALES = ("normalized", "legacy")
PREDICT_WITH = ("student", "teacher")
# the hyperparameters the teacher's training depends on (the distillation settings do not change the teacher)
TEACHER_PARAMS = ("d", "heads", "layers", "dropout", "n_polarity", "ce_weight", "lr", "batch_size", "epochs",
                  "patience", "weight_decay", "grad_clip", "standardize")


# categories ------------------------------------------------------------------------------------------------------
def n_categories(task: Task, n_polarity: int) -> int:
    """Number of categories the class head scores: polarity classes for regression, emotions or classes otherwise."""
    return n_polarity if task.kind == "regression" else len(task.label_names)


def categories(labels: torch.Tensor, task: Task, n_polarity: int = 2) -> torch.Tensor:
    """Category id per sample (long, (B,)).

    Regression: polarity of the score; ``n_polarity=2``: 0 = negative (< 0), 1 = non-negative (>= 0);
    ``n_polarity=3``: 0 = negative (< 0), 1 = neutral (== 0), 2 = positive (> 0).
    Multilabel: argmax of the (B, K) emotion labels (the first one on ties, 0 for an all-zero row).
    Multiclass: the labels themselves.
    """
    if task.kind == "regression":
        y = labels.reshape(-1)
        if n_polarity == 2:
            return (y >= 0).long()
        if n_polarity == 3:
            return (y > 0).long() * 2 + (y == 0).long()
        raise ValueError(f"n_polarity must be 2 or 3, got {n_polarity}")
    if task.kind == "multilabel":
        return labels.argmax(dim=-1).long()
    return labels.long()


# the three distillation losses -------------------------------------------------------------------------------------
def scd_loss(h_s: torch.Tensor, h_t: torch.Tensor, eta: float) -> torch.Tensor:
    """Sample-level contrastive distillation over a batch of joint representations (B, H).

    mean_i ||h_s[i] - h_t[i]||^2 + mean_{i != j} max(0, eta - ||h_s[i] - h_t[j]||)^2; the teacher side is
    detached. With B = 1 the second term is zero.
    """
    h_t = h_t.detach()
    positive = ((h_s - h_t) ** 2).sum(dim=-1).mean()
    b = h_s.shape[0]
    if b < 2:
        return positive
    sq = ((h_s.unsqueeze(1) - h_t.unsqueeze(0)) ** 2).sum(dim=-1)  # (B, B)
    dist = sq.clamp_min(1e-12).sqrt()
    off = ~torch.eye(b, dtype=torch.bool, device=h_s.device)
    negative = F.relu(eta - dist[off]).pow(2).mean()
    return positive + negative


def cpd_loss(h_s: torch.Tensor, h_t: torch.Tensor, cats: torch.Tensor) -> torch.Tensor:
    """Category-guided prototype distillation.

    Per category k present in the batch, prototypes c_k = mean representation of its samples (teacher and student
    separately); M_ik = cos(h_i, c_k); the loss is the mean over samples i and present categories k of
    (M^t_ik - M^s_ik)^2. A batch with fewer than two present categories gives 0.
    """
    h_t = h_t.detach()
    k = int(cats.max()) + 1 if cats.numel() else 0
    onehot = F.one_hot(cats.long(), k).to(h_s.dtype) if k else h_s.new_zeros((h_s.shape[0], 0))
    counts = onehot.sum(dim=0)
    present = counts > 0
    if int(present.sum()) < 2:
        return h_s.new_zeros(())
    onehot, counts = onehot[:, present], counts[present]

    def similarity(h: torch.Tensor) -> torch.Tensor:
        protos = (onehot.T @ h) / counts.unsqueeze(1)
        return F.normalize(h, dim=-1, eps=1e-8) @ F.normalize(protos, dim=-1, eps=1e-8).T

    return ((similarity(h_t) - similarity(h_s)) ** 2).mean()


def decouple(prob: torch.Tensor, cats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split softmax responses (B, C) into the target part b = [p_y, 1 - p_y] (B, 2) and the non-target part
    p_hat (B, C - 1), the non-target probabilities renormalised to sum to 1 (class order kept)."""
    b, c = prob.shape
    target = F.one_hot(cats.long(), c).bool()
    p_y = prob[target]
    rest = prob[~target].reshape(b, c - 1)
    binary = torch.stack([p_y, rest.sum(dim=-1)], dim=-1)
    p_hat = rest / rest.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    return binary, p_hat


def decoupled_kl(z_t: torch.Tensor, z_s: torch.Tensor, cats: torch.Tensor, tau: float) -> torch.Tensor:
    """Decoupled KL between teacher and student logits (B, C) at temperature tau (the "w/o RCD" variant).

    tau^2 * mean_i [KL(b^t_i || b^s_i) + KL(p_hat^t_i || p_hat^s_i)], b and p_hat as in :func:`decouple` on
    softmax(z / tau). The non-target term is 0 when C = 2. Computed in log space.
    """
    z_t = z_t.detach()
    c = z_s.shape[-1]
    target = F.one_hot(cats.long(), c).bool()

    def parts(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = z.float() / tau
        log_all = torch.logsumexp(z, dim=-1)
        rest = z[~target].reshape(z.shape[0], c - 1)
        log_rest = torch.logsumexp(rest, dim=-1)
        log_binary = torch.stack([z[target] - log_all, log_rest - log_all], dim=-1)
        return log_binary, rest - log_rest.unsqueeze(-1)

    lb_t, lh_t = parts(z_t)
    lb_s, lh_s = parts(z_s)
    kl_b = (lb_t.exp() * (lb_t - lb_s)).sum(dim=-1)
    kl_h = (lh_t.exp() * (lh_t - lh_s)).sum(dim=-1)
    return (kl_b + kl_h).mean() * tau ** 2


class RCDCritics(nn.Module):
    """The statistics networks of RCD: one for the target part, one for the non-target part (none when C = 2)."""

    def __init__(self, n_classes: int, hidden: int) -> None:
        super().__init__()
        self.target = StatisticsNet(2, hidden)
        self.non_target = StatisticsNet(n_classes - 1, hidden) if n_classes > 2 else None

    def mi(self, p_t: torch.Tensor, p_s: torch.Tensor, cats: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
        """MI(b^t, b^s) + MI(p_hat^t, p_hat^s) (the second only when C > 2)."""
        b_t, h_t = decouple(p_t.detach(), cats)
        b_s, h_s = decouple(p_s, cats)
        total = jsd_mi(self.target, b_t, b_s, perm)
        if self.non_target is not None:
            total = total + jsd_mi(self.non_target, h_t, h_s, perm)
        return total


# the network (teacher and student share it) --------------------------------------------------------------------
class CorrKDNet(nn.Module):
    """Per modality Conv1d + positions + Transformer, masked mean over present frames, concat → linear + ReLU to
    the joint representation h (d), a class head (logits z) and, for regression, a sentiment score head."""

    def __init__(self, dims: dict[str, int], d: int, heads: int, layers: int, dropout: float, n_classes: int,
                 regression: bool) -> None:
        super().__init__()
        self.modalities = sorted(dims)
        self.encoders = nn.ModuleDict({m: TransformerSeqEncoder(dims[m], d, heads, layers, 3, dropout)
                                       for m in self.modalities})
        self.fusion = nn.Sequential(nn.Linear(d * len(self.modalities), d), nn.ReLU())
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(d, n_classes)
        self.score = nn.Linear(d, 1) if regression else None

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        pooled = [masked_mean(self.encoders[m](batch.features[m], batch.mask[m]), batch.mask[m])
                  for m in self.modalities]
        h = self.fusion(torch.cat(pooled, dim=-1))
        hd = self.dropout(h)
        logits = self.classifier(hd)
        pred = self.score(hd).squeeze(-1) if self.score is not None else logits
        return {"pred": pred, "h": h, "logits": logits}


class CorrKD(TorchMethod):
    """Teacher on complete data, frozen; student on incomplete data distilled with SCD, CPD and RCD."""

    name = "corrkd"
    description = "CorrKD (CVPR 2024): complete-data teacher, student distilled with SCD + CPD + RCD"

    def __init__(self, d: int = 40, heads: int = 10, layers: int = 2, dropout: float = 0.1, n_polarity: int = 2,
                 ce_weight: float = 1.0, scd: bool = True, cpd: bool = True, rcd: str = "mi",
                 lambda_scd: float = 1.0, lambda_cpd: float = 1.0, lambda_rcd: float = 1.0, eta: float = 1.0,
                 tau: float = 4.0, mi_hidden: int = 64, distill_scale: str = "normalized",
                 student_recipe: str = "protocol",
                 predict_with: str = "student", lr: float = 1e-3, batch_size: int = 128, epochs: int = 50,
                 patience: int = 8, weight_decay: float = 0.0, **kwargs) -> None:
        super().__init__(lr=lr, batch_size=batch_size, epochs=epochs, patience=patience,
                         weight_decay=weight_decay, **kwargs)
        self.d = d
        self.heads = heads
        self.layers = layers
        self.dropout = dropout
        self.n_polarity = n_polarity
        self.ce_weight = ce_weight
        self.scd = scd
        self.cpd = cpd
        self.rcd = rcd
        self.lambda_scd = lambda_scd
        self.lambda_cpd = lambda_cpd
        self.lambda_rcd = lambda_rcd
        self.eta = eta
        self.tau = tau
        self.mi_hidden = mi_hidden
        self.distill_scale = distill_scale
        self.student_recipe = student_recipe
        self.predict_with = predict_with

    # per-dataset defaults (the paper's settings) -----------------------------------------------------------------
    @classmethod
    def dataset_defaults(cls, dataset: MultimodalDataset) -> dict[str, Any]:
        """MOSI / MOSEI / IEMOCAP learning rate, batch size, epochs and heads as reported for CorrKD."""
        if dataset.task.metric_set == "iemocap":
            return {"lr": 4e-3, "batch_size": 32, "epochs": 30, "heads": 10}
        if "mosei" in dataset.name.lower():
            return {"lr": 2e-3, "batch_size": 16, "epochs": 20, "heads": 8}
        return {"lr": 1e-3, "batch_size": 128, "epochs": 50, "heads": 10}

    @classmethod
    def search_space(cls, trial) -> dict:
        return {
            "lr": trial.suggest_float("lr", 1e-4, 5e-3, log=True),
            "dropout": trial.suggest_float("dropout", 0.0, 0.3),
            "eta": trial.suggest_float("eta", 0.25, 4.0, log=True),
            "lambda_scd": trial.suggest_float("lambda_scd", 0.1, 2.0, log=True),
            "lambda_cpd": trial.suggest_float("lambda_cpd", 0.1, 2.0, log=True),
            "lambda_rcd": trial.suggest_float("lambda_rcd", 0.1, 2.0, log=True),
            "tau": trial.suggest_float("tau", 1.0, 8.0, log=True),
            "distill_scale": trial.suggest_categorical("distill_scale", list(DISTILL_SCALES)),
            "student_recipe": trial.suggest_categorical("student_recipe", ["protocol", "frame+modality"]),
        }

    # model and losses ----------------------------------------------------------------------------------------------
    def _validate(self) -> None:
        if self.d % self.heads:
            raise ValueError(f"corrkd: heads={self.heads} must divide d={self.d}")
        if self.rcd not in RCD_MODES:
            raise ValueError(f"corrkd: rcd must be one of {RCD_MODES}, got {self.rcd!r}")
        if self.distill_scale not in DISTILL_SCALES:
            raise ValueError(f"corrkd: distill_scale must be one of {DISTILL_SCALES}, got {self.distill_scale!r}")
        if self.predict_with not in PREDICT_WITH:
            raise ValueError(f"corrkd: predict_with must be one of {PREDICT_WITH}, got {self.predict_with!r}")
        if self.n_polarity not in (2, 3):
            raise ValueError(f"corrkd: n_polarity must be 2 or 3, got {self.n_polarity}")
        if self.student_recipe != "protocol" and self.student_recipe not in TRAINING_RECIPES:
            raise ValueError(f"corrkd: student_recipe must be 'protocol' or one of {sorted(TRAINING_RECIPES)}, "
                             f"got {self.student_recipe!r}")

    def build(self, dims: dict[str, int], seq_lens: dict[str, int], task: Task) -> nn.Module:
        self._validate()
        return CorrKDNet(dims, self.d, self.heads, self.layers, self.dropout,
                         n_categories(task, self.n_polarity), task.kind == "regression")

    def loss(self, output: Any, batch: Batch, task: Task) -> torch.Tensor:
        """Task loss, plus ce_weight x cross-entropy of the polarity logits for regression (the teacher's loss)."""
        total = task_loss(output["pred"], batch.labels, task)
        if task.kind == "regression" and self.ce_weight:
            cats = categories(batch.labels, task, self.n_polarity)
            total = total + self.ce_weight * F.cross_entropy(output["logits"].float(), cats)
        return total

    def distillation_loss(self, student_out: dict[str, torch.Tensor], teacher_out: dict[str, torch.Tensor],
                          cats: torch.Tensor, critics: RCDCritics | None,
                          perm: torch.Tensor | None) -> torch.Tensor:
        """lambda_scd * L_SCD + lambda_cpd * L_CPD + lambda_rcd * L_RCD with the switches applied.

        With ``distill_scale="normalized"`` SCD and CPD compare the L2-normalised h (eta on the unit sphere's scale).
        """
        h_s, h_t = student_out["h"].float(), teacher_out["h"].detach().float()
        if self.distill_scale == "normalized":
            h_s, h_t = F.normalize(h_s, dim=-1, eps=1e-8), F.normalize(h_t, dim=-1, eps=1e-8)
        total = h_s.new_zeros(())
        if self.scd:
            total = total + self.lambda_scd * scd_loss(h_s, h_t, self.eta)
        if self.cpd:
            total = total + self.lambda_cpd * cpd_loss(h_s, h_t, cats)
        if self.rcd == "mi":
            p_s = torch.softmax(student_out["logits"].float(), dim=-1)
            p_t = torch.softmax(teacher_out["logits"].detach().float(), dim=-1)
            total = total - self.lambda_rcd * critics.mi(p_t, p_s, cats, perm)
        elif self.rcd == "kl":
            total = total + self.lambda_rcd * decoupled_kl(teacher_out["logits"], student_out["logits"], cats,
                                                           self.tau)
        return total

    # training ------------------------------------------------------------------------------------------------------
    def fit(self, train: Split, valid: Split, schedule: TrainingSchedule, context: FitContext) -> "CorrKD":
        self._validate()
        self._begin_fit(train, context)
        task = context.task
        dims, seq_lens = train.dims(), train.seq_lens()

        teacher = self._complete_data_teacher(train, valid, schedule, context)
        if self.predict_with == "teacher":  # the very teacher the student would distil from, predicting itself
            self.model_ = teacher
            return self

        _distill.begin_student(self, teacher, train)  # frozen teacher; a fine-tuned encoder: the student's own copy

        torch.manual_seed(derive_seed(context.seed, "student-init"))
        student = self.build(dims, seq_lens, task).to(self.device_)
        critics = RCDCritics(n_categories(task, self.n_polarity), self.mi_hidden).to(self.device_) \
            if self.rcd == "mi" else None
        student_loss = self._student_loss_fn(teacher, critics, train, context.seed)
        params = [p for p in student.parameters() if p.requires_grad]
        if critics is not None:
            params += list(critics.parameters())
        student_schedule = schedule if self.student_recipe == "protocol" else schedule.with_recipe(self.student_recipe)
        self.train_model(student, train, valid, student_schedule, context, loss_fn=student_loss, params=params,
                         stage="student")
        self.model_ = student
        del teacher, critics, student_loss
        return self

    def _complete_data_teacher(self, train: Split, valid: Split, schedule: TrainingSchedule,
                               context: FitContext) -> nn.Module:
        """The teacher trained on complete data and selected on the complete validation split, cached per grid under
        OUT/cache/corrkd-teacher/ (see :func:`msabench.methods._distill.complete_data_teacher`)."""
        return _distill.complete_data_teacher(self, train, valid, schedule, context, TEACHER_PARAMS,
                                              code_modules=(TransformerSeqEncoder.__module__,))

    def _student_loss_fn(self, teacher: nn.Module, critics: RCDCritics | None, train: Split,
                         seed: int) -> Callable[[Any, Batch, Task], torch.Tensor]:
        """The student's loss: task terms + distillation against the frozen teacher on the complete samples.

        The teacher is frozen and in eval mode, so its outputs on the complete train split are fixed: they are
        computed once here and looked up by ``batch.index`` (the same values a per-batch teacher pass would give).
        """
        teacher_h, teacher_logits = self._teacher_outputs(teacher, train)
        perm_gen = torch.Generator().manual_seed(derive_seed(seed, "rcd-shuffle"))

        def loss_fn(output: dict[str, torch.Tensor], batch: Batch, task: Task) -> torch.Tensor:
            teacher_out = {"h": teacher_h[batch.index], "logits": teacher_logits[batch.index]}
            cats = categories(batch.labels, task, self.n_polarity)
            perm = derangement(len(batch), perm_gen) if critics is not None else None
            return self.loss(output, batch, task) + self.distillation_loss(output, teacher_out, cats, critics, perm)

        return loss_fn

    def _teacher_outputs(self, teacher: nn.Module, train: Split) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen teacher's joint representations (N, d) and class logits (N, C) on the complete train split."""
        out = _distill.teacher_outputs(self, teacher, train, ("h", "logits"))
        return out["h"], out["logits"]
