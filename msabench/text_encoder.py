"""Pretrained text encoders (BERT-style, Hugging Face ``transformers``) for every TorchMethod.

Hyperparameters every :class:`~msabench.training.TorchMethod` accepts::

    text_encoder   "features" (default: the dataset's text feature sequences, exactly as before), or a Hugging Face
                   model name / local model directory (``--set text_encoder=bert-base-uncased``)
    text_finetune  true: the encoder is trained with the method (its own optimizer group); false: frozen
    text_lr        the encoder's learning rate (MMSA's BERT methods: 5e-5); the rest trains at the method's ``lr``
    text_encoder_id  filled in when a run is planned: ``name@revision#weights-sha``; a run whose encoder no longer
                   matches refuses to train. Part of the resolved hyperparameters, so runs of different encoders
                   (or weights) never pool in a leaderboard.

With an encoder, the dataset must carry ``text_bert`` (MMSA layout (N, 3, L): ids, attention mask, segment ids, with
L equal to the text sequence length T: ``--dataset-option text=bert``; MMSA pickles without it add
``--dataset-option tokenizer=MODEL``; synthetic sets emit sentiment-bearing ids with ``text=bert``). Per batch the
model receives ``batch.features["l"]`` = the encoder's last-layer token states (B, T, H), zero at padding, and was
built with ``dims["l"] = H``; so every method runs unchanged. Everything else about the batch is as before.

Missingness: a dropped token becomes ``[UNK]`` before the encoder ([CLS], [SEP] and padding stay:
:func:`msabench.masks.apply_mask_bert`); the states at dropped positions are the encoder's output for ``[UNK]``
(``batch.mask["l"]`` still tells the method which tokens were dropped). A sample whose text is missing as a whole
(no present token) gets zero states, the feature path's absent treatment (all-zero frames), and is not encoded.

Cost: each batch is trimmed to its longest token sequence before the encoder and padded back to T after it (on
CPU, additionally split into length-sorted chunks of 16 rows, each trimmed to its own longest); the encoder runs
once per batch under the method's mixed precision (CUDA). A frozen encoder caches each sample's states
by its (masked) token ids, so the same ids are never encoded twice in a fit: complete and modality-missing
conditions, validation every epoch and a modality-missing training schedule all reuse them; conditions that drop
tokens change the ids and are encoded (once each). A fine-tuned encoder uses the same cache between weight changes
(every training step and every restore of a saved state clear it): within one validation pass and across the
evaluation conditions after fitting, text that a condition leaves unchanged is encoded once.

Teacher/student methods (CorrKD, HRLF, MMIN; ``methods/_distill.py``): a frozen encoder is shared by both stages; a
fine-tuned one is fine-tuned by the teacher, which keeps it, and the student fine-tunes its own fresh copy of the
pretrained weights (MMIN: of the teacher's, as it initialises its student's encoders from the teacher).
"""
from __future__ import annotations

import copy
import functools
import hashlib
import os
import re
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from msabench.data.base import Split
    from msabench.training import Batch, TorchMethod

FEATURES = "features"
TEXT_PARAMS = ("text_encoder", "text_finetune", "text_lr", "text_encoder_id")
CACHE_BYTES = 1 << 30
CPU_CHUNK = 16  # rows per encoder call on CPU (length-sorted, see TextEncoder._encode)  # frozen-encoder state cache per fit; oldest entries go first beyond this


class TextEncoderError(ValueError):
    """A text encoder that cannot be found or used; the message says how to fix it."""


# loading ------------------------------------------------------------------------------------------------------------
def _require_transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise TextEncoderError("text_encoder needs the transformers package: pip install 'msabench[text]'") from None
    return transformers


def _looks_like_path(name: str) -> bool:
    """A directory rather than a hub id (``bert-base-uncased``, ``org/name``)."""
    return (Path(name).expanduser().exists() or name.startswith(("/", ".", "~")) or name.count("/") > 1
            or (os.sep != "/" and os.sep in name))


