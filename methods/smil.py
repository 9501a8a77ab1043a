"""SMIL (Ma et al., AAAI 2021): missing-modality reconstruction from learned priors, Bayesian meta-learning.

Each modality is summarised by the mean of its present frames. A modality a sample lacks entirely is reconstructed
as a weighted sum of K modality priors (k-means centres of that modality's train features); the weights come from a
reconstruction network that reads the modalities the sample has. A regularisation network perturbs the fused
feature with a learned Gaussian (sampled in training, its mean at test), with a KL term to N(0, I).

Training is meta-learning: each batch is split into a support half and a query half. The main network (modality
encoders and head: the inner-loop parameters theta) takes one gradient step on the support loss; the outer loss is
the query loss of the adapted parameters, differentiated through the inner step (second order) and applied to
every parameter, including the reconstruction and regularisation networks (psi), which the inner loop leaves alone.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from msabench.data.base import Split, Task
from msabench.masks import derive_seed
from msabench.method import FitContext
from msabench.methods._blocks import masked_mean, mlp, output_size
from msabench.protocol import TrainingSchedule
from msabench.training import Batch, TorchMethod, task_loss

INNER_PREFIXES: tuple[str, ...] = ("encoders.", "head.")


def kmeans(x: torch.Tensor, k: int, generator: torch.Generator, iters: int = 50,
           init: torch.Tensor | None = None) -> torch.Tensor:
    """Lloyd's k-means on the rows of ``x`` (N, D): (k, D) centres; init is k distinct random rows unless given."""
    k = min(k, x.shape[0])
    if init is None:
        init = x[torch.randperm(x.shape[0], generator=generator)[:k].to(x.device)]
    centres = init.clone()
    for _ in range(iters):
        assign = torch.cdist(x, centres).argmin(dim=1)
        onehot = nn.functional.one_hot(assign, k).to(x.dtype)  # (N, k)
        counts = onehot.sum(dim=0)
        sums = onehot.T @ x
        new = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1.0)[:, None], centres)
        if torch.allclose(new, centres):
            break
        centres = new
    return centres


