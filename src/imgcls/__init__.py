"""imgcls: image classification on PyTorch — the classic CNN families, a fast data pipeline, training,
evaluation and inference you can ship."""

from imgcls.models import create_model, list_models, profile

__version__ = "0.1.0"
__all__ = ["__version__", "create_model", "list_models", "profile"]
