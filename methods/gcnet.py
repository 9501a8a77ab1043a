"""GCNet (Lian et al., TPAMI 2023): graph completion network over the utterances of a conversation.

Each utterance is a node: its modality summaries (mean of present frames; zero when a modality is missing) plus the
presence flags, projected to ``hidden``. A temporal graph (relations: past and future neighbours within ``window``)
and a speaker graph (relations: same speaker, other speaker, within ``window``) each apply a relational graph
convolution and a graph convolution. Their outputs and the input projection go through a bidirectional GRU along the
conversation; two heads read it: the prediction and the reconstruction of all modality summaries. The reconstruction
loss counts only modalities the utterance has (the missing ones are never observed), so the network learns to
complete missing features jointly with the task.

Conversations come from sample ids (``conversation_layout``): ``VIDEO_SEGMENT`` (or MMSA's ``VIDEO$_$SEGMENT``) ids
make each video one conversation with one speaker, ordered by segment number. Data without such structure (all ids
sharing one prefix, as synthetic ``name_00012``) fall back to each sample alone (``conversation_mode_ = "single"``);
``conversation="pseudo"`` instead cuts the split into consecutive blocks of ``pseudo_size`` samples.
Batches are whole conversations; graphs are built per batch as dense (n_conv, L, L) adjacency tensors.
"""
from __future__ import annotations

import logging
import re
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from msabench.data.base import Split, Task
from msabench.method import FitContext
from msabench.methods._blocks import masked_mean, mlp, output_size
from msabench.protocol import TrainingSchedule
from msabench.training import Batch, TorchMethod, task_loss

ID_PATTERN = re.compile(r"^(?P<video>.+)(?:\$_\$|_)(?P<segment>\d+)$")
MODES = ("auto", "ids", "single", "pseudo")

log = logging.getLogger(__name__)

Layout = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # conversation, position, speaker: each (N,) long


# conversations ------------------------------------------------------------------------------------------------------
def has_conversations(ids: list[str]) -> bool:
    """True when every id parses as VIDEO_SEGMENT (or VIDEO$_$SEGMENT) and there are at least two videos."""
    parsed = [ID_PATTERN.match(i) for i in ids]
    if not ids or any(p is None for p in parsed):
        return False
    videos = {p["video"] for p in parsed}
    return len(videos) > 1


def resolve_mode(ids: list[str], mode: str) -> str:
    """``auto`` → ``ids`` when the ids carry conversations, else ``single``; other modes unchanged."""
    if mode not in MODES:
        raise ValueError(f"conversation must be one of {MODES}, got {mode!r}")
    if mode == "auto":
        return "ids" if has_conversations(ids) else "single"
    return mode


def conversation_layout(ids: list[str], mode: str, pseudo_size: int = 8) -> Layout:
    """Per sample: conversation number, position in its conversation, speaker number (``mode`` resolved).

    ``ids``: VIDEO_SEGMENT ids give one conversation and one speaker per video, positions by segment number
    (numeric order); an id that does not parse is a conversation of its own. ``single``: every sample alone.
    ``pseudo``: consecutive blocks of ``pseudo_size`` samples, each sample its own speaker.
    """
    n = len(ids)
    arange = torch.arange(n)
    if mode == "single":
        return arange.clone(), torch.zeros(n, dtype=torch.long), arange.clone()
    if mode == "pseudo":
        return arange // pseudo_size, arange % pseudo_size, arange.clone()
    if mode != "ids":
        raise ValueError(f"unresolved conversation mode {mode!r}")
    keys, segments = [], []
    for i, sample_id in enumerate(ids):
        match = ID_PATTERN.match(sample_id)
        keys.append(match["video"] if match else f"\x00{i}")
        segments.append(int(match["segment"]) if match else 0)
    names = {k: c for c, k in enumerate(dict.fromkeys(keys))}
    conv = torch.tensor([names[k] for k in keys], dtype=torch.long)
    seg = torch.tensor(segments, dtype=torch.long)
    # rank within the conversation by segment number (ties by sample order): one stable sort, no Python loop
    order = torch.from_numpy(np.lexsort((arange.numpy(), seg.numpy(), conv.numpy())))
    sorted_conv = conv[order]
    starts = torch.searchsorted(sorted_conv, sorted_conv, side="left")
    pos = torch.empty(n, dtype=torch.long)
    pos[order] = torch.arange(n) - starts
    return conv, pos, conv.clone()


