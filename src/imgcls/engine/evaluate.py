"""Evaluation: a model over a loader (with test-time augmentation), the files a finished run keeps, `imgcls eval`.

Three entry points:

- :func:`evaluate_model` — one pass over a loader of ``(x, y)`` batches (a ``BatchLoader`` of the data layer,
  or any iterable of batches); the training loop calls it every epoch.
- :func:`finalize_run` — the final evaluation of a run on its validation split; writes ``eval.json``,
  ``predictions.csv`` and ``samples.npz``, which the report (``imgcls.report``) reads.
- :func:`evaluate` — ``imgcls eval --run RUN``: reload a run's model and class map and measure it again,
  on its own validation data or on another folder with the same classes.

Test-time augmentation averages class *probabilities* over views (softmax per view; sigmoid per label for
multi-label), and reports ``log`` of the average as the logits, so the softmax of what is returned is exactly
the averaged probabilities and the loss is the log loss of the averaged prediction:

- ``"flip"``: the image and its horizontal mirror.
- ``"flip-translate"``: airbench's TTA (Jordan 2024, arXiv:2404.00498, Section 3.7): the image and its mirror
  with weight 1/4 each, and the image shifted by one pixel up-left and down-right (reflect padding), each with
  its mirror, with weight 1/8 each — six forward passes, for nets trained with small translations.
- ``tta_fraction`` below 1 (``"flip"`` and ``"flip-translate"``): only that fraction of each batch, the least
  confident images by the plain view (lowest top probability; for sigmoid outputs, the label closest to 0.5),
  gets the other views; the rest keep the plain view's prediction. Most images are already certain from one
  view, so the views go where they can change an answer (Hiverge's CIFAR-10 speedrun, 2025, re-evaluates the
  ~25 % least confident test images). The plain view of each image can come from a pass already made
  (``plain``), so it is not computed twice.
- ``"ten-crop"``: the four corner crops and the center crop, each with its mirror (Krizhevsky et al. 2012,
  Section 4.1), cut by ``imgcls.data.views.make_views``. The loader must then yield images *larger* than the
  network's input: ``evaluate`` builds the validation data with ``image_size=resize`` and ``crop_pct=1.0``
  (shorter side to the run's ``resize``, center ``resize``×``resize`` square, no center crop), and the ten
  crops of ``input_size`` are taken from that square; :func:`evaluate_model` needs ``crop_size`` for it. A run
  trained without a resize margin (``resize == input_size``, e.g. CIFAR at 32 px) has nothing to crop from, and
  ``imgcls eval --tta ten-crop`` says so.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imgcls._files import atomic_write_text
from imgcls.engine import distributed as D
from imgcls.engine import metrics as M
from imgcls.engine.config import TTA_MODES
from imgcls.engine.precision import Precision, resolve_device, resolve_precision
from imgcls.errors import UserError
from imgcls.run_folder import RunFolder

MIRRORED_TTA = ("flip", "flip-translate")  # the modes whose first view is the plain image (tta_fraction applies)
NUM_REPORT_SAMPLES = 16  # images kept in samples.npz for the report's grid (4×4)
TOPK = 5

LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass
class EvalResult:
    """What one evaluation pass measured.

    Attributes:
        loss: mean loss per sample (``None`` only if the loader was empty).
        top1: top-1 accuracy in percent (precision@1 for multi-label).
        top5: top-5 accuracy in percent; ``None`` with fewer than 5 classes and for multi-label.
        logits: ``(N, K)`` float32 on the CPU, in loader order (rank order when distributed); with TTA, the log
            of the averaged probabilities (log-sigmoid odds for multi-label).
        targets: the targets as the loader gave them, on the CPU.
        metrics: every metric that fits the task (:func:`imgcls.engine.metrics.classification_metrics`) plus
            ``loss``, ``tta`` and ``precision``; plain Python values, ready for JSON.
    """

    loss: float | None
    top1: float | None
    top5: float | None
    logits: Tensor
    targets: Tensor
    metrics: dict = field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        return int(self.logits.shape[0])


# --- the pass --------------------------------------------------------------------------------------------------


def _batches(loader) -> Iterator[tuple[Tensor, Tensor]]:
    # A data-layer BatchLoader iterates through `iterate()` (resumable); anything else is a plain iterable.
    it = loader.iterate() if hasattr(loader, "iterate") else loader
    yield from it


def _is_channels_last(model: nn.Module) -> bool:
    # Feed channels_last inputs to a channels_last model, or the first convolution converts every batch.
    for p in model.parameters():
        if p.ndim == 4:
            return p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
    return False


def _forward(model: nn.Module, x: Tensor, precision: Precision, channels_last: bool) -> Tensor:
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with precision.autocast():
        out = model(x)
    if isinstance(out, (tuple, list)):  # auxiliary heads are training-only, but a wrapper might still return them
        out = out[0]
    return out.float()


def _average_views(view_logits: Tensor, task: str, weights: list[float] | None = None) -> Tensor:
    """Combine ``(N, V, K)`` per-view logits into ``(N, K)`` logits of the averaged probabilities.

    Softmax case: ``log sum_v w_v softmax(z_v) = logsumexp_v (log_softmax(z_v) + log w_v)`` (stable; equal
    weights ``1/V`` by default). Sigmoid case (multi-label, or one binary logit): the log-odds of
    ``p = sum_v w_v sigmoid(z_v)``, from ``log p`` and ``log(1 - p)`` computed the same way.
    """
    v = view_logits.shape[1]
    if weights is None:
        log_w = torch.full((v,), -math.log(v), dtype=view_logits.dtype, device=view_logits.device)
    else:
        log_w = torch.log(torch.as_tensor(weights, dtype=view_logits.dtype, device=view_logits.device))
    log_w = log_w.view(1, v, 1)
    if task == "multilabel" or view_logits.shape[2] == 1:
        log_p = torch.logsumexp(F.logsigmoid(view_logits) + log_w, dim=1)
        log_q = torch.logsumexp(F.logsigmoid(-view_logits) + log_w, dim=1)
        return log_p - log_q
    return torch.logsumexp(torch.log_softmax(view_logits, dim=2) + log_w, dim=1)


def flip_translate_views(x: Tensor) -> tuple[list[Tensor], list[float]]:
    """The six views of ``"flip-translate"`` TTA and their weights (see the module docstring)."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    up_left, down_right = padded[..., 2 : h + 2, 2 : w + 2], padded[..., :h, :w]
    views = [x, x.flip(-1), up_left, up_left.flip(-1), down_right, down_right.flip(-1)]
    return views, [0.25, 0.25, 0.125, 0.125, 0.125, 0.125]


