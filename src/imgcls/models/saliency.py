"""What a network looks at: Grad-CAM, occlusion sensitivity, a layer's strongest channels and the maps of each stage.

Plain functions of an ``nn.Module`` and a normalised batch ``(N, C, H, W)``, so that the report (which draws the
error gallery and the model's anatomy) and ``imgcls explain`` (`imgcls.inference.explain`) share them:

- :func:`grad_cam` — Selvaraju et al. 2017 (arXiv:1610.02391), Eq. 1-2: the gradient of the class score ``y^c``
  (before the softmax) with respect to a convolutional layer's maps ``A^k``, averaged over the positions, weighs
  each map: ``L = ReLU(sum_k alpha_k^c A^k)`` with ``alpha_k^c = mean_ij dy^c/dA^k_ij``. The map is upsampled
  bilinearly to the input and divided by its maximum (0 everywhere when nothing is positive). Which layer: the
  registry's ``cam_layer`` (:func:`cam_layer`), the last convolutional stage of each family.
- :func:`occlusion` — Zeiler & Fergus 2013 (arXiv:1311.2901), Section 4.2: a grey square slides over the image
  and the probability of the class is recorded at each position. "Grey" is the dataset's mean colour, i.e. 0
  after normalisation. The per-pixel map is the drop in probability with the square centred on the pixel:
  bilinear between the window centres, the border value beyond the outermost ones (positions include the last
  one, flush with the far edge). Centring keeps the peak on the object: averaging over the windows that cover
  a pixel would favour border pixels, which only the windows flush with the edge cover. The occluded copies go
  through the network ``batch_size`` at a time.
- :func:`top_channels` — the ``k`` channels of a layer with the largest mean activation for each image.
- :func:`stage_maps` — the output of each stage: the last map at every spatial resolution the forward pass
  goes through (modules up to two levels deep), as in the feature-map panels of ZFNet's Fig. 2.

Layers are named by their dotted module path (``"layer4"``, ``"features.relu5"``); a negative number counts from
the end of a ``Sequential`` (``"features.-2"``: VGG's last ReLU, before its final max pool). A layer's output is
taken by a forward hook that only acts in the thread that set it (a service may run other forward passes on
the same model at the same time) and hands the network a copy, so that in-place operations after the layer
(``ReLU(inplace=True)``) leave the recorded maps alone.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imgcls.errors import UserError


def cam_layer(name: str) -> str:
    """The layer Grad-CAM uses for the registered model ``name`` (its registry entry's ``cam_layer``).

    Raises:
        UserError: explanation maps do not apply (a classical pipeline, or an entry that names no layer).
    """
    from imgcls.classic import is_classic, not_applicable
    from imgcls.models._registry import model_entry

    entry = model_entry(name)
    if is_classic(name):
        raise not_applicable("explain (Grad-CAM, occlusion, activations)", name)
    if not entry.cam_layer:
        raise UserError(f"explain does not apply to {name}: its registry entry names no convolutional layer")
    return entry.cam_layer


def find_layer(model: nn.Module, path: str) -> nn.Module:
    """The submodule at the dotted ``path`` (negative numbers count from the end of a container).

    Raises:
        UserError: no such module; the message lists the names one level up.
    """
    module = model
    done: list[str] = []
    for part in path.split("."):
        children = dict(module.named_children())
        found = children.get(part)
        if found is None and part.lstrip("-").isdigit() and isinstance(module, (nn.Sequential, nn.ModuleList)):
            index = int(part)
            if -len(module) <= index < len(module):
                found = module[index]
        if found is None:
            where = ".".join(done) or "the model"
            names = ", ".join(list(children)[:12]) + (" …" if len(children) > 12 else "")
            raise UserError(f"layer {path!r}: {where} has no module {part!r} (it has: {names or 'none'})")
        module = found
        done.append(part)
    return module


class _Tap:
    """Records the output of one module in the thread that created it; the network continues on a copy."""

    def __init__(self, module: nn.Module, clone: bool = True):
        self.owner = threading.get_ident()
        self.clone = clone
        self.output: Tensor | None = None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, _module, _inputs, output):
        if threading.get_ident() != self.owner:
            return None
        if not isinstance(output, Tensor):
            raise UserError(f"the layer's output is a {type(output).__name__}, not one tensor of maps")
        self.output = output
        return output.clone() if self.clone else None

    def remove(self) -> None:
        self.handle.remove()


@contextlib.contextmanager
def _tapped(model: nn.Module, path: str, clone: bool = True) -> Iterator[_Tap]:
    tap = _Tap(find_layer(model, path), clone=clone)
    try:
        yield tap
    finally:
        tap.remove()


def _logits(out) -> Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def class_scores(logits: Tensor, target: Tensor) -> Tensor:
    """``y^c`` of each row: the logit of class ``target[i]``; a single binary logit ``z`` scores class 1 as
    ``z`` and class 0 as ``-z`` (its softmax twin ``(0, z)`` would give class 0 no gradient)."""
    if logits.ndim == 1 or logits.shape[1] == 1:
        z = logits.reshape(-1)
        return torch.where(target == 1, z, -z)
    return logits.gather(1, target.view(-1, 1)).squeeze(1)


def _map_of(tap: _Tap, path: str) -> Tensor:
    if tap.output is None:
        raise UserError(f"layer {path!r} is not used by the model's forward pass")
    if tap.output.ndim != 4:
        shape = "×".join(map(str, tap.output.shape[1:]))
        raise UserError(f"layer {path!r} gives {shape} per image, not (channels, height, width) maps")
    return tap.output


@dataclass(frozen=True)
class CamResult:
    """Grad-CAM maps of a batch.

    Attributes:
        maps: ``(N, H, W)`` at the input's size, each divided by its maximum (values in [0, 1]).
        raw: ``(N, h, w)`` at the layer's resolution, before upsampling and scaling.
        target: ``(N,)`` the class explained for each image.
        layer: the layer's path.
    """

    maps: Tensor
    raw: Tensor
    target: Tensor
    layer: str


def grad_cam(model: nn.Module, x: Tensor, target: Tensor | None, layer: str) -> CamResult:
    """Grad-CAM (see the module docstring) of the class ``target[i]`` for each image of ``x``.

    Args:
        model: the network (switched to eval mode for the pass, then back).
        x: normalised ``(N, C, H, W)`` batch.
        target: ``(N,)`` class indices; ``None`` explains each image's top class.
        layer: dotted path of a module whose output is ``(N, K, h, w)``.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), _tapped(model, layer) as tap:
            x = x.detach().clone().requires_grad_(True)  # a graph even when the weights are frozen
            logits = _logits(model(x)).float()
            if target is None:
                target = _top_class(logits)
            target = torch.as_tensor(target, dtype=torch.long, device=logits.device).reshape(-1)
            maps = _map_of(tap, layer)
            (grads,) = torch.autograd.grad(class_scores(logits, target).sum(), maps)
    finally:
        model.train(was_training)
    # Each image's score depends on its own maps only (eval mode), so the summed score's gradient is per image.
    weights = grads.float().mean(dim=(2, 3), keepdim=True)  # alpha_k^c: (N, K, 1, 1)
    raw = F.relu((weights * maps.detach().float()).sum(dim=1))  # (N, h, w)
    up = F.interpolate(raw[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = up.flatten(1).amax(dim=1).view(-1, 1, 1)
    scaled = torch.where(peak > 0, up / peak.clamp_min(1e-12), torch.zeros_like(up)).clamp_(0.0, 1.0)
    return CamResult(maps=scaled, raw=raw, target=target.detach(), layer=layer)


def _top_class(logits: Tensor) -> Tensor:
    if logits.ndim == 1 or logits.shape[1] == 1:
        return (logits.reshape(-1) > 0).long()
    return logits.argmax(dim=1)


def window_offsets(size: int, window: int, stride: int) -> list[int]:
    """Top (or left) edges of the occluding square along one side: every ``stride`` pixels, plus the last
    position ``size - window`` so that the far edge is covered too."""
    if window > size:
        raise UserError(f"--window {window}: larger than the {size}-pixel input")
    offsets = list(range(0, size - window + 1, stride))
    if offsets[-1] != size - window:
        offsets.append(size - window)
    return offsets


@dataclass(frozen=True)
class OcclusionResult:
    """Occlusion sensitivity of a batch.

    Attributes:
        maps: ``(N, H, W)`` drop in the class's probability when the grey square is centred on the pixel
            (interpolated between window centres); positive where hiding the pixel hurts the class.
        probability: ``(N, rows, cols)`` the class's probability with the window at each position (ZFNet's
            Fig. 7 d).
        base: ``(N,)`` the class's probability on the intact image.
        target: ``(N,)`` the class explained.
        window, stride: the square's side and step, in input pixels.
    """

    maps: Tensor
    probability: Tensor
    base: Tensor
    target: Tensor
    window: int
    stride: int


def occlusion(
    probabilities: Callable[[Tensor], Tensor],
    x: Tensor,
    target: Tensor | None,
    *,
    window: int,
    stride: int,
    batch_size: int = 64,
    fill: float = 0.0,
) -> OcclusionResult:
    """Occlusion sensitivity (see the module docstring) for each image of ``x``.

    Args:
        probabilities: normalised batch -> class probabilities ``(B, K)`` (the model and its softmax or sigmoid,
            temperature included: the probabilities the user is shown).
        x: normalised ``(N, C, H, W)`` batch.
        target: ``(N,)`` class indices; ``None``: each image's top class.
        window: side of the square in pixels (at least 1).
        stride: step between positions in pixels (at least 1).
        batch_size: occluded copies per forward pass.
        fill: the value of the square in normalised units (0: the dataset's mean colour).
    """
    if window < 1 or stride < 1:
        raise UserError(f"--window and --stride must be at least 1 pixel (got {window} and {stride})")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1 (got {batch_size})")
    n, _, h, w = x.shape
    rows, cols = window_offsets(h, window, stride), window_offsets(w, window, stride)
    positions = [(r, c) for r in rows for c in cols]
    with torch.no_grad():
        base_probs = probabilities(x).float()
        if target is None:
            target = base_probs.argmax(dim=1)
        target = torch.as_tensor(target, dtype=torch.long, device=base_probs.device).reshape(-1)
        base = base_probs.gather(1, target.view(-1, 1)).squeeze(1)
        grid = torch.empty(n, len(positions), dtype=torch.float32)
        for i in range(n):
            for start in range(0, len(positions), batch_size):
                chunk = positions[start : start + batch_size]
                batch = x[i : i + 1].repeat(len(chunk), 1, 1, 1)
                for j, (r, c) in enumerate(chunk):
                    batch[j, :, r : r + window, c : c + window] = fill
                grid[i, start : start + len(chunk)] = probabilities(batch).float()[:, target[i]].cpu()
    grid = grid.view(n, len(rows), len(cols))
    drop = base.cpu()[:, None, None] - grid
    return OcclusionResult(
        maps=_at_pixels(drop, [r + (window - 1) / 2 for r in rows], [c + (window - 1) / 2 for c in cols], h, w),
        probability=grid,
        base=base.cpu(),
        target=target.cpu(),
        window=window,
        stride=stride,
    )


def _at_pixels(values: Tensor, row_centres: list[float], col_centres: list[float], h: int, w: int) -> Tensor:
    """``(N, R, C)`` values at window centres -> ``(N, h, w)`` at every pixel: bilinear on the (uneven) grid of
    centres, the nearest border value beyond it."""
    import numpy as np

    v = values.double().numpy()
    ys, xs = np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64)
    along_x = np.stack([[np.interp(xs, col_centres, row) for row in image] for image in v])  # (N, R, w)
    along_y = np.stack(
        [np.stack([np.interp(ys, row_centres, image[:, j]) for j in range(w)], axis=1) for image in along_x]
    )
    return torch.from_numpy(along_y).float()


@dataclass(frozen=True)
class Channels:
    """The strongest channels of one layer for each image.

    Attributes:
        maps: ``(N, k, h, w)`` their activations.
        index: ``(N, k)`` their channel numbers, strongest first.
        mean: ``(N, k)`` their mean activation over the positions.
        layer: the layer's path.
        channels: how many channels the layer has.
    """

    maps: Tensor
    index: Tensor
    mean: Tensor
    layer: str
    channels: int


def top_channels(model: nn.Module, x: Tensor, layer: str, k: int = 8) -> Channels:
    """The ``k`` channels of ``layer`` with the largest mean activation, for each image of ``x``."""
    if k < 1:
        raise UserError(f"--channels must be at least 1 (got {k})")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _tapped(model, layer, clone=True) as tap:
            model(x)
            maps = _map_of(tap, layer).float()
    finally:
        model.train(was_training)
    means = maps.mean(dim=(2, 3))  # (N, K)
    top = means.topk(min(k, maps.shape[1]), dim=1)
    picked = maps.gather(1, top.indices[:, :, None, None].expand(-1, -1, *maps.shape[2:]))
    return Channels(
        maps=picked.cpu(), index=top.indices.cpu(), mean=top.values.cpu(), layer=layer, channels=int(maps.shape[1])
    )


@dataclass(frozen=True)
class Stage:
    """The output of one stage for one image: the last module at one spatial resolution."""

    name: str
    maps: Tensor  # (K, h, w)


def stage_maps(model: nn.Module, x: Tensor, depth: int = 2) -> list[Stage]:
    """The last map at each spatial resolution of the forward pass of one image ``x`` ``(1, C, H, W)``.

    Modules up to ``depth`` levels below the model are watched, in the order they finish (a container after its
    children); stages are the runs of equal ``(h, w)``, and each one's last output is kept.
    """
    seen: list[tuple[str, Tensor]] = []
    owner = threading.get_ident()

    def hook(name):
        def record(_module, _inputs, output):
            if threading.get_ident() == owner and isinstance(output, Tensor) and output.ndim == 4:
                seen.append((name, output.detach().clone()))

        return record

    handles = [
        module.register_forward_hook(hook(name))
        for name, module in model.named_modules()
        if name and name.count(".") < depth
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    stages: list[Stage] = []
    for name, out in seen:
        if stages and stages[-1].maps.shape[-2:] == out.shape[-2:]:
            stages[-1] = Stage(name, out[0].float().cpu())
        else:
            stages.append(Stage(name, out[0].float().cpu()))
    return stages


def first_conv(model: nn.Module) -> nn.Conv2d | None:
    """The model's first 2-D convolution in module order (its filters look at pixels), or ``None``."""
    return next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)


__all__ = [
    "CamResult",
    "Channels",
    "OcclusionResult",
    "Stage",
    "cam_layer",
    "class_scores",
    "find_layer",
    "first_conv",
    "grad_cam",
    "occlusion",
    "stage_maps",
    "top_channels",
    "window_offsets",
]
