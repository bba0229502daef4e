"""The training loop: ``train(cfg) -> RunResult``.

One run fills one run folder (DESIGN.md, "The run folder"). Nothing is written before every setting, the model's
options and input size (built once on the meta device) and the data have been checked, so a refused start
leaves no folder behind; a start that fails before its first checkpoint removes what it wrote. Then:
``config.json`` first, ``checkpoints/last.pt`` at every epoch end (and mid-epoch every
``checkpoint_every_steps`` optimiser steps or ``checkpoint_every_seconds``), a ``metrics.csv`` row and a summary
line per epoch, ``model.safetensors`` + ``model.json`` (the best epoch by ``train.select_metric``, or the last),
and at the end ``eval.json``, ``predictions.csv``, ``samples.npz`` and ``report/``. Weights that are NaN or
infinite are never written: the run fails instead.

``metrics.csv`` columns: ``epoch``, ``train_loss``, ``val_loss``, ``val_top1``, ``val_top5``, ``val_mAP``
(multi-label), ``lr`` and ``lr_mean`` (both the mean learning rate of the epoch's optimiser steps: the rate the
steps used, not the one left after the last), ``lr_max`` (the epoch's highest: a one-cycle peak shows), and
``seconds``. Each optimiser step's rate also goes to TensorBoard (``lr`` by step). At the end
``config.json`` gains ``run.selection``: the metric, the best epoch and its value, the last epoch's row, and
which of the two the shipped weights are.

The parts, each a function of what it needs: :func:`_set_up` (check, build, create the folder, restore a
resume), :func:`train_one_epoch`, :func:`_end_of_epoch` (validation, schedule, files, summary) and
:func:`_finish` (the shipped weights, the final evaluation and report). Everything a resume needs lives in
:class:`TrainState` and the components of :class:`_Session`; :meth:`_Session.checkpoint_state` writes the
checkpoint dict and :meth:`_Session.restore` reads it, the only two places that know its keys.

Exact resume: the data layer derives sample order and augmentation from ``(seed, epoch, batch index)`` only,
and the checkpoint stores the batch index together with every RNG state (dropout), so a run resumed from any
checkpoint continues with bit-identical weights. Checkpoints are only taken at optimiser-step boundaries
(never with half-accumulated gradients).

Model hook: a model with an ``init_whitening(images)`` method (e.g. airbench's frozen patch-whitening layer)
gets a float ``(N, C, H, W)`` sample of ``train.init_whitening_images`` normalised, augmented training images
(the first batches of epoch 1) before training starts; a resumed run restores its weights instead.

Freezing: ``optim.freeze_backbone`` trains the classifier alone; ``train.freeze_after`` maps parameter-name
prefixes to the number of epochs they learn for (airbench trains its whitening bias for 3 epochs, then freezes
it; with ``schedule.end_at_freeze`` its own learning rate reaches the schedule's end as it freezes). A frozen
parameter gets no update (no momentum, no decay); in one process it also stops requiring a gradient, so
autograd skips what only it needed. A module whose parameters are all frozen stays in eval mode
while the rest trains, so its BatchNorm running statistics (and dropout) are frozen too: a linear probe leaves
every backbone parameter and buffer bit-identical.

Validation runs every ``train.val_every`` epochs and always after the last; epochs in between get empty
validation columns in ``metrics.csv`` (a speedrun spends nothing on numbers nobody reads).

Weight averaging: ``train.ema_decay`` keeps an EMA copy that is evaluated and shipped; ``train.lookahead_k``
runs Lookahead (`imgcls.engine.lookahead`), whose slow weights become the model's at the end of the last epoch.

Under ``torchrun`` the model is wrapped in ``DistributedDataParallel``; each rank reads its shard; rank 0
alone writes files; the loss/accuracy are reduced over ranks; stop, skip and save decisions are agreed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imgcls._files import FileLock
from imgcls.engine import distributed as D
from imgcls.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from imgcls.engine.config import MAX_IMAGE_SIZE, RunConfig, config_record
from imgcls.engine.device import describe, device_settings
from imgcls.engine.ema import ModelEma
from imgcls.engine.lookahead import Lookahead
from imgcls.engine.losses import build_loss, compute_loss
from imgcls.engine.optim import build_optimizer
from imgcls.engine.precision import (
    CompileClock,
    Precision,
    maybe_compile,
    resolve_device,
    resolve_precision,
    use_channels_last,
)
from imgcls.engine.schedule import LRSchedule
from imgcls.errors import UserError
from imgcls.run_folder import RunFolder

CHECKPOINT = Path(RunFolder.CHECKPOINT)  # relative to the run folder
METRICS_COLUMNS = (
    "epoch",
    "train_loss",
    "val_loss",
    "val_top1",
    "val_top5",
    "val_mAP",
    "lr",
    "lr_mean",
    "lr_max",
    "seconds",
)
# train.select_metric -> (metrics.csv column, higher is better)
SELECTION = {
    "top1": ("val_top1", True),
    "top5": ("val_top5", True),
    "mAP": ("val_mAP", True),
    "loss": ("val_loss", False),
}


class TrainingDiverged(UserError):
    """The loss or its gradient stayed NaN/Inf for ``max_bad_steps`` steps in a row, or the weights became
    non-finite (lower the learning rate)."""


@dataclass
class RunResult:
    """What a finished run reports."""

    run_dir: Path
    epochs: int
    best_top1: float | None
    best_epoch: int | None
    top1: float | None  # of the shipped weights on the validation split
    top5: float | None
    seconds: float
    precision: str
    report: Path | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    select_metric: str = "top1"  # what best_epoch was chosen by
    best_value: float | None = None  # its value at best_epoch


def _fresh_stats() -> dict[str, float | int]:
    """What one epoch accumulates (carried through mid-epoch checkpoints)."""
    return {
        "loss_sum": 0.0,
        "seen": 0,
        "correct": 0,
        "counted": 0,
        "seconds": 0.0,
        "lr_sum": 0.0,
        "lr_steps": 0,
        "lr_max": 0.0,
    }


@dataclass
class TrainState:
    """Where a run is: everything of a resume that is not a component's own state.

    Attributes:
        epoch: the epoch in progress, 0-based (equals the epochs finished at an epoch boundary).
        batch: batches of that epoch already trained (the sampler position).
        step: optimiser steps taken.
        history: one ``metrics.csv`` row per finished epoch.
        best: ``{"epoch", "value"}`` of the best validated epoch by the selection metric, or None.
        epoch_stats: the running sums of the epoch in progress (`_fresh_stats`).
        rng: every rank's RNG states at the last checkpoint (restored before the loop of a resumed run).
    """

    epoch: int = 0
    batch: int = 0
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    epoch_stats: dict[str, float | int] = field(default_factory=_fresh_stats)
    rng: list | None = None

    def state_dict(self) -> dict[str, Any]:
        best = self.best or {}
        return {
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "history": list(self.history),
            "best_epoch": best.get("epoch"),
            "best_value": best.get("value"),
            "epoch_stats": dict(self.epoch_stats),
            "rng": self.rng,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.batch, self.step = int(state["epoch"]), int(state["batch"]), int(state["step"])
        self.history = list(state["history"])
        value = state.get("best_value", state.get("best_top1"))  # format 1 checkpoints chose by top-1
        self.best = {"epoch": state["best_epoch"], "value": value} if state.get("best_epoch") is not None else None
        stats = _fresh_stats()
        stats.update(state.get("epoch_stats") or {})
        self.epoch_stats = {k: type(_fresh_stats()[k])(v) for k, v in stats.items() if k in _fresh_stats()}
        self.rng = state.get("rng")


# --- the run folder --------------------------------------------------------------------------------------------


def check_run_dir(out: str | None, *, resume: bool, overwrite: bool) -> Path:
    """Validate ``--out`` without writing anything; returns the folder (which may not exist yet).

    Refuses a folder holding another run unless ``resume`` or ``overwrite``, a non-empty folder that is not a
    run unless ``overwrite`` (its files are the user's), a file in place of the folder, and a place that cannot
    be written to.
    """
    if not out:
        raise UserError("--out is required: the folder this run writes to")
    run = Path(out)
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other: choose one")
    if run.exists() and not run.is_dir():
        raise UserError(f"--out {run}: exists and is not a folder")
    folder = RunFolder(run)
    if resume:
        if not folder.checkpoint.is_file():
            raise UserError(f"--resume: no checkpoint at {folder.checkpoint}")
    elif folder.holds_run() and not overwrite:
        raise UserError(f"--out {run}: already holds a run (use --resume to continue it or --overwrite to replace it)")
    elif run.is_dir() and not overwrite and any(p.name != RunFolder.LOCK for p in run.iterdir()):
        raise UserError(f"--out {run}: is a non-empty folder that holds no run (choose another or add --overwrite)")
    existing = run
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--out {run}: cannot write there ({existing} is not a writable folder)")
    return run


def _make_run_dir(run: Path) -> Path | None:
    """Create the run folder; returns the topmost folder this created (None when it existed)."""
    top = None
    for folder in (run, *run.parents):
        if folder.exists():
            break
        top = folder
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {run}: cannot write there ({exc.strerror or exc})") from None
    return top


# --- what the user sees ----------------------------------------------------------------------------------------


class _Progress:
    """A tqdm bar on a terminal, a few plain lines otherwise (CI logs stay readable), nothing on ranks > 0."""

    def __init__(self, mode: str, total: int, start: int, desc: str, enabled: bool):
        if mode == "auto":
            mode = "bar" if sys.stdout.isatty() else "lines"
        self.mode = mode if enabled else "none"
        self.total, self.done, self.start, self.desc = total, start, start, desc
        self.every = max(1, total // 4)
        self.t0 = time.perf_counter()
        self.images = 0
        self.bar = None
        if self.mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc=desc, leave=False, dynamic_ncols=True, file=sys.stdout)

    def update(self, images: int, loss: float, acc: float | None) -> None:
        self.done += 1
        self.images += images
        if self.mode == "none":
            return
        rate = self.images / max(time.perf_counter() - self.t0, 1e-9)
        acc_text = "—" if acc is None else f"{acc:.1f}%"
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {loss:.4f} acc {acc_text} {rate:,.0f} img/s", refresh=False)
            self.bar.update(1)
        elif self.done % self.every == 0 or self.done == self.total:
            per_batch = (time.perf_counter() - self.t0) / max(self.done - self.start, 1)
            eta = (self.total - self.done) * per_batch
            print(
                f"{self.desc} [{self.done}/{self.total}] loss {loss:.4f} acc {acc_text} "
                f"{rate:,.0f} img/s eta {_duration(eta)}",
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return (
        f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else (f"{seconds // 60}:{seconds % 60:02d}")
    )


def _say(info: D.DistInfo, text: str) -> None:
    if info.is_main:
        print(text, flush=True)


class _TensorBoard:
    """Event files under ``RUN/tensorboard`` when the ``tensorboard`` package is installed."""

    def __init__(self, folder: Path, enabled: bool):
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return
        self.writer = SummaryWriter(str(folder))

    def step(self, step: int, lr: float) -> None:
        """The learning rate optimiser step ``step`` used."""
        if self.writer is not None:
            self.writer.add_scalar("lr", lr, step)

    def epoch(self, row: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key in ("train_loss", "val_loss", "val_top1", "val_top5", "val_mAP"):
            if row.get(key) is not None:
                self.writer.add_scalar(key, row[key], row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class _StopSignals:
    """SIGTERM / SIGINT set a flag; the loop checkpoints at the next step boundary and stops."""

    def __init__(self):
        self.received: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received is not None:  # a second Ctrl-C: the user means it
            raise KeyboardInterrupt
        self.received = signum

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


# --- checks before anything is written ---------------------------------------------------------------------------


def _check_settings(cfg: RunConfig) -> None:
    """What the settings alone can tell (each section already checked its own types and ranges)."""
    if not cfg.model.name:
        raise UserError("--model is required (see `imgcls models`)")
    if not cfg.data_spec:
        raise UserError("--data is required: a folder, a CSV file or a built-in name such as digits")
    out, spec = cfg.train.out, Path(cfg.data_spec)
    if out and spec.is_dir() and Path(out).resolve().is_relative_to(spec.resolve()):
        raise UserError(f"--out {out}: is inside --data {cfg.data_spec} (the run's files would become data)")
    tc = cfg.train
    if tc.early_stopping and tc.save != "best":
        raise UserError(
            f"train.early_stopping {tc.early_stopping}: ships the best epoch, so it needs train.save best "
            f"(not {tc.save})"
        )
    if tc.early_stopping and tc.val_every == 0:
        raise UserError(
            "train.early_stopping: needs validation during the run (train.val_every 0 validates after the last "
            "epoch only)"
        )
    if tc.select_from_epoch > tc.epochs and tc.save == "best":
        raise UserError(
            f"train.select_from_epoch {tc.select_from_epoch}: the run has only {tc.epochs} epoch(s), so no epoch "
            "could be chosen as the best (lower it, or train longer)"
        )
    if tc.unfreeze_after > tc.epochs:
        raise UserError(
            f"train.unfreeze_after {tc.unfreeze_after}: the run has only {tc.epochs} epoch(s), so the backbone would "
            "never train (train longer, or use --freeze-backbone to train the classifier alone)"
        )


def absolute_spec(spec: str) -> str:
    """The ``--data`` SPEC as ``config.json`` keeps it: a built-in name as it is, anything else as an absolute path
    (so ``eval``, ``--resume`` and the report find the data from any working directory).

    The rule for a name that is both: a built-in name always means the built-in set (``digits`` is the bundled
    digits even where a folder ``./digits`` exists, as the data layer reads it); write ``./digits`` (or any path
    with a separator) for the folder. Symbolic links are kept as given (``os.path.abspath``, not ``realpath``).
    """
    from imgcls.data.sources import BUILTINS

    text = str(spec)
    if text in BUILTINS:
        return text
    return os.path.abspath(os.path.expanduser(text))


def _check_model(name: str, in_chans: int, image_size: int, kwargs: dict[str, Any]) -> None:
    """Build the model on the meta device (no memory, no weights) and pass it one batch at ``image_size``.

    Raises:
        UserError: an option the model does not take or a value it refuses (``model.kwargs``), or an input
            size it cannot take (with the smallest it does take).
    """
    from imgcls.models import create_model, on_meta

    try:
        with on_meta():
            net = create_model(name, num_classes=2, in_chans=in_chans, **kwargs)
    except UserError as exc:  # an option the model does not have (create_model lists the ones it has)
        if not kwargs:
            raise
        raise UserError(f"model.kwargs: {exc}") from None
    except (TypeError, ValueError) as exc:
        if not kwargs:
            raise
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"model.kwargs {kwargs}: {name} refuses them ({reason})") from None
    net.train()

    def takes(size: int) -> bool:
        try:
            with torch.no_grad():
                net(torch.empty(2, in_chans, size, size, device="meta"))
        except NotImplementedError:
            return True  # an operator without a meta kernel: the size cannot be judged here
        except (RuntimeError, ValueError, IndexError):
            return False
        return True

    if takes(image_size):
        return
    low, high = image_size, image_size
    while high <= MAX_IMAGE_SIZE and not takes(high):
        low, high = high, high * 2
    if high > MAX_IMAGE_SIZE:
        raise UserError(f"--image-size {image_size}: {name} cannot run on {in_chans}-channel {image_size}px input")
    while high - low > 1:  # takes(high), not takes(low)
        mid = (low + high) // 2
        low, high = (low, mid) if takes(mid) else (mid, high)
    raise UserError(f"--image-size {image_size}: too small for {name} (the smallest it takes is {high})")


def _build_data(cfg: RunConfig, info: D.DistInfo, device: str, image_size: int, in_chans: int):
    """The data layer's loaders: rank 0 first (it may download or fill the decode cache), then the others."""
    from imgcls.data import build_data

    def build():
        return build_data(
            cfg.data_spec,
            cfg.data,
            cfg.augment,
            image_size=image_size,
            in_chans=in_chans,
            seed=cfg.train.seed,
            rank=info.rank,
            world_size=info.world_size,
            device=device,
            task=cfg.train.task,
        )

    data, error = None, None
    if info.is_main:
        try:
            data = build()
        except UserError as exc:
            error = str(exc)
    error = D.broadcast_object(error)
    if error is not None:
        raise UserError(error)
    if data is None:
        data = build()
    D.check_same(json.dumps([list(data.classes), data.task, data.train.num_samples]), "the class map and file list")
    if len(data.train) == 0 or data.train.num_samples < cfg.data.batch_size:
        raise UserError(
            f"--batch-size {cfg.data.batch_size} is larger than the {data.train.num_samples} training images "
            f"of {cfg.data_spec} per process"
        )
    return data


def _selection(select_metric: str, task: str, num_classes: int) -> tuple[str, str, bool]:
    """``(metric, metrics.csv column, higher is better)`` of ``train.select_metric`` for this data."""
    metric = ("mAP" if task == "multilabel" else "top1") if select_metric == "auto" else select_metric
    if metric == "mAP" and task != "multilabel":
        raise UserError(f"train.select_metric mAP: needs multi-label data (this is {task}; use top1 or loss)")
    if metric == "top5" and (num_classes < 5 or task == "multilabel"):
        raise UserError(f"train.select_metric top5: undefined for {num_classes} classes ({task}); use top1 or loss")
    column, higher = SELECTION[metric]
    return metric, column, higher


def batch_size_warning(num_images: int, batch_size: int, accum_steps: int = 1) -> str | None:
    """The warning for an epoch of fewer than 10 optimiser steps, or one whose dropped last batch leaves out more
    than 10 % of the training images, with the largest power-of-two batch size that avoids both; None when fine.

    ``num_images`` and ``batch_size`` are per process; a training epoch drops its last incomplete batch.
    """

    def steps_and_dropped(batch: int) -> tuple[int, int]:
        batches = num_images // batch if num_images >= batch else 1
        return math.ceil(batches / accum_steps), max(0, num_images - batches * batch)

    def fine(batch: int) -> bool:
        steps, dropped = steps_and_dropped(batch)
        return steps >= 10 and dropped <= 0.1 * num_images

    if num_images <= 0 or fine(batch_size):
        return None
    steps, dropped = steps_and_dropped(batch_size)
    suggestion = max((b for b in (2**k for k in range(batch_size.bit_length())) if fine(b)), default=1)
    s_steps, s_dropped = steps_and_dropped(suggestion)
    return (
        f"imgcls: warning: --batch-size {batch_size} on {num_images} training images gives {steps} step"
        f"{'s' if steps != 1 else ''} per epoch and leaves {dropped} image{'s' if dropped != 1 else ''} "
        f"({100 * dropped / num_images:.0f} %) out of every epoch; --batch-size {suggestion} gives {s_steps} "
        f"steps and leaves {s_dropped} out"
    )


# --- the session: what set-up builds and every later part uses ----------------------------------------------------


@dataclass
class _Session:
    """The built components of one run (no loop state: that is :class:`TrainState`)."""

    cfg: RunConfig
    info: D.DistInfo
    device: str
    run: Path
    data: Any
    net: nn.Module  # the model being trained, unwrapped
    model: nn.Module  # what the loop calls: compiled and/or DDP-wrapped `net`
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    scaler: Any
    ema: ModelEma | None
    lookahead: Lookahead | None
    precision: Precision
    loss_fn: nn.Module
    val_loss_fn: nn.Module
    aux_weights: tuple[float, ...]
    channels_last: bool
    backbone_frozen: set[int]  # ids of the parameters optim.freeze_backbone froze
    first_stage: set[int]  # ids of the parameters train.unfreeze_after holds frozen for its first epochs
    meta: Any  # bundle.ModelMeta of the shipped weights
    select: tuple[str, str, bool]  # `_selection`
    tb: _TensorBoard
    created: Path | None = None  # the topmost folder this run created (removed if the start fails)
    checkpointed: bool = False  # a checkpoint of this run exists (a failed run is resumable)
    bad_in_a_row: int = 0  # optimiser steps skipped in a row for a non-finite loss or gradient
    last_checkpoint: float = field(default_factory=time.monotonic)
    lock: FileLock | None = None  # rank 0: the run folder's lock, held until the run ends
    compile_clock: CompileClock = field(default_factory=lambda: CompileClock(False))  # torch.compile's time
    validated: tuple[int, Any] | None = None  # (epoch, EvalResult) of the latest validation of the shipped model

    @property
    def task(self) -> str:
        return self.data.task

    @property
    def files(self) -> RunFolder:
        return RunFolder(self.run)

    def shipped(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.net

    def checkpoint_state(self, state: TrainState) -> dict[str, Any]:
        """The checkpoint dict: the one place that writes its keys (:meth:`restore` reads them)."""
        return {
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "lookahead": self.lookahead.state_dict() if self.lookahead is not None else None,
            **state.state_dict(),
            "world_size": self.info.world_size,
            "classes": list(self.data.classes),
            "data_fingerprint": self.data.fingerprint,
            "model_name": self.cfg.model.name,
        }

    def restore(self, ckpt: dict[str, Any], state: TrainState) -> None:
        """Load a checkpoint into the components and ``state``, after checking it belongs to this run."""
        where = self.files.checkpoint
        if ckpt.get("world_size", 1) != self.info.world_size:
            raise UserError(
                f"--resume: {where} was written by {ckpt.get('world_size')} processes, "
                f"this run has {self.info.world_size} (resume with the same number)"
            )
        if "classes" in ckpt and list(ckpt["classes"]) != list(self.data.classes):
            raise UserError(
                f"--resume: the classes of {self.cfg.data_spec} ({_short(self.data.classes)}) differ from the "
                f"checkpoint's ({_short(ckpt['classes'])}): the labels would shift; use the same data"
            )
        if ckpt.get("data_fingerprint") and self.data.fingerprint and ckpt["data_fingerprint"] != self.data.fingerprint:
            raise UserError(
                f"--resume: the data of {self.cfg.data_spec} is not what {where} trained on (fingerprint "
                f"{self.data.fingerprint}, the checkpoint's {ckpt['data_fingerprint']}: a file was added, removed, "
                "replaced or relabelled); resume with the same data, or start a new run"
            )
        if ckpt.get("model_name", self.cfg.model.name) != self.cfg.model.name:
            raise UserError(f"--resume: {where} trained {ckpt['model_name']}, not {self.cfg.model.name}")
        try:
            self.net.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            raise UserError(f"--resume: {where} holds other weights than {self.cfg.model.name}'s ({exc})") from None
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.schedule.load_state_dict(ckpt["schedule"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None and ckpt.get("ema"):
            self.ema.load_state_dict(ckpt["ema"])
        if self.lookahead is not None and ckpt.get("lookahead"):
            self.lookahead.load_state_dict(ckpt["lookahead"])
        state.load_state_dict(ckpt)

    def save_checkpoint(self, state: TrainState) -> None:
        """Write ``checkpoints/last.pt`` (rank 0; every rank must call: the RNG states are gathered)."""
        rngs = D.all_gather_object(rng_state())
        self.last_checkpoint = time.monotonic()
        if not self.info.is_main:
            return
        # A checkpoint is the run's fallback: never replace it with weights that are already NaN/Inf.
        if not _finite(self.net):
            return
        state.rng = rngs
        save_checkpoint(self.files.checkpoint, self.checkpoint_state(state))
        self.checkpointed = True


def _last_good(s: _Session) -> str:
    return f"; the last good checkpoint is {s.files.checkpoint}" if s.checkpointed else ""


def _short(classes) -> str:
    names = [str(c) for c in classes]
    return ", ".join(names[:4]) + (f", ... ({len(names)})" if len(names) > 4 else "")


def _finite(net: nn.Module) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in net.state_dict().values() if t.is_floating_point())


# --- set-up ------------------------------------------------------------------------------------------------------


def _set_up(cfg: RunConfig, info: D.DistInfo, device: str) -> tuple[_Session, TrainState]:
    """Check everything, build data and model, then (only then) create the run folder and restore a resume."""
    from imgcls.models import create_model, model_entry

    tc, mc = cfg.train, cfg.model
    _check_settings(cfg)
    entry = model_entry(mc.name)
    in_chans = mc.in_chans or entry.input_size[0]
    image_size = mc.image_size or entry.input_size[-1]
    _check_model(mc.name, in_chans, image_size, dict(mc.kwargs or {}))
    run = D.on_main(check_run_dir, tc.out, resume=tc.resume, overwrite=tc.overwrite)
    precision = resolve_precision(tc.precision, device)
    data = _build_data(cfg, info, device, image_size, in_chans)
    select = _selection(tc.select_metric, data.task, data.num_classes)
    _seed_everything(tc.seed)
    net = create_model(mc.name, num_classes=data.num_classes, in_chans=in_chans, weights=mc.weights, **mc.kwargs)
    if info.rank:
        # DDP copies rank 0's initial weights to every rank; from here on each rank draws its own dropout masks.
        _seed_everything(tc.seed + 1_000_003 * info.rank)
    for prefix in tc.freeze_after:
        if not any(name.startswith(prefix) and p.requires_grad for name, p in net.named_parameters()):
            raise UserError(f"train.freeze_after: {mc.name} has no trainable parameter named {prefix}...")
    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    optimizer = _build_optimizer(net, cfg)  # freezes the backbone for optim.freeze_backbone
    created, lock = _open_run_dir_everywhere(cfg, run, data, precision, info, image_size, in_chans)
    session = _Session(
        cfg=cfg,
        info=info,
        device=device,
        run=run,
        data=data,
        net=net,
        model=net,
        optimizer=optimizer,
        schedule=None,  # set below, once the model is on its device
        scaler=precision.grad_scaler(),
        ema=None,
        lookahead=None,
        precision=precision,
        loss_fn=build_loss(tc.loss, task=data.task, label_smoothing=tc.label_smoothing),
        val_loss_fn=build_loss(tc.loss, task=data.task),
        aux_weights=tuple(getattr(net, "aux_weights", ()) or ()),
        channels_last=use_channels_last(net, mc.channels_last),
        backbone_frozen=trainable - {id(p) for p in net.parameters() if p.requires_grad},
        first_stage=_backbone_ids(net, trainable) if tc.unfreeze_after and not cfg.optim.freeze_backbone else set(),
        meta=_model_meta(cfg, data, in_chans, image_size),
        select=select,
        tb=_TensorBoard(RunFolder(run).tensorboard, info.is_main),
        created=created,
        lock=lock,
    )
    try:
        return session, _build_components(session)
    except BaseException:
        _abandon(session)
        if session.lock is not None:
            session.lock.release()
        raise


def _build_optimizer(net: nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    """The run's optimiser; with ``schedule.end_at_freeze`` each ``train.freeze_after`` prefix gets its own group."""
    return build_optimizer(net, cfg.optim, cfg.train.freeze_after if cfg.schedule.end_at_freeze else None)


def _open_run_dir_everywhere(cfg: RunConfig, run: Path, data, precision, info: D.DistInfo, size: int, chans: int):
    """`_open_run_dir` on rank 0 (its error raised on every rank); returns ``(created, lock)`` (rank 0's lock)."""
    result, error = (None, None), None
    if info.is_main:
        try:
            result = _open_run_dir(cfg, run, data, precision, info, size, chans)
        except UserError as exc:
            error = str(exc)
    error = D.broadcast_object(error)
    if error is not None:
        raise UserError(error)
    return D.broadcast_object(result[0]), result[1]


def _open_run_dir(cfg: RunConfig, run: Path, data, precision: Precision, info: D.DistInfo, size: int, chans: int):
    """Rank 0: create (or clear, for --overwrite) the folder and write config.json and data_issues.csv."""
    created = _make_run_dir(run)
    lock = FileLock(RunFolder(run).lock, f"imgcls train --out {run}", timeout=0)
    try:
        try:
            lock.acquire()
        except UserError:
            raise UserError(f"--out {run}: another imgcls train is writing this run folder right now") from None
        # Checked again under the lock: a run started beside us may have written its files meanwhile.
        check_run_dir(str(run), resume=cfg.train.resume, overwrite=cfg.train.overwrite)
        _fill_run_dir(cfg, run, data, precision, info, size, chans)
    except BaseException:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        elif not cfg.train.resume and lock.fd is not None:
            RunFolder(run).clear()
        lock.release()
        raise
    return (str(created) if created is not None else None), lock


def _fill_run_dir(cfg: RunConfig, run: Path, data, precision: Precision, info: D.DistInfo, size: int, chans: int):
    if cfg.train.overwrite:
        RunFolder(run).clear()
    if not cfg.train.resume:
        facts = {
            "classes": list(data.classes),
            "data_fingerprint": data.fingerprint,
            "task": data.task,
            "num_classes": data.num_classes,
            "image_size": size,
            "in_chans": chans,
            "mean": list(data.mean),
            "std": list(data.std),
            "resize": data.resize,
            "precision": precision.name,
            "world_size": info.world_size,
        }
        RunFolder(run).write_config(_json_safe(config_record(cfg, run=facts)))
    data.write_issues(RunFolder(run).issues)


def _build_components(s: _Session) -> TrainState:
    """Move the model to its device and build schedule, EMA, Lookahead; restore a resume; wrap for DDP."""
    cfg, tc = s.cfg, s.cfg.train
    s.created = Path(s.created) if s.created else None
    memory_format = torch.channels_last if s.channels_last else torch.contiguous_format
    s.net = s.net.to(device=s.device, memory_format=memory_format)
    if not tc.resume and callable(getattr(s.net, "init_whitening", None)):
        _init_whitening(s.net, s.data.train, tc.init_whitening_images)
    if tc.lr_find and not tc.resume:
        _lr_find(s)
    steps_per_epoch = math.ceil(len(s.data.train) / cfg.optim.accum_steps)
    s.schedule = LRSchedule(s.optimizer, cfg.schedule, steps_per_epoch, tc.epochs)
    s.ema = ModelEma(s.net, tc.ema_decay) if tc.ema_decay else None
    if tc.lookahead_k:
        total = steps_per_epoch * tc.epochs
        s.lookahead = Lookahead(s.net, tc.lookahead_k, tc.lookahead_alpha, total, tc.lookahead_ramp_power)
    state = TrainState()
    if tc.resume:
        s.restore(load_checkpoint(s.files.checkpoint, map_location=s.device), state)
        s.checkpointed = True
    s.model = s.net
    if s.info.enabled:
        ids = [s.info.local_rank] if s.device.startswith("cuda") else None
        s.model = nn.parallel.DistributedDataParallel(s.net, device_ids=ids)
    # Compiled after the DDP wrap, as PyTorch documents it: the compiler then splits the graph at DDP's bucket
    # boundaries so that gradient all-reduces overlap the backward pass (DDPOptimizer).
    s.model = maybe_compile(s.model, cfg.model.compile)
    D.barrier()
    return state


def _model_meta(cfg: RunConfig, data, in_chans: int, image_size: int):
    from imgcls.engine.bundle import ModelMeta

    return ModelMeta(
        name=cfg.model.name,
        num_classes=data.num_classes,
        classes=list(data.classes),
        input_size=[in_chans, image_size, image_size],
        mean=[float(v) for v in data.mean],
        std=[float(v) for v in data.std],
        task=data.task,
        resize=int(data.resize) if data.resize else image_size,
        in_chans=in_chans,
        model_kwargs=dict(cfg.model.kwargs or {}),
    )


def _abandon(s: _Session) -> None:
    """A start that failed before its first checkpoint: remove what it wrote (rank 0), so nothing half-made stays.

    A resumed run, or one with a checkpoint (resumable), is left as it is.
    """
    if not s.info.is_main or s.checkpointed or s.cfg.train.resume:
        return
    s.tb.close()
    if s.lock is not None:
        s.lock.release()
    if s.created is not None:
        shutil.rmtree(s.created, ignore_errors=True)
    elif s.run.is_dir():
        s.files.clear()


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _backbone_ids(net: nn.Module, trainable: set[int]) -> set[int]:
    """ids of the trainable parameters outside the classifier (``get_classifier()``)."""
    from imgcls.engine.optim import _head_parameter_ids

    head = _head_parameter_ids(net)
    if not trainable - head:
        raise UserError("train.unfreeze_after: this model has no separate classifier to train first")
    return trainable - head


# --- early stopping -----------------------------------------------------------------------------------------------


def epochs_without_gain(
    history: list[dict[str, Any]], column: str, higher: bool, min_delta: float = 0.0, start: int = 0
) -> int:
    """Validated epochs since the metric in ``column`` last beat its best so far by more than ``min_delta``
    (epochs without validation are not counted, nor epochs before ``start``: ``train.select_from_epoch``)."""
    best, since = None, 0
    for i, row in enumerate(history):
        value = row.get(column)
        if value is None or row.get("epoch", i + 1) < start:
            continue
        if best is None or (value > best + min_delta if higher else value < best - min_delta):
            best, since = value, 0
        else:
            since += 1
    return since


def _stops_early(s: _Session, state: TrainState) -> bool:
    """``train.early_stopping``: the selection metric has not improved for that many validated epochs. Derived from
    the history alone, so a resumed run decides as the uninterrupted one; every rank holds the same history."""
    tc = s.cfg.train
    if not tc.early_stopping:
        return False
    _, column, higher = s.select
    waited = epochs_without_gain(state.history, column, higher, tc.early_stopping_min_delta, tc.select_from_epoch)
    return waited >= tc.early_stopping


# --- the learning-rate range test (train.lr_find) -----------------------------------------------------------------


def _sweep_step(
    net,
    optimizer,
    scaler,
    precision: Precision,
    loss_fn,
    aux_weights,
    device: str,
    channels_last: bool,
    accum_steps: int,
    frozen: list[nn.Parameter],
):
    """``fn(batches) -> loss`` for the range test: ``accum_steps`` micro-batches, then one optimiser step (none when
    the loss is not finite). The loss returned is the mean over the micro-batches."""

    def step(batches) -> float:
        total = 0.0
        for _ in range(accum_steps):
            x, y = next(batches)
            x = x.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with precision.autocast():
                output = net(x)
            loss, _ = compute_loss(loss_fn, output, y.to(device, non_blocking=True), aux_weights)
            if not torch.isfinite(loss.detach()):
                optimizer.zero_grad(set_to_none=True)
                return math.inf
            scaler.scale(loss / accum_steps).backward()
            total += float(loss.detach()) / accum_steps
        for p in frozen:
            p.grad = None
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return total

    return step


def _sweep(
    net,
    optimizer,
    scaler,
    precision,
    loss_fn,
    aux_weights,
    cfg: RunConfig,
    data,
    device,
    channels_last,
    frozen_params,
    frozen_modules,
):
    """One range test with the run's parts (model in training mode, frozen modules in eval mode)."""
    from imgcls.engine.lr_find import range_test

    tc = cfg.train
    net.train()
    for module in frozen_modules:
        module.eval()
    step = _sweep_step(
        net,
        optimizer,
        scaler,
        precision,
        loss_fn,
        aux_weights,
        device,
        channels_last,
        cfg.optim.accum_steps,
        frozen_params,
    )
    return range_test(
        net,
        optimizer,
        data.train,
        step,
        headline_lr=cfg.optim.lr,
        start=tc.lr_find_range[0],
        end=tc.lr_find_range[1],
        steps=tc.lr_find_steps,
        extra_state=[scaler] if scaler.is_enabled() else [],
    )


def _lr_find(s: _Session) -> None:
    """``train.lr_find``: sweep, then train at the suggestion (rank 0's reading on every rank); the curve goes to
    ``lr_find.json`` / ``lr_find.png`` and ``config.json`` records the rate used and the reading."""
    from imgcls.engine.lr_find import write_finding

    t0 = time.perf_counter()
    wants_grad = [p.requires_grad for p in s.net.parameters()]
    frozen_params, frozen_modules = _frozen(s, 0)
    finding = _sweep(
        s.net,
        s.optimizer,
        s.scaler,
        s.precision,
        s.loss_fn,
        s.aux_weights,
        s.cfg,
        s.data,
        s.device,
        s.channels_last,
        frozen_params,
        frozen_modules,
    )
    finding = D.broadcast_object(finding)
    # The optimiser the run would have built with --lr SUGGESTION (same groups, same rates to the last bit).
    for p, wanted in zip(s.net.parameters(), wants_grad):
        p.requires_grad_(wanted)
    s.cfg = dataclasses.replace(s.cfg, optim=dataclasses.replace(s.cfg.optim, lr=finding.suggestion))
    s.optimizer = _build_optimizer(s.net, s.cfg)
    if s.info.is_main:
        files = s.files
        write_finding(finding, files.lr_find, files.lr_find_plot)
        record = files.read_config() or {}
        record.setdefault("optim", {})["lr"] = finding.suggestion
        record.setdefault("run", {})["lr_find"] = finding.summary()
        files.write_config(_json_safe(record))
    _say(s.info, lr_find_line(finding, time.perf_counter() - t0, files=s.files))


def lr_find_line(finding, seconds: float, files: RunFolder | None = None) -> str:
    """What the console says after a range test."""
    steepest = f", steepest fall at {finding.steepest_lr:.3g}" if finding.steepest_lr is not None else ""
    end = f"stopped at {finding.lrs[-1]:.3g} (loss diverging)" if finding.stopped_early else f"up to {finding.end:g}"
    where = f" · curve {files.lr_find_plot}" if files is not None else ""
    return (
        f"imgcls: lr-find: {len(finding.lrs)} steps from {finding.start:g}, {end}, in {_duration(seconds)}: lowest "
        f"loss at {finding.min_loss_lr:.3g}{steepest}; suggested lr {finding.suggestion:.3g}{where}"
    )


def run_range_test_alone(cfg: RunConfig):
    """``imgcls lr-find`` (`imgcls.engine.lr_find.find_lr`): the range test of ``cfg`` in this process, with no run
    folder; ``lr_find.json`` and ``lr_find.png`` go to ``train.out`` when it is set (the folder is created)."""
    from imgcls.engine.lr_find import write_finding
    from imgcls.models import create_model, model_entry

    tc, mc = cfg.train, cfg.model
    device = resolve_device(tc.device)
    info = D.DistInfo()
    _check_settings(cfg)
    entry = model_entry(mc.name)
    in_chans = mc.in_chans or entry.input_size[0]
    image_size = mc.image_size or entry.input_size[-1]
    _check_model(mc.name, in_chans, image_size, dict(mc.kwargs or {}))
    out = RunFolder(tc.out) if tc.out else None
    if out is not None and out.root.exists() and not out.root.is_dir():
        raise UserError(f"--out {out.root}: exists and is not a folder")
    precision = resolve_precision(tc.precision, device)
    data = _build_data(cfg, info, device, image_size, in_chans)
    _seed_everything(tc.seed)
    net = create_model(mc.name, num_classes=data.num_classes, in_chans=in_chans, weights=mc.weights, **mc.kwargs)
    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    optimizer = _build_optimizer(net, cfg)
    first_stage = _backbone_ids(net, trainable) if tc.unfreeze_after and not cfg.optim.freeze_backbone else set()
    for p in net.parameters():
        if id(p) in first_stage:
            p.requires_grad_(False)
    staged = {
        id(p)
        for name, p in net.named_parameters()
        if any(name.startswith(k) and n == 0 for k, n in tc.freeze_after.items())
    }
    for p in net.parameters():
        if id(p) in staged:
            p.requires_grad_(False)
    frozen_modules = _frozen_modules(net, trainable - {id(p) for p in net.parameters() if p.requires_grad})
    channels_last = use_channels_last(net, mc.channels_last)
    net = net.to(device=device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if callable(getattr(net, "init_whitening", None)):
        _init_whitening(net, data.train, tc.init_whitening_images)
    t0 = time.perf_counter()
    finding = _sweep(
        net,
        optimizer,
        precision.grad_scaler(),
        precision,
        build_loss(tc.loss, task=data.task, label_smoothing=tc.label_smoothing),
        tuple(getattr(net, "aux_weights", ()) or ()),
        cfg,
        data,
        device,
        channels_last,
        [],
        frozen_modules,
    )
    if out is not None:
        try:
            out.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"--out {out.root}: cannot write there ({exc.strerror or exc})") from None
        write_finding(finding, out.lr_find, out.lr_find_plot)
    print(lr_find_line(finding, time.perf_counter() - t0, files=out), flush=True)
    return finding


# --- the loop ----------------------------------------------------------------------------------------------------


def train(cfg: RunConfig) -> RunResult:
    """Train ``cfg.model`` on ``cfg.data_spec`` into ``cfg.train.out`` (see the module docstring).

    Raises:
        UserError: a bad setting, data or output folder (one line, nothing written or overwritten), or a
            diverged run (``TrainingDiverged``).
        KeyboardInterrupt: after SIGTERM / Ctrl-C, once the checkpoint is written.
    """
    from imgcls.classic import is_classic

    if is_classic(cfg.model.name):  # hand-made features + SVM: one fit, no training loop
        from imgcls.engine.classic_fit import train_classic

        return train_classic(cfg)
    device = resolve_device(cfg.train.device)
    if cfg.data_spec:
        cfg = dataclasses.replace(cfg, data_spec=absolute_spec(cfg.data_spec))
    if D.elastic_restart() and cfg.train.out and RunFolder(cfg.train.out).checkpoint.is_file():
        # torchrun --max-restarts relaunches the same command after a rank died: continue from the checkpoint.
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, resume=True, overwrite=False))
    info = D.init_distributed(device)
    if info.enabled and device.startswith("cuda"):
        device = f"cuda:{info.local_rank}"
    try:
        with device_settings(device, cfg.train.deterministic):
            return _train(cfg, info, device)
    finally:
        D.cleanup()


def _train(cfg: RunConfig, info: D.DistInfo, device: str) -> RunResult:
    t_start = time.perf_counter()
    s, state = _set_up(cfg, info, device)
    _say(info, _start_line(s, state))
    warning = batch_size_warning(s.data.train.num_samples, cfg.data.batch_size, cfg.optim.accum_steps)
    if warning and info.is_main:
        print(warning, file=sys.stderr, flush=True)
    if cfg.train.unfreeze_after and cfg.optim.freeze_backbone:
        _say(
            info,
            f"imgcls: --freeze-backbone: the backbone stays frozen for the whole run (train.unfreeze_after "
            f"{cfg.train.unfreeze_after} does not apply)",
        )
    if s.data.issues:
        _say(info, f"imgcls: skipped {len(s.data.issues)} unreadable file(s), listed in {s.files.issues}")
    s.compile_clock = CompileClock(cfg.model.compile)
    if state.rng is not None:
        set_rng_state(state.rng[info.rank])  # last: nothing after this may draw random numbers before the loop
    try:
        with _StopSignals() as stop:
            while state.epoch < cfg.train.epochs and not _stops_early(s, state):
                epoch_t0 = time.perf_counter()
                train_one_epoch(s, state, stop)
                _end_of_epoch(s, state, epoch_t0)
        if state.epoch < cfg.train.epochs:
            _say(info, _early_stop_line(s, state))
        return _finish(s, state, t_start)
    except BaseException:
        _abandon(s)
        raise
    finally:
        s.tb.close()
        if s.lock is not None:
            s.lock.release()


def _early_stop_line(s: _Session, state: TrainState) -> str:
    metric, _, _ = s.select
    best = state.best or {}
    patience = s.cfg.train.early_stopping
    return (
        f"imgcls: early stopping after epoch {state.epoch}: no better {metric} in {patience} validated "
        f"epoch{'s' if patience != 1 else ''} (best {best.get('value', float('nan')):.4g} at epoch "
        f"{best.get('epoch')}, whose weights ship)"
    )


def _start_line(s: _Session, state: TrainState) -> str:
    cfg, info, data = s.cfg, s.info, s.data
    params_m = sum(p.numel() for p in s.net.parameters()) / 1e6
    n_val = int(D.all_reduce_sum(torch.tensor([data.val.num_samples], dtype=torch.int64))[0])
    size = s.meta.input_size[-1]
    return (
        f"imgcls: {cfg.model.name} ({params_m:.2f}M params) on {cfg.data_spec}: {data.num_classes} classes "
        f"({data.task}), {data.train.num_samples * info.world_size} train / {n_val} val images at "
        f"{size}px · {describe(s.device)}, {s.precision.name} ({s.precision.reason})"
        f"{', channels_last' if s.channels_last else ''}{', compiled' if cfg.model.compile else ''}"
        f" · {info.world_size} process{'es' if info.world_size > 1 else ''}"
        + (f" · resuming at epoch {state.epoch + 1}, batch {state.batch}" if cfg.train.resume else "")
    )


def _frozen(s: _Session, epoch: int) -> tuple[list[nn.Parameter], list[nn.Module]]:
    """The parameters frozen at (0-based) ``epoch`` and the modules that therefore stay in eval mode.

    A parameter is frozen by ``optim.freeze_backbone``, when its ``train.freeze_after`` epochs are over, or, for
    the backbone, during the first ``train.unfreeze_after`` epochs; in one process it then stops requiring a
    gradient (and requires one again when ``unfreeze_after`` releases it). A module is frozen when it has
    parameters, one of them is frozen and none of them trains (parameters the model itself never trains count as
    not training); its submodules, parameterless ones included (an affine-free BatchNorm, a dropout), are frozen
    with it.
    """
    staged = {
        id(p)
        for name, p in s.net.named_parameters()
        if any(name.startswith(prefix) and epoch >= n for prefix, n in s.cfg.train.freeze_after.items())
    }
    staged |= s.first_stage if epoch < s.cfg.train.unfreeze_after else set()
    frozen_ids = staged | s.backbone_frozen
    params = [p for p in s.net.parameters() if id(p) in staged]
    if not s.info.enabled:
        for p in s.net.parameters():
            if id(p) in s.first_stage:  # train.unfreeze_after: trains again once its first stage is over
                p.requires_grad_(id(p) not in staged)
        for p in params:
            p.requires_grad_(False)
    return params, _frozen_modules(s.net, frozen_ids)


def _frozen_modules(net: nn.Module, frozen_ids: set[int]) -> list[nn.Module]:
    """The modules holding a frozen parameter and no training one (`_frozen`)."""
    modules = []
    for module in net.modules():
        own = list(module.parameters())
        trains = any(p.requires_grad and id(p) not in frozen_ids for p in own)
        if any(id(p) in frozen_ids for p in own) and not trains:
            modules.append(module)
    return modules


def train_one_epoch(s: _Session, state: TrainState, stop: _StopSignals) -> None:
    """Train ``state.epoch`` from batch ``state.batch`` to its end (or to a stop signal: checkpoint, then
    KeyboardInterrupt)."""
    tc, oc, info = s.cfg.train, s.cfg.optim, s.info
    epoch, first = state.epoch, state.batch
    t0 = time.perf_counter()
    stats = state.epoch_stats
    s.data.train.set_epoch(epoch)
    frozen_params, frozen_modules = _frozen(s, epoch)
    n_batches = len(s.data.train)
    progress = _Progress(tc.progress, n_batches, first, f"epoch {epoch + 1}/{tc.epochs}", info.is_main)
    s.model.train()
    for module in frozen_modules:
        module.eval()
    bad_window = False
    try:
        for b, (x, y) in enumerate(s.data.train.iterate(start_batch=first), start=first):
            boundary = (b + 1) % oc.accum_steps == 0 or b + 1 == n_batches
            due = boundary and b + 1 < n_batches and _checkpoint_due(tc, state.step + 1, s.last_checkpoint)
            out = _forward_backward(s, x, y, boundary, stop.received is not None, due)
            loss, logits, y, nonfinite, stop_now, due = out
            bad_window = bad_window or nonfinite
            _count(s, stats, loss, logits, y, nonfinite)
            running_acc = 100.0 * stats["correct"] / stats["counted"] if stats["counted"] else None
            progress.update(x.shape[0] * info.world_size, stats["loss_sum"] / max(stats["seen"], 1), running_acc)
            if not boundary:
                continue
            if _optimizer_step(s, state, stats, frozen_params, bad_window):
                s.bad_in_a_row = 0
            else:
                s.bad_in_a_row += 1
                if s.bad_in_a_row >= tc.max_bad_steps:
                    raise TrainingDiverged(
                        f"the loss or its gradient was NaN or infinite for {s.bad_in_a_row} steps in a row "
                        f"(epoch {epoch + 1}, batch {b + 1}): stopped; lower --lr or set optim.clip_grad_norm"
                        + _last_good(s)
                    )
            bad_window = False
            if stop_now or due:
                state.batch = b + 1
                state.epoch_stats = dict(stats, seconds=stats["seconds"] + time.perf_counter() - t0)
                s.save_checkpoint(state)
                state.epoch_stats = stats
            if stop_now:
                name = signal.Signals(stop.received).name if stop.received else "a stop signal on another rank"
                _say(info, f"imgcls: {name}: checkpoint saved to {s.files.checkpoint}; continue with --resume")
                raise KeyboardInterrupt
    finally:
        progress.close()
    stats["seconds"] += time.perf_counter() - t0
    if s.lookahead is not None and epoch + 1 == tc.epochs:
        s.lookahead.finish(s.net)  # the run ends on the slow weights


def _forward_backward(s: _Session, x, y, boundary: bool, stop_here: bool, due: bool):
    """One micro-batch: forward, loss, backward (skipped when the loss is not finite on any rank).

    Returns ``(loss, logits, y, nonfinite, stop_now, due)``: detached loss and main logits, the targets on the
    device, and the flags agreed over ranks.
    """
    x = x.to(s.device, non_blocking=True)
    if s.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = y.to(s.device, non_blocking=True)
    # DDP all-reduces gradients only on the micro-batch that ends an accumulation window.
    ctx = s.model.no_sync() if s.info.enabled and not boundary else contextlib.nullcontext()
    with ctx:
        with s.precision.autocast():
            output = s.model(x)
        loss, logits = compute_loss(s.loss_fn, output, y, s.aux_weights)
        # Agreed before backward: a rank that skips DDP's backward while another runs it hangs.
        nonfinite, stop_now, due = D.agree_flags(not bool(torch.isfinite(loss.detach())), stop_here, due)
        if not nonfinite:
            s.scaler.scale(loss / s.cfg.optim.accum_steps).backward()
    return loss.detach(), logits.detach(), y, nonfinite, stop_now, due


def _count(s: _Session, stats: dict, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, nonfinite: bool):
    """Add one micro-batch to the epoch's running loss and accuracy."""
    n = int(y.shape[0])
    if not nonfinite:
        stats["loss_sum"] += float(loss) * n
        stats["seen"] += n
    counts = _accuracy_counts(logits, y, s.task)
    if counts is not None:
        stats["correct"] += counts[0]
        stats["counted"] += counts[1]


def _optimizer_step(s: _Session, state: TrainState, stats: dict, frozen: list[nn.Parameter], bad: bool) -> bool:
    """End of an accumulation window: check the gradient, step, schedule, Lookahead, EMA. False: step skipped."""
    oc = s.cfg.optim
    for p in frozen:  # under DDP they still get a gradient (its reducer expects one): drop it
        p.grad = None
    unscaled, grad_ok = False, True
    if not bad and oc.clip_grad_norm:
        s.scaler.unscale_(s.optimizer)
        unscaled = True
        # Gradients are identical on every rank after the all-reduce, so this needs no agreement;
        # with fp16 the scaler itself skips steps with overflowed gradients.
        norm = torch.nn.utils.clip_grad_norm_(s.net.parameters(), oc.clip_grad_norm)
        grad_ok = bool(torch.isfinite(norm)) or s.scaler.is_enabled()
    elif not bad and not s.scaler.is_enabled():
        # A finite loss can still back-propagate a NaN/Inf gradient (an overflow inside backward);
        # applying it would turn every weight into NaN. Same gradients on every rank: same decision.
        grads = [p.grad for p in s.net.parameters() if p.grad is not None]
        grad_ok = not grads or bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))
    if bad or not grad_ok:
        s.optimizer.zero_grad(set_to_none=True)
        if unscaled:
            s.scaler.update()
        return False
    lr = s.schedule.lr  # the rate this step uses
    s.scaler.step(s.optimizer)
    s.scaler.update()
    s.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    if note := s.compile_clock.step():
        _say(s.info, note)
    stats["lr_sum"] += lr
    stats["lr_steps"] += 1
    stats["lr_max"] = max(stats["lr_max"], lr)
    if s.info.is_main:
        s.tb.step(state.step, lr)
    s.schedule.step()
    if s.lookahead is not None:
        s.lookahead.step(s.net)
    if s.ema is not None:
        s.ema.update(s.net)
    return True


