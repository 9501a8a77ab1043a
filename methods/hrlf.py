"""HRLF: hierarchical representation learning (Li, Yang et al., NeurIPS 2024), an msabench re-implementation.

No public code exists. A teacher trains on complete data and is frozen (the shared stage in
``methods/_distill.py``); a student of the same network trains on incomplete data with the task loss plus
fine-grained representation factorization (FRF), hierarchical mutual-information maximisation (HMI, the
Jensen-Shannon estimator of ``methods/_mi.py``), hierarchical adversarial learning (HAL) and a KL term on the
polarity logits. Only the student predicts. methods/hrlf.md lists every choice the paper leaves open.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from msabench.data.base import MultimodalDataset, Split, Task
from msabench.masks import derive_seed
from msabench.method import FitContext
from msabench.methods import _distill
from msabench.methods._blocks import TransformerSeqEncoder, grad_reverse, mlp
from msabench.methods._mi import StatisticsNet, derangement, jsd_mi
from msabench.methods.corrkd import DISTILL_SCALES, CorrKD, categories, n_categories
from msabench.protocol import TRAINING_RECIPES, TrainingSchedule
from msabench.training import Batch, TorchMethod, task_loss

PREDICT_WITH = ("student", "teacher")
SCALES = 3
# what the teacher's training depends on (the distillation switches and weights do not change it)
TEACHER_PARAMS = ("d", "heads", "layers", "dropout", "n_polarity", "ce_weight", "frf", "lambda_frf", "lr",
                  "batch_size", "epochs", "patience", "weight_decay", "grad_clip", "standardize")


def last_present(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The row of h (B, T, H) at each sample's last present frame of mask (B, T); zeros where none is present."""
    t = mask.shape[1]
    pos = torch.arange(1, t + 1, device=mask.device).unsqueeze(0) * mask.long()
    idx = (pos.argmax(dim=1)).view(-1, 1, 1).expand(-1, 1, h.shape[-1])
    out = h.gather(1, idx).squeeze(1)
    return out * mask.any(dim=1, keepdim=True).to(out.dtype)


# the losses ----------------------------------------------------------------------------------------------------
def frf_loss(z: dict[str, torch.Tensor], q: dict[str, torch.Tensor], u: dict[str, torch.Tensor],
             decoder: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """L_FRF = L_trans + L_recon.

    L_recon = mean_m MSE(D_r([Q_m; U_m]), Z_m); L_trans = mean over ordered pairs a != b of
    MSE(D_r([Q_a; U_b]), Z_b): the sentiment-relevant part of one modality with the modality-specific part of
    another must give back the other modality.
    """
    mods = sorted(z)
    recon = torch.stack([F.mse_loss(decoder(torch.cat([q[m], u[m]], dim=-1)), z[m]) for m in mods]).mean()
    trans = torch.stack([F.mse_loss(decoder(torch.cat([q[a], u[b]], dim=-1)), z[b])
                         for a in mods for b in mods if a != b]).mean()
    return trans + recon


HAL_STUDENT = ("reversal", "non-saturating")


def hal_loss(discriminators: nn.ModuleList, teacher_feats: list[torch.Tensor], student_feats: list[torch.Tensor],
             student: str = "reversal") -> torch.Tensor:
    """Sum over scales of the discriminator's cross-entropy -log D(e^t) - log(1 - D(e^s)) plus the student's term.

    D_i scores "teacher" (1) against "student" (0) and minimises its cross-entropy on detached features. The student,
    in the same step:
    - ``"non-saturating"``: minimises -log D(e^s) through the discriminator's weights held fixed (Goodfellow et al.,
      2014); its push fades once D is fooled;
    - ``"reversal"``: maximises the discriminator's own loss through a gradient-reversal layer (the literal min-max
      of the paper's Eq. 9); the push grows as D is fooled, which lets the student's features run away in norm.
    """
    total = student_feats[0].new_zeros(())
    for disc, e_t, e_s in zip(discriminators, teacher_feats, student_feats):
        real = disc(e_t.detach()).squeeze(-1)
        total = total + F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
        if student == "reversal":
            fake = disc(grad_reverse(e_s)).squeeze(-1)
            total = total + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
        else:
            fake = disc(e_s.detach()).squeeze(-1)
            fixed = {k: v.detach() for k, v in disc.named_parameters()}
            fooled = torch.func.functional_call(disc, fixed, (e_s,)).squeeze(-1)
            total = total + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)) \
                + F.binary_cross_entropy_with_logits(fooled, torch.ones_like(fooled))
    return total