def _hub_cache() -> str:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
        return str(HF_HUB_CACHE)
    except ImportError:  # pragma: no cover
        return os.path.join(os.environ.get("HF_HOME", "~/.cache/huggingface"), "hub")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _missing(name: str, where: str) -> TextEncoderError:
    return TextEncoderError(
        f"text encoder {name!r} not found ({where}); give a model directory (--set text_encoder=/path/to/model), "
        f"point HF_HOME at a Hugging Face cache that holds it, or download it once with network access "
        f"(HF_HUB_OFFLINE unset)")


def resolve_location(name: str) -> str:
    """A local directory for ``name``: the directory itself, or its snapshot in the Hugging Face cache (offline
    first: the network is used only for a hub name not in the cache while HF_HUB_OFFLINE is not set)."""
    if _looks_like_path(name):
        path = Path(name).expanduser()
        if not (path / "config.json").is_file():
            raise _missing(name, f"no config.json in directory {str(path)!r}")
        return str(path.resolve())
    from huggingface_hub import snapshot_download
    try:
        return snapshot_download(name, local_files_only=True)
    except Exception:  # noqa: BLE001 - any miss in the cache: try the network below, or explain
        pass
    if _offline():
        raise _missing(name, f"not a directory, not in the Hugging Face cache {_hub_cache()!r}, HF_HUB_OFFLINE=1")
    try:
        return snapshot_download(name)
    except Exception as exc:  # noqa: BLE001
        raise _missing(name, f"not a directory, not in the Hugging Face cache {_hub_cache()!r}, download failed: "
                             f"{type(exc).__name__}") from None


def _revision(location: str, model: nn.Module) -> str:
    commit = getattr(model.config, "_commit_hash", None)
    if commit:
        return str(commit)
    match = re.search(r"snapshots[/\\]([0-9a-f]{40})", location)
    return match.group(1) if match else ""