def _accuracy_counts(logits: torch.Tensor, target: torch.Tensor, task: str) -> tuple[int, int] | None:
    if task == "multilabel":
        return None
    pred = logits.argmax(dim=1)
    truth = target.argmax(dim=1) if target.ndim == 2 else target
    return int((pred == truth).sum()), int(target.shape[0])


def _checkpoint_due(tc, next_step: int, last_time: float) -> bool:
    """A mid-epoch checkpoint after optimiser step ``next_step``? (Any rank saying yes is enough.)"""
    by_steps = bool(tc.checkpoint_every_steps) and next_step % tc.checkpoint_every_steps == 0
    by_time = bool(tc.checkpoint_every_seconds) and time.monotonic() - last_time > tc.checkpoint_every_seconds
    return by_steps or by_time


# --- end of epoch, end of run ------------------------------------------------------------------------------------


def _end_of_epoch(s: _Session, state: TrainState, epoch_t0: float) -> None:
    """Validate (when due), feed the plateau schedule, write metrics.csv, the shipped weights and the checkpoint."""
    from imgcls.engine.bundle import save_bundle

    tc, info, stats = s.cfg.train, s.info, state.epoch_stats
    epoch = state.epoch + 1  # 1-based, as in metrics.csv
    if not _finite(s.shipped()):
        raise TrainingDiverged(
            f"the weights are NaN or infinite after epoch {epoch}: stopped without writing them; lower --lr or set "
            "optim.clip_grad_norm" + _last_good(s)
        )
    row = {"epoch": epoch, **_validate(s, epoch), **_epoch_figures(stats)}
    if row["val_loss"] is not None and not math.isfinite(row["val_loss"]):
        raise TrainingDiverged(
            f"the validation loss is NaN or infinite after epoch {epoch} (the weights give non-finite outputs): "
            "stopped without writing them; lower --lr or set optim.clip_grad_norm" + _last_good(s)
        )
    state.history.append(row)
    _, column, higher = s.select
    value = row.get(column) if epoch >= tc.select_from_epoch else None  # too early to be chosen
    best = state.best
    improved = value is not None and (best is None or (value > best["value"] if higher else value < best["value"]))
    if improved:
        state.best = {"epoch": epoch, "value": value}
    if info.is_main:
        s.files.write_metrics(METRICS_COLUMNS, state.history)
        s.tb.epoch(row)
        if tc.save == "last" or improved or (state.best is None and epoch == tc.epochs):
            save_bundle(s.run, s.shipped(), s.meta)
    state.epoch, state.batch, state.epoch_stats = epoch, 0, _fresh_stats()
    s.save_checkpoint(state)
    _say(info, _epoch_line(s, state, row))


