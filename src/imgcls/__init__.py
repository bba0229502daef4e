"""imgcls: image classification on PyTorch — the classic CNN families, a fast data pipeline, training,
evaluation and inference you can ship."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from imgcls.models import create_model, list_models, profile

__version__ = "0.1.0"
__all__ = ["__version__", "create_model", "list_models", "profile"]


def __getattr__(name: str):
    # Imported on first use (PEP 562): importing PyTorch is most of a command's start-up, and `imgcls predict`
    # can answer without it (imgcls.inference.fastpath).
    if name in ("create_model", "list_models", "profile"):
        return getattr(importlib.import_module("imgcls.models"), name)
    raise AttributeError(f"module 'imgcls' has no attribute {name!r}")
