"""Load weights into a zoo model: our own files, torchvision's and timm's published state dicts.

``create_model(name, weights=...)`` calls :func:`load_weights`. ``weights`` is either

* a path to a state dict: ``.safetensors`` (ours, or timm's hub files) or a pickled ``.pt``/``.pth``/``.bin``
  (read with ``torch.load(weights_only=True)`` only, never arbitrary pickles). The format is detected from the
  file's first bytes and its keys, not from its extension; or
* ``"torchvision"`` / ``"timm"`` (optionally ``"torchvision:v1"``) for that library's published file of the
  architecture, found on disk or downloaded, hash checked (:mod:`imgcls.models.published`).

Key mapping, applied only where the file needs it:

* a wrapper dict (``{"state_dict": ...}``, ``{"model": ...}``, ``{"model_state_dict": ...}``, ``{"module": ...}``);
* prefixes added by ``DistributedDataParallel`` (``module.``) and ``torch.compile`` (``_orig_mod.``);
* DenseNet's old key style in torchvision's published files (``denselayer1.norm.1.weight`` for
  ``denselayer1.norm1.weight``; the files predate the rename and torchvision remaps them on load);
* a 1×1-convolution classifier (timm's DPN) into a linear one of the same size, and back.

Our models use torchvision's key names for VGG, ResNet, ResNeXt, DenseNet, Inception v3 and timm's for
Inception-v4, Inception-ResNet-v2 and DPN-92 (ARCHITECTURE.md), so published files of those load as they are.

A checkpoint whose classifier has another number of classes than the model (fine-tuning an ImageNet model on
10 classes) loads its backbone and leaves the model's new classifier, with one line on the ``imgcls`` logger.
Anything else that does not fit is a :class:`~imgcls.errors.UserError` that names the file, the first missing and
unexpected keys and the shape mismatches.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from imgcls.errors import UserError
from imgcls.models.published import PUBLISHED, fetch_published
from imgcls.run_folder import check_weights_file

log = logging.getLogger("imgcls")


@dataclass
class LoadReport:
    """What :func:`load_weights` did: the file it read and the mappings it applied."""

    path: Path
    file_format: str  # "safetensors" or "pickle"
    mappings: list[str] = field(default_factory=list)
    new_classifier: bool = False


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str]:
    """Read a state dict from a safetensors or pickle file, unwrapping a training checkpoint's dict.

    Returns:
        ``(state_dict, file_format)`` with ``file_format`` ``"safetensors"`` or ``"pickle"``.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    check_weights_file(path)  # a run folder's weights only with the SHA-256 its record holds
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: 8-byte little-endian header length, then a JSON object.
    is_safetensors = len(head) == 9 and head[8:9] == b"{"
    try:
        if is_safetensors:
            from safetensors.torch import load_file

            return dict(load_file(str(path), device="cpu")), "safetensors"
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch and safetensors raise many types for a damaged or foreign file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not a readable safetensors or PyTorch weights file ({first[:200]})") from None
    state = _unwrap(obj)
    if state is None:
        raise UserError(f"{path}: holds no state dict (expected tensors by key, or a 'state_dict'/'model' entry)")
    return state, "pickle"


def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap(obj) -> dict[str, torch.Tensor] | None:
    if _is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict", "module", "state_dict_ema"):
            if _is_state_dict(obj.get(key)):
                return dict(obj[key])
    return None