def _least_confident(plain: Tensor, task: str, fraction: float) -> Tensor:
    """Indices of the ``ceil(fraction * N)`` rows of ``plain`` logits with the least confident prediction."""
    if task == "multilabel" or plain.ndim == 1 or plain.shape[1] == 1:
        margin = (torch.sigmoid(plain) - 0.5).abs()
        confidence = margin if margin.ndim == 1 else margin.min(dim=1).values
    else:
        confidence = torch.softmax(plain, dim=1).max(dim=1).values
    count = min(len(confidence), math.ceil(fraction * len(confidence)))
    return torch.argsort(confidence, stable=True)[:count]


def _mirror_views(x: Tensor, tta: str) -> tuple[list[Tensor], list[float] | None]:
    if tta == "flip":
        return [x, x.flip(-1)], None
    return flip_translate_views(x)


def _predict(
    model: nn.Module,
    x: Tensor,
    *,
    task: str,
    tta: str,
    crop_size: int | None,
    precision: Precision,
    channels_last: bool,
    fraction: float = 1.0,
    plain: Tensor | None = None,
) -> Tensor:
    if tta == "none":
        return _forward(model, x, precision, channels_last)
    if tta in MIRRORED_TTA:
        return _predict_mirrored(model, x, task, tta, precision, channels_last, fraction, plain)
    from imgcls.data.views import make_views

    if crop_size is None:
        raise ValueError("ten-crop TTA needs crop_size (the network's input size)")
    if min(x.shape[-2:]) <= crop_size:
        raise UserError(
            f"--tta ten-crop: images of {tuple(x.shape[-2:])} are not larger than the {crop_size}px crop; "
            "the loader must give images at the resize size, before the center crop"
        )
    n = x.shape[0]
    stacked = make_views(x, "ten-crop", crop_size)  # (N*V, C, s, s), the V views of each image together
    views = list(stacked.reshape(n, -1, *stacked.shape[1:]).unbind(1))
    # One view at a time keeps peak memory at one batch's worth of activations.
    return _combine([_forward(model, view, precision, channels_last) for view in views], task, None)