def weights_hash(model: nn.Module) -> str:
    """sha256 over the parameter and buffer names, shapes, dtypes and bytes (sorted by name), 16 hex digits."""
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        t = value.detach().cpu().contiguous()
        h.update(f"{key}|{tuple(t.shape)}|{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=2)
def _load(location: str) -> tuple[nn.Module, str, str]:
    transformers = _require_transformers()
    transformers.utils.logging.disable_progress_bar()
    with torch.random.fork_rng(devices=[]):  # loading may initialise missing weights: leave the caller's RNG alone
        model = transformers.AutoModel.from_pretrained(location, local_files_only=True)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, _revision(location, model), weights_hash(model)


def load_pretrained(name: str) -> tuple[nn.Module, str]:
    """(pristine model, identity ``name@revision#weights``) for a model name or directory; one-line errors."""
    location = resolve_location(name)
    model, revision, digest = _load(location)
    return model, f"{name}@{revision or '-'}#{digest}"


def load_tokenizer(name: str) -> Any:
    """The tokenizer of a model name or directory (offline first, like :func:`resolve_location`)."""
    transformers = _require_transformers()
    location = resolve_location(name)
    try:
        return transformers.AutoTokenizer.from_pretrained(location, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise TextEncoderError(f"tokenizer {name!r}: no tokenizer files in {location!r} ({exc})") from None


def finalize_params(params: dict[str, Any]) -> dict[str, Any]:
    """Resolved hyperparameters of a TorchMethod: with the default ``features`` the text keys are left out (so
    hashes and run keys stay what they were); with an encoder ``text_encoder_id`` is filled in."""
    if params.get("text_encoder", FEATURES) == FEATURES:
        return {k: v for k, v in params.items() if k not in TEXT_PARAMS}
    _, ident = load_pretrained(str(params["text_encoder"]))
    if params.get("text_encoder_id") and params["text_encoder_id"] != ident:
        raise TextEncoderError(f"text_encoder_id {params['text_encoder_id']!r} does not match the encoder found "
                               f"({ident!r}); drop text_encoder_id to use the encoder as it is now")
    return {**params, "text_encoder_id": ident}


# the encoder of one fit ----------------------------------------------------------------------------------------------
class TextEncoder(nn.Module):
    """A pretrained encoder turning masked ``text_bert`` into token states for ``batch.features["l"]``."""

    def __init__(self, model: nn.Module, finetune: bool, identity: str,
                 autocast: Callable[[], Any] | None = None) -> None:
        super().__init__()
        self.model = model
        self.finetune = finetune
        self.identity = identity
        self.hidden_size = int(model.config.hidden_size)
        self._autocast = autocast or nullcontext
        self._cache: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self._cache_bytes = 0
        self.encoded_rows = 0  # rows that went through the encoder (for tests and benchmarks)
        for p in self.model.parameters():
            p.requires_grad_(finetune)
        if not finetune:
            self.model.eval()
        # restored weights (the best state) make cached states stale
        self.register_load_state_dict_post_hook(lambda module, incompatible: module.clear_cache())

    def clear_cache(self) -> None:
        self._cache.clear()
        self._cache_bytes = 0

    def train(self, mode: bool = True) -> "TextEncoder":
        super().train(mode)
        if not self.finetune:
            self.model.eval()
        return self

    def encoder_parameters(self) -> list[nn.Parameter]:
        return list(self.model.parameters())

    def _run(self, ids: torch.Tensor, attention: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
        self.encoded_rows += int(ids.shape[0])
        with self._autocast():
            out = self.model(input_ids=ids, attention_mask=attention, token_type_ids=segments)
        return out.last_hidden_state

    def states(self, text_bert: torch.Tensor, present: torch.Tensor, total_len: int) -> torch.Tensor:
        """(B, total_len, H) token states of masked ``text_bert`` (B, 3, L); zeros at padding and for rows with no
        present token."""
        b = text_bert.shape[0]
        attention = text_bert[:, 1]
        lengths = attention.sum(dim=1)
        rows = torch.nonzero(present.any(dim=1) & (lengths > 0)).flatten()
        out = torch.zeros((b, total_len, self.hidden_size), device=text_bert.device)
        if rows.numel() == 0:
            return out
        if self.finetune and torch.is_grad_enabled():
            self.clear_cache()  # the weights change with this step
            states = self._encode(text_bert, rows, lengths).float()  # (R, n, H), n = longest of the batch
            n = states.shape[1]
            states = states * attention[rows, :n].unsqueeze(-1).to(states.dtype)  # zero at padding
            full = nn.functional.pad(states, (0, 0, 0, total_len - n))
            return out.index_put((rows,), full)  # differentiable: out[rows] = full
        with torch.no_grad():
            return self._cached_states(text_bert, rows, lengths, out)

    def _encode(self, text_bert: torch.Tensor, rows: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(R, n, H) states of ``rows``, n = their longest sequence. On CPU the rows go through the encoder in
        chunks of CPU_CHUNK sorted by length, each trimmed to its own longest (padding costs compute there; the
        attention mask makes the states the same up to rounding); on other devices as one batch."""
        lens = lengths[rows]
        n = int(lens.max())  # trim to the longest sequence of the batch
        if text_bert.device.type != "cpu" or rows.numel() <= CPU_CHUNK:
            sub = text_bert[rows, :, :n]
            return self._run(sub[:, 0], sub[:, 1], sub[:, 2])
        order = torch.sort(lens, stable=True).indices
        parts = []
        for start in range(0, rows.numel(), CPU_CHUNK):
            chunk = order[start:start + CPU_CHUNK]
            m = int(lens[chunk].max())
            sub = text_bert[rows[chunk], :, :m]
            parts.append(nn.functional.pad(self._run(sub[:, 0], sub[:, 1], sub[:, 2]), (0, 0, 0, n - m)))
        states = torch.cat(parts)
        return states[torch.argsort(order)]  # back to the order of ``rows``

    def _cached_states(self, text_bert: torch.Tensor, rows: torch.Tensor, lengths: torch.Tensor,
                       out: torch.Tensor) -> torch.Tensor:
        cpu = text_bert[rows].cpu()
        lens = lengths[rows].cpu().tolist()
        keys = [cpu[i, 0, :n].numpy().tobytes() + cpu[i, 2, :n].numpy().tobytes() for i, n in enumerate(lens)]
        missing = [i for i, k in enumerate(keys) if k not in self._cache]
        found: dict[int, torch.Tensor] = {}
        if missing:
            idx = rows[torch.as_tensor(missing, device=rows.device)]
            states = self._encode(text_bert, idx, lengths).float()
            for j, i in enumerate(missing):
                found[i] = states[j, :lens[i]].clone()
                self._remember(keys[i], found[i])
        for i, row in enumerate(rows.tolist()):
            value = found.get(i)
            if value is None:
                value = self._cache[keys[i]]
                self._cache.move_to_end(keys[i])
            out[row, :lens[i]] = value
        return out

    def _remember(self, key: bytes, value: torch.Tensor) -> None:
        self._cache[key] = value
        self._cache_bytes += value.numel() * value.element_size()
        while self._cache_bytes > CACHE_BYTES and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cache_bytes -= old.numel() * old.element_size()

    def encode_batch(self, batch: "Batch") -> "Batch":
        """``batch`` with ``features["l"]`` replaced by token states (B, T, H)."""
        if batch.text_bert is None:
            raise TextEncoderError("text_encoder needs BERT token ids: load the dataset with "
                                   "--dataset-option text=bert (and tokenizer=MODEL if the file has no text_bert)")
        total = batch.mask["l"].shape[1]
        states = self.states(batch.text_bert, batch.mask["l"], total)
        return replace(batch, features={**batch.features, "l": states})


# hooks used by TorchMethod ------------------------------------------------------------------------------------------
def begin_fit(method: "TorchMethod", train: "Split") -> TextEncoder | None:
    """The encoder of this fit (a fresh copy of the pretrained weights), or None for ``features``."""
    name = getattr(method, "text_encoder", FEATURES)
    if name == FEATURES:
        return None
    pristine, ident = load_pretrained(str(name))
    expected = getattr(method, "text_encoder_id", "")
    if expected and expected != ident:
        raise TextEncoderError(f"text encoder {name!r} is now {ident!r} but the run was planned with {expected!r}; "
                               f"restore those weights or plan the run again")
    if train.text_bert is None:
        raise TextEncoderError(f"text_encoder={name!r} needs BERT token ids: load the dataset with "
                               f"--dataset-option text=bert (and tokenizer=MODEL if the file has no text_bert)")
    t_len = train.features["l"].shape[1]
    if train.text_bert.shape[-1] != t_len:
        raise TextEncoderError(f"text_bert has {train.text_bert.shape[-1]} tokens per sample but the text sequences "
                               f"have {t_len} positions; tokenize with max_length={t_len}")
    vocab = int(pristine.config.vocab_size)
    top = int(train.text_bert[:, 0].max()) if len(train) else 0
    if top >= vocab:
        raise TextEncoderError(f"token id {top} is outside the vocabulary of {name!r} ({vocab} ids); tokenize the "
                               f"text with this model's tokenizer (--dataset-option tokenizer={name})")
    model = copy.deepcopy(pristine).to(method.device_)
    encoder = TextEncoder(model, bool(method.text_finetune), ident, autocast=method.autocast)
    method.text_encoder_revision_ = ident.split("@", 1)[1].split("#", 1)[0]
    method.text_encoder_weights_ = ident.rsplit("#", 1)[1]
    return encoder


def wrap_build(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """``build`` seeing ``dims["l"] = H`` while an encoder is active; a fine-tuned encoder becomes a submodule of
    the model (its weights are then trained, saved with the best state and restored with it)."""
    if getattr(build, "_text_wrapped", False):
        return build

    @functools.wraps(build)
    def wrapped(self: "TorchMethod", dims: dict[str, int], seq_lens: dict[str, int], task: Any) -> nn.Module:
        encoder = getattr(self, "text_encoder_module_", None)
        if encoder is None:
            return build(self, dims, seq_lens, task)
        model = build(self, {**dims, "l": encoder.hidden_size}, seq_lens, task)
        if encoder.finetune:
            model.add_module("pretrained_text", encoder)
        return model

    wrapped._text_wrapped = True  # type: ignore[attr-defined]
    return wrapped


def make_optimizer(method: "TorchMethod", params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """The method's optimizer for its own parameters, plus one group of the encoder's at ``text_lr``."""
    encoder = getattr(method, "text_encoder_module_", None)
    if encoder is None:
        return method.make_optimizer(params)
    enc_ids = {id(p) for p in encoder.encoder_parameters()}
    own = [p for p in params if id(p) not in enc_ids]
    enc = [p for p in params if id(p) in enc_ids]
    optimizer = method.make_optimizer(own)
    if enc:
        optimizer.add_param_group({"params": enc, "lr": float(method.text_lr)})
    return optimizer
