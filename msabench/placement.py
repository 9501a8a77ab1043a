"""Where a run keeps its data: whole splits on the compute device, or on the host with batches moved one at a time.

``device`` (the default when the data fits) puts every split's raw features on the device once; ``host`` leaves them
in host memory (page-locked staging buffers on CUDA) and moves only each batch. ``auto`` picks ``host`` when the
dataset's features would take more than :data:`DEVICE_SHARE` of the device's free memory (the rest is left for the
model, activations and evaluation buffers). On a CPU, host and device are the same memory: always ``device``.
"""
from __future__ import annotations

from typing import Callable

import torch

from msabench.data.base import MultimodalDataset, Split

PLACEMENTS: tuple[str, ...] = ("auto", "device", "host")
DEVICE_SHARE = 0.6  # at most this share of the device's free memory goes to the data under ``auto``


def split_bytes(split: Split) -> int:
    """Bytes of a split's tensors that a device placement copies (features, lengths, labels, BERT ids)."""
    tensors = [*split.features.values(), *split.lengths.values(), split.labels]
    if split.text_bert is not None:
        tensors.append(split.text_bert)
    return sum(t.element_size() * t.nelement() for t in tensors)


def dataset_bytes(dataset: MultimodalDataset) -> int:
    """Bytes of every split. (The runner sizes its choice by train + valid only: fitting, tuning included, never
    touches the test split, and evaluation holds one split at a time.)"""
    return sum(split_bytes(s) for s in dataset.splits.values())


def device_free_bytes(device: torch.device) -> int | None:
    """Free memory of a CUDA device (``torch.cuda.mem_get_info``); None for devices without such a query."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return None


def choose_placement(requested: str, device: torch.device, data_bytes: int,
                     free_bytes: Callable[[torch.device], int | None] = device_free_bytes) -> str:
    """``device`` or ``host`` for ``requested`` (auto, device or host); see the module docstring."""
    if requested not in PLACEMENTS:
        raise ValueError(f"data placement {requested!r} is not one of {list(PLACEMENTS)}")
    if device.type == "cpu":
        return "device"
    if requested != "auto":
        return requested
    free = free_bytes(device)
    if free is None:
        return "device"
    return "device" if data_bytes <= DEVICE_SHARE * free else "host"