def _combine(outs: list[Tensor], task: str, weights: list[float] | None) -> Tensor:
    """Per-view outputs -> the logits of their averaged probabilities, in the model's output shape."""
    single = outs[0].ndim == 1  # one binary logit per sample: keep the model's output shape
    per_view = torch.stack([o[:, None] if single else o for o in outs], dim=1)  # (N, V, K)
    averaged = _average_views(per_view, task, weights)
    return averaged[:, 0] if single else averaged


def _predict_mirrored(model, x, task, tta, precision, channels_last, fraction, plain) -> Tensor:
    """``flip``/``flip-translate``: the plain view (given, or computed here), then the other views on the whole
    batch or, for ``fraction < 1``, on its least confident ``fraction`` only (module docstring)."""
    if plain is None:
        plain = _forward(model, x, precision, channels_last)
    if fraction >= 1:
        views, weights = _mirror_views(x, tta)
        return _combine([plain, *(_forward(model, v, precision, channels_last) for v in views[1:])], task, weights)
    out = _combine([plain], task, None)  # one view, in the same form as an average (log-probabilities)
    picked = _least_confident(plain, task, fraction).to(x.device)
    views, weights = _mirror_views(x[picked], tta)
    out[picked] = _combine(
        [plain[picked], *(_forward(model, v, precision, channels_last) for v in views[1:])], task, weights
    )
    return out


def _evaluate(
    model: nn.Module,
    loader: Iterable,
    *,
    task: str,
    loss_fn: LossFn | None,
    precision: str,
    device: str | torch.device,
    distributed: bool,
    tta: str,
    crop_size: int | None,
    threshold: float | list[float],
    on_batch: Callable[[int, Tensor, Tensor, Tensor], None] | None = None,
    tta_fraction: float = 1.0,
    plain: Tensor | None = None,
) -> EvalResult:
    if tta not in TTA_MODES:
        raise UserError(f"--tta: {tta!r} is not one of {', '.join(TTA_MODES)}")
    _check_fraction(tta, tta_fraction)
    if task not in M.TASKS:
        raise ValueError(f"task must be one of {M.TASKS}, got {task!r}")
    device = torch.device(device)
    chosen = resolve_precision(precision, str(device))
    channels_last = _is_channels_last(model)
    was_training = model.training
    model.eval()
    logits_parts: list[Tensor] = []
    target_parts: list[Tensor] = []
    loss_sum = torch.zeros((), dtype=torch.float64)
    offset = 0
    try:
        with torch.inference_mode():
            for x, y in _batches(loader):
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
                out = _predict(
                    model,
                    x,
                    task=task,
                    tta=tta,
                    crop_size=crop_size,
                    precision=chosen,
                    channels_last=channels_last,
                    fraction=tta_fraction,
                    plain=None if plain is None else plain[offset : offset + x.shape[0]].to(device),
                )
                # The loss in float32 outside autocast: the logits are already float32.
                loss = loss_fn(out, y) if loss_fn is not None else M.default_loss(out, y, task)
                loss_sum += loss.detach().double().mean().cpu() * x.shape[0]
                if on_batch is not None:
                    on_batch(offset, x, y, out)
                offset += x.shape[0]
                logits_parts.append(out.cpu())
                target_parts.append(y.cpu())
    finally:
        model.train(was_training)
    num_classes = int(getattr(model, "num_classes", 0) or 0)
    logits = torch.cat(logits_parts) if logits_parts else torch.zeros(0, num_classes)
    targets = torch.cat(target_parts) if target_parts else torch.zeros(0, dtype=torch.int64)
    count = torch.tensor(float(offset), dtype=torch.float64)
    if distributed and D.is_active():
        logits = D.all_gather_cat(logits)
        targets = D.all_gather_cat(targets)
        loss_sum = D.all_reduce_sum(loss_sum)
        count = D.all_reduce_sum(count)
    loss_value = float(loss_sum / count) if count > 0 else None
    found = M.classification_metrics(logits, targets, task, threshold=threshold)
    found.update(loss=M.finite_or_none(loss_value), tta=tta, precision=chosen.name)
    if tta != "none" and tta_fraction < 1:
        found["tta_fraction"] = tta_fraction
    return EvalResult(
        loss=loss_value, top1=found["top1"], top5=found["top5"], logits=logits, targets=targets, metrics=found
    )


