"""Load weights into a zoo model: our own files, torchvision's and timm's published state dicts.

``create_model(name, weights=...)`` calls :func:`load_weights`. ``weights`` is either

* a path to a state dict: ``.safetensors`` (ours, or timm's hub files) or a pickled ``.pt``/``.pth``/``.bin``
  (read with ``torch.load(weights_only=True)`` only, never arbitrary pickles). The format is detected from the
  file's first bytes and its keys, not from its extension; or
* ``"torchvision"`` / ``"timm"`` (optionally ``"torchvision:v1"``) to fetch that library's published file for the
  architecture into the user cache (``$IMGCLS_CACHE`` or ``~/.cache/imgcls/weights``), hash checked.

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

import hashlib
import http.client
import logging
import os
import re
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from imgcls.errors import UserError
from imgcls.run_folder import check_weights_file

log = logging.getLogger("imgcls")

TORCHVISION_URL = "https://download.pytorch.org/models/"
TIMM_URL = "https://huggingface.co/timm/"
CACHE_ENV = "IMGCLS_CACHE"
URL_ENV = "IMGCLS_WEIGHTS_URL"  # replaces the base URL of every source (a mirror, or a local server in tests)


@dataclass(frozen=True)
class PublishedFile:
    """One published weights file.

    Attributes:
        path: location relative to its source's base URL.
        cache_name: file name in the local cache (unique across sources).
        sha256: the full published SHA-256, or its first hex digits (torchvision's file names carry the first 8
            or so; they are what torchvision itself checks), or ``""`` when nothing is published (see
            :func:`fetch_published` for what is checked then).
    """

    path: str
    cache_name: str
    sha256: str


def _tv(file: str) -> PublishedFile:
    # torchvision names its files <arch>-<first hex digits of the SHA-256>.pth
    prefix = re.search(r"-([0-9a-f]{6,})\.", file)
    return PublishedFile(file, f"torchvision-{file}", prefix.group(1) if prefix else "")


def _timm(hub_id: str, sha256: str) -> PublishedFile:
    return PublishedFile(f"{hub_id}/resolve/main/model.safetensors", f"timm-{hub_id}.safetensors", sha256)


# torchvision's DEFAULT weights per architecture ("v1": its IMAGENET1K_V1 where a newer recipe replaced them);
# timm's default pretrained tag. SHA-256 of the timm files as published with the files on the Hugging Face hub.
PUBLISHED: dict[str, dict[str, PublishedFile]] = {
    "torchvision": {
        "vgg11": _tv("vgg11-8a719046.pth"),
        "vgg11_bn": _tv("vgg11_bn-6002323d.pth"),
        "vgg13": _tv("vgg13-19584684.pth"),
        "vgg13_bn": _tv("vgg13_bn-abd245e5.pth"),
        "vgg16": _tv("vgg16-397923af.pth"),
        "vgg16_bn": _tv("vgg16_bn-6c64b313.pth"),
        "vgg19": _tv("vgg19-dcbb9e9d.pth"),
        "vgg19_bn": _tv("vgg19_bn-c79401a0.pth"),
        "resnet18": _tv("resnet18-f37072fd.pth"),
        "resnet34": _tv("resnet34-b627a593.pth"),
        "resnet50": _tv("resnet50-11ad3fa6.pth"),
        "resnet50:v1": _tv("resnet50-0676ba61.pth"),
        "resnet101": _tv("resnet101-cd907fc2.pth"),
        "resnet101:v1": _tv("resnet101-63fe2227.pth"),
        "resnet152": _tv("resnet152-f82ba261.pth"),
        "resnet152:v1": _tv("resnet152-394f9c45.pth"),
        "resnext50_32x4d": _tv("resnext50_32x4d-1a0047aa.pth"),
        "resnext50_32x4d:v1": _tv("resnext50_32x4d-7cdf4587.pth"),
        "resnext101_32x8d": _tv("resnext101_32x8d-110c445d.pth"),
        "resnext101_32x8d:v1": _tv("resnext101_32x8d-8ba56ff5.pth"),
        "densenet121": _tv("densenet121-a639ec97.pth"),
        "densenet169": _tv("densenet169-b2777c0a.pth"),
        "densenet201": _tv("densenet201-c1103571.pth"),
        # Google's weights expect inputs scaled to [-1, 1] (mean = std = 0.5).
        "inception_v3": _tv("inception_v3_google-0cc3c7bd.pth"),
    },
    "timm": {
        "inception_v4": _timm(
            "inception_v4.tf_in1k", "a756a086851c8d5a8de135ec15c76b90ea56cb5aef450e3299107e659e725bb1"
        ),
        "inception_resnet_v2": _timm(
            "inception_resnet_v2.tf_in1k", "dbea26b13a5fc8351919fed6a94222c0577ce324b2765fd081a798f837ca9d72"
        ),
        "dpn92": _timm("dpn92.mx_in1k", ""),
    },
}
_BASE_URLS = {"torchvision": TORCHVISION_URL, "timm": TIMM_URL}


@dataclass
class LoadReport:
    """What :func:`load_weights` did: the file it read and the mappings it applied."""

    path: Path
    file_format: str  # "safetensors" or "pickle"
    mappings: list[str] = field(default_factory=list)
    new_classifier: bool = False


def cache_dir() -> Path:
    """``$IMGCLS_CACHE`` or ``~/.cache/imgcls/weights``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "imgcls" / "weights")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def published_file(name: str, source: str) -> PublishedFile:
    """The published file of architecture `name` from `source` (``"torchvision"``, ``"torchvision:v1"``, ``"timm"``)."""
    library, _, tag = source.partition(":")
    table = PUBLISHED.get(library)
    if table is None:
        raise UserError(f"unknown weights source: {source} (use a file path, 'torchvision' or 'timm')")
    key = f"{name}:{tag}" if tag else name
    if key not in table:
        have = sorted({k.split(":")[0] for k in table})
        raise UserError(f"{library} publishes no weights for {key} (it has: {', '.join(have)})")
    return table[key]


