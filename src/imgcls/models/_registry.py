"""The model registry: a decorator, a dict, `create_model`, `list_models` and `check_model_args`."""

from __future__ import annotations

import fnmatch
import inspect
import re
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from imgcls.constants import DEFAULT_CROP_PCT, IMAGENET_MEAN, IMAGENET_STD
from imgcls.errors import UserError


class _MetaInitSkipped(TorchFunctionMode):
    """Initialisers called on meta tensors (``torch.nn.init``'s, and the tensor methods they use) return at once.
    A meta tensor holds no values, so nothing is lost; without this, PyTorch runs its Python reference of
    ``normal_`` on the meta device, and its first use imports torch._dynamo (about 2 s on a 2-core CPU) in every
    command that checks or loads a model."""

    METHODS = frozenset({torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.random_})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        first = args[0] if args else (kwargs or {}).get("tensor")  # torch.nn.init passes it by keyword
        initialiser = func in self.METHODS or getattr(func, "__module__", None) == "torch.nn.init"
        if initialiser and isinstance(first, torch.Tensor) and first.is_meta:
            return first
        return func(*args, **(kwargs or {}))


@contextmanager
def on_meta():
    """Build modules on the meta device (shapes only: no memory, no initialisation arithmetic)."""
    with torch.device("meta"), _MetaInitSkipped():
        yield


@dataclass(frozen=True)
class ModelEntry:
    """What the registry knows about one model besides how to build it."""

    name: str
    fn: Callable[..., nn.Module]
    input_size: tuple[int, int, int] = (3, 224, 224)  # native (C, H, W); C is create_model's default in_chans
    paper: str = ""  # short citation, e.g. "He et al. 2015 (arXiv:1512.03385)"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    tags: tuple[str, ...] = field(default=())
    # Share of the resized image the evaluation center crop keeps (timm's `crop_pct`): resize the shorter side to
    # size / crop_pct, crop size. Set at registration, when not given: the eval crop of the model's first listed
    # published file (224 of 232 for torchvision's newer recipes), else 0.875 (224 of 256), and 1.0 (no crop) at
    # 32×32 or smaller, where the images are the input size already.
    crop_pct: float = DEFAULT_CROP_PCT
    # The layer Grad-CAM explains (`imgcls.models.saliency`): the last convolutional stage, as a dotted module
    # path from the model ("layer4", "features.relu5"; a negative number counts from the end of a Sequential).
    # None: explanation maps do not apply (the test over every registered model fails for a CNN without one).
    cam_layer: str | None = None

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
        fields = dict(info)
        if "crop_pct" not in fields:
            fields["crop_pct"] = _default_crop_pct(name, fields.get("input_size", (3, 224, 224)))
        _MODELS[name] = ModelEntry(name=name, fn=f, **fields)
        return f

    return wrap(fn) if fn is not None else wrap


def _default_crop_pct(name: str, input_size: tuple[int, int, int]) -> float:
    from imgcls.models.published import default_crop_pct

    if max(input_size[1:]) <= 32:
        return 1.0
    published = default_crop_pct(name)
    return DEFAULT_CROP_PCT if published is None else published


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


def create_model(name: str, num_classes: int = 1000, in_chans: int | None = None, weights=None, **kw) -> nn.Module:
    """Build a registered model.

    Args:
        name: registered name, e.g. ``"resnet50"``.
        num_classes: size of the classifier output.
        in_chans: number of input channels; ``None`` takes the model's native channels from the registry
            (1 for ``lenet5``, 3 for the rest).
        weights: ``None``, a path to a state dict (ours, torchvision's or timm's format), or ``"torchvision"`` /
            ``"timm"`` to fetch the published file into the user cache. A checkpoint with a different number of
            classes keeps its backbone and gets a new classifier.
        **kw: family-specific options (dropout rate, pooling, auxiliary heads...); one the family does not
            have is a UserError that lists the ones it has.
    """
    entry = model_entry(name)
    in_chans = entry.input_size[0] if in_chans is None else in_chans
    try:
        model = entry.fn(num_classes=num_classes, in_chans=in_chans, **kw)
    except TypeError as exc:
        bad = _misused_option(exc, kw)
        if bad is None:
            raise
        raise UserError(_option_message(entry, bad, str(exc))) from None
    model.model_name = name
    if weights is not None:
        from imgcls.models.weights import load_weights

        load_weights(model, name, weights)
    return model


