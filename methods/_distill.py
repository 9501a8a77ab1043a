"""The teacher/student stage shared by the distillation methods (CorrKD, HRLF, MMIN).

A teacher of the method's own network trains on complete data and is selected on the complete validation split; it
is cached per run grid under ``OUT/cache/<method>-teacher/`` (it depends on neither the protocol nor the
distillation settings); it is frozen; its outputs on the complete train split are computed once and looked up by
``batch.index`` during the student's training. A method file keeps only its networks and losses.

With a fine-tuned pretrained text encoder (``text_finetune=true``) the teacher fine-tunes its own copy of the
encoder (saved in its cache entry) and computes its outputs with it; the student gets a fresh copy of the pretrained
weights (or of the teacher's, see :func:`begin_student`) and fine-tunes that. A frozen encoder is one
module shared by both stages.
"""
from __future__ import annotations

import hashlib
import logging
import os
import pickle
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from msabench import text_encoder as _text
from msabench.data.base import Split
from msabench.method import FitContext
from msabench.params import params_hash
from msabench.protocol import TrainingSchedule
from msabench.training import TorchMethod

log = logging.getLogger(__name__)


def complete_data_teacher(method: TorchMethod, train: Split, valid: Split, schedule: TrainingSchedule,
                          context: FitContext, teacher_params: Iterable[str],
                          code_modules: Iterable[str] = (),
                          build: Callable[[], nn.Module] | None = None) -> nn.Module:
    """``method.build(...)`` (or ``build()``, for a teacher of another network) trained on complete data and selected on the complete validation split.

    With ``context.cache_dir`` the teacher is trained once per (``teacher_params`` values, epochs, dataset, seed,
    device, AMP, threads, torch version, source of the method's module and ``code_modules``) and loaded by the other
    runs of a grid. Sets ``method.teacher_source_`` (``trained`` or ``cache:<key>``) and extends ``method.curve_``
    with the teacher's curve. The student stage must reseed, so that a cached teacher gives exactly the numbers of
    a freshly trained one.
    """
    name = method.name or type(method).__name__.lower()
    teacher = (build() if build is not None else method.build(train.dims(), train.seq_lens(), context.task))
    teacher = teacher.to(method.device_)
    path = teacher_cache_path(method, context, teacher_params, code_modules)
    if path is not None and path.exists():
        try:
            saved = torch.load(path, map_location=method.device_, weights_only=True)
            teacher.load_state_dict(saved["model"])
        except (OSError, RuntimeError, KeyError, EOFError, pickle.UnpicklingError) as exc:
            log.warning("%s: ignoring unreadable cached teacher %s (%s); training it again", name, path, exc)
        else:
            method.curve_.extend(saved["curve"])
            method.teacher_source_ = f"cache:{path.stem}"
            return teacher
    complete_valid = {"complete": valid.to(method.device_).padding_mask()}
    teacher_context = replace(context, valid_masks=complete_valid, on_epoch=None)
    curve = method.train_model(teacher, train, valid, schedule.complete(), teacher_context, stage="teacher")
    method.teacher_source_ = "trained"
    if path is not None:
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(partial, "wb") as fh:  # through a Python file: a full disk raises OSError
                torch.save({"model": teacher.state_dict(), "curve": curve}, fh)
            os.replace(partial, path)  # atomic: a killed run leaves no half-written teacher
        except OSError as exc:  # e.g. a full disk, or a Dask worker that cannot write OUT: just do not cache
            if partial.is_file():
                partial.unlink()
            log.warning("%s: cannot cache the teacher in %s (%s)", name, path.parent, exc)
    return teacher


def teacher_cache_path(method: TorchMethod, context: FitContext, teacher_params: Iterable[str],
                       code_modules: Iterable[str] = ()) -> Path | None:
    """OUT/cache/<method>-teacher/<hash of everything the teacher's training depends on>.pt, or None."""
    if not context.cache_dir or not context.dataset_fingerprint:
        return None
    code = hashlib.sha256()
    for module in (type(method).__module__, *code_modules, TorchMethod.__module__, "msabench.batches", __name__):
        code.update(Path(sys.modules[module].__file__).read_bytes())
    ident = {
        "params": {k: getattr(method, k) for k in teacher_params},
        "epochs": context.epochs or method.epochs,
        "dataset": context.dataset_fingerprint,
        "seed": context.seed,
        "device": str(method.device_),
        "amp": method.amp_,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "code": code.hexdigest(),
    }
    if getattr(method, "text_encoder", _text.FEATURES) != _text.FEATURES:  # features runs keep their keys
        encoder = method.text_encoder_module_
        ident["text"] = {"encoder": encoder.identity, "finetune": encoder.finetune,
                         "text_lr": float(method.text_lr) if encoder.finetune else None}
    name = method.name or type(method).__name__.lower()
    return Path(context.cache_dir) / f"{name}-teacher" / f"{params_hash(ident)}.pt"


def begin_student(method: TorchMethod, teacher: nn.Module, train: Split, encoder_from_teacher: bool = False) -> None:
    """Freeze the teacher (:func:`freeze`) and give the student stage its own fine-tuned text encoder, if the fit has
    one: a fresh copy of the pretrained weights, or of the teacher's fine-tuned encoder with
    ``encoder_from_teacher`` (MMIN initialises its student from the teacher). Without an encoder, or with a frozen
    one (shared by both stages), only the freezing happens. Call before building the student, so that the student's
    network registers the new encoder."""
    freeze(teacher)
    encoder = getattr(method, "text_encoder_module_", None)
    if encoder is None or not encoder.finetune:
        return
    fresh = _text.begin_fit(method, train)
    source = text_encoder_of(teacher) if encoder_from_teacher else None
    if source is not None:
        fresh.model.load_state_dict(source.model.state_dict())
    method.text_encoder_module_ = fresh


def text_encoder_of(model: nn.Module) -> "_text.TextEncoder | None":
    """The fine-tuned text encoder registered in ``model`` (see :func:`msabench.text_encoder.wrap_build`), or None."""
    return next((m for m in model.modules() if isinstance(m, _text.TextEncoder)), None)


def freeze(teacher: nn.Module) -> nn.Module:
    """Eval mode, no gradients (the teacher's own training's last gradients dropped): the teacher's parameters stay
    exactly as trained, and any gradient found on them later would have come from the student's training."""
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
        p.grad = None
    return teacher


@torch.no_grad()
def teacher_outputs(method: TorchMethod, teacher: nn.Module, train: Split,
                    keys: Iterable[str]) -> dict[str, torch.Tensor]:
    """The frozen teacher's outputs ``keys`` (each (B, ...) per batch) on the complete train split, as (N, ...)
    tensors indexed by sample: the values a per-batch teacher pass in eval mode gives, computed once."""
    keys = list(keys)
    full = method.prepare(train)
    own = text_encoder_of(teacher)
    if own is not None:  # a fine-tuned teacher encodes the text with its own encoder, whatever the method holds now
        full = replace(full, encode=own.encode_batch)
    full_mask = full.split.padding_mask()
    was_training = teacher.training
    teacher.eval()
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    order = []
    for idx in method.eval_batches(full.split):
        batch = full.masked_batch(full_mask, idx)
        with method.autocast():
            out = teacher(batch)
        for k in keys:
            parts[k].append(out[k].float())
        order.append(batch.index)
    teacher.train(was_training)
    index = torch.cat(order)
    result = {}
    for k in keys:
        values = torch.cat(parts[k])
        result[k] = torch.empty((len(full.split), *values.shape[1:]), device=method.device_)
        result[k][index] = values
    return result
