"""TorchMethod: the common training loop, so a method file holds only its model and loss.

Whole splits live on the device (or, under the ``host`` placement, stay on the host and move a batch at a time); a
batch is a gather of shuffled rows (training) or a slice view (evaluation) of the raw features, standardised with the
train-split statistics and masked with the epoch's or condition's mask in one pass over just those rows (no
standardised copy of a split exists). Model selection uses the validation split under the protocol's fixed
validation masks, each applied to the split once per fit; the best state is restored.
"""
from __future__ import annotations

import copy
import logging
from contextlib import nullcontext
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from msabench.batches import Batch, PreparedSplit, apply_scaler, fit_scaler  # noqa: F401 (re-exported)
from msabench.data.base import Split, Task
from msabench.masks import Mask, derive_seed
from msabench.method import FitContext, Method
from msabench.metrics import compute_metrics, selection_score
from msabench.placement import split_bytes
from msabench.protocol import TrainingSchedule
from msabench import text_encoder as _text

log = logging.getLogger(__name__)


def task_loss(pred: torch.Tensor, labels: torch.Tensor, task: Task) -> torch.Tensor:
    """L1 for sentiment regression (MMSA), BCE per emotion (MulT IEMOCAP), cross-entropy for classes."""
    if task.kind == "regression":
        return nn.functional.l1_loss(pred.reshape(-1).float(), labels.float())
    if task.kind == "multilabel":
        return nn.functional.binary_cross_entropy_with_logits(pred.float(), labels.float())
    return nn.functional.cross_entropy(pred.float(), labels.long())


def output_to_prediction(pred: torch.Tensor, task: Task) -> torch.Tensor:
    """Raw model output → what metrics read: scores, emotion probabilities or class probabilities."""
    if task.kind == "regression":
        return pred.reshape(-1).float()
    if task.kind == "multilabel":
        return torch.sigmoid(pred.float())
    return torch.softmax(pred.float(), dim=-1)


def pick_prediction(output: Any) -> torch.Tensor:
    return output["pred"] if isinstance(output, dict) else output