def _check_fraction(tta: str, fraction: float) -> None:
    if not 0 < fraction <= 1:
        raise UserError(f"--tta-fraction: {fraction} is not in (0, 1]")
    if fraction < 1 and tta not in ("none", *MIRRORED_TTA):
        raise UserError(f"--tta-fraction applies to flip and flip-translate TTA, not {tta}")


def evaluate_model(
    model: nn.Module,
    loader: Iterable,
    *,
    task: str,
    loss_fn: LossFn | None = None,
    precision: str = "fp32",
    device: str | torch.device = "cpu",
    distributed: bool = False,
    tta: str = "none",
    crop_size: int | None = None,
    threshold: float = 0.5,
    tta_fraction: float = 1.0,
) -> EvalResult:
    """Evaluate ``model`` on every batch of ``loader``, in eval mode and without gradients.

    Args:
        model: a classifier; its mode is restored afterwards.
        loader: a data-layer ``BatchLoader`` (iterated with ``iterate()``) or any iterable of ``(x, y)``:
            ``x`` float ``(N, C, H, W)`` normalised, ``y`` ``(N,)`` class indices or ``(N, K)`` float targets.
        task: ``"multiclass"``, ``"binary"`` or ``"multilabel"``.
        loss_fn: ``loss_fn(logits, y) -> mean loss``; default cross-entropy (BCE-with-logits for multi-label
            and single-logit binary models).
        precision: ``"fp32"``, ``"bf16"``, ``"fp16"`` (autocast) or ``"auto"`` (as training resolves it,
            `imgcls.engine.precision.resolve_precision`).
        device: where the model lives; batches are moved there.
        distributed: gather logits and targets from every rank (every rank must call this); each rank then
            holds the metrics of the whole validation set.
        tta: ``"none"``, ``"flip"``, ``"flip-translate"`` or ``"ten-crop"`` (see the module docstring).
        crop_size: the network's input size, needed for ``"ten-crop"`` (the loader gives larger images).
        threshold: multi-label decision threshold on probabilities, for F1.
        tta_fraction: the least confident fraction of each batch that gets the views beyond the plain one
            (``"flip"`` and ``"flip-translate"``; module docstring).

    Returns:
        An :class:`EvalResult`.
    """
    return _evaluate(
        model,
        loader,
        task=task,
        loss_fn=loss_fn,
        precision=precision,
        device=device,
        distributed=distributed,
        tta=tta,
        crop_size=crop_size,
        threshold=threshold,
        tta_fraction=tta_fraction,
    )


# --- the files of a finished run -------------------------------------------------------------------------------


def _to_uint8_hwc(x: Tensor, mean, std) -> np.ndarray:
    """Undo the normalisation of ``(N, C, H, W)`` → uint8 ``(N, H, W, C)``."""
    x = x.detach().float().cpu()
    c = x.shape[1]
    mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1).expand(1, c, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1).expand(1, c, 1, 1)
    pixels = ((x * std_t + mean_t) * 255.0).round().clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).numpy()


