"""DMD (Li, Wang and Cui, CVPR 2023): decoupled multimodal distillation.

Each modality, projected to ``d`` by a temporal Conv1d, is decoupled by a shared encoder into a modality-irrelevant
(homogeneous) part and by its own encoder into a modality-exclusive (heterogeneous) part; a decoder reconstructs
the projection from both, and re-encoding the reconstruction must give back the exclusive part. Homogeneous parts
are aligned across modalities by a margin loss and kept apart from the exclusive parts by a cosine penalty. A
graph distillation unit in each space (HomoGD on the homogeneous parts, HeteroGD on the exclusive parts after
MulT's cross-modal attention) distils between the modalities' predictions with sample-wise, learned edge weights.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from msabench.data.base import Task
from msabench.methods._blocks import output_size
from msabench.methods._crossmodal import CrossmodalTransformer, attention_allowed, last_valid, valid_positions
from msabench.training import Batch, TorchMethod, task_loss

MODS: tuple[str, ...] = ("l", "v", "a")  # the order of the authors' code (edge priors refer to it)
# directed edges (target j <- source i), target-major, as the authors' kernels enumerate them
EDGES: tuple[tuple[int, int], ...] = tuple((j, i) for j in range(3) for i in range(3) if i != j)
HOMO_PRIOR = (0.0, 0.0, 1.0, 0.0, 1.0, 0.0)  # the authors' run.py: l->v and l->a favoured
HETERO_PRIOR = (0.0, 0.0, 1.0, 0.0, 1.0, 1.0)  # l->v, l->a and v->a favoured


# losses --------------------------------------------------------------------------------------------------------------
def masked_cosine_penalty(s: torch.Tensor, c: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Mean over present frames of max(0, cos(s_t, c_t)): CosineEmbeddingLoss with target -1 and margin 0."""
    cos = F.cosine_similarity(s, c, dim=-1, eps=eps).clamp_min(0.0)
    w = mask.to(cos.dtype)
    return (cos * w).sum() / w.sum().clamp_min(1.0)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the present frames (B, T, D) of ``mask`` (B, T); 0 if none."""
    w = mask.to(pred.dtype).unsqueeze(-1)
    return ((pred - target) ** 2 * w).sum() / (w.sum() * pred.shape[-1]).clamp_min(1.0)


def margin_loss(feats: torch.Tensor, ids: torch.Tensor, scale: float = 0.15) -> torch.Tensor:
    """The authors' HingeLoss, vectorised: for each anchor i, positives p (same label, p != i) and negatives n
    (different label), mean of max(0, scale * |y_i - y_n| - cos(f_i, f_p) + cos(f_i, f_n)); averaged over the
    anchors that have both. ``ids`` (N,) or (N, K); for K labels |y_i - y_n| is the L1 distance."""
    norm = torch.sqrt((feats ** 2).sum(dim=1) + 1e-8).clamp_min(1e-8)
    cos = (feats @ feats.t()) / (norm[:, None] * norm[None, :])
    ids = ids.float().reshape(ids.shape[0], -1)
    diff = (ids[:, None, :] - ids[None, :, :]).abs().sum(dim=-1)
    n = feats.shape[0]
    same = diff == 0
    pos = same & ~torch.eye(n, dtype=torch.bool, device=feats.device)
    neg = ~same
    margin = scale * diff
    # hinge[i, p, q] = margin[i, q] - cos[i, p] + cos[i, q]
    hinge = F.relu(margin[:, None, :] - cos[:, :, None] + cos[:, None, :])
    pairs = (pos[:, :, None] & neg[:, None, :]).to(hinge.dtype)
    count = pairs.sum(dim=(1, 2))
    per_anchor = (hinge * pairs).sum(dim=(1, 2)) / count.clamp_min(1.0)
    valid = count > 0
    if not bool(valid.any()):
        return feats.sum() * 0.0
    return per_anchor[valid].mean()


# graph distillation -------------------------------------------------------------------------------------------------
def softmax_prior(prior_logits: tuple[float, ...], temperature: float, per_target: bool) -> torch.Tensor:
    """The authors' prior ``softmax(w / t)`` over the six edges, or over each target's incoming edges."""
    w = torch.tensor(prior_logits, dtype=torch.float32) / temperature
    return torch.softmax(w.view(3, 2), dim=-1).flatten() if per_target else torch.softmax(w, dim=0)


class GraphDistillationUnit(nn.Module):
    """A GD unit (DMD Sec. 3.3, after Luo et al. 2018): sample-wise edge weights between modalities' predictions.

    For each directed edge j <- i (source i teaches target j) the unit scores ``W_edge [z_j, z_i]`` with
    ``z_m = [W_logit logit_m, W_repr repr_m]``; the scores, times ``alpha``, are normalised by a softmax over the
    sources of each target (``per_target``; the released code normalises over all six edges at once). The
    distillation loss weighs the L1 distance between the target's logits and the (detached) source's logits by
    (edge weight + prior); a regulariser keeps the batch-mean edge weights near the prior.
    """

    def __init__(self, n_out: int, repr_dim: int, gd_size: int, prior_logits: tuple[float, ...],
                 per_target: bool = True, alpha: float = 1 / 8, gd_reg: float = 10.0,
                 prior_temperature: float = 0.25) -> None:
        super().__init__()
        self.w_logit = nn.Linear(n_out, gd_size)
        self.w_repr = nn.Linear(repr_dim, gd_size)
        self.w_edge = nn.Linear(4 * gd_size, 1)
        self.per_target = per_target
        self.alpha = alpha
        self.gd_reg = gd_reg
        self.register_buffer("prior", softmax_prior(prior_logits, prior_temperature, per_target))
        self.register_buffer("targets", torch.tensor([j for j, _ in EDGES]))
        self.register_buffer("sources", torch.tensor([i for _, i in EDGES]))

    def scores(self, logits: torch.Tensor, reprs: torch.Tensor) -> torch.Tensor:
        """Unnormalised edge scores (B, 6) from logits (3, B, K) and representations (3, B, H)."""
        z = torch.cat([self.w_logit(logits), self.w_repr(reprs)], dim=-1)  # (3, B, 2g)
        pair = torch.cat([z[self.targets], z[self.sources]], dim=-1)  # (6, B, 4g)
        return self.w_edge(pair).squeeze(-1).t()

    def forward(self, logits: torch.Tensor, reprs: torch.Tensor) -> torch.Tensor:
        """Edge weights (B, 6), in :data:`EDGES` order."""
        e = self.scores(logits, reprs) * self.alpha
        if self.per_target:
            return torch.softmax(e.view(-1, 3, 2), dim=-1).flatten(1)
        return torch.softmax(e, dim=-1)

    def regularizer(self, edges: torch.Tensor) -> torch.Tensor:
        return self.gd_reg * ((edges.mean(dim=0) - self.prior) ** 2).sum()

    def logit_loss(self, logits: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        """sum over edges of mean_b (w_b + prior) * ||logit_j - stopgrad(logit_i)||_1."""
        dist = (logits[self.targets] - logits[self.sources].detach()).abs().sum(dim=-1)  # (6, B)
        return ((edges.t() + self.prior[:, None]) * dist).mean(dim=1).sum()

    def repr_loss(self, reprs: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        """The hetero unit's ``min_cosine``: per edge mean_b max(0, cos(r_j, stopgrad r_i)) * mean_b (w_b + prior)."""
        cos = F.cosine_similarity(reprs[self.targets], reprs[self.sources].detach(), dim=-1).clamp_min(0.0)
        return (cos.mean(dim=1) * (edges.t() + self.prior[:, None]).mean(dim=1)).sum()