class TorchMethod(Method):
    """A method made of a torch module (:meth:`build`) and a loss (:meth:`loss`); this class trains it."""

    def __init__(self, lr: float = 1e-3, batch_size: int = 64, epochs: int = 30, patience: int = 8,
                 weight_decay: float = 0.0, grad_clip: float = 0.0, standardize: bool = True,
                 text_encoder: str = "features", text_finetune: bool = True, text_lr: float = 5e-5,
                 text_encoder_id: str = "") -> None:
        self.lr = lr
        self.batch_size = batch_size
        self.epochs = epochs
        self.patience = patience
        self.weight_decay = weight_decay
        self.grad_clip = grad_clip
        self.standardize = standardize
        self.text_encoder = text_encoder  # see msabench.text_encoder
        self.text_finetune = text_finetune
        self.text_lr = text_lr
        self.text_encoder_id = text_encoder_id

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "build" in cls.__dict__:  # dims["l"] = the text encoder's width when one is active
            cls.build = _text.wrap_build(cls.__dict__["build"])

    @classmethod
    def finalize_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        return _text.finalize_params(params)

    # what a method file provides ---------------------------------------------------------------------------------
    def build(self, dims: dict[str, int], seq_lens: dict[str, int], task: Task) -> nn.Module:
        """The torch model for these feature dims, sequence lengths and task; ``model(batch)`` returns the raw
        prediction (B,) / (B, K) / (B, C), or a dict with key ``pred`` and whatever the loss needs."""
        raise NotImplementedError

    def loss(self, output: Any, batch: Batch, task: Task) -> torch.Tensor:
        """Training loss of one batch; the task loss by default."""
        return task_loss(pick_prediction(output), batch.labels, task)

    # the loop ------------------------------------------------------------------------------------------------------
    def fit(self, train: Split, valid: Split, schedule: TrainingSchedule, context: FitContext) -> "TorchMethod":
        self._begin_fit(train, context)
        self.model_ = self.build(train.dims(), train.seq_lens(), context.task).to(self.device_)
        self.train_model(self.model_, train, valid, schedule, context)
        return self

    def _begin_fit(self, train: Split, context: FitContext) -> None:
        """Seed, pick the device, fit the feature scaler on the train split."""
        self.check_supported(context.task, context.aligned)
        torch.manual_seed(derive_seed(context.seed, "init"))
        self.device_ = torch.device(context.device)
        self.task_ = context.task
        self.amp_ = bool(context.amp and self.device_.type == "cuda")
        # "device": whole splits moved to the device once; "host": they stay, batches move (see msabench.placement)
        self.data_placement_ = getattr(context, "data_placement", "device")
        on_host = self.data_placement_ == "host"
        self.scaler_ = fit_scaler(train if on_host else train.to(self.device_)) if self.standardize else None
        if self.scaler_ is not None and on_host:
            self.scaler_ = {m: (mean.to(self.device_), std.to(self.device_)) for m, (mean, std) in self.scaler_.items()}
        self._prepared_cache = None
        self.curve_: list[dict[str, float]] = []
        self.text_encoder_module_ = _text.begin_fit(self, train)

    def prepare(self, split: Split) -> PreparedSplit:
        """The split where the data lives (moved to the device once, or left on the host), with the scaler folded
        into its batches: no standardised copy of the split is made."""
        if getattr(self, "data_placement_", "device") != "host":
            split = split.to(self.device_)
        encoder = getattr(self, "text_encoder_module_", None)
        return PreparedSplit(split, split.features, scaler=self.scaler_, device=self.device_,
                             encode=None if encoder is None else encoder.encode_batch)

    def autocast(self):
        if not self.amp_:
            return nullcontext()
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)

    def train_model(self, model: nn.Module, train: Split, valid: Split, schedule: TrainingSchedule,
                    context: FitContext, loss_fn: Callable[[Any, Batch, Task], torch.Tensor] | None = None,
                    forward: Callable[[nn.Module, Batch], Any] | None = None, epochs: int | None = None,
                    params: list[nn.Parameter] | None = None, stage: str = "") -> list[dict[str, float]]:
        """Train ``model`` with early stopping on the validation score; restores the best state.

        ``loss_fn(output, batch, task)`` defaults to :meth:`loss`; ``forward(model, batch)`` to ``model(batch)``;
        ``params`` to all parameters of ``model`` that require gradients.
        """
        loss_fn = loss_fn or self.loss
        forward = forward or (lambda mod, b: mod(b))
        n_epochs = epochs or context.epochs or self.epochs
        task = context.task
        tr = self.prepare(train)
        va = self.prepare(valid)
        valid_masks = context.valid_masks or {"complete": va.split.padding_mask()}
        copy_valid = copy_validation(len(valid_masks), split_bytes(va.split), split_bytes(tr.split))
        valid_sets = {name: va.with_mask_applied(mask, copy_valid) for name, mask in valid_masks.items()}  # masked once
        del va
        params = params if params is not None else [p for p in model.parameters() if p.requires_grad]
        optimizer = _text.make_optimizer(self, params)
        self.optimizer_ready(optimizer)
        grad_scaler = torch.amp.GradScaler("cuda", enabled=self.amp_ and not torch.cuda.is_bf16_supported())
        best_score, best_state, since_best = -np.inf, None, 0
        curve: list[dict[str, float]] = []
        bar = tqdm(range(n_epochs), desc=stage or (self.name or type(self).__name__), leave=False,
                   disable=not context.progress, unit="epoch")
        for epoch in bar:
            model.train()
            mask = {m: x.to(self.device_) for m, x in schedule.mask(epoch).items()}
            gen = torch.Generator().manual_seed(derive_seed(context.seed, stage, "shuffle", epoch))
            total, count = torch.zeros((), device=self.device_), 0
            for idx in self.train_batches(tr.split, gen):
                batch = tr.masked_batch(mask, idx)
                with self.autocast():
                    output = forward(model, batch)
                    loss = loss_fn(output, batch, task)
                optimizer.zero_grad(set_to_none=True)
                grad_scaler.scale(loss).backward()
                if self.grad_clip:
                    grad_scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(params, self.grad_clip)
                grad_scaler.step(optimizer)
                grad_scaler.update()
                total += loss.detach() * len(idx)
                count += len(idx)
            train_loss = float(total) / max(count, 1)
            score = self.validation_score(model, valid_sets, task, forward)
            curve.append({"epoch": epoch, "train_loss": train_loss, "valid_score": score, "stage": stage})
            bar.set_postfix(loss=f"{train_loss:.4f}", valid=f"{score:.4f}")
            if score > best_score or best_state is None:
                best_score, since_best = score, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                since_best += 1
            if context.on_epoch is not None:
                context.on_epoch(epoch, train_loss, score)
            if self.patience and since_best >= self.patience:
                log.debug("early stop at epoch %d (best %.4f)", epoch, best_score)
                break
        if best_state is not None:
            model.load_state_dict(best_state)
        self.curve_.extend(curve)
        return curve

    def train_batches(self, split: Split, generator: torch.Generator) -> list[torch.Tensor]:
        """Index tensors of one training epoch: a seeded shuffle cut into ``batch_size`` slices.

        Override to batch differently (whole conversations, for example). A trailing single-sample batch is
        dropped, since it breaks batch statistics.
        """
        n = len(split)
        order = torch.randperm(n, generator=generator).to(self.device_)
        batches = [order[s:s + self.batch_size] for s in range(0, n, self.batch_size)]
        return [b for b in batches if len(b) >= 2 or n == 1]

    def eval_batches(self, split: Split) -> list[torch.Tensor | slice]:
        """Index tensors or slices covering every sample once, for prediction (order does not matter).

        The default is contiguous slices, so evaluation batches are views, not copies: 256 samples (or the training
        batch size if larger), fewer for long sequences, :func:`eval_batch_size`.
        """
        n = len(split)
        step = eval_batch_size(self.batch_size, max(split.seq_lens().values(), default=1))
        return [slice(s, min(s + step, n)) for s in range(0, n, step)]

    def make_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        """Adam, with the fused kernel where the device has one (same update rule, several times faster)."""
        devices = {p.device.type for p in params}
        fused = bool(devices) and devices <= {"cpu", "cuda"}
        return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay, fused=fused or None)

    def optimizer_ready(self, optimizer: torch.optim.Optimizer) -> None:
        """Called with the complete optimizer of a training stage (the text encoder's group included), e.g. to
        attach a learning-rate schedule to every group; nothing by default."""

    @torch.inference_mode()
    def raw_outputs(self, model: nn.Module, prepared: PreparedSplit, mask: Mask | None,
                    forward: Callable[[nn.Module, Batch], Any] | None = None) -> torch.Tensor:
        """Predictions (metric form) for the whole prepared split under ``mask`` (None: the mask the split already
        has applied), in eval mode."""
        forward = forward or (lambda mod, b: mod(b))
        was_training = model.training
        model.eval()
        mask = None if mask is None else {m: x.to(self.device_) for m, x in mask.items()}
        outs, order = [], []
        for idx in self.eval_batches(prepared.split):
            batch = prepared.masked_batch(mask, idx, reuse_buffers=True)
            with self.autocast():
                out = pick_prediction(forward(model, batch))
            # a copy: an output that is a view of the batch (an identity model) must not change with the buffers
            outs.append(output_to_prediction(out, self.task_).clone())
            order.append(batch.index)
        model.train(was_training)
        pred, index = torch.cat(outs), torch.cat(order)
        if index.shape[0] != len(prepared.split):
            raise RuntimeError(f"eval_batches covered {index.shape[0]} of {len(prepared.split)} samples")
        result = torch.empty_like(pred)
        result[index] = pred
        return result

    def validation_score(self, model: nn.Module, valid_sets: dict[str, PreparedSplit], task: Task,
                         forward: Callable[[nn.Module, Batch], Any] | None = None) -> float:
        """Mean over the validation conditions (the validation split with each condition's mask applied, see
        :meth:`PreparedSplit.with_mask_applied`) of the task's selection metric (higher is better)."""
        scores = []
        for prepared in valid_sets.values():
            labels = prepared.split.labels.cpu().numpy()
            pred = self.raw_outputs(model, prepared, None, forward).cpu().numpy()
            score = selection_score(task, compute_metrics(task, pred, labels))
            scores.append(score if np.isfinite(score) else -np.inf)
        return float(np.mean(scores))

    def predict(self, split: Split, mask: Mask) -> np.ndarray:
        return self.raw_outputs(self.model_, self.prepared(split), mask).cpu().numpy()

    def prepared(self, split: Split) -> PreparedSplit:
        """:meth:`prepare`, cached for the last split seen (one split is predicted under many conditions).

        A split of at most :data:`EVAL_COPY_BYTES` is standardised once into a copy (each condition's batches then
        only mask, as fast as before the scaler was folded into batches); a larger one is standardised per batch."""
        cache = getattr(self, "_prepared_cache", None)
        if cache is None or cache[0] is not split:
            prepared = self.prepare(split)
            if prepared.scaler is not None and split_bytes(split) <= EVAL_COPY_BYTES:
                prepared = PreparedSplit(prepared.split, apply_scaler(prepared.split, prepared.scaler),
                                         device=prepared.device, encode=prepared.encode)
            cache = (split, prepared)
            self._prepared_cache = cache
        return cache[1]

    def inference_state(self) -> dict[str, Any]:
        return {"model": self.model_.state_dict(), "scaler": self.scaler_}