class _SampleKeeper:
    """Keeps the images at a few evenly spaced positions of the validation order, for the report's grid.

    Even spacing over an unshuffled, class-sorted validation set picks images from across the classes.
    """

    def __init__(self, total: int | None, mean, std, count: int = NUM_REPORT_SAMPLES) -> None:
        self.mean, self.std = mean, std
        if total:
            self.wanted = sorted({int(i) for i in np.linspace(0, total - 1, num=min(count, total)).round()})
        else:  # size unknown: the first `count`
            self.wanted = list(range(count))
        self.images: list[np.ndarray] = []
        self.index: list[int] = []

    def __call__(self, offset: int, x: Tensor, y: Tensor, out: Tensor) -> None:
        local = [i - offset for i in self.wanted if offset <= i < offset + x.shape[0]]
        if local:
            self.images.append(_to_uint8_hwc(x[local], self.mean, self.std))
            self.index.extend(i + offset for i in local)

    def take(self, images: np.ndarray) -> None:
        """The images at every wanted position, gathered without the model (`_gather_images`)."""
        self.images, self.index = [images], list(self.wanted)


def _topk(probs: Tensor, k: int) -> tuple[Tensor, Tensor]:
    k = min(k, probs.shape[1])
    values, indices = probs.topk(k, dim=1)
    return indices, values


def _target_cell(target: Tensor, task: str) -> str:
    if task == "multilabel":
        return ";".join(str(i) for i in (target >= 0.5).nonzero().flatten().tolist())
    return str(int(M.class_targets(target[None])[0]))


def _write_predictions(path: Path, probs: Tensor, targets: Tensor, task: str) -> None:
    indices, values = _topk(probs, TOPK)
    k = indices.shape[1]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["index", "target", *[f"pred_{j + 1}" for j in range(k)], *[f"prob_{j + 1}" for j in range(k)]])
    for i, (idx, val) in enumerate(zip(indices.tolist(), values.tolist())):
        w.writerow([i, _target_cell(targets[i], task), *idx, *(f"{v:.6f}" for v in val)])
    atomic_write_text(path, buf.getvalue())


def _gather_images(loader, wanted: np.ndarray, mean, std) -> np.ndarray:
    """uint8 ``(len(wanted), H, W, C)``: the images at the sorted positions ``wanted`` of one more pass over the
    loader (decoding only, no model), for the report's error gallery and confused pairs."""
    want = {int(i) for i in wanted}
    found: dict[int, np.ndarray] = {}
    offset = 0
    for x, _ in _batches(loader):
        local = [i - offset for i in range(offset, offset + x.shape[0]) if i in want]
        if local:
            found.update(zip((i + offset for i in local), _to_uint8_hwc(x[local], mean, std)))
        offset += x.shape[0]
        if len(found) == len(want):
            break
    return np.stack([found[int(i)] for i in wanted])


def _gallery(data, probs: Tensor, targets: Tensor) -> dict[str, np.ndarray]:
    """The arrays of ``imgcls.report.anatomy.select_gallery`` and the images they point to."""
    from imgcls.report.anatomy import select_gallery

    chosen = select_gallery(probs.numpy(), M.class_targets(targets).numpy())
    wanted = np.unique(np.concatenate([chosen["errors_index"], chosen["pair_index"].ravel()]))
    wanted = wanted[wanted >= 0]
    if len(wanted):
        chosen["gallery_index"] = wanted
        chosen["gallery_images"] = _gather_images(data.val, wanted, data.mean, data.std)
    return chosen


