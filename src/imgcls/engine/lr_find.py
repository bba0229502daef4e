"""The learning-rate range test: a short run whose learning rate grows exponentially, read for a good peak rate.

Smith (2017, "Cyclical Learning Rates for Training Neural Networks", arXiv:1506.01186, Section 3.3) trains a
network for a short while with the learning rate rising from a very small to a large value and reads off the
range in which the loss falls; fastai's ``lr_find`` made the sweep exponential (every decade gets the same
number of steps) and suggests a rate from the smoothed loss curve. This module does the same with the run's own
model, data, augmentation, optimiser (momentum, weight decay, layer-wise multipliers) and loss:

1. ``steps`` optimiser steps on training batches (epochs of the training split replayed as needed), the rate of
   step ``i`` being ``start * (end / start) ** (i / (steps - 1))``; each parameter group keeps its ratio to the
   headline rate (``optim.lr``), so a backbone multiplier or the airbench BatchNorm-shift group scale with it.
2. An exponential moving average of the loss (bias-corrected, ``beta`` 0.9) stops the sweep early once it exceeds
   ``diverge`` (4) times its minimum, or the loss is not finite: past that point the curve says nothing more.
3. The suggestion is read from a *centred* moving average of the recorded losses (window: a tenth of the
   steps, at least 5), which does not lag behind the rising rate as the running average does: a tenth of the
   rate at its minimum (the loss is lowest shortly before it blows up; a peak rate ten times lower is
   the usual margin, fastai's ``lr_min``). The rate of the steepest descent before the minimum is recorded too.
4. The model, the optimiser, the loss scaler and every random number generator are restored, so a run that
   tests first then trains exactly as one started at the suggested rate.

``train.lr_find: true`` runs the test at the start of ``imgcls train`` and trains at the suggestion; ``imgcls
lr-find`` runs it alone. Either writes ``lr_find.json`` (the curve and the reading) and ``lr_find.png``.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imgcls.errors import UserError

SMOOTHING = 0.9  # running-average factor of the divergence check
DIVERGE = 4.0  # stop once the running average exceeds this many times its minimum
SUGGESTION_MARGIN = 10.0  # the suggestion is the rate of the lowest (centred) loss divided by this


@dataclass
class LRFinding:
    """The curve of one range test and what it suggests.

    Attributes:
        lrs: the headline learning rate of each step taken.
        losses: the training loss of each step (``None`` where it was not finite).
        smoothed: the centred moving average of ``losses`` the suggestion is read from.
        suggestion: the suggested peak learning rate (within ``[start, end]``).
        min_loss_lr: the rate at the lowest smoothed loss.
        steepest_lr: the rate where the smoothed loss falls fastest before its minimum (``None`` if it never falls).
        start, end: the tested range; ``steps``: the steps planned (``len(lrs)`` may be fewer).
        stopped_early: the sweep ended before ``end`` because the loss diverged.
    """

    lrs: list[float]
    losses: list[float | None]
    smoothed: list[float | None]
    suggestion: float
    min_loss_lr: float
    steepest_lr: float | None
    start: float
    end: float
    steps: int
    stopped_early: bool
    rule: str = field(default=f"a tenth ({1 / SUGGESTION_MARGIN:g}) of the rate at the lowest centred-average loss")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        """The reading without the curve (what ``config.json`` records)."""
        keys = ("suggestion", "min_loss_lr", "steepest_lr", "start", "end", "steps", "stopped_early", "rule")
        return {k: getattr(self, k) for k in keys} | {"steps_taken": len(self.lrs)}


def exponential_rates(start: float, end: float, steps: int) -> list[float]:
    """``steps`` rates from ``start`` to ``end``, equally spaced in log scale (both ends included)."""
    if not (0 < start < end) or not all(math.isfinite(v) for v in (start, end)):
        raise UserError(f"train.lr_find_range: needs 0 < start < end, got [{start:g}, {end:g}]")
    if steps < 2:
        raise UserError(f"train.lr_find_steps: needs at least 2 steps, got {steps}")
    ratio = end / start
    return [start * ratio ** (i / (steps - 1)) for i in range(steps)]


def centred_average(values: list[float | None], window: int) -> list[float | None]:
    """Mean of each value's ``window`` neighbours (``window // 2`` either side, fewer at the ends); missing
    values are left out and give ``None`` where a neighbourhood holds none."""
    half = max(0, window // 2)
    out: list[float | None] = []
    for i in range(len(values)):
        near = [v for v in values[max(0, i - half) : i + half + 1] if v is not None]
        out.append(sum(near) / len(near) if near else None)
    return out


def read_curve(lrs: list[float], losses: list[float | None], start: float, end: float, steps: int, stopped: bool):
    """The suggestion of a recorded curve (module docstring, step 3) as an `LRFinding`."""
    if not lrs or all(v is None for v in losses):
        raise UserError("lr-find: no step gave a finite loss (the model or data give NaN from the start)")
    window = max(5, steps // 10)
    smoothed = centred_average(losses, window)
    # Ignore the ends, where the centred window is one-sided (at least one value stays).
    edge = min(window // 2, (len(lrs) - 1) // 2)
    candidates = [i for i in range(edge, len(lrs) - edge) if smoothed[i] is not None]
    if not candidates:
        candidates = [i for i, v in enumerate(smoothed) if v is not None]
    best = min(candidates, key=lambda i: smoothed[i])
    slopes = [
        ((smoothed[i + 1] - smoothed[i]) / math.log(lrs[i + 1] / lrs[i]), i)
        for i in candidates
        if i < best and i + 1 < len(lrs) and smoothed[i + 1] is not None
    ]
    steepest = min(slopes)[1] if slopes and min(slopes)[0] < 0 else None
    suggestion = min(max(lrs[best] / SUGGESTION_MARGIN, start), end)
    return LRFinding(
        lrs=list(lrs),
        losses=list(losses),
        smoothed=smoothed,
        suggestion=suggestion,
        min_loss_lr=lrs[best],
        steepest_lr=lrs[steepest] if steepest is not None else None,
        start=start,
        end=end,
        steps=steps,
        stopped_early=stopped,
    )


def _batches(loader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Training batches for ever: epoch 0, 1, ... of the loader (its order and augmentation, as training)."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        empty = True
        for batch in loader.iterate():
            empty = False
            yield batch
        if empty:
            raise UserError("lr-find: the training split gives no batches")
        epoch += 1


def range_test(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader,
    train_step: Callable[[Iterator[tuple[torch.Tensor, torch.Tensor]]], float],
    *,
    headline_lr: float,
    start: float,
    end: float,
    steps: int,
    extra_state: Sequence[Any] = (),
) -> LRFinding:
    """Sweep the learning rate of ``optimizer`` from ``start`` to ``end`` over ``steps`` steps of ``train_step``.

    Args:
        net: the model ``train_step`` trains (its state is restored afterwards).
        optimizer: groups carrying ``base_lr`` (`imgcls.engine.optim.build_optimizer`); group ``g`` runs at
            ``base_lr_g * lr / headline_lr`` for headline rate ``lr``. Restored afterwards.
        loader: the training `BatchLoader`.
        train_step: ``fn(batches) -> loss``: takes the batches of one optimiser step from the iterator (more than
            one under gradient accumulation), runs forward and backward, and steps at the rates set here.
        headline_lr: the rate the groups' ``base_lr`` were built for (``optim.lr``).
        start, end, steps: the sweep.
        extra_state: objects with ``state_dict``/``load_state_dict`` to restore as well (a loss scaler).

    Returns:
        The curve and its reading (`read_curve`).
    """
    from imgcls.engine.checkpoint import rng_state, set_rng_state

    rates = exponential_rates(start, end, steps)
    saved_net = copy.deepcopy(net.state_dict())
    saved_opt = copy.deepcopy(optimizer.state_dict())
    saved_extra = [copy.deepcopy(obj.state_dict()) for obj in extra_state]
    saved_rng = rng_state()
    lrs: list[float] = []
    losses: list[float | None] = []
    running, best, stopped = 0.0, math.inf, False
    try:
        batches = _batches(loader)
        for i, lr in enumerate(rates):
            for group in optimizer.param_groups:
                group["lr"] = group.get("base_lr", headline_lr) * lr / headline_lr
            loss = float(train_step(batches))
            lrs.append(lr)
            if not math.isfinite(loss):
                losses.append(None)
                stopped = i + 1 < len(rates)
                break
            losses.append(loss)
            running = SMOOTHING * running + (1 - SMOOTHING) * loss
            average = running / (1 - SMOOTHING ** (i + 1))
            best = min(best, average)
            if i >= max(5, steps // 10) and average > DIVERGE * best:
                stopped = i + 1 < len(rates)
                break
    finally:
        net.load_state_dict(saved_net)
        optimizer.load_state_dict(saved_opt)
        for obj, state in zip(extra_state, saved_extra):
            obj.load_state_dict(state)
        set_rng_state(saved_rng)
    return read_curve(lrs, losses, start, end, steps, stopped)


def write_finding(finding: LRFinding, json_path: str | os.PathLike, plot_path: str | os.PathLike) -> None:
    """``lr_find.json`` (curve and reading, strict JSON) and ``lr_find.png`` (loss against rate, log scale)."""
    import json

    from imgcls._files import atomic_write_bytes

    text = json.dumps(finding.to_dict(), indent=1, allow_nan=False)
    atomic_write_bytes(json_path, (text + "\n").encode("utf-8"))
    plot_finding(finding, Path(plot_path))


def plot_finding(finding: LRFinding, path: Path) -> Path:
    """The loss (points) and its centred average (line) against the learning rate, the suggestion marked."""
    import io

    from matplotlib.figure import Figure

    from imgcls._files import atomic_write_bytes

    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    pairs = [(lr, v) for lr, v in zip(finding.lrs, finding.losses) if v is not None]
    smooth = [(lr, v) for lr, v in zip(finding.lrs, finding.smoothed) if v is not None]
    if pairs:
        ax.plot(*zip(*pairs), ".", color="#9aa5b1", markersize=3, label="loss per step")
    if smooth:
        ax.plot(*zip(*smooth), "-", color="#1f4e79", linewidth=1.8, label="centred average")
    ax.axvline(finding.suggestion, color="#c0392b", linestyle="--", label=f"suggested lr {finding.suggestion:.3g}")
    ax.axvline(finding.min_loss_lr, color="#7f8c8d", linestyle=":", label=f"lowest loss at {finding.min_loss_lr:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title("learning-rate range test")
    values = [v for _, v in smooth] or [v for _, v in pairs]
    if values:  # keep the diverged tail from flattening the interesting part
        low, first = min(values), values[0]
        ax.set_ylim(low - 0.1 * abs(low) - 1e-3, max(first, low) * 1.5 + 1e-3)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(path, buf.getvalue())


def find_lr(cfg) -> LRFinding:
    """``imgcls lr-find``: the range test alone for a run configuration (``train.lr_find_*`` settings), the files
    written to ``train.out`` when it is given. Nothing else is written."""
    from imgcls.engine.train import run_range_test_alone

    return run_range_test_alone(cfg)


__all__ = [
    "LRFinding",
    "centred_average",
    "exponential_rates",
    "find_lr",
    "plot_finding",
    "range_test",
    "read_curve",
    "write_finding",
]