def _validate(s: _Session, epoch: int) -> dict[str, Any]:
    """The validation columns of ``epoch`` (empty between ``train.val_every`` epochs); feeds ``plateau``."""
    from imgcls.engine.evaluate import evaluate_model

    tc = s.cfg.train
    if not (epoch == tc.epochs or (tc.val_every > 0 and epoch % tc.val_every == 0)):
        return {"val_loss": None, "val_top1": None, "val_top5": None, "val_mAP": None}
    result = evaluate_model(
        s.shipped(),
        s.data.val,
        task=s.task,
        loss_fn=s.val_loss_fn,
        precision=s.precision.name,
        device=s.device,
        distributed=s.info.enabled,
    )
    s.validated = (epoch, result)  # the final evaluation reuses it when these weights ship (`_finish`)
    s.schedule.observe(result.loss if result.loss is not None else math.inf)
    mAP = result.metrics.get("mAP")
    return {"val_loss": result.loss, "val_top1": result.top1, "val_top5": result.top5, "val_mAP": mAP}


def _epoch_figures(stats: dict) -> dict[str, Any]:
    """Train loss (over ranks), the learning rates the epoch's steps used, and its seconds."""
    n = D.all_reduce_sum(torch.tensor([stats["loss_sum"], stats["seen"]], dtype=torch.float64))
    lr_mean = stats["lr_sum"] / stats["lr_steps"] if stats["lr_steps"] else None
    return {
        "train_loss": float(n[0] / n[1]) if n[1] > 0 else None,
        "lr": lr_mean,
        "lr_mean": lr_mean,
        "lr_max": stats["lr_max"] if stats["lr_steps"] else None,
        "seconds": round(stats["seconds"], 3),
    }


