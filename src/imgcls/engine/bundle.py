"""The weights to ship: ``model.safetensors`` + ``model.json`` in a run folder.

``model.json`` says what it takes to use the weights (DESIGN.md, "The run folder"); its fields and their checks
are :class:`imgcls.run_folder.ModelMeta`:

    name, num_classes, classes, input_size [C, H, W], mean, std, task, sha256,
    resize (shorter side before the center crop at evaluation; equal to H for no crop),
    in_chans, model_kwargs (extra create_model arguments), thresholds (multi-label), epoch, format_version

The SHA-256 of the weights file is checked before loading, so a swapped or damaged file is refused; a record
that does not describe the weights (another architecture, class count or input size) is refused with one line
naming ``model.json``, before anything is predicted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import safetensors.torch
import torch
from safetensors.torch import load_file
from torch import nn

from imgcls._files import temp_path
from imgcls.errors import UserError
from imgcls.run_folder import ModelMeta, RunFolder, verify_weights


def _folder(folder: str | os.PathLike | RunFolder) -> RunFolder:
    return folder if isinstance(folder, RunFolder) else RunFolder(folder)


def save_bundle(folder: str | os.PathLike | RunFolder, model: nn.Module, meta: ModelMeta) -> ModelMeta:
    """Write model.safetensors and model.json (with the weights' SHA-256) into `folder`.

    Both files are written in full to temporaries first and only then renamed over the old ones, so a failure
    while writing (a full disk) leaves the previous pair, whose SHA-256 still matches, and no temporary. Both get
    the permissions of every other file of the run (``0666`` less the umask; safetensors' own writer makes 0600).

    Raises:
        UserError: the file system refused the write (full disk, quota, read-only).
    """
    run = _folder(folder)
    meta.check(run.meta)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    data = safetensors.torch.save(state, metadata={"name": meta.name})
    record = meta.to_dict() | {"sha256": hashlib.sha256(data).hexdigest()}
    text = json.dumps(record, indent=2, allow_nan=False) + "\n"
    weights_tmp, meta_tmp = temp_path(run.weights), temp_path(run.meta)
    try:
        run.root.mkdir(parents=True, exist_ok=True)
        for tmp, payload in ((weights_tmp, data), (meta_tmp, text.encode("utf-8"))):
            with open(tmp, "wb") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
        os.replace(weights_tmp, run.weights)
        os.replace(meta_tmp, run.meta)
    except OSError as exc:
        raise UserError(
            f"{run.weights}: cannot write the weights ({exc.strerror or exc}); the previous ones are unchanged"
        ) from None
    finally:
        for tmp in (weights_tmp, meta_tmp):
            with contextlib.suppress(OSError):
                tmp.unlink()
    meta.sha256 = record["sha256"]
    return meta


def read_meta(folder: str | os.PathLike | RunFolder) -> ModelMeta:
    """Parse and check model.json of a run folder; a missing or malformed file is a UserError naming it."""
    return _folder(folder).read_meta()


def load_weights(
    folder: str | os.PathLike | RunFolder, meta: ModelMeta | None = None, map_location: str = "cpu"
) -> dict:
    """The state dict of a run folder's model.safetensors, read only if its SHA-256 matches model.json."""
    run = _folder(folder)
    meta = meta or run.read_meta()
    verify_weights(run.weights, meta.sha256, run.meta)
    try:
        return load_file(str(run.weights), device=map_location)
    except Exception as exc:  # safetensors raises its own error types for a damaged header
        raise UserError(f"{run.weights}: not a readable safetensors file ({type(exc).__name__})") from None


def _model_args(meta: ModelMeta) -> dict:
    """``create_model`` / ``check_model_args`` keyword arguments of the architecture ``meta`` records."""
    return dict(num_classes=meta.num_classes, in_chans=meta.in_chans, **meta.model_kwargs)


def build_model(meta: ModelMeta, where: Path | str = RunFolder.META, meta_device: bool = False) -> nn.Module:
    """The architecture ``meta`` describes, freshly initialised. An unknown name or option, or an input size the
    network cannot take (checked on the meta device first: nothing is allocated), is a UserError naming ``where``.

    ``meta_device``: shapes only, for weights to be assigned; the input size is then left to the caller
    (:func:`load_bundle` checks it with the weights in), since a forward pass on the meta device imports
    torch._dynamo on first use (about 2 s on a 2-core CPU, on the start-up path of every ``predict``).
    """
    from imgcls.classic import is_classic
    from imgcls.models import check_model_args, create_model, on_meta

    args = _model_args(meta)
    try:
        if meta_device:
            try:
                with on_meta():
                    return create_model(meta.name, **args)
            except (TypeError, ValueError):  # an option of the wrong type or range: check_model_args words it
                check_model_args(meta.name, image_size=meta.input_size[1], training=False, **args)
                raise
        if not is_classic(meta.name):  # a network: options and input size, shapes only; pipelines check their own
            check_model_args(meta.name, image_size=meta.input_size[1], **args)
        return create_model(meta.name, **args)
    except UserError as exc:
        if meta.model_kwargs and "option" in str(exc):  # create_model: an option this architecture does not have
            raise UserError(f"{where}: model_kwargs do not fit {meta.name} ({exc})") from None
        raise UserError(f"{where}: {exc}") from None


def _check_input_size(model: nn.Module, meta: ModelMeta, where: Path | str) -> None:
    """A loaded network takes the recorded input size: its native one (the registry's tests run every model
    there) unless options or another size were recorded, which one real image through it decides. A size it
    cannot take is check_model_args's one-line error, with the smallest size that works."""
    from imgcls.models import check_model_args, model_entry

    if not meta.model_kwargs and tuple(meta.input_size) == tuple(model_entry(meta.name).input_size):
        return
    try:
        with torch.inference_mode():
            model(torch.zeros(1, *meta.input_size))
    except RuntimeError:
        try:
            check_model_args(meta.name, image_size=meta.input_size[1], training=False, **_model_args(meta))
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from None
        raise UserError(f"{where}: {meta.name} cannot run on inputs of {meta.input_size}") from None


def load_bundle(folder: str | os.PathLike | RunFolder, map_location: str = "cpu") -> tuple[nn.Module, ModelMeta]:
    """Rebuild the model of a run folder in eval mode, after checking the weights' SHA-256.

    The record must describe the weights: tensors of other shapes (another class count, another architecture
    with the same SHA-256 recorded by hand), NaN or infinite values (a diverged run's) and an input size the
    network cannot take are refused here, so nothing downstream ever answers NaN.
    """
    run = _folder(folder)
    meta = run.read_meta()
    state = load_weights(run, meta, map_location)
    from imgcls.classic import is_classic

    # A network is built on the meta device and its loaded tensors assigned: random initialisation of weights
    # that are overwritten at once took most of a load (0.4 s of 1.1 s for ResNet-50 on a 2-core CPU).
    assign = not is_classic(meta.name)
    model = build_model(meta, run.meta, meta_device=assign)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise UserError(
            f"{run.weights}: does not fit {meta.name} as {run.meta} describes it "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    wrong = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items() if state[k].shape != v.shape]
    if wrong:
        key, got, want = wrong[0]
        raise UserError(
            f"{run.weights}: {key} has shape {got} but {meta.name} with {meta.num_classes} classes and "
            f"{meta.in_chans} channel(s) ({run.meta}) needs {want}"
        )
    broken = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise UserError(
            f"{run.weights}: {len(broken)} tensor(s) hold NaN or infinite values ({', '.join(broken[:3])}): "
            "the run that wrote them diverged; retrain it (lower --lr)"
        )
    # assigning keeps a tensor's dtype where copying into a parameter would cast it
    state = {k: v.to(expected[k].dtype) if v.dtype != expected[k].dtype else v for k, v in state.items()}
    model.load_state_dict(state, assign=assign)
    if assign and any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        # a tensor the state dict does not hold (a non-persistent buffer) has no value on the meta device
        model = build_model(meta, run.meta)
        model.load_state_dict(state)
    model.eval()
    if assign:
        _check_input_size(model, meta, run.meta)
    return model, meta


__all__ = [
    "ModelMeta",
    "build_model",
    "load_bundle",
    "load_weights",
    "read_meta",
    "save_bundle",
    "verify_weights",
]