def fetch_published(
    name: str, source: str, base_url: str | None = None, cache: str | os.PathLike | None = None, timeout: float = 60.0
) -> Path:
    """Download the published weights of `name` into the cache (once) and return the local path.

    The transfer goes to a temporary file in the cache folder, which is renamed to its final name only after its
    SHA-256 matches the published one, so an interrupted or corrupted download never sits in the cache. A cached
    file is trusted (it was checked when it arrived). For timm's DPN-92 no SHA-256 is published with the file that
    we could pin; there the hash is recorded next to the file on first download (``.sha256``) and the file must
    still parse as a state dict whose keys fit the model.

    Args:
        name: architecture, e.g. ``"resnet50"``.
        source: ``"torchvision"``, ``"torchvision:v1"`` or ``"timm"``.
        base_url: replaces the source's base URL (else ``$IMGCLS_WEIGHTS_URL``, else the library's own).
        cache: cache folder (else :func:`cache_dir`).
        timeout: seconds without data before the transfer is abandoned.
    """
    entry = published_file(name, source)
    folder = Path(cache) if cache is not None else cache_dir()
    target = folder / entry.cache_name
    if target.is_file():
        return target
    base = base_url or os.environ.get(URL_ENV) or _BASE_URLS[source.partition(":")[0]]
    url = base.rstrip("/") + "/" + entry.path
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create weights cache {folder}: {exc.strerror} (set ${CACHE_ENV})") from None
    fd, tmp_name = tempfile.mkstemp(prefix=entry.cache_name + ".", suffix=".part", dir=folder)
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, os.fdopen(fd, "wb") as out:
                expected_size = response.headers.get("Content-Length")
                size = 0
                while block := response.read(1 << 20):
                    out.write(block)
                    h.update(block)
                    size += len(block)
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise UserError(f"download of {url} failed: {reason}") from None
        if expected_size is not None and size != int(expected_size):
            raise UserError(f"download of {url} interrupted: got {size} of {expected_size} bytes")
        digest = h.hexdigest()
        if entry.sha256 and not digest.startswith(entry.sha256):
            raise UserError(
                f"{entry.cache_name}: SHA-256 {digest} does not match the published {entry.sha256}; file refused"
            )
        if not entry.sha256:
            (folder / (entry.cache_name + ".sha256")).write_text(digest + "\n")
        os.replace(tmp, target)
        log.info("downloaded %s to %s", url, target)
        return target
    finally:
        tmp.unlink(missing_ok=True)


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
    from imgcls.models._registry import create_model

    with torch.device("meta"):  # the key and rank of the first convolution only; nothing allocated
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
    "PUBLISHED",
    "LoadReport",
    "PublishedFile",
    "cache_dir",
    "fetch_published",
    "load_state_dict_into",
    "load_weights",
    "map_keys",
    "published_file",
    "read_state_dict",
    "stored_in_chans",
]
