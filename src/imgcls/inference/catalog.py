"""The inference engines' names and precisions, and the folder where their built files and choices are kept.

Kept apart from `imgcls.inference.engines` (which builds and measures the engines, and imports PyTorch) so that
the command line and predict's PyTorch-free path (`imgcls.inference.fastpath`) can use them without it.
"""

from __future__ import annotations

import os
from pathlib import Path

ENGINES = ("eager", "graph", "eager-bf16", "graph-bf16", "onnx", "onnx-int8", "torch-int8")
PRECISIONS = ("auto", "fp32", "bf16", "int8")
ENGINE_PRECISION = {
    "eager": "fp32",
    "graph": "fp32",
    "eager-bf16": "bf16",
    "graph-bf16": "bf16",
    "onnx": "fp32",
    "onnx-int8": "int8",
    "torch-int8": "int8",
}
# The engines that ONNX Runtime runs: predict can answer with them without importing PyTorch.
ORT_ENGINES = ("onnx", "onnx-int8")
# The dummy batch the candidates are timed on: up to this many images (the Predictor's batch size when smaller).
MEASURE_BATCH = 8


def measure_batch(batch_size: int) -> int:
    """The batch the candidates are timed on for a Predictor of ``batch_size``."""
    return max(1, min(batch_size, MEASURE_BATCH))


def cache_dir() -> Path:
    """Where exported ONNX files, int8 models and measured choices are kept: ``$IMGCLS_INFERENCE_CACHE``, else
    ``$XDG_CACHE_HOME/imgcls/inference`` (``~/.cache/imgcls/inference``)."""
    if os.environ.get("IMGCLS_INFERENCE_CACHE"):
        return Path(os.environ["IMGCLS_INFERENCE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "imgcls" / "inference"


__all__ = ["ENGINES", "ENGINE_PRECISION", "MEASURE_BATCH", "ORT_ENGINES", "PRECISIONS", "cache_dir", "measure_batch"]