def finalize_run(
    run_dir: str | os.PathLike,
    model: nn.Module,
    data,
    *,
    precision: str = "fp32",
    device: str | torch.device = "cpu",
    distributed: bool = False,
    loss_fn: LossFn | None = None,
    tta: str = "none",
    tune_thresholds: bool = True,
    calibrate: bool = True,
    validated: EvalResult | None = None,
    tta_fraction: float = 1.0,
) -> dict:
    """Evaluate the final model on the validation split (and a separate test split, when the data has one) and
    write what the report reads.

    Files (rank 0 only when distributed; every rank must call then):

    - ``eval.json``: the task, class names and every metric of :func:`evaluate_model` (top-1/top-5, loss,
      per-class precision/recall/F1/support, confusion matrix; mAP and F1 for multi-label; ROC-AUC for binary).
      When ``data.test`` holds images, ``"test"`` has the same metrics on them — evaluated once, here, with
      everything already chosen on validation. Multi-label: ``"tuned_thresholds"``, the per-class thresholds
      that maximise each class's F1 on validation (:func:`imgcls.engine.metrics.tune_thresholds`), also stored
      in ``model.json`` (``thresholds``) for predict and serve; validation F1 is reported at 0.5 (at the tuned
      thresholds it would be optimistic), test F1 at the tuned thresholds. Multi-class and binary:
      ``"calibration"``, the expected calibration error and reliability bins before and after temperature scaling
      (:mod:`imgcls.engine.calibration`), with the temperature fitted on the validation logits of single views
      (as predict computes them) and stored in ``model.json`` (``temperature``) for predict, serve and export;
      ``"ece"`` is the ECE after it — optimistic, as it was fitted on these images; ``"test"`` has its own.
    - ``predictions.csv``: ``index, target, pred_1..pred_5, prob_1..prob_5`` — one row per validation image in
      loader order (rank order when distributed); a multi-label target is its positive indices joined by ``;``.
    - ``samples.npz``: ``images`` uint8 ``(S, H, W, C)`` (normalisation undone with ``data.mean``/``data.std``),
      ``index``, ``targets``, ``topk_indices``, ``topk_probs``, ``classes``, ``task`` — a few validation images
      for the report's grid; for its error gallery and most confused pairs (multi-class and binary, one
      process), the arrays of ``imgcls.report.anatomy.select_gallery`` with ``gallery_index`` and
      ``gallery_images`` (the images they point to, from one more pass over the loader, without the model).

    Args:
        run_dir: the run folder.
        model: the final (shipped) model.
        data: what ``imgcls.data.build_data`` returned (``val``, ``task``, ``classes``, ``mean``, ``std``, and
            ``test`` when the data has a separate test split).
        precision: autocast precision for the pass.
        device: where the model lives.
        distributed: gather across ranks.
        loss_fn: the validation loss; default as in :func:`evaluate_model`.
        tta: test-time augmentation, ``"none"``, ``"flip"`` or ``"flip-translate"`` (the recipe's
            ``train.final_tta``).
        tune_thresholds: multi-label only — tune per-class thresholds on validation (else 0.5 stays).
        calibrate: multi-class and binary — fit the temperature on validation (else ``model.json`` has none).
        validated: the single-view pass of these weights over ``data.val`` that training already made (its last
            validation, by :func:`evaluate_model` with the same precision and loss): used instead of a second
            identical pass, in one process — for everything when ``tta`` is ``"none"``, for the calibration's
            single views otherwise (and as the plain view of ``"flip"`` and ``"flip-translate"`` TTA, which then
            computes only the other views). The report's images then come from a pass over the loader without
            the model.
        tta_fraction: the least confident fraction of each batch that gets the other views (module docstring).

    Returns:
        The contents of ``eval.json`` as a dict.
    """
    run = RunFolder(run_dir)
    total = getattr(data.val, "num_samples", None)
    reuse = validated if validated is not None and not distributed and total else None
    keeper = _SampleKeeper(total if not distributed else None, data.mean, data.std)
    if reuse is not None and tta == "none":
        result = reuse
        keeper.take(_gather_images(data.val, np.asarray(keeper.wanted), data.mean, data.std))
    else:
        result = _evaluate(
            model,
            data.val,
            task=data.task,
            loss_fn=loss_fn,
            precision=precision,
            device=device,
            distributed=distributed,
            tta=tta,
            crop_size=None,
            threshold=0.5,
            on_batch=keeper,
            tta_fraction=tta_fraction,
            plain=reuse.logits if reuse is not None and tta in MIRRORED_TTA else None,
        )
    payload = {"task": data.task, "classes": list(data.classes), **result.metrics}
    thresholds = None
    if data.task == "multilabel" and tune_thresholds:
        thresholds = M.tune_thresholds(result.logits, result.targets)
        payload["tuned_thresholds"] = thresholds
    passes = dict(task=data.task, loss_fn=loss_fn, precision=precision, device=device, distributed=distributed)

    def single_view(loader, done: EvalResult) -> EvalResult:  # the logits predict computes
        if tta == "none":
            return done
        if loader is data.val and reuse is not None:
            return reuse
        return _evaluate(model, loader, tta="none", crop_size=None, threshold=0.5, **passes)

    temperature = None
    if data.task != "multilabel" and calibrate:
        from imgcls.engine.calibration import calibration_report, fit_temperature

        plain = single_view(data.val, result)
        temperature = fit_temperature(plain.logits, plain.targets)
        payload["calibration"] = calibration_report(plain.logits, plain.targets, temperature)
        payload["ece"] = payload["calibration"]["ece_calibrated"]
    test = getattr(data, "test", None)
    if test is not None and (getattr(test, "num_samples", None) or len(test)):
        # Evaluated once, here, with the weights and thresholds already fixed: the unbiased figure.
        measured = _evaluate(
            model,
            test,
            task=data.task,
            loss_fn=loss_fn,
            precision=precision,
            device=device,
            distributed=distributed,
            tta=tta,
            crop_size=None,
            threshold=thresholds if thresholds is not None else 0.5,
            tta_fraction=tta_fraction,
        )
        payload["test"] = measured.metrics
        if temperature is not None:
            plain = single_view(test, measured)
            payload["test"]["calibration"] = calibration_report(plain.logits, plain.targets, temperature)
            payload["test"]["ece"] = payload["test"]["calibration"]["ece_calibrated"]
    if D.rank() != 0:
        return payload
    run.write_eval(payload)
    meta = run.read_meta_or_none()
    if (thresholds is not None or temperature is not None) and meta is not None:
        # The weights are unchanged, so their SHA-256 in the record still holds.
        meta.thresholds, meta.temperature = thresholds, temperature
        run.write_meta(meta)
    probs = M.probabilities(result.logits, data.task)
    _write_predictions(run.predictions, probs, result.targets, data.task)
    kept = torch.as_tensor(keeper.index, dtype=torch.int64)
    top_idx, top_prob = _topk(probs[kept], TOPK)
    targets = result.targets[kept]
    targets = (targets >= 0.5).to(torch.uint8) if data.task == "multilabel" else M.class_targets(targets)
    images = np.concatenate(keeper.images) if keeper.images else np.zeros((0, 1, 1, 3), np.uint8)
    run.write_samples(
        images=images,
        index=kept.numpy(),
        targets=targets.numpy(),
        topk_indices=top_idx.numpy(),
        topk_probs=top_prob.numpy().astype(np.float32),
        classes=np.asarray(list(data.classes), dtype=str),
        task=np.asarray(data.task),
        **(_gallery(data, probs, result.targets) if data.task != "multilabel" and not distributed else {}),
    )
    return payload