EVAL_BATCH = 256  # samples per evaluation batch for sequences of at most EVAL_TOKENS // EVAL_BATCH frames
EVAL_TOKENS = 256 * 64  # frames per modality in one evaluation batch beyond that (attention is quadratic in T)


def eval_batch_size(train_batch: int, longest: int) -> int:
    """Samples per evaluation batch: 256 for sequences up to 64 frames (every published study), fewer for longer
    ones so that a batch holds about 16k frames per modality (unaligned MOSEI, T = 500: 32 instead of 256, whose
    attention scores alone took 2 GB), never fewer than the training batch, which fits by construction."""
    return max(train_batch, min(EVAL_BATCH, EVAL_TOKENS // max(longest, 1)))


# feature standardisation fitted on the train split -------------------------------------------------------------------
EVAL_COPY_BYTES = 256 * 2**20  # a split evaluated under many conditions is standardised once up to this size
VALID_COPY_BYTES = 512 * 2**20  # masked validation copies (one per validation condition) up to this size in all,
VALID_COPY_SHARE = 0.25  # and up to this share of the train + valid feature bytes,
VALID_COPY_FLOOR = 128 * 2**20  # except that copies this small in all are always made (small sets validate fast)


def copy_validation(n_conditions: int, valid_bytes: int, train_bytes: int) -> bool:
    """Whether to keep one masked copy of the validation split per validation condition (else each condition's
    mask is applied per batch: the same scores). Copies are made while they total at most
    ``min(VALID_COPY_BYTES, max(VALID_COPY_FLOOR, VALID_COPY_SHARE * (train + valid bytes)))``, so that memory
    stays near the data's size on large sets and small sets keep their faster validation."""
    total = n_conditions * valid_bytes
    budget = min(VALID_COPY_BYTES, max(VALID_COPY_FLOOR, VALID_COPY_SHARE * (train_bytes + valid_bytes)))
    return total <= budget