def reconstruct_from_priors(logits: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """The prior-weighted reconstruction softmax(logits) @ centres: (B, K) logits, (K, D) centres → (B, D)."""
    return torch.softmax(logits, dim=-1) @ centres


class SMILNet(nn.Module):
    """Encoders + head (theta), reconstruction and regularisation networks (psi), priors as buffers."""

    def __init__(self, dims: dict[str, int], hidden: int, n_priors: int, dropout: float, n_out: int) -> None:
        super().__init__()
        self.modalities = sorted(dims)
        total = sum(dims.values())
        self.encoders = nn.ModuleDict({m: mlp([dims[m], hidden, hidden], dropout) for m in self.modalities})
        self.head = mlp([hidden * len(self.modalities), hidden, n_out], dropout)
        # reconstruction of m reads the other modalities' summaries plus the presence flags
        self.reconstruct = nn.ModuleDict({m: mlp([total - dims[m] + len(dims), hidden, n_priors])
                                          for m in self.modalities})
        self.regularise = mlp([hidden * len(self.modalities), hidden, 2 * hidden * len(self.modalities)])
        for m in self.modalities:
            self.register_buffer(f"priors_{m}", torch.zeros(n_priors, dims[m]))
        self.stochastic = True

    def priors(self, m: str) -> torch.Tensor:
        return getattr(self, f"priors_{m}")

    def complete(self, pooled: dict[str, torch.Tensor], present: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Replace every entirely missing modality by its reconstruction from the priors."""
        flags = torch.stack([present[m] for m in self.modalities], dim=-1).to(pooled[self.modalities[0]].dtype)
        out = {}
        for m in self.modalities:
            others = [pooled[o] * present[o].to(pooled[o].dtype)[:, None] for o in self.modalities if o != m]
            logits = self.reconstruct[m](torch.cat(others + [flags], dim=-1))
            rec = reconstruct_from_priors(logits, self.priors(m))
            out[m] = torch.where(present[m][:, None], pooled[m], rec)
        return out

    def forward(self, pooled: dict[str, torch.Tensor], present: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        filled = self.complete(pooled, present)
        h = torch.cat([torch.relu(self.encoders[m](filled[m])) for m in self.modalities], dim=-1)
        mu, logvar = self.regularise(h).chunk(2, dim=-1)
        logvar = logvar.clamp(-8.0, 4.0)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if (self.training and self.stochastic) else mu
        kl = 0.5 * (mu ** 2 + logvar.exp() - 1.0 - logvar).sum(dim=-1).mean()
        out = self.head(h + z)
        return {"pred": out.squeeze(-1) if out.shape[-1] == 1 else out, "kl": kl}


def summarise(batch: Batch) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per modality the mean of the present frames (B, D) and whether any frame is present (B,)."""
    pooled = {m: masked_mean(x, batch.mask[m]) for m, x in batch.features.items()}
    present = {m: batch.mask[m].any(dim=1) for m in batch.features}
    return pooled, present


def inner_names(net: nn.Module) -> list[str]:
    """Names of the inner-loop (theta) parameters: encoders and head."""
    return [n for n, _ in net.named_parameters() if n.startswith(INNER_PREFIXES)]


def inner_update(net: SMILNet, support_loss: torch.Tensor, lr: float,
                 create_graph: bool = True) -> dict[str, torch.Tensor]:
    """All parameters after one SGD step on ``support_loss`` applied to the inner-loop parameters only."""
    params = dict(net.named_parameters())
    names = inner_names(net)
    grads = torch.autograd.grad(support_loss, [params[n] for n in names], create_graph=create_graph,
                                allow_unused=True)
    updated = dict(params)
    for n, g in zip(names, grads):
        if g is not None:
            updated[n] = params[n] - lr * g
    return updated


class SMILModel(nn.Module):
    """Wraps :class:`SMILNet`: plain prediction in eval mode, one meta-learning episode per training batch."""

    def __init__(self, net: SMILNet, task: Task, inner_lr: float, kl_weight: float) -> None:
        super().__init__()
        self.net = net
        self.task = task
        self.inner_lr = inner_lr
        self.kl_weight = kl_weight

    def episode_loss(self, out: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        return task_loss(out["pred"], labels, self.task) + self.kl_weight * out["kl"]

    def meta(self, pooled: dict[str, torch.Tensor], present: dict[str, torch.Tensor],
             labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Inner step on the first half, query outputs of the adapted parameters on the second half."""
        half = labels.shape[0] // 2
        sup, qry = slice(0, half), slice(half, None)
        take = lambda d, s: {m: v[s] for m, v in d.items()}  # noqa: E731
        out_s = self.net(take(pooled, sup), take(present, sup))
        adapted = inner_update(self.net, self.episode_loss(out_s, labels[sup]), self.inner_lr)
        out_q = functional_call(self.net, {**dict(self.net.named_buffers()), **adapted},
                                (take(pooled, qry), take(present, qry)))
        return {"pred": out_q["pred"], "kl": out_q["kl"], "labels": labels[qry]}

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        pooled, present = summarise(batch)
        if self.training and torch.is_grad_enabled() and len(batch) >= 2:
            return self.meta(pooled, present, batch.labels)
        return self.net(pooled, present)


class SMIL(TorchMethod):
    """SMIL: prior-based reconstruction of missing modalities, feature regularisation, meta-learned."""

    name = "smil"
    description = "SMIL (Ma et al. 2021): missing modality from k-means priors, Bayesian meta-learning"
    tasks = frozenset({"regression", "multilabel"})

    def __init__(self, hidden: int = 64, n_priors: int = 10, dropout: float = 0.1, inner_lr: float = 0.01,
                 kl_weight: float = 1e-3, lr: float = 1e-3, batch_size: int = 64, epochs: int = 30,
                 patience: int = 8, weight_decay: float = 0.0, **kwargs) -> None:
        super().__init__(lr=lr, batch_size=batch_size, epochs=epochs, patience=patience,
                         weight_decay=weight_decay, **kwargs)
        self.hidden = hidden
        self.n_priors = n_priors
        self.dropout = dropout
        self.inner_lr = inner_lr
        self.kl_weight = kl_weight

    def build(self, dims: dict[str, int], seq_lens: dict[str, int], task: Task) -> nn.Module:
        net = SMILNet(dims, self.hidden, self.n_priors, self.dropout, output_size(task))
        return SMILModel(net, task, self.inner_lr, self.kl_weight)

    def fit(self, train: Split, valid: Split, schedule: TrainingSchedule, context: FitContext) -> "SMIL":
        self._begin_fit(train, context)
        self.model_ = self.build(train.dims(), train.seq_lens(), context.task).to(self.device_)
        self.set_priors(self.model_.net, train, context.seed)
        self.train_model(self.model_, train, valid, schedule, context)
        return self

    def set_priors(self, net: SMILNet, train: Split, seed: int) -> None:
        """k-means centres of each modality's complete train summaries (standardised) become its priors."""
        prepared = self.prepare(train)
        padding = prepared.split.padding_mask()
        gen = torch.Generator().manual_seed(derive_seed(seed, "smil-priors"))
        for m in net.modalities:
            pooled = masked_mean(prepared.standardised(m), padding[m])[padding[m].any(dim=1)]
            if pooled.shape[0] == 0:
                continue
            centres = kmeans(pooled, self.n_priors, gen)
            buf = net.priors(m)
            buf.zero_()
            buf[: centres.shape[0]] = centres
            if centres.shape[0] < buf.shape[0]:  # fewer samples than priors: repeat the centres
                buf[centres.shape[0]:] = centres[torch.arange(buf.shape[0] - centres.shape[0]) % centres.shape[0]]

    def loss(self, output: dict[str, torch.Tensor], batch: Batch, task: Task) -> torch.Tensor:
        """Query-half task loss (labels of the query half in meta-training) + KL of the regulariser."""
        labels = output.get("labels", batch.labels)
        return task_loss(output["pred"], labels, task) + self.kl_weight * output["kl"]

    @classmethod
    def search_space(cls, trial) -> dict:
        return {
            "hidden": trial.suggest_categorical("hidden", [32, 64, 128]),
            "n_priors": trial.suggest_categorical("n_priors", [5, 10, 20]),
            "inner_lr": trial.suggest_float("inner_lr", 1e-3, 1e-1, log=True),
            "lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True),
        }
