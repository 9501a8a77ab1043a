"""msabench: the benchmark for multimodal sentiment analysis with missing modalities."""
from __future__ import annotations

try:
    from importlib.metadata import version as _version

    __version__ = _version("msabench")
except Exception:  # not installed (running from a source tree)
    __version__ = "0.1.0"
