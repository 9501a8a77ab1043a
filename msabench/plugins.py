"""The three plugin registries: methods, protocols, datasets."""
from __future__ import annotations

from msabench.data.base import DatasetSource, MultimodalDataset
from msabench.method import Method
from msabench.protocol import EvalProtocol
from msabench.registry import Registry, split_spec

METHODS: Registry[Method] = Registry("method", "msabench.methods", Method)
PROTOCOLS: Registry[EvalProtocol] = Registry("protocol", "msabench.protocols", EvalProtocol)
DATASETS: Registry[DatasetSource] = Registry("dataset", "msabench.datasets", DatasetSource)


def dataset_source(spec: str, **options: object) -> DatasetSource:
    """``synthetic-mosi`` or ``mmsa:PATH`` (or ``pkg.module:Class[:PATH]``) → a dataset source."""
    name, path = split_spec(spec, DATASETS)
    return DATASETS.get(name)(path, **options)


def load_dataset(spec: str, **options: object) -> MultimodalDataset:
    """Load a dataset by registry spec, e.g. ``load_dataset("mmsa:data/mosi.pkl", text="bert")``."""
    return dataset_source(spec, **options).load()