def _epoch_line(s: _Session, state: TrainState, row: dict[str, Any]) -> str:
    tc = s.cfg.train
    validated = row["val_loss"] is not None or row["val_top1"] is not None or row["val_mAP"] is not None
    top1 = ("—" if validated else "not validated") if row["val_top1"] is None else f"{row['val_top1']:.2f}%"
    top5 = "" if row["val_top5"] is None else f" top-5 {row['val_top5']:.2f}%"
    mAP = "" if row["val_mAP"] is None else f" mAP {row['val_mAP']:.2f}%"
    metric, _, _ = s.select
    best = state.best
    return (
        f"epoch {row['epoch']}/{tc.epochs}  train loss {_num(row['train_loss'])}  val loss {_num(row['val_loss'])}  "
        f"top-1 {top1}{top5}{mAP}  lr {_num(row['lr_mean'], digits=4)}  {row['seconds']:.1f}s"
        + (f"  (best {metric} {best['value']:.4g} at epoch {best['epoch']})" if best is not None else "")
    )


def _finish(s: _Session, state: TrainState, t_start: float) -> RunResult:
    """Load the shipped weights (the best epoch's or the last), evaluate them, write the report and the record."""
    tc, info, run = s.cfg.train, s.info, s.run
    final = s.shipped()
    best = state.best
    shipped_epoch = best["epoch"] if tc.save == "best" and best is not None else len(state.history)
    if shipped_epoch != len(state.history):
        from imgcls.engine.bundle import load_weights

        final.load_state_dict(D.on_main(lambda: load_weights(run)))
    report_path, summary = None, {}
    if tc.report:
        from imgcls.engine.evaluate import finalize_run

        # The last epoch's validation of the weights that ship (in memory, unchanged since) is not run again.
        last = s.validated is not None and s.validated[0] == shipped_epoch == len(state.history)
        summary = finalize_run(
            run,
            final,
            s.data,
            precision=s.precision.name,
            device=s.device,
            distributed=info.enabled,
            loss_fn=s.val_loss_fn,
            tta=tc.final_tta,
            validated=s.validated[1] if last else None,
            tta_fraction=tc.final_tta_fraction,
        )
    metric, column, _ = s.select
    elapsed = time.perf_counter() - t_start  # recorded, shown by the report and printed below: one figure
    if info.is_main:
        rule = "best" if tc.save == "best" else "last"
        _record_selection(run, metric, column, state, shipped_epoch, rule, elapsed, tc.epochs)
        if tc.report:
            from imgcls.report import build_report

            report_path = build_report(run)
    best_top1 = max((r["val_top1"] for r in state.history if r.get("val_top1") is not None), default=None)
    top1 = summary.get("top1", state.history[shipped_epoch - 1].get("val_top1"))
    top5 = summary.get("top5")
    _say(
        info,
        f"imgcls: done in {_duration(elapsed)}: top-1 {_num(top1, '%')}"
        + (f", top-5 {_num(top5, '%')}" if top5 is not None else "")
        + (f", mAP {_num(summary['mAP'], '%')}" if summary.get("mAP") is not None else "")
        + f" (epoch {shipped_epoch}, {'best by ' + metric if tc.save == 'best' else 'the last'}) · weights "
        f"{s.files.weights}" + (f" · report {report_path}" if report_path else ""),
    )
    return RunResult(
        run_dir=run,
        epochs=len(state.history),
        best_top1=best_top1,
        best_epoch=best["epoch"] if best else None,
        top1=top1,
        top5=top5,
        seconds=elapsed,
        precision=s.precision.name,
        report=report_path,
        history=state.history,
        select_metric=metric,
        best_value=best["value"] if best else None,
    )


