"""Splits ready for training and evaluation: raw features where the data lives, the train-split scaler folded into
each batch, and the masked, standardised mini-batches a method's model reads (:class:`Batch`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from msabench.data.base import Split, row_chunks
from msabench.masks import Mask, apply_mask, apply_mask_bert

SCALER_EXACT_BYTES = 256 * 2**20  # above this a modality's statistics are accumulated in chunks (no split copy)


@dataclass
class Batch:
    """One mini-batch: masked features (B, T, D), the masks themselves (B, T), lengths, labels, sample index."""

    features: dict[str, torch.Tensor]
    mask: dict[str, torch.Tensor]
    lengths: dict[str, torch.Tensor]
    labels: torch.Tensor
    index: torch.Tensor
    text_bert: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class PreparedSplit:
    """A split ready to be masked and sliced: its raw features where the data lives (the device, or the host under
    the ``host`` placement) and the train-split scaler, applied to each batch's rows as they are taken.

    No standardised copy of the split is made: ``((x - mean) / std) * padding`` is computed per batch, element by
    element, which gives the same bits as standardising the whole split first (the old way). ``device`` is where
    batches go; None: where the features are.
    """

    split: Split
    features: dict[str, torch.Tensor]
    # the mask ``features`` are already masked with (see with_mask_applied), or None
    applied_mask: Mask | None = None
    # evaluation batches are masked into these, reused from batch to batch (see masked_batch)
    eval_buffers: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    # the pretrained text encoder's batch hook (msabench.text_encoder), or None for text features
    encode: Callable[[Batch], Batch] | None = field(default=None, repr=False)
    # per modality (mean, std) on the batch device, folded into every batch; None: features are used as they are
    scaler: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
    device: torch.device | None = None
    # True: ``applied_mask`` is not applied to ``features`` yet; masked_batch(None, ...) applies it per batch
    mask_pending: bool = False
    # page-locked staging buffers for host -> CUDA batch copies (host placement)
    _staging: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def with_mask_applied(self, mask: Mask, copy: bool = True) -> "PreparedSplit":
        """This split with ``mask`` applied once to all of it, for a mask scored again and again (the validation
        conditions, every epoch): its batches, ``masked_batch(None, idx)``, are then plain slices. One new
        standardised, masked copy of this split (in practice the validation split). ``copy=False``: no copy, the
        mask is applied to each batch instead (same values; for validation sets too large to copy per condition)."""
        mask = {m: x.to(self.features[m].device) for m, x in mask.items()}
        if not copy:
            return PreparedSplit(self.split, self.features, applied_mask=mask, scaler=self.scaler, device=self.device,
                                 mask_pending=True, encode=self.encode)
        if self.scaler is None:
            feats = apply_mask(self.features, mask)
        else:
            feats = {m: self._standardise(m, x, x, mask[m], padding=self.split.padding_mask()[m], new=True)
                     for m, x in self.features.items()}
        return PreparedSplit(self.split, feats, applied_mask=mask, device=self.device, encode=self.encode)

    def standardised(self, modality: str) -> torch.Tensor:
        """One modality's whole standardised features (padding zero) as a new tensor, on the features' device."""
        x = self.features[modality]
        if self.scaler is None:
            return x
        return self._standardise(modality, x, x, None, padding=self.split.padding_mask()[modality], new=True)

    def _standardise(self, modality: str, rows: torch.Tensor, out: torch.Tensor, mask: torch.Tensor | None,
                     padding: torch.Tensor, new: bool = False) -> torch.Tensor:
        """``((rows - mean) / std) * (padding & mask)`` into ``out`` (``new``: a new tensor). Same bits as the
        old ``apply_scaler`` followed by ``apply_mask``: x * p * m == x * (p & m) for p, m in {0, 1}."""
        mean, std = self.scaler[modality]
        mean, std = mean.to(rows.device), std.to(rows.device)
        keep = padding if mask is None else padding & mask.to(padding.device)
        res = torch.sub(rows, mean) if new else torch.sub(rows, mean, out=out)
        return res.div_(std).mul_(keep.to(device=rows.device, dtype=rows.dtype).unsqueeze(-1))

    def _to_device(self, modality: str, rows: torch.Tensor) -> torch.Tensor:
        """Rows taken on the host moved to the batch device (host placement); through a page-locked staging
        buffer on CUDA, copied synchronously so the buffer is free again when this returns."""
        if self.device is None or rows.device == self.device:
            return rows
        if self.device.type != "cuda":
            return rows.to(self.device)
        buf = self._staging.get(modality)
        if buf is None or buf.shape[0] < rows.shape[0] or buf.shape[1:] != rows.shape[1:] or buf.dtype != rows.dtype:
            buf = self._staging[modality] = torch.empty(rows.shape, dtype=rows.dtype, pin_memory=True)
        staged = buf[: rows.shape[0]]
        staged.copy_(rows)
        return staged.to(self.device, non_blocking=False)

    def masked_batch(self, mask: Mask | None, idx: torch.Tensor | slice, reuse_buffers: bool = False) -> Batch:
        """The batch at ``idx`` (an index tensor, or a slice for contiguous rows, which gives views) with ``mask``
        applied to just those rows (no masked copy of the whole split); ``mask`` None: the mask this split already
        has applied (:meth:`with_mask_applied`).

        With ``reuse_buffers`` (evaluation, slices only) the masked features are written into buffers kept on this
        object, so the next such batch overwrites them: for forwards that keep nothing of their batch. Same values,
        without allocating (and page-faulting) a new batch-sized tensor per batch.
        """
        if mask is None and self.applied_mask is None:
            raise ValueError("masked_batch(None, ...) needs a split made by with_mask_applied; pass the mask")
        if mask is None and self.mask_pending:
            mask = self.applied_mask
        s = self.split
        dev = self.device if self.device is not None else s.labels.device
        on_host = dev != s.labels.device  # host placement: rows are taken here, then moved
        index = idx if isinstance(idx, torch.Tensor) else torch.arange(len(s), device=dev)[idx]
        if isinstance(idx, torch.Tensor) and idx.device != s.labels.device:
            idx = idx.to(s.labels.device)
        batch_mask = {m: x[idx].to(dev) for m, x in (self.applied_mask if mask is None else mask).items()}
        if mask is None:  # features are masked already: plain rows
            feats = {m: self._to_device(m, x[idx]) for m, x in self.features.items()}
        elif self.scaler is not None:  # standardise the batch's rows and mask them, in one buffer per modality
            feats = {}
            for m, x in self.features.items():
                rows = self._to_device(m, x[idx] if isinstance(idx, slice) else x.index_select(0, idx))
                padding = torch.arange(rows.shape[1], device=dev)[None, :] < s.lengths[m][idx].to(dev)[:, None]
                if isinstance(idx, slice) and not on_host:  # views of the split: write into a buffer
                    out = self._buffer(m, rows) if reuse_buffers else None
                    feats[m] = self._standardise(m, rows, out, batch_mask[m], padding, new=out is None)
                else:  # gathered (or moved) copies: in place
                    feats[m] = self._standardise(m, rows, rows, batch_mask[m], padding)
        elif isinstance(idx, slice) and not on_host:  # views of the split: mask into new tensors (or the buffers)
            rows = {m: x[idx] for m, x in self.features.items()}
            feats = (apply_mask(rows, batch_mask, out={m: self._buffer(m, r) for m, r in rows.items()})
                     if reuse_buffers else apply_mask(rows, batch_mask))
        else:  # rows are gathered (or moved) copies: mask them in place (same values, one pass less)
            rows = {m: self._to_device(m, x[idx] if isinstance(idx, slice) else x.index_select(0, idx))
                    for m, x in self.features.items()}
            feats = apply_mask(rows, batch_mask, out=rows)
        bert = self.split.text_bert
        if bert is not None:
            bert = bert[idx].to(dev)
            if bert.shape[-1] == batch_mask["l"].shape[1]:
                bert = apply_mask_bert(bert, batch_mask["l"])
        batch = Batch(features=feats, mask=batch_mask, lengths={m: x[idx].to(dev) for m, x in s.lengths.items()},
                      labels=s.labels[idx].to(dev), index=index, text_bert=bert)
        return batch if self.encode is None else self.encode(batch)

    def _buffer(self, modality: str, rows: torch.Tensor) -> torch.Tensor:
        """A tensor shaped like ``rows`` (a slice of one modality's features) in the reusable buffer."""
        buf = self.eval_buffers.get(modality)
        if buf is None or buf.shape[0] < rows.shape[0] or buf.shape[1:] != rows.shape[1:] or buf.dtype != rows.dtype:
            buf = self.eval_buffers[modality] = torch.empty_like(rows)
        return buf[: rows.shape[0]]


def fit_scaler(train: Split) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per modality and feature dimension, mean and std over the existing (non-padding) train frames.

    Up to :data:`SCALER_EXACT_BYTES` per modality with one split-sized temporary (the formula every published run
    used, kept for bit-identical results); above it two passes over chunks of rows with float64 sums (one chunk-sized
    temporary; equal to the float64 formula, not bit-identical to the float32 one).
    """
    scaler = {}
    padding = train.padding_mask()
    for m, x in train.features.items():
        if x.element_size() * x.nelement() > SCALER_EXACT_BYTES:
            scaler[m] = _chunked_mean_std(x, padding[m])
            continue
        w = padding[m].to(x.dtype).unsqueeze(-1)
        count = w.sum(dim=(0, 1)).clamp_min(1.0)
        work = torch.mul(x, w)  # one split-sized temporary, reused below (same values as x * w, (x - mean) ** 2 ...)
        mean = work.sum(dim=(0, 1)) / count
        var = torch.sub(x, mean, out=work).pow_(2).mul_(w).sum(dim=(0, 1)) / count
        del work
        std = var.sqrt()
        std = torch.where(std > 1e-6, std, torch.ones_like(std))
        scaler[m] = (mean, std)
    return scaler


def _chunked_mean_std(x: torch.Tensor, padding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std (std <= 1e-6 -> 1) over the frames where ``padding`` is True, a chunk of rows at a time."""
    chunks = row_chunks(x)
    count = padding.sum().to(torch.float64).clamp_min(1.0)
    total = torch.zeros(x.shape[-1], dtype=torch.float64, device=x.device)
    for sl in chunks:
        total += (x[sl].to(torch.float64) * padding[sl].unsqueeze(-1)).sum(dim=(0, 1))
    mean64 = total / count
    sq = torch.zeros_like(total)
    for sl in chunks:
        sq += ((x[sl].to(torch.float64) - mean64).pow_(2) * padding[sl].unsqueeze(-1)).sum(dim=(0, 1))
    std = (sq / count).sqrt().to(x.dtype)
    return mean64.to(x.dtype), torch.where(std > 1e-6, std, torch.ones_like(std))


def apply_scaler(split: Split, scaler: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The whole split standardised, as new tensors (the reference formula; training folds it into batches)."""
    padding = split.padding_mask()
    out = {}
    for m, x in split.features.items():
        mean, std = scaler[m]
        # ((x - mean) / std) * padding, in one new tensor
        out[m] = (x - mean.to(x.device)).div_(std.to(x.device)).mul_(padding[m].to(x.dtype).unsqueeze(-1))
    return out
