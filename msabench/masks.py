"""Masks: per modality a bool (N, T) tensor, True where a frame is present.

Applying a mask is one vectorised function shared by every method: dropped feature frames become zero vectors;
for BERT token ids, dropped tokens become [UNK] (id 100) while [CLS] and [SEP] stay (the MMSA convention).
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import torch

from msabench.data.base import Split

Mask = dict[str, torch.Tensor]

BERT_UNK_ID = 100
BERT_CLS_ID = 101
BERT_SEP_ID = 102


def derive_rng(*parts: object) -> np.random.Generator:
    """A numpy generator seeded by a sha256 of ``parts``: the same parts give the same stream anywhere."""
    digest = hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).digest()
    return np.random.default_rng(np.frombuffer(digest, dtype=np.uint32))


def derive_seed(*parts: object) -> int:
    """A 63-bit integer seed derived from ``parts`` (for torch generators)."""
    digest = hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def full_mask(split: Split) -> Mask:
    """Every existing frame present (padding stays absent)."""
    return split.padding_mask()


def restrict_to_padding(split: Split, keep: dict[str, np.ndarray | torch.Tensor]) -> Mask:
    """Combine a drawn keep-pattern with the padding mask, so padding is never 'present'."""
    padding = split.padding_mask()
    return {m: padding[m] & torch.as_tensor(np.asarray(keep[m]), dtype=torch.bool, device=padding[m].device)
            for m in padding}


def apply_mask(features: dict[str, torch.Tensor], mask: Mask,
               out: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Zero the dropped frames (and padding) of each modality; new tensors, or written into ``out`` (which may
    be ``features`` itself, for masking in place)."""
    return {m: torch.mul(x, mask[m].to(device=x.device, dtype=x.dtype).unsqueeze(-1),
                         out=None if out is None else out[m])
            for m, x in features.items()}


def apply_mask_bert(text_bert: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
    """Replace dropped BERT tokens with [UNK] (100); [CLS], [SEP] and padding are kept as they are.

    ``text_bert`` is (N, 3, L): ids, attention mask, segment ids; ``text_mask`` is (N, L), True = present.
    """
    ids = text_bert[:, 0]
    special = (ids == BERT_CLS_ID) | (ids == BERT_SEP_ID) | (text_bert[:, 1] == 0)
    dropped = ~text_mask.to(ids.device) & ~special
    out = text_bert.clone()
    out[:, 0] = torch.where(dropped, torch.full_like(ids, BERT_UNK_ID), ids)
    return out


def mask_hash(mask: Mask) -> str:
    """A short content hash of a mask (modality names, shapes and bits)."""
    h = hashlib.sha256()
    for m in sorted(mask):
        bits = mask[m].detach().to("cpu", torch.bool).numpy()
        h.update(m.encode())
        h.update(np.asarray(bits.shape, dtype=np.int64).tobytes())
        h.update(np.packbits(bits, axis=None).tobytes())
    return h.hexdigest()[:12]


def mask_to(mask: Mask, device: torch.device | str) -> Mask:
    return {m: x.to(device) for m, x in mask.items()}


def mask_subset(mask: Mask, index: torch.Tensor) -> Mask:
    return {m: x[index] for m, x in mask.items()}


def drop_statistics(split: Split, mask: Mask) -> dict[str, float]:
    """Share of existing frames dropped per modality and share of samples missing a whole modality."""
    padding = split.padding_mask()
    stats: dict[str, float] = {}
    for m in sorted(mask):
        exists = padding[m]
        present = mask[m].to(exists.device) & exists
        n_exist = int(exists.sum())
        stats[f"dropped_{m}"] = 1.0 - int(present.sum()) / n_exist if n_exist else 0.0
        had_frames = exists.any(dim=1)
        whole_missing = had_frames & ~present.any(dim=1)
        stats[f"whole_missing_{m}"] = float(whole_missing.float().mean()) if len(split) else 0.0
    return stats