def _record_selection(
    run: Path, metric: str, column: str, state: TrainState, shipped: int, rule: str, seconds: float, planned: int
) -> None:
    """``config.json``'s ``run.selection``: what the report needs to say which weights ship and what they scored,
    the run's time (``seconds``, the figure the console prints) and whether early stopping ended it before the
    ``planned`` epochs."""
    folder = RunFolder(run)
    try:
        record = folder.read_config()
    except UserError:
        record = None
    if record is None:
        return  # the record is the user's to repair; the run itself is complete
    best = state.best
    record.setdefault("run", {})["selection"] = {
        "metric": metric,
        "column": column,
        "rule": rule,  # train.save: "best" (by the metric) or "last"
        "best_epoch": best["epoch"] if best else None,
        "best_value": best["value"] if best else None,
        "last_epoch": len(state.history),
        "last": state.history[-1] if state.history else None,
        "shipped_epoch": shipped,
        "seconds": round(seconds, 3),
        "stopped_early": len(state.history) < planned,  # train.early_stopping ended the run before `planned`
        "planned_epochs": planned,
    }
    folder.write_config(_json_safe(record))


def _json_safe(value: Any) -> Any:
    """NaN and infinity as null (JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


@torch.no_grad()
def _init_whitening(net: nn.Module, loader, count: int) -> None:
    """Call the model's ``init_whitening`` with ``count`` training images (the first batches of epoch 1)."""
    loader.set_epoch(0)
    parts, have = [], 0
    for x, _ in loader.iterate():
        parts.append(x.float())
        have += x.shape[0]
        if have >= count:
            break
    param = next(net.parameters())
    net.init_whitening(torch.cat(parts)[:count].to(param.device).contiguous())


def _num(value: float | None, unit: str = "", digits: int = 0) -> str:
    if value is None:
        return "—"
    if digits:
        return f"{value:.{digits}g}"
    return f"{value:.4f}{unit}" if not unit else f"{value:.2f}{unit}"


__all__ = [
    "CHECKPOINT",
    "METRICS_COLUMNS",
    "RunResult",
    "TrainState",
    "TrainingDiverged",
    "check_run_dir",
    "train",
    "train_one_epoch",
]