def kl_loss(z_t: torch.Tensor, z_s: torch.Tensor, tau: float) -> torch.Tensor:
    """tau^2 * mean_i KL(softmax(z_t / tau) || softmax(z_s / tau)), teacher detached."""
    log_t = F.log_softmax(z_t.detach().float() / tau, dim=-1)
    log_s = F.log_softmax(z_s.float() / tau, dim=-1)
    return (log_t.exp() * (log_t - log_s)).sum(dim=-1).mean() * tau ** 2


class HRLFCritics(nn.Module):
    """The student stage's extra networks: a statistics network T_theta and a discriminator per scale."""

    def __init__(self, widths: list[int], mi_hidden: int, disc_hidden: int) -> None:
        super().__init__()
        self.stats = nn.ModuleList([StatisticsNet(w, mi_hidden) for w in widths])
        self.discriminators = nn.ModuleList([mlp([w, disc_hidden, 1]) for w in widths])

    def mi(self, teacher_feats: list[torch.Tensor], student_feats: list[torch.Tensor],
           perm: torch.Tensor) -> torch.Tensor:
        """Sum over scales of the JSD MI estimate between teacher (detached) and student features."""
        return sum(jsd_mi(stat, e_t.detach(), e_s, perm)
                   for stat, e_t, e_s in zip(self.stats, teacher_feats, student_feats))


# the network (teacher and student share it) ----------------------------------------------------------------------
class HRLFNet(nn.Module):
    """Per modality Conv1d + positions + Transformer, the last present token Z_m (d); FRF encoders Q_m, U_m (d/2
    each), decoder D_r; H = [Q_l; U_l; Q_a; U_a; Q_v; U_v] (3d) through the chain 3d -> 2d -> d -> 2d -> 3d;
    same-scale features E_1 (6d), E_2 (4d), E_3 (d); heads on the chain's output."""

    def __init__(self, dims: dict[str, int], d: int, heads: int, layers: int, dropout: float, n_classes: int,
                 regression: bool) -> None:
        super().__init__()
        self.modalities = sorted(dims)
        half = d // 2
        self.encoders = nn.ModuleDict({m: TransformerSeqEncoder(dims[m], d, heads, layers, 3, dropout)
                                       for m in self.modalities})
        self.relevant = nn.ModuleDict({m: mlp([d, d, half]) for m in self.modalities})
        self.specific = nn.ModuleDict({m: mlp([d, d, half]) for m in self.modalities})
        self.decoder = mlp([2 * half, d, d])
        n = len(self.modalities)
        width = 2 * half * n
        self.down1 = nn.Sequential(nn.Linear(width, 2 * d), nn.ReLU())
        self.down2 = nn.Sequential(nn.Linear(2 * d, d), nn.ReLU())
        self.up1 = nn.Sequential(nn.Linear(d, 2 * d), nn.ReLU())
        self.up2 = nn.Sequential(nn.Linear(2 * d, width), nn.ReLU())
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(width, n_classes)
        self.score = nn.Linear(width, 1) if regression else None
        self.scale_widths = [2 * width, 4 * d, d]

    def forward(self, batch: Batch) -> dict[str, Any]:
        z = {m: last_present(self.encoders[m](batch.features[m], batch.mask[m]), batch.mask[m])
             for m in self.modalities}
        q = {m: self.relevant[m](z[m]) for m in self.modalities}
        u = {m: self.specific[m](z[m]) for m in self.modalities}
        h = torch.cat([t for m in self.modalities for t in (q[m], u[m])], dim=-1)
        a1 = self.down1(h)
        a2 = self.down2(a1)
        b1 = self.up1(a2)
        b2 = self.up2(b1)
        hd = self.dropout(b2)
        logits = self.classifier(hd)
        pred = self.score(hd).squeeze(-1) if self.score is not None else logits
        return {"pred": pred, "logits": logits, "z": z, "q": q, "u": u, "decoder": self.decoder,
                "e1": torch.cat([h, b2], dim=-1), "e2": torch.cat([a1, b1], dim=-1), "e3": a2}


