"""The weights to ship: ``model.safetensors`` + ``model.json`` in a run folder.

``model.json`` says what it takes to use the weights (DESIGN.md, "The run folder"):

    name, num_classes, classes, input_size [C, H, W], mean, std, task, sha256,
    resize (shorter side before the center crop at evaluation; equal to H for no crop),
    in_chans, model_kwargs (extra create_model arguments), format_version

The SHA-256 of the weights file is checked before loading, so a swapped or damaged file is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from imgcls.errors import UserError

WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"


@dataclass
class ModelMeta:
    """Contents of model.json."""

    name: str
    num_classes: int
    classes: list[str]
    input_size: list[int]
    mean: list[float]
    std: list[float]
    task: str = "multiclass"
    resize: int | None = None
    in_chans: int = 3
    model_kwargs: dict = field(default_factory=dict)
    sha256: str = ""
    format_version: int = 1


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def save_bundle(folder: str | os.PathLike, model: nn.Module, meta: ModelMeta) -> ModelMeta:
    """Write model.safetensors and model.json (with the weights' SHA-256) into `folder`.

    Both files are written in full to temporaries first and only then renamed over the old ones, so a failure
    while writing (a full disk) leaves the previous pair, whose SHA-256 still matches, and no temporary.

    Raises:
        UserError: the file system refused the write (full disk, quota, read-only).
    """
    from imgcls.engine.checkpoint import io_failure_reason

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    weights, weights_tmp = folder / WEIGHTS_FILE, folder / (WEIGHTS_FILE + ".tmp")
    meta_path, meta_tmp = folder / META_FILE, folder / (META_FILE + ".tmp")
    try:
        save_file(state, str(weights_tmp), metadata={"name": meta.name})
        with open(weights_tmp, "rb+") as f:
            os.fsync(f.fileno())
        record = dict(asdict(meta), sha256=sha256_of(weights_tmp))
        with open(meta_tmp, "wb") as f:
            f.write((json.dumps(record, indent=2) + "\n").encode())
            f.flush()
            os.fsync(f.fileno())
        os.replace(weights_tmp, weights)
        os.replace(meta_tmp, meta_path)
    except Exception as exc:
        reason = io_failure_reason(exc)
        if reason is None:
            raise
        raise UserError(f"{weights}: cannot write the weights ({reason}); the previous ones are unchanged") from None
    finally:
        for tmp in (weights_tmp, meta_tmp):
            if tmp.exists():
                tmp.unlink()
    meta.sha256 = record["sha256"]
    return meta


def read_meta(folder: str | os.PathLike) -> ModelMeta:
    """Parse model.json of a run folder; a missing or malformed file is a UserError naming it."""
    path = Path(folder) / META_FILE
    if not path.is_file():
        raise UserError(f"{path}: not found (is {folder} a finished run folder?)")
    try:
        raw = json.loads(path.read_text())
        known = {k: raw[k] for k in ModelMeta.__dataclass_fields__ if k in raw}
        return ModelMeta(**known)
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path}: malformed model.json ({exc})") from None


def load_weights(folder: str | os.PathLike, meta: ModelMeta | None = None, map_location: str = "cpu") -> dict:
    """The state dict of a run folder's model.safetensors, read only if its SHA-256 matches model.json."""
    meta = meta or read_meta(folder)
    weights = Path(folder) / WEIGHTS_FILE
    if not weights.is_file():
        raise UserError(f"{weights}: not found")
    if not meta.sha256:
        raise UserError(f"{Path(folder) / META_FILE}: no sha256 for {WEIGHTS_FILE}; refusing unverified weights")
    digest = sha256_of(weights)
    if digest != meta.sha256:
        raise UserError(f"{weights}: SHA-256 {digest[:12]}… does not match model.json ({meta.sha256[:12]}…); refusing")
    return load_file(str(weights), device=map_location)


def load_bundle(folder: str | os.PathLike, map_location: str = "cpu") -> tuple[nn.Module, ModelMeta]:
    """Rebuild the model of a run folder in eval mode, after checking the weights' SHA-256."""
    from imgcls.models import create_model

    meta = read_meta(folder)
    weights = Path(folder) / WEIGHTS_FILE
    state = load_weights(folder, meta, map_location)
    model = create_model(meta.name, num_classes=meta.num_classes, in_chans=meta.in_chans, **meta.model_kwargs)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"{weights}: does not fit {meta.name} (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.eval()
    return model, meta


__all__ = [
    "META_FILE",
    "WEIGHTS_FILE",
    "ModelMeta",
    "load_bundle",
    "load_weights",
    "read_meta",
    "save_bundle",
    "sha256_of",
]
