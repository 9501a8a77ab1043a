"""MMIN: missing modality imagination network (Zhao, Li, Jin, ACL-IJCNLP 2021), after the authors' code
(AIM3-RUC/MMIN, models/mmin_model.py and models/networks/).

A full-modality fusion model (LSTM + max-pool encoders for audio and vision, TextCNN for text, an FC classifier) is
pretrained on complete data; it is the forward-imagination target and initialises the student's encoders. The
student encodes the incomplete sample, a cascade residual autoencoder imagines the complete joint embedding
(forward), a second one maps it back to the incomplete embedding (backward, the cycle), and the classifier reads the
autoencoder's latents. Loss: task + 4.0 x forward MSE + 2.0 x backward MSE. See methods/mmin.md.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from msabench import text_encoder as _text
from msabench.data.base import MultimodalDataset, Split, Task
from msabench.masks import derive_seed
from msabench.method import FitContext
from msabench.methods import _distill
from msabench.methods._blocks import output_size
from msabench.protocol import TRAINING_RECIPES, TrainingSchedule
from msabench.training import Batch, TorchMethod, pick_prediction, task_loss

PREDICT_WITH = ("student", "teacher")
TEACHER_PARAMS = ("embd_size", "cls_layers", "teacher_dropout", "lr", "batch_size", "epochs", "patience",
                  "weight_decay", "grad_clip", "standardize")


def lengths_mask(lengths: torch.Tensor, t: int) -> torch.Tensor:
    """(B, T) True at positions < length (the sample's frames, dropped or not; padding False)."""
    return torch.arange(t, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


class LSTMMaxPool(nn.Module):
    """One-directional LSTM over the (masked) frames, max-pooled over the sample's positions (padding excluded)."""

    def __init__(self, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.rnn = nn.LSTM(in_dim, hidden, batch_first=True)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        valid = lengths_mask(lengths.clamp_min(1), x.shape[1]).unsqueeze(-1)
        return out.masked_fill(~valid, float("-inf")).amax(dim=1)


class TextCNN(nn.Module):
    """Convolutions of heights 3, 4, 5 over the whole feature width (128 channels each), ReLU, max over time,
    dropout, Linear + ReLU to the embedding."""

    def __init__(self, in_dim: int, embd: int, channels: int = 128, kernels: tuple[int, ...] = (3, 4, 5),
                 dropout: float = 0.5) -> None:
        super().__init__()
        self.kernels = kernels
        self.convs = nn.ModuleList([nn.Conv1d(in_dim, channels, k) for k in kernels])
        self.dropout = nn.Dropout(dropout)
        self.embd = nn.Sequential(nn.Linear(len(kernels) * channels, embd), nn.ReLU())

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        h = x.transpose(1, 2)
        if h.shape[-1] < max(self.kernels):  # sequences shorter than the widest kernel: zero frames after them
            h = F.pad(h, (0, max(self.kernels) - h.shape[-1]))
        pooled = [F.relu(conv(h)).amax(dim=-1) for conv in self.convs]
        return self.embd(self.dropout(torch.cat(pooled, dim=-1)))


class Encoders(nn.Module):
    """The three utterance encoders; output the concatenated embedding [a; l; v] (3 x embd)."""

    def __init__(self, dims: dict[str, int], embd: int) -> None:
        super().__init__()
        self.modalities = sorted(dims)
        self.nets = nn.ModuleDict({m: TextCNN(dims[m], embd) if m == "l" else LSTMMaxPool(dims[m], embd)
                                   for m in self.modalities})

    def forward(self, batch: Batch) -> torch.Tensor:
        return torch.cat([self.nets[m](batch.features[m], batch.lengths[m]) for m in self.modalities], dim=-1)


def fc_classifier(in_dim: int, layers: list[int], out: int, dropout: float) -> nn.Sequential:
    """Linear + ReLU (+ dropout) per hidden layer, then a Linear output layer."""
    mods: list[nn.Module] = []
    for width in layers:
        mods += [nn.Linear(in_dim, width), nn.ReLU()]
        if dropout > 0:
            mods.append(nn.Dropout(dropout))
        in_dim = width
    mods.append(nn.Linear(in_dim, out))
    return nn.Sequential(*mods)


class ResidualAE(nn.Module):
    """Cascade residual autoencoder: n blocks of encoder dim -> 256 -> 128 -> 64 (LeakyReLU between) and decoder
    64 -> 128 -> 256 -> dim (ReLU between); block k reads the input plus the previous block's output; a transition
    (Linear, ReLU, Linear) of the last sum gives the reconstruction; the latents of all blocks are concatenated."""

    def __init__(self, dim: int, layers: list[int], n_blocks: int) -> None:
        super().__init__()

        def chain(sizes: list[int], act: type[nn.Module]) -> nn.Sequential:
            mods: list[nn.Module] = []
            for i in range(len(sizes) - 1):
                mods.append(nn.Linear(sizes[i], sizes[i + 1]))
                if i < len(sizes) - 2:
                    mods.append(act())
            return nn.Sequential(*mods)

        self.encoders = nn.ModuleList([chain([dim, *layers], nn.LeakyReLU) for _ in range(n_blocks)])
        self.decoders = nn.ModuleList([chain([*layers[::-1], dim], nn.ReLU) for _ in range(n_blocks)])
        self.transition = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_in, x_out = x, torch.zeros_like(x)
        latents = []
        for enc, dec in zip(self.encoders, self.decoders):
            x_in = x_in + x_out
            latent = enc(x_in)
            x_out = dec(latent)
            latents.append(latent)
        return self.transition(x_in + x_out), torch.cat(latents, dim=-1)


class FusionNet(nn.Module):
    """The pretrained full-modality model (their UttFusionModel): encoders, concatenation, FC classifier."""

    def __init__(self, dims: dict[str, int], embd: int, cls_layers: list[int], dropout: float, n_out: int) -> None:
        super().__init__()
        self.encoders = Encoders(dims, embd)
        self.classifier = fc_classifier(embd * len(dims), cls_layers, n_out, dropout)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        embd = self.encoders(batch)
        return {"pred": self.classifier(embd), "embd": embd}


class MMINNet(nn.Module):
    """Encoders, forward autoencoder (imagination), backward autoencoder (cycle), classifier on the latents."""

    def __init__(self, dims: dict[str, int], embd: int, ae_layers: list[int], n_blocks: int, cls_layers: list[int],
                 dropout: float, n_out: int) -> None:
        super().__init__()
        dim = embd * len(dims)
        self.encoders = Encoders(dims, embd)
        self.ae = ResidualAE(dim, ae_layers, n_blocks)
        self.ae_cycle = ResidualAE(dim, ae_layers, n_blocks)
        self.classifier = fc_classifier(ae_layers[-1] * n_blocks, cls_layers, n_out, dropout)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        embd = self.encoders(batch)
        recon, latent = self.ae(embd)
        cycle, _ = self.ae_cycle(recon)
        return {"pred": self.classifier(latent), "embd": embd, "recon": recon, "cycle": cycle}


def imagination_losses(output: dict[str, torch.Tensor], target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(forward, backward) MSE: imagined complete embedding vs the target; cycle reconstruction vs the incomplete
    embedding (detached, as the authors do)."""
    forward = F.mse_loss(output["recon"], target.detach())
    backward = F.mse_loss(output["cycle"], output["embd"].detach())
    return forward, backward


def _widths(spec: str, name: str) -> list[int]:
    try:
        widths = [int(x) for x in str(spec).split(",") if x.strip()]
    except ValueError:
        widths = []
    if not widths or min(widths) < 1:
        raise ValueError(f"mmin: {name} must be comma-separated positive widths such as '256,128,64', got {spec!r}")
    return widths


class MMIN(TorchMethod):
    """Pretrained full-modality fusion model, then the imagination network trained on missing-modality masks."""

    name = "mmin"
    description = "MMIN (ACL 2021): cascade residual autoencoder imagining missing modalities, cycle consistency"

    def __init__(self, embd_size: int = 128, ae_layers: str = "256,128,64", n_blocks: int = 5,
                 cls_layers: str = "128,128", dropout: float = 0.5, teacher_dropout: float = 0.3,
                 forward_weight: float = 4.0, backward_weight: float = 2.0, student_recipe: str = "modality-proper",
                 predict_with: str = "student", lr: float = 2e-4, batch_size: int = 128, epochs: int = 60,
                 patience: int = 8, weight_decay: float = 1e-5, grad_clip: float = 1.0, **kwargs) -> None:
        super().__init__(lr=lr, batch_size=batch_size, epochs=epochs, patience=patience, weight_decay=weight_decay,
                         grad_clip=grad_clip, **kwargs)
        self.embd_size = embd_size
        self.ae_layers = ae_layers
        self.n_blocks = n_blocks
        self.cls_layers = cls_layers
        self.dropout = dropout
        self.teacher_dropout = teacher_dropout
        self.forward_weight = forward_weight
        self.backward_weight = backward_weight
        self.student_recipe = student_recipe
        self.predict_with = predict_with

    @classmethod
    def search_space(cls, trial) -> dict:
        return {
            "lr": trial.suggest_float("lr", 5e-5, 2e-3, log=True),
            "dropout": trial.suggest_float("dropout", 0.1, 0.5),
            "forward_weight": trial.suggest_float("forward_weight", 0.5, 8.0, log=True),
            "backward_weight": trial.suggest_float("backward_weight", 0.5, 8.0, log=True),
        }

    def _validate(self) -> None:
        _widths(self.ae_layers, "ae_layers")
        _widths(self.cls_layers, "cls_layers")
        if self.n_blocks < 1:
            raise ValueError(f"mmin: n_blocks must be at least 1, got {self.n_blocks}")
        if self.predict_with not in PREDICT_WITH:
            raise ValueError(f"mmin: predict_with must be one of {PREDICT_WITH}, got {self.predict_with!r}")
        if self.student_recipe != "protocol" and self.student_recipe not in TRAINING_RECIPES:
            raise ValueError(f"mmin: student_recipe must be 'protocol' or one of {sorted(TRAINING_RECIPES)}, "
                             f"got {self.student_recipe!r}")

    def build(self, dims: dict[str, int], seq_lens: dict[str, int], task: Task) -> nn.Module:
        self._validate()
        return MMINNet(dims, self.embd_size, _widths(self.ae_layers, "ae_layers"), self.n_blocks,
                       _widths(self.cls_layers, "cls_layers"), self.dropout, output_size(task))

    @_text.wrap_build  # like build: dims["l"] is the text encoder's width when one is active
    def build_teacher(self, dims: dict[str, int], seq_lens: dict[str, int], task: Task) -> nn.Module:
        """The full-modality fusion model that is pretrained on complete data."""
        self._validate()
        return FusionNet(dims, self.embd_size, _widths(self.cls_layers, "cls_layers"), self.teacher_dropout,
                         output_size(task))

    def loss(self, output: Any, batch: Batch, task: Task) -> torch.Tensor:
        """The task loss alone (the pretraining loss; the student's adds the imagination terms)."""
        return task_loss(pick_prediction(output), batch.labels, task)

    def fit(self, train: Split, valid: Split, schedule: TrainingSchedule, context: FitContext) -> "MMIN":
        self._validate()
        self._begin_fit(train, context)
        dims = train.dims()
        teacher = _distill.complete_data_teacher(self, train, valid, schedule, context, TEACHER_PARAMS,
                                                 build=lambda: self.build_teacher(dims, train.seq_lens(), context.task))
        if self.predict_with == "teacher":
            self.model_ = teacher
            return self
        _distill.begin_student(self, teacher, train, encoder_from_teacher=True)  # like its encoders: from the teacher
        targets = _distill.teacher_outputs(self, teacher, train, ("embd",))["embd"]
        torch.manual_seed(derive_seed(context.seed, "student-init"))
        student = self.build(dims, train.seq_lens(), context.task).to(self.device_)
        student.encoders.load_state_dict(teacher.encoders.state_dict())  # initialised from the pretrained model

        def student_loss(output: dict[str, torch.Tensor], batch: Batch, task: Task) -> torch.Tensor:
            forward, backward = imagination_losses(output, targets[batch.index])
            return self.loss(output, batch, task) + self.forward_weight * forward + self.backward_weight * backward

        student_schedule = schedule if self.student_recipe == "protocol" else schedule.with_recipe(self.student_recipe)
        self.train_model(student, train, valid, student_schedule, context, loss_fn=student_loss, stage="student")
        self.model_ = student
        del teacher, targets
        return self