class HRLF(TorchMethod):
    """Teacher on complete data, frozen; student on incomplete data with FRF + HMI + HAL + KL."""

    name = "hrlf"
    description = "HRLF (NeurIPS 2024): complete-data teacher, student with FRF + hierarchical MI + adversarial + KL"

    def __init__(self, d: int = 40, heads: int = 10, layers: int = 2, dropout: float = 0.1, n_polarity: int = 2,
                 ce_weight: float = 1.0, frf: bool = True, hmi: bool = True, hal: bool = True, kl: bool = True,
                 lambda_frf: float = 1.0, lambda_hmi: float = 1.0, lambda_hal: float = 1.0, lambda_kl: float = 1.0,
                 tau: float = 1.0, mi_hidden: int = 64, disc_hidden: int = 64, distill_scale: str = "legacy",
                 hal_student: str = "reversal", student_recipe: str = "frame+modality",
                 predict_with: str = "student", lr: float = 1e-3,
                 batch_size: int = 128, epochs: int = 50, patience: int = 8, weight_decay: float = 0.0,
                 **kwargs) -> None:
        super().__init__(lr=lr, batch_size=batch_size, epochs=epochs, patience=patience,
                         weight_decay=weight_decay, **kwargs)
        self.d = d
        self.heads = heads
        self.layers = layers
        self.dropout = dropout
        self.n_polarity = n_polarity
        self.ce_weight = ce_weight
        self.frf = frf
        self.hmi = hmi
        self.hal = hal
        self.kl = kl
        self.lambda_frf = lambda_frf
        self.lambda_hmi = lambda_hmi
        self.lambda_hal = lambda_hal
        self.lambda_kl = lambda_kl
        self.tau = tau
        self.mi_hidden = mi_hidden
        self.disc_hidden = disc_hidden
        self.distill_scale = distill_scale
        self.hal_student = hal_student
        self.student_recipe = student_recipe
        self.predict_with = predict_with

    @classmethod
    def dataset_defaults(cls, dataset: MultimodalDataset) -> dict[str, Any]:
        """MOSI / MOSEI / IEMOCAP learning rate, batch size, epochs and heads: CorrKD's reported settings."""
        return CorrKD.dataset_defaults(dataset)

    @classmethod
    def search_space(cls, trial) -> dict:
        return {
            "lr": trial.suggest_float("lr", 1e-4, 5e-3, log=True),
            "dropout": trial.suggest_float("dropout", 0.0, 0.3),
            "lambda_frf": trial.suggest_float("lambda_frf", 0.1, 2.0, log=True),
            "lambda_hmi": trial.suggest_float("lambda_hmi", 0.1, 2.0, log=True),
            "lambda_hal": trial.suggest_float("lambda_hal", 0.1, 2.0, log=True),
            "distill_scale": trial.suggest_categorical("distill_scale", list(DISTILL_SCALES)),
        }

    def _validate(self) -> None:
        if self.d % self.heads:
            raise ValueError(f"hrlf: heads={self.heads} must divide d={self.d}")
        if self.d % 2:
            raise ValueError(f"hrlf: d={self.d} must be even (Q and U take d/2 each)")
        if self.predict_with not in PREDICT_WITH:
            raise ValueError(f"hrlf: predict_with must be one of {PREDICT_WITH}, got {self.predict_with!r}")
        if self.distill_scale not in DISTILL_SCALES:
            raise ValueError(f"hrlf: distill_scale must be one of {DISTILL_SCALES}, got {self.distill_scale!r}")
        if self.hal_student not in HAL_STUDENT:
            raise ValueError(f"hrlf: hal_student must be one of {HAL_STUDENT}, got {self.hal_student!r}")
        if self.n_polarity not in (2, 3):
            raise ValueError(f"hrlf: n_polarity must be 2 or 3, got {self.n_polarity}")
        if self.student_recipe != "protocol" and self.student_recipe not in TRAINING_RECIPES:
            raise ValueError(f"hrlf: student_recipe must be 'protocol' or one of {sorted(TRAINING_RECIPES)}, "
                             f"got {self.student_recipe!r}")

    def build(self, dims: dict[str, int], seq_lens: dict[str, int], task: Task) -> nn.Module:
        self._validate()
        return HRLFNet(dims, self.d, self.heads, self.layers, self.dropout, n_categories(task, self.n_polarity),
                       task.kind == "regression")

    def loss(self, output: Any, batch: Batch, task: Task) -> torch.Tensor:
        """Task loss (+ ce_weight x polarity cross-entropy for regression) + lambda_frf x L_FRF: the teacher's loss
        and the student's own terms."""
        total = task_loss(output["pred"], batch.labels, task)
        if task.kind == "regression" and self.ce_weight:
            cats = categories(batch.labels, task, self.n_polarity)
            total = total + self.ce_weight * F.cross_entropy(output["logits"].float(), cats)
        if self.frf:
            total = total + self.lambda_frf * frf_loss(output["z"], output["q"], output["u"], output["decoder"])
        return total

    def distillation_loss(self, student_out: dict[str, Any], teacher_out: dict[str, torch.Tensor],
                          critics: HRLFCritics, perm: torch.Tensor) -> torch.Tensor:
        """-lambda_hmi x sum_i MI(E^t_i, E^s_i) + lambda_hal x L_HAL + lambda_kl x L_KL, switches applied.

        With ``distill_scale="normalized"`` the statistics networks and discriminators see the L2-normalised E_i.
        """
        keys = [f"e{i + 1}" for i in range(SCALES)]
        e_s = [student_out[k].float() for k in keys]
        e_t = [teacher_out[k].detach().float() for k in keys]
        if self.distill_scale == "normalized":
            e_s = [F.normalize(e, dim=-1, eps=1e-8) for e in e_s]
            e_t = [F.normalize(e, dim=-1, eps=1e-8) for e in e_t]
        total = e_s[0].new_zeros(())
        if self.hmi:
            total = total - self.lambda_hmi * critics.mi(e_t, e_s, perm)
        if self.hal:
            total = total + self.lambda_hal * hal_loss(critics.discriminators, e_t, e_s, self.hal_student)
        if self.kl:
            total = total + self.lambda_kl * kl_loss(teacher_out["logits"], student_out["logits"], self.tau)
        return total

    # training ------------------------------------------------------------------------------------------------------
    def fit(self, train: Split, valid: Split, schedule: TrainingSchedule, context: FitContext) -> "HRLF":
        self._validate()
        self._begin_fit(train, context)
        teacher = _distill.complete_data_teacher(self, train, valid, schedule, context, TEACHER_PARAMS,
                                                 code_modules=(TransformerSeqEncoder.__module__,))
        if self.predict_with == "teacher":
            self.model_ = teacher
            return self
        _distill.begin_student(self, teacher, train)  # frozen teacher; a fine-tuned encoder: the student's own copy
        torch.manual_seed(derive_seed(context.seed, "student-init"))
        student = self.build(train.dims(), train.seq_lens(), context.task).to(self.device_)
        critics = HRLFCritics(student.scale_widths, self.mi_hidden, self.disc_hidden).to(self.device_)
        loss_fn = self._student_loss_fn(teacher, critics, train, context.seed)
        params = [p for p in student.parameters() if p.requires_grad] + list(critics.parameters())
        student_schedule = schedule if self.student_recipe == "protocol" else schedule.with_recipe(self.student_recipe)
        self.train_model(student, train, valid, student_schedule, context, loss_fn=loss_fn, params=params,
                         stage="student")
        self.model_ = student
        del teacher, critics, loss_fn
        return self

    def _student_loss_fn(self, teacher: nn.Module, critics: HRLFCritics, train: Split,
                         seed: int) -> Callable[[Any, Batch, Task], torch.Tensor]:
        """Task + FRF on the student's own outputs, + distillation against the frozen teacher's outputs on the
        complete samples (computed once, looked up by ``batch.index``)."""
        keys = [f"e{i + 1}" for i in range(SCALES)] + ["logits"]
        outs = _distill.teacher_outputs(self, teacher, train, keys)
        perm_gen = torch.Generator().manual_seed(derive_seed(seed, "hmi-shuffle"))

        def loss_fn(output: dict[str, Any], batch: Batch, task: Task) -> torch.Tensor:
            teacher_out = {k: v[batch.index] for k, v in outs.items()}
            perm = derangement(len(batch), perm_gen)
            return self.loss(output, batch, task) + self.distillation_loss(output, teacher_out, critics, perm)

        return loss_fn