def conversation_batches(conv: torch.Tensor, pos: torch.Tensor, batch_size: int,
                         order: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Index tensors of whole conversations, in ``order`` of conversations, each batch about ``batch_size`` samples.

    Samples in a batch are grouped by conversation and sorted by position. A conversation is never split.
    """
    n_conv = int(conv.max()) + 1 if conv.numel() else 0
    order = torch.arange(n_conv) if order is None else order
    rank = torch.empty(n_conv, dtype=torch.long)
    rank[order] = torch.arange(n_conv)
    sizes = torch.bincount(conv, minlength=n_conv)[order]
    starts = torch.cumsum(sizes, 0) - sizes
    batch_of_rank = starts // max(batch_size, 1)
    max_len = int(pos.max()) + 1 if pos.numel() else 1
    sample_order = torch.argsort(rank[conv] * max_len + pos)
    batch_ids = batch_of_rank[rank[conv[sample_order]]]
    counts = torch.bincount(batch_ids)
    return [b for b in torch.split(sample_order, counts[counts > 0].tolist())]


# graph layers --------------------------------------------------------------------------------------------------------
def window_relations(valid: torch.Tensor, speaker: torch.Tensor, window: int) -> dict[str, torch.Tensor]:
    """Dense adjacency (n_conv, L, L), [c, i, j] = j is a neighbour of i, for the temporal and speaker relations.

    past: 0 < i - j <= window; future: 0 < j - i <= window; same/other speaker: 0 < |i - j| <= window with
    equal/different speakers. Only existing nodes (``valid``) are connected.
    """
    length = valid.shape[1]
    i = torch.arange(length, device=valid.device)
    diff = i[:, None] - i[None, :]  # i - j
    both = valid[:, :, None] & valid[:, None, :]
    near = (diff.abs() <= window) & (diff != 0)
    same = speaker[:, :, None] == speaker[:, None, :]
    return {
        "past": both & ((diff > 0) & (diff <= window)),
        "future": both & ((diff < 0) & (-diff <= window)),
        "same": both & near & same,
        "other": both & near & ~same,
    }


class RelationalGraphConv(nn.Module):
    """h_i' = W_0 h_i + sum_r mean_{j in N_r(i)} W_r h_j (R-GCN of Schlichtkrull et al. with 1/|N_r(i)|)."""

    def __init__(self, in_dim: int, out_dim: int, n_relations: int) -> None:
        super().__init__()
        self.root = nn.Linear(in_dim, out_dim)
        self.rel = nn.Parameter(torch.empty(n_relations, in_dim, out_dim))
        nn.init.xavier_uniform_(self.rel.view(-1, out_dim))

    def forward(self, h: torch.Tensor, adjacency: list[torch.Tensor]) -> torch.Tensor:
        out = self.root(h)
        for r, a in enumerate(adjacency):
            a = a.to(h.dtype)
            a = a / a.sum(dim=-1, keepdim=True).clamp_min(1.0)
            out = out + torch.einsum("cij,cjh->cih", a, h @ self.rel[r])
        return out


class GraphConv(nn.Module):
    """h_i' = W_1 h_i + W_2 mean_{j in N(i)} h_j."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.root = nn.Linear(in_dim, out_dim)
        self.neigh = nn.Linear(in_dim, out_dim, bias=False)

    def forward(self, h: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        a = adjacency.to(h.dtype)
        a = a / a.sum(dim=-1, keepdim=True).clamp_min(1.0)
        return self.root(h) + self.neigh(torch.einsum("cij,cjh->cih", a, h))


# the model -----------------------------------------------------------------------------------------------------------
def pad_conversations(h: torch.Tensor, conv: torch.Tensor, pos: torch.Tensor,
                      fill: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scatter node rows (B, ...) into (n_conv, L, ...); returns (dense, valid (n_conv, L), local conv ids (B,))."""
    _, local = torch.unique(conv, return_inverse=True)
    n_conv = int(local.max()) + 1
    length = int(pos.max()) + 1
    dense = torch.full((n_conv, length, *h.shape[1:]), fill, dtype=h.dtype, device=h.device)
    dense[local, pos] = h
    valid = torch.zeros(n_conv, length, dtype=torch.bool, device=h.device)
    valid[local, pos] = True
    return dense, valid, local


class GCNetModel(nn.Module):
    def __init__(self, dims: dict[str, int], hidden: int, window: int, dropout: float, n_out: int) -> None:
        super().__init__()
        self.modalities = sorted(dims)
        self.dims = [dims[m] for m in self.modalities]
        total = sum(self.dims)
        self.window = window
        self.inp = nn.Linear(total + len(dims), hidden)
        self.temporal = RelationalGraphConv(hidden, hidden, 2)
        self.temporal2 = GraphConv(hidden, hidden)
        self.speaker = RelationalGraphConv(hidden, hidden, 2)
        self.speaker2 = GraphConv(hidden, hidden)
        self.rnn = nn.GRU(3 * hidden, hidden, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(dropout)
        self.reconstruct = nn.Linear(2 * hidden, total)
        self.head = mlp([2 * hidden, hidden, n_out], dropout)

    def forward(self, batch: Batch, conv: torch.Tensor, pos: torch.Tensor,
                speaker: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = [masked_mean(batch.features[m], batch.mask[m]) for m in self.modalities]
        present = torch.stack([batch.mask[m].any(dim=1) for m in self.modalities], dim=-1)
        x = torch.cat(pooled, dim=-1)
        h = self.dropout(torch.relu(self.inp(torch.cat([x, present.to(x.dtype)], dim=-1))))
        dense, valid, local = pad_conversations(h, conv, pos)
        spk, _, _ = pad_conversations(speaker, conv, pos, fill=-1)
        rel = window_relations(valid, spk, self.window)
        tg = self.temporal2(torch.relu(self.temporal(dense, [rel["past"], rel["future"]])),
                            rel["past"] | rel["future"])
        sg = self.speaker2(torch.relu(self.speaker(dense, [rel["same"], rel["other"]])),
                           rel["same"] | rel["other"])
        z = torch.cat([dense, torch.relu(tg), torch.relu(sg)], dim=-1)
        lengths = valid.sum(dim=1).cpu()
        packed = pack_padded_sequence(z, lengths, batch_first=True, enforce_sorted=False)
        seq, _ = pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=z.shape[1])
        node = self.dropout(seq[local, pos])
        out = self.head(node)
        return {"pred": out.squeeze(-1) if out.shape[-1] == 1 else out, "reconstruction": self.reconstruct(node),
                "target": x, "present": present}

    def reconstruction_loss(self, output: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean squared error over the modality summaries the utterances have (missing ones never count)."""
        weight = torch.repeat_interleave(output["present"].to(output["target"].dtype),
                                         torch.tensor(self.dims, device=output["target"].device), dim=1)
        err = (output["reconstruction"] - output["target"]) ** 2 * weight
        return err.sum() / weight.sum().clamp_min(1.0)


class GCNet(TorchMethod):
    """GCNet: temporal and speaker graph networks over conversations; joint completion and prediction."""

    name = "gcnet"
    description = "GCNet (Lian et al. 2023): speaker/temporal GNNs over conversations, feature completion + task"
    tasks = frozenset({"regression", "multilabel"})

    def __init__(self, hidden: int = 64, window: int = 4, dropout: float = 0.2, reconstruction_weight: float = 1.0,
                 conversation: str = "auto", pseudo_size: int = 8, lr: float = 1e-3, batch_size: int = 64,
                 epochs: int = 30, patience: int = 8, weight_decay: float = 1e-5, **kwargs) -> None:
        super().__init__(lr=lr, batch_size=batch_size, epochs=epochs, patience=patience,
                         weight_decay=weight_decay, **kwargs)
        self.hidden = hidden
        self.window = window
        self.dropout = dropout
        self.reconstruction_weight = reconstruction_weight
        self.conversation = conversation
        self.pseudo_size = pseudo_size

    def build(self, dims: dict[str, int], seq_lens: dict[str, int], task: Task) -> nn.Module:
        return GCNetModel(dims, self.hidden, self.window, self.dropout, output_size(task))

    def fit(self, train: Split, valid: Split, schedule: TrainingSchedule, context: FitContext) -> "GCNet":
        self._begin_fit(train, context)
        self.conversation_mode_ = resolve_mode(train.ids, self.conversation)
        log.info("gcnet conversations: %s (requested %s)", self.conversation_mode_, self.conversation)
        self._layouts: dict[tuple[str, ...], Layout] = {}
        self.model_ = self.build(train.dims(), train.seq_lens(), context.task).to(self.device_)
        self.train_model(self.model_, train, valid, schedule, context, forward=self.forward_batch)
        return self

    # conversations as batches: the batching hooks record the layout of the split being batched ------------------
    def layout(self, split: Split) -> Layout:
        key = tuple(split.ids)
        if key not in self._layouts:
            self._layouts[key] = conversation_layout(split.ids, self.conversation_mode_, self.pseudo_size)
        self._active_layout = tuple(t.to(self.device_) for t in self._layouts[key])
        return self._layouts[key]

    def train_batches(self, split: Split, generator: torch.Generator) -> list[torch.Tensor]:
        conv, pos, _ = self.layout(split)
        order = torch.randperm(int(conv.max()) + 1, generator=generator)
        batches = conversation_batches(conv, pos, self.batch_size, order)
        return [b.to(self.device_) for b in batches if len(b) >= 2 or len(split) == 1]

    def eval_batches(self, split: Split) -> list[torch.Tensor]:
        conv, pos, _ = self.layout(split)
        return [b.to(self.device_) for b in conversation_batches(conv, pos, max(self.batch_size, 512))]

    def forward_batch(self, model: nn.Module, batch: Batch) -> Any:
        conv, pos, speaker = (t[batch.index] for t in self._active_layout)
        return model(batch, conv, pos, speaker)

    def loss(self, output: dict[str, torch.Tensor], batch: Batch, task: Task) -> torch.Tensor:
        """Task loss + reconstruction_weight x reconstruction error on present modalities."""
        return (task_loss(output["pred"], batch.labels, task)
                + self.reconstruction_weight * self.model_.reconstruction_loss(output))

    def predict(self, split: Split, mask: dict[str, torch.Tensor]) -> Any:
        return self.raw_outputs(self.model_, self.prepare(split), mask, forward=self.forward_batch).cpu().numpy()

    @classmethod
    def search_space(cls, trial) -> dict:
        return {
            "hidden": trial.suggest_categorical("hidden", [32, 64, 128]),
            "window": trial.suggest_int("window", 1, 8),
            "reconstruction_weight": trial.suggest_float("reconstruction_weight", 0.1, 10.0, log=True),
            "lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True),
        }