def model_options(name: str) -> dict[str, object]:
    """The family options of `name` (keyword arguments ``create_model`` accepts besides num_classes and in_chans)
    with their defaults, read from the model class's signature."""
    entry = model_entry(name)
    with on_meta():  # no memory, no initialisation: only the class is wanted
        model = entry.fn(num_classes=entry.default_num_classes, in_chans=entry.input_size[0])
    fixed = {"self", "num_classes", "in_chans"}
    return {
        p.name: p.default
        for p in inspect.signature(type(model).__init__).parameters.values()
        if p.name not in fixed and p.default is not inspect.Parameter.empty
    }


def _misused_option(exc: TypeError, kw: dict) -> str | None:
    """The keyword of `kw` that a TypeError from a model constructor complains about, else None (our own bug)."""
    found = re.search(r"(?:unexpected keyword argument|multiple values for (?:keyword )?argument) '(\w+)'", str(exc))
    return found.group(1) if found and found.group(1) in kw else None


def _option_message(entry: ModelEntry, key: str, reason: str) -> str:
    if "multiple values" in reason:
        return f"model option {key} cannot be set for {entry.name}: its name fixes it"
    options = ", ".join(model_options(entry.name)) or "none"
    return f"{entry.name} has no option {key} (its options: {options})"


def check_model_args(
    name: str,
    *,
    num_classes: int | None = None,
    in_chans: int | None = None,
    image_size: int | tuple[int, int] | None = None,
    training: bool = True,
    **kwargs,
) -> None:
    """Check, before anything is written or allocated, that ``create_model(name, ...)`` builds and that the
    network takes `image_size`; raise a one-line UserError otherwise.

    The model is built and run on the meta device (shapes only: no memory, no arithmetic), so this costs a
    fraction of a second even for the largest models (plus, once per process, torch's import of sympy for its
    meta shape checks). The smallest size the network takes is searched for only
    when the given one fails, to say it in the message.

    Args:
        name: registered model name.
        num_classes: classifier outputs (default: the model's native dataset's).
        in_chans: input channels (default: the registry's native channels).
        image_size: side, or ``(height, width)``, of the training and evaluation input (default: native).
        training: check the training-mode forward pass too, which runs the auxiliary heads (GoogLeNet's and
            Inception v3's need larger inputs than the test-time network); False: the eval-mode pass only.
        **kwargs: family options, as for ``create_model``.
    """
    entry = model_entry(name)
    num_classes = entry.default_num_classes if num_classes is None else num_classes
    in_chans = entry.input_size[0] if in_chans is None else in_chans
    for label, value, least in (("num_classes", num_classes, 0), ("in_chans", in_chans, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise UserError(f"{label} of {name} must be an integer >= {least}: {value!r}")
    size = _pair(entry.input_size[1:] if image_size is None else image_size, name)
    try:
        with on_meta():
            model = create_model(name, num_classes=num_classes, in_chans=in_chans, **kwargs)
    except (TypeError, ValueError) as exc:  # an option of the wrong type or out of range
        shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise UserError(f"{name}: invalid model options {shown}: {_first_line(exc)}") from None
    from imgcls.models.profile import norms_skipped

    try:
        with norms_skipped(model.train(training)):
            if _takes(model, in_chans, size):
                return
            smallest = _smallest_side(model, in_chans, min(size), max(*entry.input_size[1:], *size))
    except (TypeError, ValueError) as exc:  # an option the constructor stored and the forward pass rejects
        shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise UserError(f"{name}: invalid model options {shown}: {_first_line(exc)}") from None
    shown = "×".join(map(str, size)) if size[0] != size[1] else str(size[0])
    least = f"at least {smallest}×{smallest} pixels" if smallest else "a larger input"
    raise UserError(f"image size {shown} is too small for {name}: it needs {least}")


def _pair(size, name: str) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in pair):
        raise UserError(f"image size of {name} must be a positive integer or (height, width): {size!r}")
    return pair


def _takes(model: nn.Module, in_chans: int, size: tuple[int, int]) -> bool:
    """Whether `model` (on the meta device) runs on a batch of two ``(in_chans, *size)`` inputs."""
    try:
        with torch.no_grad():
            model(torch.empty(2, in_chans, *size, device="meta"))
    except NotImplementedError:  # an operator without a meta kernel (stochastic pooling's sampling): cannot judge
        return True
    except RuntimeError:  # a map shrank below a kernel ("Output size is too small", "Kernel size can't be...")
        return False
    return True


def _smallest_side(model: nn.Module, in_chans: int, failed: int, largest: int) -> int | None:
    """The smallest square side the model takes, between `failed` (too small) and `largest`; bisection."""
    low, high = failed, max(largest, failed + 1)
    if not _takes(model, in_chans, (high, high)):
        return None
    while high - low > 1:
        mid = (low + high) // 2
        if _takes(model, in_chans, (mid, mid)):
            high = mid
        else:
            low = mid
    return high


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
