"""Why did it say bee? ``imgcls explain`` and ``Predictor.explain``: the prediction of each image with its maps.

For every image, decoded and preprocessed exactly as ``predict`` does it (`Predictor.load`), three views of what
the network used (`imgcls.models.saliency` has the methods and their papers):

- **Grad-CAM** (Selvaraju et al. 2017) on the registry's layer for the model (``cam_layer``: the last
  convolutional stage of its family), or on ``layer``;
- **occlusion sensitivity** (Zeiler & Fergus 2013, Section 4.2): a grey square of ``window`` pixels slid by
  ``stride`` pixels, the occluded copies run ``batch_size`` at a time; the map is the probability the class loses;
- the **strongest channels** of a chosen layer (default: the Grad-CAM layer).

The class explained is the top prediction unless one is asked for. Probabilities are the ones ``predict``
answers (temperature included). The network runs in float32 on the PyTorch model whatever the predictor's
precision: a gradient is needed, and the ONNX backend has none (it is refused with one line).

:func:`write_explanations` writes, per image, one PNG figure (`imgcls.report.anatomy.explain_figure`) and the
maps as ``.npy`` arrays (Grad-CAM ``(H, W)`` in [0, 1]; occlusion ``(H, W)``, probability lost; activations
``(k, h, w)``), and returns the JSON records ``imgcls explain --json`` prints.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from imgcls.engine.metrics import probabilities as to_probabilities
from imgcls.errors import UserError
from imgcls.inference.predictor import Prediction

DEFAULT_CHANNELS = 8


@dataclass(frozen=True)
class Explanation:
    """One image explained (or the one-line reason it could not be read).

    Attributes:
        path: the input as given (``<input N>`` for bytes and PIL images).
        image: uint8 ``(H, W, C)``, the network's input after resize and crop (what the maps are aligned with).
        predictions: the top classes, as ``predict`` gives them (`imgcls.inference.Prediction`).
        explained: the class the maps are about.
        cam: Grad-CAM ``(H, W)`` in [0, 1], or ``None`` when not asked for; ``cam_layer`` its layer.
        occlusion: ``(H, W)`` probability of ``explained`` lost when a window over the pixel is grey, or ``None``;
            ``occlusion_grid`` ``(rows, cols)`` the probability at each window position; ``window``, ``stride``.
        channels: ``(k, h, w)`` the strongest channels of ``channel_layer`` (``channel_index``: their numbers;
            ``channel_count``: the layer's channels), or ``None``.
        error: why the input could not be explained (then everything else is empty).
    """

    path: str
    image: np.ndarray | None = None
    predictions: tuple = ()
    explained: Prediction | None = None
    cam: np.ndarray | None = None
    cam_layer: str | None = None
    occlusion: np.ndarray | None = None
    occlusion_grid: np.ndarray | None = None
    window: int | None = None
    stride: int | None = None
    channels: np.ndarray | None = None
    channel_index: tuple[int, ...] = field(default=())
    channel_layer: str | None = None
    channel_count: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class ExplainOptions:
    """What to compute for each image.

    Attributes:
        target: the class to explain (label or index); ``None``: each image's top prediction.
        cam_layer: Grad-CAM's layer (``None``: the registry's for the model).
        layer: the layer whose strongest channels are shown (``None``: Grad-CAM's layer).
        gradcam, occlusion: which maps to compute.
        window, stride: occlusion square and step in pixels (``None``: a quarter of the input side, and half the
            window).
        channels: how many channels of ``layer`` to show (0: none).
        topk: predictions listed per image.
        batch_size: occluded copies per forward pass.
    """

    target: str | int | None = None
    cam_layer: str | None = None
    layer: str | None = None
    gradcam: bool = True
    occlusion: bool = True
    window: int | None = None
    stride: int | None = None
    channels: int = DEFAULT_CHANNELS
    topk: int = 5
    batch_size: int = 64


def default_window(size: int) -> tuple[int, int]:
    """Occlusion window and stride for a ``size``-pixel input: a quarter of the side, moved by half of it
    (7 × 7 positions: 49 forward passes per image)."""
    window = max(1, round(size / 4))
    return window, max(1, window // 2)


def _network(predictor):
    """The predictor's PyTorch model in float32 eval mode, or a UserError saying why explain cannot run."""
    from imgcls.models.saliency import cam_layer

    cam_layer(predictor.name)  # classical pipelines and entries without a layer: "does not apply"
    model = predictor.model if predictor.model is not None else getattr(predictor.runner, "model", None)
    if not isinstance(model, torch.nn.Module):  # an ONNX file, or an engine without the module behind it
        raise UserError("explain needs the PyTorch model (gradients); load the run with the torch backend")
    return model.float().eval()


def _target_index(predictor, target: str | int | None) -> int | None:
    if target is None:
        return None
    classes = list(predictor.classes)
    if isinstance(target, str) and target in classes:
        return classes.index(target)
    if isinstance(target, int) or (isinstance(target, str) and target.isdigit()):
        index = int(target)
        if 0 <= index < len(classes):
            return index
    shown = ", ".join(classes[:10]) + (" …" if len(classes) > 10 else "")
    raise UserError(f"--class {target}: not a class of this model (its classes: {shown})")


def explain(predictor, inputs: Iterable, options: ExplainOptions | None = None) -> Iterator[Explanation]:
    """Explain each input (file path, encoded bytes, PIL image, or the uint8 ``(C, H, W)`` tensor of
    ``predictor.load``); yields one :class:`Explanation` per input, in order. An input that cannot be read gets
    its error and the others go on.

    Raises:
        UserError: the model cannot be explained (a classical pipeline, the ONNX backend), or an option is wrong
            (unknown class or layer, a window larger than the input).
    """
    from imgcls.data.reader import ImageError
    from imgcls.models import saliency

    options = options or ExplainOptions()
    if options.topk < 1:
        raise UserError(f"--topk must be at least 1 (got {options.topk})")
    if options.channels < 0:
        raise UserError(f"--channels must be 0 or more (got {options.channels})")
    model = _network(predictor)
    cam_layer = options.cam_layer or saliency.cam_layer(predictor.name)
    channel_layer = options.layer or cam_layer
    for name in {cam_layer, channel_layer}:
        saliency.find_layer(model, name)  # an unknown layer is one line before any image is read
    target = _target_index(predictor, options.target)
    side = predictor.input_size[1]
    window = options.window or default_window(side)[0]
    stride = options.stride or max(1, window // 2)
    if options.occlusion:
        saliency.window_offsets(side, window, stride)  # a window larger than the input: one line, now
    temperature = predictor.temperature or 1.0

    def probs_of(x: torch.Tensor) -> torch.Tensor:
        return to_probabilities(model(x).float() / temperature, predictor.task)

    for k, item in enumerate(inputs):
        label = os.fspath(item) if isinstance(item, (str, os.PathLike)) else f"<input {k}>"
        try:  # a uint8 (C, H, W) tensor is an image `predictor.load` already decoded (the service does that)
            pixels = item if isinstance(item, torch.Tensor) else predictor.load(item)
        except ImageError as exc:
            yield Explanation(label, error=" ".join(str(getattr(exc, "reason", None) or exc).split()))
            continue
        x = predictor.preprocess.normalise(pixels[None])
        with torch.no_grad():
            probs = probs_of(x)[0]
        top = predictor.top(probs, options.topk)
        index = target if target is not None else top[0].index
        explained = Prediction(predictor.classes[index], index, round(float(probs[index]), 6))
        wanted = torch.tensor([index])
        found: dict = {}
        if options.gradcam:
            found["cam"] = saliency.grad_cam(model, x, wanted, cam_layer).maps[0].numpy()
            found["cam_layer"] = cam_layer
        if options.occlusion:
            occ = saliency.occlusion(probs_of, x, wanted, window=window, stride=stride, batch_size=options.batch_size)
            found.update(
                occlusion=occ.maps[0].numpy(), occlusion_grid=occ.probability[0].numpy(), window=window, stride=stride
            )
        if options.channels:
            ch = saliency.top_channels(model, x, channel_layer, options.channels)
            found.update(
                channels=ch.maps[0].numpy(),
                channel_index=tuple(int(i) for i in ch.index[0]),
                channel_layer=channel_layer,
                channel_count=ch.channels,
            )
        image = pixels.permute(1, 2, 0).numpy()
        yield Explanation(label, image=image, predictions=top, explained=explained, **found)


# --- files -----------------------------------------------------------------------------------------------------


def _stem(path: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(path).stem if not path.startswith("<") else path.strip("<>"))
    base = base.strip("._") or "image"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    taken.add(name)
    return name


def _save_npy(path: Path, array: np.ndarray) -> str:
    from imgcls._files import atomic_write_bytes

    buf = io.BytesIO()
    np.save(buf, np.asarray(array, dtype=np.float32), allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())
    return str(path)


def prediction_dict(p) -> dict:
    return {"label": p.label, "index": p.index, "probability": p.probability}


def explanation_figure(e, title: str):
    """The one-figure view of an `Explanation`: the photo, its probabilities and every map it holds."""
    from imgcls.report.anatomy import explain_figure

    return explain_figure(
        e.image,
        title=title,
        predictions=[(p.label, p.probability) for p in e.predictions],
        explained=e.explained.label,
        cam=e.cam,
        cam_layer=e.cam_layer,
        occlusion=e.occlusion,
        window=e.window,
        stride=e.stride,
        channels=e.channels,
        channel_index=e.channel_index,
        channel_layer=e.channel_layer,
        channel_count=e.channel_count,
    )


def write_one(e: Explanation, out: Path, stem: str) -> dict:
    """Write the figure and the maps of one explanation into ``out``; returns its JSON record."""
    from imgcls.report.anatomy import save_figure

    if not e.ok:
        return {"path": e.path, "error": e.error}
    maps, layers = {}, {}
    if e.cam is not None:
        maps["gradcam"] = _save_npy(out / f"{stem}.gradcam.npy", e.cam)
        layers["gradcam"] = e.cam_layer
    if e.occlusion is not None:
        maps["occlusion"] = _save_npy(out / f"{stem}.occlusion.npy", e.occlusion)
    if e.channels is not None:
        maps["activations"] = _save_npy(out / f"{stem}.activations.npy", e.channels)
        layers["activations"] = e.channel_layer
    top = e.predictions[0]
    title = f"{Path(e.path).name}: {top.label} ({top.probability:.3f})"
    if e.explained.index != top.index:
        title += f"; maps explain {e.explained.label} ({e.explained.probability:.3f})"
    figure = save_figure(explanation_figure(e, title), out / f"{stem}.png")
    record = {
        "path": e.path,
        "class": prediction_dict(e.explained),
        "predictions": [prediction_dict(p) for p in e.predictions],
        "figure": str(figure),
        "maps": maps,
        "layers": layers,
    }
    if e.occlusion is not None:
        record["occlusion"] = {"window": e.window, "stride": e.stride}
    if e.channels is not None:
        record["channels"] = list(e.channel_index)
    return record


def write_explanations(explanations: Iterable[Explanation], out: str | os.PathLike) -> Iterator[dict]:
    """Write each explanation's figure (``STEM.png``) and maps (``STEM.gradcam.npy``, ``STEM.occlusion.npy``,
    ``STEM.activations.npy``) into the folder ``out`` (made if missing); yields their JSON records in order.
    Two inputs with the same file name get ``STEM``, ``STEM-2``..."""
    out = Path(out)
    taken: set[str] = set()
    for e in explanations:
        yield write_one(e, out, _stem(e.path, taken)) if e.ok else {"path": e.path, "error": e.error}


def prepare_out(out: str | os.PathLike, run: str | os.PathLike | None = None) -> Path:
    """The output folder, made if missing; a file in its place, or a folder among the run's own files, is a
    one-line UserError (nothing is written)."""
    from imgcls.run_folder import RunFolder

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file; give a folder")
    if run is not None and RunFolder(run).is_own_file(out):
        raise UserError(f"--out {out}: inside the run's own files; choose another folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot create the folder ({exc.strerror or exc})") from None
    return out


__all__ = [
    "DEFAULT_CHANNELS",
    "ExplainOptions",
    "Explanation",
    "default_window",
    "explain",
    "explanation_figure",
    "prepare_out",
    "write_explanations",
]
