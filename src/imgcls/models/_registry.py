"""The model registry: a decorator, a dict, `create_model` and `list_models`."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from imgcls.errors import UserError


@dataclass(frozen=True)
class ModelEntry:
    """What the registry knows about one model besides how to build it."""

    name: str
    fn: Callable[..., nn.Module]
    input_size: tuple[int, int, int] = (3, 224, 224)  # native (C, H, W)
    paper: str = ""  # short citation, e.g. "He et al. 2015 (arXiv:1512.03385)"
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    tags: tuple[str, ...] = field(default=())

    @property
    def default_num_classes(self) -> int:
        """The classes of the model's native dataset: 10 for CIFAR/MNIST-size inputs (32×32 or smaller), else
        ImageNet's 1000 (what `imgcls summary` and the model table count with)."""
        return 10 if max(self.input_size[1:]) <= 32 else 1000


_MODELS: dict[str, ModelEntry] = {}


def register_model(fn: Callable[..., nn.Module] | None = None, **info):
    """Register an entry point under its function name; usable bare or with ModelEntry fields.

    ``@register_model`` or ``@register_model(input_size=(3, 32, 32), paper="...")``.
    A duplicate name is an error.
    """

    def wrap(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = f.__name__
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = ModelEntry(name=name, fn=f, **info)
        return f

    return wrap(fn) if fn is not None else wrap


def model_entry(name: str) -> ModelEntry:
    """The registry entry of `name`; unknown names are a UserError with close matches suggested."""
    try:
        return _MODELS[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, _MODELS, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else " (see `imgcls models`)"
        raise UserError(f"unknown model: {name}{hint}") from None


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching the fnmatch `pattern`, sorted."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def create_model(name: str, num_classes: int = 1000, in_chans: int = 3, weights=None, **kw) -> nn.Module:
    """Build a registered model.

    Args:
        name: registered name, e.g. ``"resnet50"``.
        num_classes: size of the classifier output.
        in_chans: number of input channels.
        weights: ``None``, a path to a state dict (ours, torchvision's or timm's format), or ``"torchvision"`` /
            ``"timm"`` to fetch the published file into the user cache. A checkpoint with a different number of
            classes keeps its backbone and gets a new classifier.
        **kw: family-specific options (dropout rate, pooling, auxiliary heads...).
    """
    entry = model_entry(name)
    model = entry.fn(num_classes=num_classes, in_chans=in_chans, **kw)
    model.model_name = name
    if weights is not None:
        from imgcls.models.weights import load_weights

        load_weights(model, name, weights)
    return model