# --- imgcls eval -----------------------------------------------------------------------------------------------


def _known_fields(cls, values: dict | None) -> dict:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in (values or {}).items() if k in names}


def evaluate(
    run: str | os.PathLike,
    data: str | None = None,
    tta: str = "none",
    *,
    precision: str = "fp32",
    device: str = "cpu",
    tta_fraction: float = 1.0,
) -> dict:
    """Measure a finished run again: backs ``imgcls eval --run RUN [--data SPEC] [--tta ...] [--json]``.

    The model and class map come from the run (``model.json`` + ``model.safetensors``, SHA-256 checked). Without
    ``data`` the run's own validation split is evaluated, exactly as training saw it (the spec in ``config.json``,
    its data settings and seed). With ``data`` all of it is: every image of a folder of class subfolders or a CSV
    list, the held-out ``test/`` (else ``val/``) of a ``train/`` layout, a built-in's test set. Only the evaluated
    images are listed and decoded, with the run's normalisation and resize. The data's classes must be among the
    run's (a folder may hold fewer); a class the run does not know is refused.

    Args:
        run: the run folder.
        data: a data SPEC to evaluate on instead of the run's own validation data.
        tta: ``"none"``, ``"flip"``, ``"flip-translate"`` or ``"ten-crop"``.
        precision: autocast precision (``"fp32"`` by default: evaluation is exact unless asked otherwise);
            ``"run"``: the precision the run trained and was evaluated in (``config.json``'s ``run.precision``),
            as its ``eval.json`` was computed (bf16 on a CPU with bf16 units: 1.7-2.2x faster than fp32 there).
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        tta_fraction: with ``"flip"`` or ``"flip-translate"``, the least confident fraction of each batch that
            gets the other views (module docstring).

    Returns:
        ``{"top1", "top5", "loss", ...}`` in percent, with per-class metrics, the confusion matrix and
        ``run``, ``data``, ``split`` (``val``, ``test`` or ``all``), ``task``, ``classes``, ``tta``. Multi-class
        and binary add ``"calibration"`` (:func:`imgcls.engine.calibration.calibration_report`: ECE and
        reliability bins, before and after the run's temperature) and ``"ece"``, the ECE of the probabilities
        predict answers (after the temperature). With test-time augmentation the temperature (fitted on single
        views) is not applied.
    """
    from imgcls.data import DataConfig, build_eval_data
    from imgcls.data.augment import AugmentConfig
    from imgcls.engine.bundle import load_bundle

    run = RunFolder(run).require("run folder")
    if tta not in TTA_MODES:
        raise UserError(f"--tta: {tta!r} is not one of {', '.join(TTA_MODES)}")
    _check_fraction(tta, tta_fraction)
    device = resolve_device(device)
    model, meta = load_bundle(run, map_location=device)
    if tta != "none" and getattr(model, "is_classic", False):
        from imgcls.classic import not_applicable

        raise not_applicable(f"--tta {tta} (test-time augmentation)", meta.name)
    config = run.read_config() or {}
    saved_data = config.get("data") if isinstance(config.get("data"), dict) else {}
    spec = data if data is not None else saved_data.get("spec")
    if not spec:
        raise UserError(f"{run.config}: no data.spec saved in the run; pass --data SPEC")
    train_cfg = config.get("train") if isinstance(config.get("train"), dict) else {}
    seed = int(train_cfg.get("seed", config.get("seed", 0)) or 0)
    if precision == "run":
        recorded = config.get("run") if isinstance(config.get("run"), dict) else {}
        precision = str(recorded.get("precision") or train_cfg.get("precision") or "fp32")
    crop = int(meta.input_size[-1])
    resize = int(meta.resize or crop)
    # Ten-crop needs the square *before* the center crop: build the loader at the resize size.
    image_size = resize if tta == "ten-crop" else crop
    if tta == "ten-crop" and resize <= crop:
        raise UserError(
            f"--tta ten-crop: the run evaluates at {crop}px without a larger resize ({resize}px), so there is "
            "nothing to crop from"
        )
    data_cfg = DataConfig.from_dict(_known_fields(DataConfig, saved_data))
    # The run's own resize/crop, not one chosen again from (maybe other) images, so that evaluation sees what
    # training's validation saw; for ten-crop no center crop: the loader yields the resize×resize square.
    data_cfg = dataclasses.replace(data_cfg, crop_pct=1.0 if tta == "ten-crop" else crop / resize)
    aug_cfg = AugmentConfig.from_dict(_known_fields(AugmentConfig, config.get("augment")))
    # The run's own data: exactly training's validation split. Data given with --data: all of it (a folder's
    # held-out test/ or val/ when it has the train/ layout). Only the evaluated images are listed and decoded.
    built = build_eval_data(
        spec,
        data_cfg,
        aug_cfg,
        image_size=image_size,
        in_chans=meta.in_chans,
        mean=list(meta.mean),
        std=list(meta.std),
        resize=resize,
        split="val" if data is None else "auto",
        task=meta.task,
        classes=list(meta.classes),
        seed=seed,
        device=str(device),
    )
    result = evaluate_model(
        model,
        built.loader,
        task=meta.task,
        precision=precision,
        device=device,
        tta=tta,
        crop_size=crop,
        tta_fraction=tta_fraction,
    )
    calibration = {}
    if meta.task != "multilabel":
        from imgcls.engine.calibration import calibration_report

        temperature = meta.temperature if tta == "none" else None
        report = calibration_report(result.logits, result.targets, temperature)
        calibration = {"calibration": report, "ece": report.get("ece_calibrated", report["ece"])}
    return {
        "run": str(run.root),
        "data": str(spec),
        "split": built.split,
        "task": meta.task,
        "classes": list(meta.classes),
        **result.metrics,
        **calibration,
    }


__all__ = [
    "TTA_MODES",
    "EvalResult",
    "evaluate",
    "evaluate_model",
    "finalize_run",
]
