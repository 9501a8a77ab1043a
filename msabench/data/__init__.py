"""Datasets: the in-memory representation, file loaders and the built-in synthetic sets."""
from msabench.data.base import (
    MODALITIES,
    DataError,
    DatasetSource,
    MultimodalDataset,
    Split,
    Task,
)

__all__ = ["MODALITIES", "DataError", "DatasetSource", "MultimodalDataset", "Split", "Task"]