# torchvision's published DenseNet files: "denselayer1.norm.1.weight" for today's "denselayer1.norm1.weight".
_DENSENET_OLD = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def map_keys(state: dict[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> tuple[dict, list[str]]:
    """Rename the keys of `state` to the key style of `target` (a model's state dict) where needed.

    Returns:
        ``(mapped_state, applied)`` where ``applied`` names each mapping used.
    """
    applied = []
    for prefix in ("module.", "_orig_mod.", "model."):
        if all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in target):
            state = {k[len(prefix) :]: v for k, v in state.items()}
            applied.append(f"strip '{prefix}'")
    if any(_DENSENET_OLD.match(k) for k in state) and not any(_DENSENET_OLD.match(k) for k in target):
        state = {_DENSENET_OLD.sub(r"\1\2", k): v for k, v in state.items()}
        applied.append("densenet old-style keys (norm.1 -> norm1)")
    reshaped = False
    for k, v in list(state.items()):
        want = target.get(k)
        if want is None or want.shape == v.shape or want.numel() != v.numel():
            continue
        # A classifier stored as a 1×1 convolution (timm's DPN) versus a linear layer, or the other way round.
        if (v.dim() == 4 and want.dim() == 2 and v.shape[2:] == (1, 1)) or (v.dim() == 2 and want.dim() == 4):
            state[k] = v.reshape(want.shape)
            reshaped = True
    if reshaped:
        applied.append("1x1 convolution <-> linear classifier")
    return state, applied


def _classifier_prefixes(model: nn.Module) -> list[str]:
    """Key prefixes of the classifier modules: ``get_classifier()`` and any auxiliary heads' last layers."""
    prefixes = []
    get = getattr(model, "get_classifier", None)
    head = None
    if callable(get):
        try:
            head = get()
        except NotImplementedError:
            head = None
    for name, module in model.named_modules():
        if module is head and name:
            prefixes.append(name + ".")
    return prefixes


def _drop_classifier(state: dict, target: Mapping, model: nn.Module) -> tuple[dict, int | None, set[str]]:
    """Remove classifier entries whose class count differs from the model's.

    Returns:
        ``(state, checkpoint_classes, dropped_keys)``; ``checkpoint_classes`` is ``None`` when nothing was dropped.
    """
    num_classes = getattr(model, "num_classes", None)
    prefixes = _classifier_prefixes(model)
    # The class count is the output size of the head's last weight (VGG's head is a Sequential of three layers).
    head_weights = [v for k, v in state.items() if any(k.startswith(p) for p in prefixes) and k.endswith("weight")]
    ckpt_classes = int(head_weights[-1].shape[0]) if head_weights and head_weights[-1].dim() >= 1 else None
    if num_classes is None or ckpt_classes is None or ckpt_classes == num_classes:
        return state, None, set()
    if num_classes == 0:  # a feature extractor: the model has no classifier, the file's entries are surplus
        dropped = {k for k in state if k not in target and any(k.startswith(p) for p in prefixes)}
    else:
        # Every entry sized by the checkpoint's class count where the model has its own count: the classifier
        # and the auxiliary ones (Inception v3's AuxLogits.fc).
        dropped = {
            k
            for k, v in state.items()
            if k in target
            and v.dim() >= 1
            and target[k].dim() == v.dim()
            and v.shape[0] == ckpt_classes
            and target[k].shape[0] == num_classes
            and v.shape[1:] == target[k].shape[1:]
        }
    if not dropped:
        return state, None, set()
    return {k: v for k, v in state.items() if k not in dropped}, ckpt_classes, dropped


def _first_conv_in_chans(state: dict, target: Mapping, applied: list[str]) -> dict:
    """Adapt an RGB first convolution to a model built with another ``in_chans`` (grey scale, RGB-D...)."""
    for k, want in target.items():
        if want.dim() != 4:
            continue
        v = state.get(k)
        if v is not None and v.dim() == 4 and v.shape[1] == 3 and want.shape[1] != 3 and v.shape[0] == want.shape[0]:
            c = want.shape[1]
            # Sum over RGB for one channel; otherwise tile and rescale so the response to a uniform input holds.
            if c == 1:
                state[k] = v.sum(dim=1, keepdim=True)
            else:
                state[k] = v.repeat(1, (c + 2) // 3, 1, 1)[:, :c] * (3.0 / c)
            applied.append(f"first convolution {k}: 3 -> {c} input channels")
        break  # only the first convolution takes the image
    return state


def load_state_dict_into(model: nn.Module, state: dict[str, torch.Tensor], source: str = "weights") -> LoadReport:
    """Map `state` onto `model` and load it; see the module docstring for what is mapped.

    Args:
        model: the model to fill, in place.
        state: a state dict in our, torchvision's or timm's key format.
        source: how to name the file in messages.
    """
    target = model.state_dict()
    state, applied = map_keys(dict(state), target)
    state, ckpt_classes, dropped = _drop_classifier(state, target, model)
    if ckpt_classes is not None:
        log.info(
            "%s: checkpoint classifier has %d classes, model has %d: backbone loaded, classifier newly initialised",
            source,
            ckpt_classes,
            getattr(model, "num_classes", 0),
        )
    state = _first_conv_in_chans(state, target, applied)
    # Old checkpoints lack BatchNorm's num_batches_tracked; it does not change the outputs, so keep the model's.
    missing = [k for k in target if k not in state and k not in dropped and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in target and not k.endswith("num_batches_tracked")]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}"
        for k in state
        if k in target and state[k].shape != target[k].shape
    ]
    if missing or unexpected or mismatched:
        name = getattr(model, "model_name", type(model).__name__)
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if items:
                more = f" and {len(items) - 3} more" if len(items) > 3 else ""
                parts.append(f"{label} {len(items)}: {', '.join(items[:3])}{more}")
        raise UserError(f"{source}: does not fit {name} ({'; '.join(parts)})")
    merged = {k: state.get(k, v).to(dtype=v.dtype) for k, v in target.items()}
    on_meta = any(v.is_meta for v in target.values())
    if on_meta:
        # A model built under `torch.device("meta")` (no memory, no initialisation) takes the file's tensors as
        # they are; only what the file may omit (BatchNorm's step counters) is made here.
        left = [k for k, v in merged.items() if v.is_meta and not k.endswith("num_batches_tracked")]
        if left:
            raise ValueError(f"a model on the meta device needs every tensor from the file; not in it: {left[:3]}")
        merged = {k: torch.zeros((), dtype=torch.long) if v.is_meta else v for k, v in merged.items()}
    with torch.no_grad():
        model.load_state_dict(merged, strict=True, assign=on_meta)
    return LoadReport(Path(source), "", applied, ckpt_classes is not None)