# the model -----------------------------------------------------------------------------------------------------------
class DMDModel(nn.Module):
    def __init__(self, dims: dict[str, int], seq_lens: dict[str, int], d: int, heads: int, layers: int,
                 kernels: dict[str, int], attn_dropout: dict[str, float], relu_dropout: float, res_dropout: float,
                 embed_dropout: float, text_dropout: float, output_dropout: float, gd_size_homo: int,
                 gd_size_hetero: int, per_target: bool, causal: bool, n_out: int) -> None:
        super().__init__()
        self.d = d
        self.causal = causal
        self.proj = nn.ModuleDict({m: nn.Conv1d(dims[m], d, kernels[m], padding="same", bias=False) for m in MODS})
        self.enc_s = nn.ModuleDict({m: nn.Conv1d(d, d, 1, bias=False) for m in MODS})
        self.enc_c = nn.Conv1d(d, d, 1, bias=False)
        self.dec = nn.ModuleDict({m: nn.Conv1d(2 * d, d, 1, bias=False) for m in MODS})
        flat = {m: d * seq_lens[m] for m in MODS}
        self.align_c = nn.ModuleDict({m: nn.Linear(flat[m], d) for m in MODS})
        # homogeneous branch: per-modality heads on the flattened common part, and self-attention fusion
        self.homo1 = nn.ModuleDict({m: nn.Linear(flat[m], d) for m in MODS})
        self.homo2 = nn.ModuleDict({m: nn.Linear(d, flat[m]) for m in MODS})
        self.homo_out = nn.ModuleDict({m: nn.Linear(flat[m], n_out) for m in MODS})

        def transformer(width: int, attn: float) -> CrossmodalTransformer:
            return CrossmodalTransformer(width, heads, layers, attn, relu_dropout, res_dropout, embed_dropout)

        self.self_c = nn.ModuleDict({m: transformer(d, attn_dropout[m]) for m in MODS})
        self.c_proj1 = nn.Linear(3 * d, 3 * d)
        self.c_proj2 = nn.Linear(3 * d, 3 * d)
        self.c_out = nn.Linear(3 * d, n_out)
        # heterogeneous branch: MulT's cross-modal transformers on the exclusive parts
        self.cross = nn.ModuleDict({t + s: transformer(d, attn_dropout[s]) for t in MODS for s in MODS if s != t})
        self.mem = nn.ModuleDict({t: transformer(2 * d, attn_dropout["l"]) for t in MODS})
        self.hetero1 = nn.ModuleDict({m: nn.Linear(2 * d, 2 * d) for m in MODS})
        self.hetero2 = nn.ModuleDict({m: nn.Linear(2 * d, 2 * d) for m in MODS})
        self.hetero_out = nn.ModuleDict({m: nn.Linear(2 * d, n_out) for m in MODS})
        # fusion
        self.gate = nn.ModuleDict({m: nn.Linear(2 * d, 2 * d) for m in MODS})
        self.gate_c = nn.Linear(3 * d, 3 * d)
        combined = 2 * 3 * d + 3 * d
        self.proj1 = nn.Linear(combined, combined)
        self.proj2 = nn.Linear(combined, combined)
        self.out = nn.Linear(combined, n_out)
        self.text_dropout = nn.Dropout(text_dropout)
        self.output_dropout = nn.Dropout(output_dropout)
        self.gd_homo = GraphDistillationUnit(n_out, d, gd_size_homo, HOMO_PRIOR, per_target)
        self.gd_hetero = GraphDistillationUnit(n_out, 2 * d, gd_size_hetero, HETERO_PRIOR, per_target)

    @staticmethod
    def conv(layer: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
        return layer(x.transpose(1, 2)).transpose(1, 2)

    def residual_head(self, h: torch.Tensor, first: nn.Linear, second: nn.Linear,
                      out: nn.Linear) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(relu(first h), second(dropout(relu(first h))) + h, out(that)) as the authors' output blocks."""
        r = F.relu(first(h))
        hp = second(self.output_dropout(r)) + h
        return r, hp, out(hp)

    def forward(self, batch: Batch) -> dict[str, Any]:
        b = batch.labels.shape[0]
        proj, s, c, recon, s_r = {}, {}, {}, {}, {}
        for m in MODS:
            x = batch.features[m] * batch.mask[m].unsqueeze(-1).to(batch.features[m].dtype)
            if m == "l":
                x = self.text_dropout(x)
            proj[m] = self.conv(self.proj[m], x)
            s[m] = self.conv(self.enc_s[m], proj[m])
            c[m] = self.conv(self.enc_c, proj[m])
            recon[m] = self.conv(self.dec[m], torch.cat([s[m], c[m]], dim=-1))
            s_r[m] = self.conv(self.enc_s[m], recon[m])
        valid = {m: valid_positions(batch.lengths[m], proj[m].shape[1]) for m in MODS}

        # homogeneous space
        c_sim, homo_logits, homo_reprs, c_last = {}, {}, {}, {}
        for m in MODS:
            flat = c[m].reshape(b, -1)
            c_sim[m] = self.align_c[m](flat)
            homo_reprs[m], _, homo_logits[m] = self.residual_head(flat, self.homo1[m], self.homo2[m],
                                                                  self.homo_out[m])
            t = c[m].shape[1]
            seq = self.self_c[m](c[m], None, attention_allowed(batch.mask[m], t, self.causal))
            c_last[m] = last_valid(seq, batch.lengths[m])
        c_fusion = torch.cat([c_last[m] for m in MODS], dim=-1)
        _, _, logit_c = self.residual_head(c_fusion, self.c_proj1, self.c_proj2, self.c_out)

        # heterogeneous space
        hetero_logits, hetero_reprs, h_last = {}, {}, {}
        for t in MODS:
            tq = s[t].shape[1]
            streams = [self.cross[t + src](s[t], s[src], attention_allowed(batch.mask[src], tq, self.causal))
                       for src in MODS if src != t]
            seq = self.mem[t](torch.cat(streams, dim=-1), None, attention_allowed(valid[t], tq, self.causal))
            h_last[t] = last_valid(seq, batch.lengths[t])
            _, hetero_reprs[t], hetero_logits[t] = self.residual_head(h_last[t], self.hetero1[t], self.hetero2[t],
                                                                      self.hetero_out[t])

        fused = torch.cat([torch.sigmoid(self.gate[m](h_last[m])) for m in MODS]
                          + [torch.sigmoid(self.gate_c(c_fusion))], dim=-1)
        _, _, out = self.residual_head(fused, self.proj1, self.proj2, self.out)
        logits_homo = torch.stack([homo_logits[m] for m in MODS])
        reprs_homo = torch.stack([homo_reprs[m] for m in MODS])
        logits_hetero = torch.stack([hetero_logits[m] for m in MODS])
        reprs_hetero = torch.stack([hetero_reprs[m] for m in MODS])
        return {
            "pred": out.squeeze(-1) if out.shape[-1] == 1 else out,
            "logit_c": logit_c, "logits_homo": logits_homo, "reprs_homo": reprs_homo,
            "logits_hetero": logits_hetero, "reprs_hetero": reprs_hetero,
            "edges_homo": self.gd_homo(logits_homo, reprs_homo),
            "edges_hetero": self.gd_hetero(logits_hetero, reprs_hetero),
            "proj": proj, "s": s, "c": c, "recon": recon, "s_r": s_r, "c_sim": c_sim,
        }


def dmd_loss(model: DMDModel, output: dict[str, Any], batch: Batch, task: Task) -> torch.Tensor:
    """The authors' combined loss: eight task losses, 0.05 x (HomoGD + HeteroGD), 0.1 x decoupling losses."""
    labels = batch.labels

    loss_task = task_loss(output["pred"], labels, task) + task_loss(output["logit_c"], labels, task)
    for k in range(len(MODS)):
        loss_task = loss_task + task_loss(output["logits_homo"][k], labels, task)
        loss_task = loss_task + task_loss(output["logits_hetero"][k], labels, task)

    masks = {m: batch.mask[m] for m in MODS}
    loss_recon = sum(masked_mse(output["recon"][m], output["proj"][m], masks[m]) for m in MODS)
    loss_cycle = sum(masked_mse(output["s_r"][m], output["s"][m], masks[m]) for m in MODS)
    loss_ort = sum(masked_cosine_penalty(output["s"][m], output["c"][m], masks[m]) for m in MODS)
    feats = torch.stack([output["c_sim"][m] for m in MODS], dim=1).reshape(-1, output["c_sim"]["l"].shape[-1])
    ids = labels.reshape(labels.shape[0], -1).repeat_interleave(len(MODS), dim=0)
    loss_sim = margin_loss(feats, ids)

    gd_h, gd_x = model.gd_homo, model.gd_hetero
    e_h, e_x = output["edges_homo"], output["edges_hetero"]
    loss_homo = gd_h.logit_loss(output["logits_homo"], e_h) + gd_h.regularizer(e_h)
    loss_hetero = (gd_x.logit_loss(output["logits_hetero"], e_x) + 10.0 * gd_x.repr_loss(output["reprs_hetero"], e_x)
                   + gd_x.regularizer(e_x))
    return (loss_task + 0.05 * (loss_homo + loss_hetero)
            + 0.1 * (loss_cycle + loss_recon + 0.1 * (loss_sim + loss_ort)))


class DMD(TorchMethod):
    """DMD: decoupled homogeneous/heterogeneous spaces with graph distillation in each."""

    name = "dmd"
    description = "DMD (Li et al. 2023): decoupled multimodal distillation with graph distillation units"
    tasks = frozenset({"regression", "multilabel"})

    def __init__(self, d: int = 32, heads: int = 4, layers: int = 1, kernel_l: int = 5, kernel_a: int = 5,
                 kernel_v: int = 5, attn_dropout: float = 0.3, attn_dropout_a: float = 0.2,
                 attn_dropout_v: float = 0.0, relu_dropout: float = 0.0, res_dropout: float = 0.0,
                 embed_dropout: float = 0.2, text_dropout: float = 0.5, output_dropout: float = 0.5,
                 gd_size_homo: int = 64, gd_size_hetero: int = 32, edge_softmax: str = "target",
                 causal: bool = True, lr: float = 1e-3, batch_size: int = 64, epochs: int = 30, patience: int = 8,
                 weight_decay: float = 0.0, grad_clip: float = 0.6, **kwargs) -> None:
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
        self.gd_size_homo = gd_size_homo
        self.gd_size_hetero = gd_size_hetero
        self.edge_softmax = edge_softmax
        self.causal = causal

    def build(self, dims: dict[str, int], seq_lens: dict[str, int], task: Task) -> nn.Module:
        if self.edge_softmax not in ("target", "all"):
            raise ValueError(f"dmd: edge_softmax must be 'target' or 'all', not {self.edge_softmax!r}")
        return DMDModel(
            dims, seq_lens, self.d, self.heads, self.layers,
            kernels={"l": self.kernel_l, "a": self.kernel_a, "v": self.kernel_v},
            attn_dropout={"l": self.attn_dropout, "a": self.attn_dropout_a, "v": self.attn_dropout_v},
            relu_dropout=self.relu_dropout, res_dropout=self.res_dropout, embed_dropout=self.embed_dropout,
            text_dropout=self.text_dropout, output_dropout=self.output_dropout, gd_size_homo=self.gd_size_homo,
            gd_size_hetero=self.gd_size_hetero, per_target=self.edge_softmax == "target", causal=self.causal,
            n_out=output_size(task))

    def loss(self, output: Any, batch: Batch, task: Task) -> torch.Tensor:
        return dmd_loss(self.model_, output, batch, task)

    @classmethod
    def search_space(cls, trial) -> dict:
        return {
            "d": trial.suggest_categorical("d", [24, 32, 48]),
            "layers": trial.suggest_int("layers", 1, 4),
            "output_dropout": trial.suggest_float("output_dropout", 0.0, 0.5),
            "lr": trial.suggest_float("lr", 1e-4, 3e-3, log=True),
        }
