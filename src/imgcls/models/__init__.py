"""The model zoo. Every family module registers its models when `imgcls.models` is imported."""

from imgcls.models import _families  # noqa: F401  (registers every family)
from imgcls.models._base import Classifier
from imgcls.models._registry import (
    ModelEntry,
    check_model_args,
    create_model,
    list_models,
    model_entry,
    model_options,
    on_meta,
    register_model,
)
from imgcls.models.profile import profile

__all__ = [
    "Classifier",
    "ModelEntry",
    "check_model_args",
    "create_model",
    "list_models",
    "model_entry",
    "model_options",
    "on_meta",
    "profile",
    "register_model",
]
