"""MCTN (Pham et al., AAAI 2019): a joint representation learned by cyclic translation from text to the others.

Level 1 encodes the source (text) with a GRU and decodes the encoder's final state into the audio sequence; the
decoded audio is encoded again by the same encoder and decoded back into text (the cycle). Level 2 encodes the
level-1 encoder states with a second GRU and decodes its final state into the vision sequence. The sentiment head
reads only the level-2 final state, so at test time the model sees the source modality alone: audio and vision are
translation targets during training and are never read when predicting.
"""
from __future__ import annotations

import torch
from torch import nn

from msabench.data.base import Task
from msabench.methods._blocks import masked_mse, mlp, output_size
from msabench.training import Batch, TorchMethod, task_loss


def last_state(outputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The output (B, H) of a unidirectional RNN at each sequence's last existing step (step 0 if length 0)."""
    last = (lengths.to(outputs.device).long() - 1).clamp(min=0, max=outputs.shape[1] - 1)
    return outputs[torch.arange(outputs.shape[0], device=outputs.device), last]


class RepeatDecoder(nn.Module):
    """Seq2seq decoder that reads the context vector at every step (the RepeatVector decoder of MCTN's code)."""

    def __init__(self, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.rnn = nn.GRU(hidden, hidden, batch_first=True)
        self.out = nn.Linear(hidden, out_dim)

    def forward(self, context: torch.Tensor, length: int) -> torch.Tensor:
        steps = context.unsqueeze(1).expand(-1, length, -1).contiguous()
        h, _ = self.rnn(steps, context.unsqueeze(0).contiguous())
        return self.out(h)


class MCTNModel(nn.Module):
    """Hierarchical cyclic translation: source → target1 (with cycle back to source), joint → target2."""

    def __init__(self, dims: dict[str, int], hidden: int, dropout: float, n_out: int,
                 source: str = "l", targets: tuple[str, str] = ("a", "v")) -> None:
        super().__init__()
        self.source, self.targets = source, targets
        t1, t2 = targets
        # one encoder for source and decoded target (the cycle re-encodes the translation); per-modality inputs
        self.embed = nn.ModuleDict({source: nn.Linear(dims[source], hidden), t1: nn.Linear(dims[t1], hidden)})
        self.encoder1 = nn.GRU(hidden, hidden, batch_first=True)
        self.decoder1 = RepeatDecoder(hidden, dims[t1])  # source → t1
        self.decoder_back = RepeatDecoder(hidden, dims[source])  # t1 (decoded) → source: the cycle
        self.encoder2 = nn.GRU(hidden, hidden, batch_first=True)
        self.decoder2 = RepeatDecoder(hidden, dims[t2])  # joint representation → t2
        self.dropout = nn.Dropout(dropout)
        self.head = mlp([hidden, hidden, n_out], dropout)

    def encode(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Level-1 and level-2 encoding of the source; returns (level-1 states (B,T,H), joint vector (B,H))."""
        h1, _ = self.encoder1(torch.tanh(self.embed[self.source](x)))
        h2, _ = self.encoder2(self.dropout(h1))
        return h1, last_state(h2, lengths)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        s, (t1, t2) = self.source, self.targets
        x, lengths = batch.features[s], batch.lengths[s]
        h1, joint = self.encode(x, lengths)
        out = self.head(self.dropout(joint))
        out = out.squeeze(-1) if out.shape[-1] == 1 else out
        if not self.training:
            return {"pred": out}
        c1 = last_state(h1, lengths)
        t1_hat = self.decoder1(c1, batch.features[t1].shape[1])
        h_back, _ = self.encoder1(torch.tanh(self.embed[t1](t1_hat)))
        s_cycle = self.decoder_back(last_state(h_back, batch.lengths[t1]), x.shape[1])
        t2_hat = self.decoder2(joint, batch.features[t2].shape[1])
        return {"pred": out, "t1_hat": t1_hat, "s_cycle": s_cycle, "t2_hat": t2_hat}


class MCTN(TorchMethod):
    """Multimodal Cyclic Translation Network: text → audio (+ cycle), joint → vision; predicts from text only."""

    name = "mctn"
    description = "MCTN (Pham et al. 2019): hierarchical cyclic seq2seq translation from text; text-only inference"
    tasks = frozenset({"regression", "multilabel"})

    def __init__(self, hidden: int = 64, dropout: float = 0.2, translation_weight: float = 0.1,
                 cycle_weight: float = 0.1, lr: float = 1e-3, batch_size: int = 64, epochs: int = 30,
                 patience: int = 8, weight_decay: float = 0.0, **kwargs) -> None:
        super().__init__(lr=lr, batch_size=batch_size, epochs=epochs, patience=patience,
                         weight_decay=weight_decay, **kwargs)
        self.hidden = hidden
        self.dropout = dropout
        self.translation_weight = translation_weight
        self.cycle_weight = cycle_weight

    def build(self, dims: dict[str, int], seq_lens: dict[str, int], task: Task) -> nn.Module:
        return MCTNModel(dims, self.hidden, self.dropout, output_size(task))

    def loss(self, output: dict[str, torch.Tensor], batch: Batch, task: Task) -> torch.Tensor:
        """Task loss + translation errors (level 1 and 2) + cycle error, each on present target frames only."""
        s, (t1, t2) = "l", ("a", "v")
        translation = (masked_mse(output["t1_hat"], batch.features[t1], batch.mask[t1])
                       + masked_mse(output["t2_hat"], batch.features[t2], batch.mask[t2]))
        cycle = masked_mse(output["s_cycle"], batch.features[s], batch.mask[s])
        return (task_loss(output["pred"], batch.labels, task) + self.translation_weight * translation
                + self.cycle_weight * cycle)

    @classmethod
    def search_space(cls, trial) -> dict:
        return {
            "hidden": trial.suggest_categorical("hidden", [32, 64, 128]),
            "translation_weight": trial.suggest_float("translation_weight", 0.01, 1.0, log=True),
            "cycle_weight": trial.suggest_float("cycle_weight", 0.01, 1.0, log=True),
            "lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True),
        }
