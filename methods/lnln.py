"""LNLN (Zhang, Wang and Yu, NeurIPS 2024): Language-dominated Noise-resistant Learning Network.

Each modality is embedded by a Transformer with learnable tokens (the first ``n_tokens`` outputs are kept). A
completeness check scores how complete the language is (trained against 1 - the sampled language missing rate);
a proxy dominant feature, generated from audio and vision behind a gradient-reversal layer, is mixed with the
language tokens by that score; an effectiveness discriminator tells the mixed dominant feature from the complete
language feature. ALMT-style dominant-modality-based learning (a language encoder keeping every layer's output,
hyper-modality layers attending from each of them to audio and vision, a cross-Transformer) gives the prediction;
reconstructors regenerate the complete-data tokens from the incomplete ones. Written from the authors' code
(Haoyu-ha/LNLN: ``models/lnln.py``, ``models/basic_layers.py``, ``core/losses.py``, ``train.py``, ``configs/``).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from msabench.data.base import MultimodalDataset, Split, Task
from msabench.method import FitContext
from msabench.protocol import TrainingSchedule
from msabench.methods._blocks import grad_reverse
from msabench.methods._complete import CompleteFeatures
from msabench.training import Batch


# Transformer pieces of the authors' basic_layers (pre-LayerNorm, separate norms for q, k and v) --------------------
class Attention(nn.Module):
    """Multi-head attention with bias-free q/k/v projections of width ``heads * dim_head`` and an output layer."""

    def __init__(self, d: int, heads: int, dim_head: int) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads, self.scale = heads, dim_head ** -0.5
        self.q = nn.Linear(d, inner, bias=False)
        self.k = nn.Linear(d, inner, bias=False)
        self.v = nn.Linear(d, inner, bias=False)
        self.out = nn.Identity() if heads == 1 and dim_head == d else nn.Linear(inner, d)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, -1).transpose(1, 2)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Softmax(q k^T * scale) v on split heads, merged back to (B, Nq, inner)."""
        w = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * self.scale, dim=-1)
        out = torch.matmul(w, v)
        return out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.out(self.attend(self.split(self.q(q)), self.split(self.k(k)), self.split(self.v(v))))


class EncoderLayer(nn.Module):
    """``x + Attn(LN_q(q), LN_k(kv), LN_v(kv))`` then ``x + FF(LN(x))`` (GELU feed-forward)."""

    def __init__(self, d: int, heads: int, dim_head: int, mlp: int) -> None:
        super().__init__()
        self.norm_q, self.norm_k, self.norm_v, self.norm_ff = (nn.LayerNorm(d) for _ in range(4))
        self.attn = Attention(d, heads, dim_head)
        self.ff = nn.Sequential(nn.Linear(d, mlp), nn.GELU(), nn.Linear(mlp, d))

    def forward(self, x: torch.Tensor, source: torch.Tensor | None = None) -> torch.Tensor:
        kv = x if source is None else source
        x = x + self.attn(self.norm_q(x), self.norm_k(kv), self.norm_v(kv))
        return x + self.ff(self.norm_ff(x))