def stored_in_chans(name: str, path: str | os.PathLike) -> int | None:
    """Input channels of the first convolution that weights file `path` holds for architecture `name`.

    A file made for a grey-scale LeNet-5 holds a ``(6, 1, 5, 5)`` first filter; one made on RGB CIFAR-10 a
    ``(6, 3, 5, 5)`` one. ``None`` when the file has no such entry under the architecture's key (after the
    key mapping of :func:`map_keys`).
    """
    from imgcls.models._registry import create_model, on_meta

    with on_meta():  # the key and rank of the first convolution only; nothing allocated
        target = create_model(name).state_dict()
    first = next((k for k, v in target.items() if v.dim() == 4), None)
    state, _ = map_keys(read_state_dict(path)[0], target)
    value = state.get(first) if first is not None else None
    return int(value.shape[1]) if value is not None and value.dim() == 4 else None


def load_weights(model: nn.Module, name: str, weights: str | os.PathLike, base_url: str | None = None) -> LoadReport:
    """Fill `model` (built by ``create_model(name, ...)``) with `weights`, in place.

    Args:
        model: the freshly built model.
        name: its registry name (selects the published file).
        weights: a path, or ``"torchvision"``, ``"torchvision:v1"``, ``"timm"`` for the published file.
        base_url: for published files, replaces the source's base URL (else ``$IMGCLS_WEIGHTS_URL``).

    Returns:
        A :class:`LoadReport` of the file read and the key mappings applied.
    """
    weights_str = os.fspath(weights)
    if weights_str.partition(":")[0] in PUBLISHED and not Path(weights_str).exists():
        path = fetch_published(name, weights_str, base_url=base_url)
    else:
        path = Path(weights_str).expanduser()
    state, file_format = read_state_dict(path)
    report = load_state_dict_into(model, state, source=str(path))
    report.path, report.file_format = path, file_format
    if report.mappings:
        log.debug("%s: applied %s", path, ", ".join(report.mappings))
    return report


__all__ = [
    "LoadReport",
    "load_state_dict_into",
    "load_weights",
    "map_keys",
    "read_state_dict",
    "stored_in_chans",
]