class TokenTransformer(nn.Module):
    """Learnable tokens (zeros at start) prepended, learned positions (randn), ``depth`` encoder layers.

    Returns the whole output (B, n_tokens + N, d), or with ``keep_hidden`` the input and every layer's output.
    """

    def __init__(self, n_frames: int, n_tokens: int, d: int, depth: int, heads: int, mlp: int, dim_head: int,
                 keep_hidden: bool = False) -> None:
        super().__init__()
        self.tokens = nn.Parameter(torch.zeros(1, n_tokens, d)) if n_tokens else None
        self.pos = nn.Parameter(torch.randn(1, n_frames + n_tokens, d))
        self.layers = nn.ModuleList(EncoderLayer(d, heads, dim_head, mlp) for _ in range(depth))
        self.keep_hidden = keep_hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if self.tokens is not None:
            x = torch.cat([self.tokens.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos[:, : x.shape[1]]
        hidden = [x]
        for layer in self.layers:
            x = layer(x)
            hidden.append(x)
        return hidden if self.keep_hidden else x


class HyperLayer(nn.Module):
    """ALMT's hyper-modality learning layer: one query from the dominant feature attends to audio and to vision with
    separate keys/values; ``LN(h_hyper) + W_o(attn_a + attn_v)`` (the authors' layer adds the shift in place to
    its normalised input, so there is no residual to the un-normalised ``h_hyper``)."""

    def __init__(self, d: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.norm_d, self.norm_a, self.norm_v, self.norm_h = (nn.LayerNorm(d) for _ in range(4))
        inner = heads * dim_head
        self.heads, self.scale = heads, dim_head ** -0.5
        self.q = nn.Linear(d, inner, bias=False)
        self.k_a, self.k_v, self.v_a, self.v_v = (nn.Linear(d, inner, bias=False) for _ in range(4))
        self.out = nn.Identity() if heads == 1 and dim_head == d else nn.Linear(inner, d)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        split = lambda x: x.view(x.shape[0], x.shape[1], self.heads, -1).transpose(1, 2)  # noqa: E731
        w = torch.softmax(torch.matmul(split(q), split(k).transpose(-1, -2)) * self.scale, dim=-1)
        out = torch.matmul(w, split(v))
        return out.transpose(1, 2).reshape(q.shape[0], q.shape[1], -1)

    def forward(self, h_dom: torch.Tensor, h_a: torch.Tensor, h_v: torch.Tensor, h_hyper: torch.Tensor
                ) -> torch.Tensor:
        h_dom, h_a, h_v, h_hyper = self.norm_d(h_dom), self.norm_a(h_a), self.norm_v(h_v), self.norm_h(h_hyper)
        q = self.q(h_dom)
        shift = self._attend(q, self.k_a(h_a), self.v_a(h_a)) + self._attend(q, self.k_v(h_v), self.v_v(h_v))
        return h_hyper + self.out(shift)


class CrossTransformer(nn.Module):
    """One shared learnable token prepended to source and target, separate learned positions, ``depth`` layers in
    which the target attends to the source."""

    def __init__(self, n_source: int, n_target: int, d: int, depth: int, heads: int, mlp: int, dim_head: int) -> None:
        super().__init__()
        self.pos_s = nn.Parameter(torch.randn(1, n_source + 1, d))
        self.pos_t = nn.Parameter(torch.randn(1, n_target + 1, d))
        self.token = nn.Parameter(torch.zeros(1, 1, d))
        self.layers = nn.ModuleList(EncoderLayer(d, heads, dim_head, mlp) for _ in range(depth))

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        tok = self.token.expand(source.shape[0], -1, -1)
        source = torch.cat([tok, source], 1) + self.pos_s[:, : source.shape[1] + 1]
        target = torch.cat([tok, target], 1) + self.pos_t[:, : target.shape[1] + 1]
        for layer in self.layers:
            target = layer(target, source)
        return target


# the model --------------------------------------------------------------------------------------------------------
MODS = ("l", "a", "v")
# "authors": their core/dataset.py masks (each modality's complete half on its own); "protocol": the protocol's recipe
TRAIN_MASKS = ("authors", "protocol")


class LNLNModel(nn.Module):
    def __init__(self, dims: dict[str, int], seq_lens: dict[str, int], d: int, n_tokens: int, heads: int,
                 dim_head: int, n_out: int) -> None:
        super().__init__()
        k, tt = n_tokens, (lambda n, tok, depth, **kw: TokenTransformer(n, tok, d, depth, heads, d, dim_head, **kw))
        self.k = k
        self.embed = nn.ModuleDict({m: nn.Sequential(nn.Linear(dims[m], d), tt(seq_lens[m], k, 2)) for m in MODS})
        self.h_p = nn.Parameter(torch.ones(1, k, d))  # proxy dominant feature seed (ones, as the authors)
        self.h_hyper = nn.Parameter(torch.ones(1, k, d))
        self.proxy_generator = tt(3 * k, k, 2)
        self.discriminator = nn.Sequential(nn.Linear(d, d // 2), nn.LeakyReLU(0.1), nn.Linear(d // 2, 2))
        self.completeness_encoder = tt(k, 1, 2)
        self.completeness_head = nn.Sequential(nn.Linear(d, d // 2), nn.LeakyReLU(0.1), nn.Linear(d // 2, 1),
                                               nn.Sigmoid())
        self.reconstructor = nn.ModuleDict({m: tt(k, 0, 2) for m in MODS})
        self.language_encoder = tt(k, 0, 2, keep_hidden=True)
        self.hyper_layers = nn.ModuleList(HyperLayer(d, heads, d // heads) for _ in range(3))
        self.fusion = CrossTransformer(k, k, d, 4, heads, d, dim_head)
        self.head = nn.Linear(d, n_out)

    def tokens(self, m: str, x: torch.Tensor) -> torch.Tensor:
        """The first ``n_tokens`` outputs (the learnable tokens) of modality ``m``'s embedding: (B, k, d)."""
        return self.embed[m](x)[:, : self.k]

    def forward(self, batch: Batch, complete: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
        h = {m: self.tokens(m, batch.features[m]) for m in MODS}
        b = h["l"].shape[0]
        w = self.completeness_head(self.completeness_encoder(h["l"])[:, 0])  # (B, 1) completeness of language
        proxy = self.proxy_generator(torch.cat([self.h_p.expand(b, -1, -1), h["a"], h["v"]], 1))[:, : self.k]
        proxy = grad_reverse(proxy)
        h_dom = proxy * (1 - w.unsqueeze(-1)) + h["l"] * w.unsqueeze(-1)
        dom_list = self.language_encoder(h_dom)
        hyper = self.h_hyper.expand(b, -1, -1)
        for layer, h_d in zip(self.hyper_layers, dom_list):
            hyper = layer(h_d, h["a"], h["v"], hyper)
        feat = self.fusion(hyper, dom_list[-1])
        out: dict[str, Any] = {"pred": self.head(feat[:, 1:].mean(1)).squeeze(-1), "w": w.squeeze(-1)}
        if complete is not None:  # training: reconstruction and effectiveness discrimination need complete data
            out["rec"] = {m: self.reconstructor[m](h[m]) for m in MODS if m in complete}
            out["target"] = {m: self.tokens(m, x) for m, x in complete.items()}
            if "l" in complete:
                pair = torch.cat([h_dom, out["target"]["l"]], 0)  # dominant rows labelled 1, complete rows 0
                out["effectiveness"] = self.discriminator(pair.reshape(-1, pair.shape[-1]))
        return out


def effectiveness_labels(batch_size: int, n_tokens: int, device: torch.device | None = None) -> torch.Tensor:
    """1 for the B * k dominant-feature rows, then 0 for the B * k complete-language rows (the authors' order)."""
    return torch.cat([torch.ones(batch_size * n_tokens), torch.zeros(batch_size * n_tokens)]).long().to(device)


def warmup_cosine(epoch: int, epochs: int) -> float:
    """The authors' learning-rate factor at 0-based ``epoch``: linear warm-up from 0 over the first 10 % of the
    epochs (GradualWarmupScheduler, multiplier 1), then cosine annealing over 90 % of them, starting one epoch
    after the warm-up ends (the order in which their scheduler hands over)."""
    warm, span = 0.1 * epochs, 0.9 * epochs
    if epoch <= warm:
        return epoch / warm if warm > 0 else 1.0
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - math.floor(warm) - 1) / span))


class _RateTracker:
    """Wraps a training schedule; remembers the language missing rates of the epoch whose masks were last drawn."""

    def __init__(self, schedule: TrainingSchedule, owner: "LNLN") -> None:
        self.schedule, self.owner = schedule, owner

    def mask(self, epoch: int):
        mask = self.schedule.mask(epoch)
        rates = self.schedule.rates(epoch) if hasattr(self.schedule, "rates") else None
        if rates is not None and "l" in rates:
            self.owner._rates = torch.as_tensor(rates["l"], dtype=torch.float32, device=self.owner.device_)
        else:  # no drawn rates (e.g. block-missing): the share of existing language frames dropped
            pad = self.schedule.split.padding_mask()["l"]
            present = (mask["l"] & pad).sum(1).float()
            self.owner._rates = (1 - present / pad.sum(1).clamp_min(1).float()).to(self.owner.device_)
        return mask

    def __getattr__(self, name: str) -> Any:
        return getattr(self.schedule, name)


class LNLN(CompleteFeatures):
    name = "lnln"
    description = "LNLN (NeurIPS 2024): language-dominated noise-resistant learning with completeness check"
    tasks = frozenset({"regression"})

    def __init__(self, d: int = 128, n_tokens: int = 8, heads: int = 8, dim_head: int = 64, alpha: float = 0.9,
                 beta: float = 0.8, gamma: float = 0.1, sigma: float = 1.0, lr: float = 1e-4,
                 weight_decay: float = 1e-4, batch_size: int = 64, epochs: int = 50, patience: int = 0,
                 grad_clip: float = 0.0, standardize: bool = True, train_masks: str = "authors",
                 **kwargs) -> None:
        super().__init__(lr=lr, batch_size=batch_size, epochs=epochs, patience=patience, weight_decay=weight_decay,
                         grad_clip=grad_clip, standardize=standardize, **kwargs)
        self.d, self.n_tokens, self.heads, self.dim_head = d, n_tokens, heads, dim_head
        self.alpha, self.beta, self.gamma, self.sigma = alpha, beta, gamma, sigma
        self.train_masks = train_masks

    @classmethod
    def dataset_defaults(cls, dataset: MultimodalDataset) -> dict[str, Any]:
        """The authors' configs: beta 0.6 on CH-SIMS, 0.8 on MOSI and MOSEI (alpha 0.9, gamma 0.1, sigma 1.0)."""
        return {"beta": 0.6} if dataset.task.metric_set == "sims" else {}

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        return {"lr": trial.suggest_float("lr", 3e-5, 1e-3, log=True),
                "beta": trial.suggest_float("beta", 0.2, 1.0),
                "gamma": trial.suggest_float("gamma", 0.01, 1.0, log=True)}

    def build(self, dims: dict[str, int], seq_lens: dict[str, int], task: Task) -> nn.Module:
        if self.d % self.heads:
            raise ValueError(f"LNLN: d={self.d} is not divisible by heads={self.heads}; pick d a multiple of heads")
        return LNLNModel(dims, seq_lens, self.d, self.n_tokens, self.heads, self.dim_head, task.n_outputs)

    def training_schedule(self, schedule: TrainingSchedule) -> TrainingSchedule:
        """The masks LNLN trains on: ``train_masks="authors"`` (default) turns the protocol's ``frame`` recipe into
        the authors' ``frame-per-modality`` (each modality's complete half drawn on its own); ``"protocol"`` keeps the
        protocol's recipe, as every other method. Other recipes are kept either way."""
        if self.train_masks not in TRAIN_MASKS:
            raise ValueError(f"lnln: train_masks must be one of {TRAIN_MASKS}, got {self.train_masks!r}")
        if self.train_masks == "authors" and getattr(schedule, "recipe", None) == "frame":
            return schedule.with_recipe("frame-per-modality")
        return schedule

    def fit(self, train: Split, valid: Split, schedule: TrainingSchedule, context: FitContext) -> "LNLN":
        schedule = self.training_schedule(schedule)
        self._begin_fit(train, context)
        self.model_ = self.build(train.dims(), train.seq_lens(), context.task).to(self.device_)
        self.begin_complete(train)  # the complete (unmasked) train sequences, for the targets
        n_epochs = context.epochs or self.epochs
        outer = context.on_epoch

        def forward(model: nn.Module, batch: Batch) -> Any:
            return model(batch, self.complete_rows(batch)) if model.training else model(batch)

        def on_epoch(epoch: int, train_loss: float, score: float) -> None:
            self._scheduler.step()
            if outer is not None:
                outer(epoch, train_loss, score)

        self._epochs = n_epochs
        ctx = dataclasses.replace(context, on_epoch=on_epoch)
        self.train_model(self.model_, train, valid, _RateTracker(schedule, self), ctx, forward=forward)
        del self._scheduler, self._rates
        self.end_complete()
        return self

    def make_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        """AdamW (lr 1e-4, weight decay 1e-4) with the authors' warm-up + cosine schedule, stepped per epoch."""
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)

    def optimizer_ready(self, optimizer: torch.optim.Optimizer) -> None:
        """The warm-up + cosine schedule on every group (a fine-tuned text encoder's too), stepped per epoch."""
        epochs = self._epochs
        self._scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: warmup_cosine(e, epochs))

    def loss(self, output: dict[str, Any], batch: Batch, task: Task) -> torch.Tensor:
        """alpha * completeness MSE + beta * effectiveness CE + gamma * reconstruction MSE + sigma * sentiment MSE."""
        rates = self._rates.index_select(0, batch.index)
        l_cc = F.mse_loss(output["w"].float(), 1.0 - rates)
        l_sp = F.mse_loss(output["pred"].float(), batch.labels.float())
        total = self.alpha * l_cc + self.sigma * l_sp
        if "effectiveness" in output:
            labels = effectiveness_labels(len(batch), self.n_tokens, output["effectiveness"].device)
            total = total + self.beta * F.cross_entropy(output["effectiveness"].float(), labels)
        if output.get("rec"):
            mods = sorted(output["rec"])
            rec = torch.cat([output["rec"][m] for m in mods], 1)
            target = torch.cat([output["target"][m] for m in mods], 1)
            total = total + self.gamma * F.mse_loss(rec.float(), target.float())
        return total

