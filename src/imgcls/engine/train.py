"""The training loop: ``train(cfg) -> RunResult``.

One run fills one run folder (DESIGN.md, "The run folder"): ``config.json`` first, ``checkpoints/last.pt``
at every epoch end (and mid-epoch every ``checkpoint_every_steps`` optimiser steps or
``checkpoint_every_seconds``), a ``metrics.csv`` row and a summary line per epoch, ``model.safetensors`` +
``model.json`` (the best epoch by validation top-1, or the last), and at the end ``eval.json``,
``predictions.csv``, ``samples.npz`` and ``report/``.

Exact resume: the data layer derives sample order and augmentation from ``(seed, epoch, batch index)`` only,
and the checkpoint stores the batch index together with every RNG state (dropout), so a run resumed from any
checkpoint continues with bit-identical weights. Checkpoints are only taken at optimiser-step boundaries
(never with half-accumulated gradients).

Model hook: a model with an ``init_whitening(images)`` method (e.g. airbench's frozen patch-whitening layer)
gets a float ``(N, C, H, W)`` sample of ``train.init_whitening_images`` normalised, augmented training images
(the first batches of epoch 1) before training starts; a resumed run restores its weights instead.

Staged freezing: ``train.freeze_after`` maps parameter-name prefixes to the number of epochs they learn for
(airbench trains its whitening bias for 3 epochs, then freezes it). A frozen parameter gets no update (no
momentum, no decay); in one process it also stops requiring a gradient, so autograd skips what only it needed.

Validation runs every ``train.val_every`` epochs and always after the last; epochs in between get empty
validation columns in ``metrics.csv`` (a speedrun spends nothing on numbers nobody reads).

Weight averaging: ``train.ema_decay`` keeps an EMA copy that is evaluated and shipped; ``train.lookahead_k``
runs Lookahead (`imgcls.engine.lookahead`), whose slow weights become the model's at the end of the last epoch.

Under ``torchrun`` the model is wrapped in ``DistributedDataParallel``; each rank reads its shard; rank 0
alone writes files; the loss/accuracy are reduced over ranks; stop, skip and save decisions are agreed.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
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

from imgcls.engine import distributed as D
from imgcls.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from imgcls.engine.config import RunConfig, config_record
from imgcls.engine.ema import ModelEma
from imgcls.engine.lookahead import Lookahead
from imgcls.engine.losses import build_loss, compute_loss
from imgcls.engine.optim import build_optimizer
from imgcls.engine.precision import (
    Precision,
    maybe_compile,
    resolve_device,
    resolve_precision,
    use_channels_last,
)
from imgcls.engine.schedule import LRSchedule
from imgcls.errors import UserError

CHECKPOINT = Path("checkpoints") / "last.pt"
METRICS_FILE = "metrics.csv"
METRICS_COLUMNS = ("epoch", "train_loss", "val_loss", "val_top1", "val_top5", "lr", "seconds")
# What makes a folder "a run": refusing to write into it without --resume / --overwrite protects it.
RUN_MARKERS = ("config.json", "checkpoints", "model.safetensors", "model.json", "metrics.csv")
# What --overwrite removes (only our own files: anything else in the folder is left alone).
RUN_ENTRIES = (
    *RUN_MARKERS,
    "data_issues.csv",
    "eval.json",
    "predictions.csv",
    "samples.npz",
    "report",
    "tensorboard",
)


class TrainingDiverged(UserError):
    """The loss or its gradient stayed NaN/Inf for ``max_bad_steps`` steps in a row (lower the learning rate)."""


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


# --- the run folder --------------------------------------------------------------------------------------------


def check_run_dir(out: str | None, *, resume: bool, overwrite: bool) -> Path:
    """Validate ``--out`` before anything is written; returns the folder (created empty when missing).

    Refuses a folder holding another run unless ``resume`` or ``overwrite``, a file in place of the folder,
    and a folder that cannot be written to. Nothing existing is modified here.
    """
    if not out:
        raise UserError("--out is required: the folder this run writes to")
    run = Path(out)
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other: choose one")
    if run.exists() and not run.is_dir():
        raise UserError(f"--out {run}: exists and is not a folder")
    holds_run = run.is_dir() and any((run / m).exists() for m in RUN_MARKERS)
    if resume:
        if not (run / CHECKPOINT).is_file():
            raise UserError(f"--resume: no checkpoint at {run / CHECKPOINT}")
    elif holds_run and not overwrite:
        raise UserError(f"--out {run}: already holds a run (use --resume to continue it or --overwrite to replace it)")
    try:
        run.mkdir(parents=True, exist_ok=True)
        probe = run / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"--out {run}: cannot write there ({exc.strerror or exc})") from None
    return run


def _clear_run(run: Path) -> None:
    for name in RUN_ENTRIES:
        path = run / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def _atomic_write_text(path: Path, text: str) -> None:
    """Replace `path` with `text` atomically; a full disk is a UserError and leaves the old file as it was."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise UserError(f"{path}: cannot write ({exc.strerror or exc}); the previous file is unchanged") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(METRICS_COLUMNS)
    for row in history:
        writer.writerow(["" if row.get(c) is None else _fmt(row[c]) for c in METRICS_COLUMNS])
    _atomic_write_text(path, buf.getvalue())


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


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

    def epoch(self, row: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key in ("train_loss", "val_loss", "val_top1", "val_top5", "lr"):
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


# --- the loop --------------------------------------------------------------------------------------------------


def _accuracy_counts(logits: torch.Tensor, target: torch.Tensor, task: str) -> tuple[int, int] | None:
    if task == "multilabel":
        return None
    pred = logits.argmax(dim=1)
    truth = target.argmax(dim=1) if target.ndim == 2 else target
    return int((pred == truth).sum()), int(target.shape[0])


def _unwrap(model: nn.Module) -> nn.Module:
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def _checkpoint_due(tc, next_step: int, last_time: float) -> bool:
    """A mid-epoch checkpoint after optimiser step ``next_step``? (Any rank saying yes is enough.)"""
    by_steps = bool(tc.checkpoint_every_steps) and next_step % tc.checkpoint_every_steps == 0
    by_time = bool(tc.checkpoint_every_seconds) and time.monotonic() - last_time > tc.checkpoint_every_seconds
    return by_steps or by_time


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def train(cfg: RunConfig) -> RunResult:
    """Train ``cfg.model`` on ``cfg.data_spec`` into ``cfg.train.out`` (see the module docstring).

    Raises:
        UserError: a bad setting, data or output folder (one line, nothing overwritten), or a diverged run
            (``TrainingDiverged``).
        KeyboardInterrupt: after SIGTERM / Ctrl-C, once the checkpoint is written.
    """
    device = resolve_device(cfg.train.device)
    if D.elastic_restart() and cfg.train.out and (Path(cfg.train.out) / CHECKPOINT).is_file():
        # torchrun --max-restarts relaunches the same command after a rank died: continue from the checkpoint.
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, resume=True, overwrite=False))
    info = D.init_distributed(device)
    if info.enabled and device.startswith("cuda"):
        device = f"cuda:{info.local_rank}"
    try:
        return _train(cfg, info, device)
    finally:
        D.cleanup()


def _build_everything(cfg: RunConfig, info: D.DistInfo, device: str):
    """Validate and build data and model; no file of an existing run is touched here."""
    from imgcls.data import build_data
    from imgcls.models import create_model, model_entry

    tc, mc = cfg.train, cfg.model
    if not mc.name:
        raise UserError("--model is required (see `imgcls models`)")
    if not cfg.data_spec:
        raise UserError("--data is required: a folder, a CSV file or a built-in name such as digits")
    if tc.epochs < 1:
        raise UserError(f"--epochs must be at least 1: {tc.epochs}")
    if tc.save not in ("best", "last"):
        raise UserError(f"train.save must be best or last: {tc.save}")
    if tc.final_tta not in ("none", "flip", "flip-translate"):
        raise UserError(f"train.final_tta must be none, flip or flip-translate: {tc.final_tta}")
    if tc.lookahead_k < 0 or not 0.0 < tc.lookahead_alpha <= 1.0:
        raise UserError(
            f"train.lookahead_k must be >= 0 and train.lookahead_alpha in (0, 1]: {tc.lookahead_k}, "
            f"{tc.lookahead_alpha}"
        )
    if cfg.optim.accum_steps < 1:
        raise UserError(f"optim.accum_steps must be at least 1: {cfg.optim.accum_steps}")
    if tc.val_every < 0:
        raise UserError(f"train.val_every must be 0 (last epoch only) or more: {tc.val_every}")
    if not isinstance(tc.freeze_after, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in tc.freeze_after.values()
    ):
        raise UserError(f"train.freeze_after must map parameter-name prefixes to epochs >= 0: {tc.freeze_after}")
    entry = model_entry(mc.name)
    in_chans = mc.in_chans or entry.input_size[0]
    image_size = mc.image_size or entry.input_size[-1]
    run = D.on_main(check_run_dir, tc.out, resume=tc.resume, overwrite=tc.overwrite)

    def build(rank_world: tuple[int, int]):
        rank, world = rank_world
        return build_data(
            cfg.data_spec,
            cfg.data,
            cfg.augment,
            image_size=image_size,
            in_chans=in_chans,
            seed=tc.seed,
            rank=rank,
            world_size=world,
            device=device,
            task=tc.task,
        )

    # Rank 0 first (it may download or fill the decode cache), then the others read what it made.
    data, error = None, None
    if info.is_main:
        try:
            data = build((info.rank, info.world_size))
        except UserError as exc:
            error = str(exc)
    error = D.broadcast_object(error)
    if error is not None:
        raise UserError(error)
    if data is None:
        data = build((info.rank, info.world_size))
    D.check_same(json.dumps([list(data.classes), data.task, data.train.num_samples]), "the class map and file list")
    if len(data.train) == 0 or data.train.num_samples < cfg.data.batch_size:
        raise UserError(
            f"--batch-size {cfg.data.batch_size} is larger than the {data.train.num_samples} training images "
            f"of {cfg.data_spec} per process"
        )
    _seed_everything(tc.seed)
    model = create_model(
        mc.name, num_classes=data.num_classes, in_chans=in_chans, weights=mc.weights, **(mc.kwargs or {})
    )
    if info.rank:
        # DDP copies rank 0's initial weights to every rank; from here on each rank draws its own dropout masks.
        _seed_everything(tc.seed + 1_000_003 * info.rank)
    return run, data, model, in_chans, image_size


def _train(cfg: RunConfig, info: D.DistInfo, device: str) -> RunResult:
    from imgcls.engine.bundle import ModelMeta, save_bundle
    from imgcls.engine.evaluate import evaluate_model, finalize_run

    tc, oc = cfg.train, cfg.optim
    t_start = time.perf_counter()
    precision: Precision = resolve_precision(tc.precision, device)
    run, data, net, in_chans, image_size = _build_everything(cfg, info, device)
    task = data.task

    # From here on the run folder is ours: clear it for --overwrite, record the configuration.
    if info.is_main:
        if tc.overwrite:
            _clear_run(run)
        if not tc.resume:
            record = config_record(
                cfg,
                run={
                    "classes": list(data.classes),
                    "task": task,
                    "num_classes": data.num_classes,
                    "image_size": image_size,
                    "in_chans": in_chans,
                    "mean": list(data.mean),
                    "std": list(data.std),
                    "resize": data.resize,
                    "precision": precision.name,
                    "world_size": info.world_size,
                },
            )
            _atomic_write_text(run / "config.json", json.dumps(record, indent=2) + "\n")
        data.write_issues(run / "data_issues.csv")
    D.barrier()

    channels_last = use_channels_last(net, cfg.model.channels_last)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(device=device, memory_format=memory_format)
    if not tc.resume and callable(getattr(net, "init_whitening", None)):
        _init_whitening(net, data.train, tc.init_whitening_images)
    for prefix in tc.freeze_after:
        if not any(name.startswith(prefix) and p.requires_grad for name, p in net.named_parameters()):
            raise UserError(f"train.freeze_after: {cfg.model.name} has no trainable parameter named {prefix}...")
    loss_fn = build_loss(tc.loss, task=task, label_smoothing=tc.label_smoothing)
    val_loss_fn = build_loss(tc.loss, task=task)
    optimizer = build_optimizer(net, oc)
    steps_per_epoch = math.ceil(len(data.train) / oc.accum_steps)
    schedule = LRSchedule(optimizer, cfg.schedule, steps_per_epoch, tc.epochs)
    scaler = precision.grad_scaler()
    ema = ModelEma(net, tc.ema_decay) if tc.ema_decay else None
    lookahead = None
    if tc.lookahead_k:
        lookahead = Lookahead(
            net, tc.lookahead_k, tc.lookahead_alpha, steps_per_epoch * tc.epochs, tc.lookahead_ramp_power
        )
    aux_weights = tuple(getattr(net, "aux_weights", ()) or ())

    history: list[dict[str, Any]] = []
    start_epoch, start_batch, global_step = 0, 0, 0
    best_top1, best_epoch = None, None
    carried = {"loss_sum": 0.0, "correct": 0, "counted": 0, "seen": 0, "seconds": 0.0}
    restored_rng = None
    if tc.resume:
        state = load_checkpoint(run / CHECKPOINT, map_location=device)
        if state.get("world_size", 1) != info.world_size:
            raise UserError(
                f"--resume: {run / CHECKPOINT} was written by {state.get('world_size')} processes, "
                f"this run has {info.world_size} (resume with the same number)"
            )
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if ema is not None and state.get("ema"):
            ema.load_state_dict(state["ema"])
        if lookahead is not None and state.get("lookahead"):
            lookahead.load_state_dict(state["lookahead"])
        start_epoch, start_batch, global_step = int(state["epoch"]), int(state["batch"]), int(state["step"])
        history = list(state["history"])
        best_top1, best_epoch = state.get("best_top1"), state.get("best_epoch")
        carried = dict(state["epoch_stats"])
        restored_rng = state["rng"][info.rank]

    model = maybe_compile(net, cfg.model.compile)
    if info.enabled:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.local_rank] if device.startswith("cuda") else None
        )

    def shipped() -> nn.Module:
        return ema.module if ema is not None else net

    def meta() -> ModelMeta:
        return ModelMeta(
            name=cfg.model.name,
            num_classes=data.num_classes,
            classes=list(data.classes),
            input_size=[in_chans, image_size, image_size],
            mean=[float(v) for v in data.mean],
            std=[float(v) for v in data.std],
            task=task,
            resize=int(data.resize) if data.resize else image_size,
            in_chans=in_chans,
            model_kwargs=dict(cfg.model.kwargs or {}),
        )

    def checkpoint(epoch: int, batch: int, stats: dict) -> None:
        rngs = [rng_state()]
        if info.enabled:
            rngs = [None] * info.world_size
            torch.distributed.all_gather_object(rngs, rng_state())
        if not info.is_main:
            return
        # A checkpoint is the run's fallback: never replace it with weights that are already NaN/Inf.
        if not all(bool(torch.isfinite(t).all()) for t in net.state_dict().values() if t.is_floating_point()):
            return
        save_checkpoint(
            run / CHECKPOINT,
            {
                "model": net.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                "ema": ema.state_dict() if ema is not None else None,
                "lookahead": lookahead.state_dict() if lookahead is not None else None,
                "epoch": epoch,
                "batch": batch,
                "step": global_step,
                "rng": rngs,
                "history": history,
                "best_top1": best_top1,
                "best_epoch": best_epoch,
                "epoch_stats": stats,
                "world_size": info.world_size,
                "classes": list(data.classes),
            },
        )

    params_m = sum(p.numel() for p in net.parameters()) / 1e6
    n_val = int(D.all_reduce_sum(torch.tensor([data.val.num_samples], dtype=torch.int64))[0])
    _say(
        info,
        f"imgcls: {cfg.model.name} ({params_m:.2f}M params) on {cfg.data_spec}: {data.num_classes} classes "
        f"({task}), {data.train.num_samples * info.world_size} train / {n_val} val images at "
        f"{image_size}px · {device}, {precision.name} ({precision.reason})"
        f"{', channels_last' if channels_last else ''}{', compiled' if cfg.model.compile else ''}"
        f" · {info.world_size} process{'es' if info.world_size > 1 else ''}"
        + (f" · resuming at epoch {start_epoch + 1}, batch {start_batch}" if tc.resume else ""),
    )
    if data.issues:
        _say(info, f"imgcls: skipped {len(data.issues)} unreadable file(s), listed in {run / 'data_issues.csv'}")

    tb = _TensorBoard(run / "tensorboard", info.is_main)
    bad_in_a_row = 0
    last_ckpt_time = time.monotonic()
    if restored_rng is not None:
        set_rng_state(restored_rng)  # last: nothing after this may draw random numbers before the loop
    with _StopSignals() as stop:
        for epoch in range(start_epoch, tc.epochs):
            epoch_t0 = time.perf_counter()
            stats = carried if epoch == start_epoch else {k: 0 for k in carried}
            stats = {k: float(v) if k in ("loss_sum", "seconds") else int(v) for k, v in stats.items()}
            first = start_batch if epoch == start_epoch else 0
            data.train.set_epoch(epoch)
            frozen = _frozen_parameters(net, tc.freeze_after, epoch, requires_grad=not info.enabled)
            n_batches = len(data.train)
            progress = _Progress(tc.progress, n_batches, first, f"epoch {epoch + 1}/{tc.epochs}", info.is_main)
            model.train()
            bad_window = False
            for b, (x, y) in enumerate(data.train.iterate(start_batch=first), start=first):
                boundary = (b + 1) % oc.accum_steps == 0 or b + 1 == n_batches
                x = x.to(device, non_blocking=True)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = y.to(device, non_blocking=True)
                due = boundary and b + 1 < n_batches and _checkpoint_due(tc, global_step + 1, last_ckpt_time)
                # DDP all-reduces gradients only on the micro-batch that ends an accumulation window.
                ctx = model.no_sync() if info.enabled and not boundary else contextlib.nullcontext()
                with ctx:
                    with precision.autocast():
                        output = model(x)
                    loss, logits = compute_loss(loss_fn, output, y, aux_weights)
                    # Agreed before backward: a rank that skips DDP's backward while another runs it hangs.
                    nonfinite, stop_now, due = D.agree_flags(
                        not bool(torch.isfinite(loss.detach())), stop.received is not None, due
                    )
                    if not nonfinite:
                        scaler.scale(loss / oc.accum_steps).backward()
                bad_window = bad_window or nonfinite
                if not nonfinite:
                    stats["loss_sum"] += float(loss.detach()) * x.shape[0]
                    stats["seen"] += x.shape[0]
                counts = _accuracy_counts(logits.detach(), y, task)
                if counts is not None:
                    stats["correct"] += counts[0]
                    stats["counted"] += counts[1]
                running_acc = 100.0 * stats["correct"] / stats["counted"] if stats["counted"] else None
                progress.update(x.shape[0] * info.world_size, stats["loss_sum"] / max(stats["seen"], 1), running_acc)
                if not boundary:
                    continue
                for p in frozen:  # under DDP they still get a gradient (its reducer expects one): drop it
                    p.grad = None
                unscaled, grad_ok = False, True
                if not bad_window and oc.clip_grad_norm:
                    scaler.unscale_(optimizer)
                    unscaled = True
                    # Gradients are identical on every rank after the all-reduce, so this needs no agreement;
                    # with fp16 the scaler itself skips steps with overflowed gradients.
                    norm = torch.nn.utils.clip_grad_norm_(net.parameters(), oc.clip_grad_norm)
                    grad_ok = bool(torch.isfinite(norm)) or scaler.is_enabled()
                elif not bad_window and not scaler.is_enabled():
                    # A finite loss can still back-propagate a NaN/Inf gradient (an overflow inside backward);
                    # applying it would turn every weight into NaN. Same gradients on every rank: same decision.
                    grads = [p.grad for p in net.parameters() if p.grad is not None]
                    grad_ok = not grads or bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))
                if bad_window or not grad_ok:
                    optimizer.zero_grad(set_to_none=True)
                    if unscaled:
                        scaler.update()
                    bad_window = False
                    bad_in_a_row += 1
                    if bad_in_a_row >= tc.max_bad_steps:
                        progress.close()
                        raise TrainingDiverged(
                            f"the loss or its gradient was NaN or infinite for {bad_in_a_row} steps in a row "
                            f"(epoch {epoch + 1}, batch {b + 1}): stopped; lower --lr or set optim.clip_grad_norm; the "
                            f"last good checkpoint is {run / CHECKPOINT}"
                        )
                    continue
                bad_in_a_row = 0
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                global_step += 1
                schedule.step()
                if lookahead is not None:
                    lookahead.step(net)
                if ema is not None:
                    ema.update(net)
                if stop_now or due:
                    partial = dict(stats, seconds=stats["seconds"] + time.perf_counter() - epoch_t0)
                    checkpoint(epoch, b + 1, partial)
                    last_ckpt_time = time.monotonic()
                if stop_now:
                    progress.close()
                    name = signal.Signals(stop.received).name if stop.received else "a stop signal on another rank"
                    _say(info, f"imgcls: {name}: checkpoint saved to {run / CHECKPOINT}; continue with --resume")
                    raise KeyboardInterrupt
            progress.close()
            if lookahead is not None and epoch + 1 == tc.epochs:
                lookahead.finish(net)  # the run ends on the slow weights

            # End of epoch: validation, schedule, files, summary.
            n = D.all_reduce_sum(torch.tensor([stats["loss_sum"], stats["seen"]], dtype=torch.float64))
            train_loss = float(n[0] / n[1]) if n[1] > 0 else None
            validate = epoch + 1 == tc.epochs or (tc.val_every > 0 and (epoch + 1) % tc.val_every == 0)
            result = _NOT_VALIDATED
            if validate:
                result = evaluate_model(
                    shipped(),
                    data.val,
                    task=task,
                    loss_fn=val_loss_fn,
                    precision=precision.name,
                    device=device,
                    distributed=info.enabled,
                )
            lr_now = schedule.lr
            if validate:
                schedule.observe(result.loss if result.loss is not None else math.inf)
            seconds = stats["seconds"] + time.perf_counter() - epoch_t0
            row = {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "val_loss": result.loss,
                "val_top1": result.top1,
                "val_top5": result.top5,
                "lr": lr_now,
                "seconds": round(seconds, 3),
            }
            history.append(row)
            improved = result.top1 is not None and (best_top1 is None or result.top1 > best_top1)
            if improved:
                best_top1, best_epoch = result.top1, epoch + 1
            if info.is_main:
                _write_metrics(run / METRICS_FILE, history)
                tb.epoch(row)
                if tc.save == "last" or improved or (best_top1 is None and epoch + 1 == tc.epochs):
                    save_bundle(run, shipped(), meta())
            checkpoint(epoch + 1, 0, {k: 0 for k in carried})
            last_ckpt_time = time.monotonic()
            top5 = "" if result.top5 is None else f" top-5 {result.top5:.2f}%"
            top1 = ("—" if validate else "not validated") if result.top1 is None else f"{result.top1:.2f}%"
            _say(
                info,
                f"epoch {epoch + 1}/{tc.epochs}  train loss {_num(train_loss)}  val loss {_num(result.loss)}  "
                f"top-1 {top1}{top5}  lr {lr_now:.4g}  {seconds:.1f}s"
                + (f"  (best {best_top1:.2f}% at epoch {best_epoch})" if best_top1 is not None else ""),
            )
    tb.close()

    # The shipped weights: the best epoch's (read back from model.safetensors) or the last.
    final = shipped()
    if tc.save == "best" and best_epoch is not None and best_epoch != len(history):
        from imgcls.engine.bundle import load_weights

        state = D.on_main(lambda: load_weights(run))
        final.load_state_dict(state)
    report_path, summary = None, {}
    if tc.report:
        summary = finalize_run(
            run,
            final,
            data,
            precision=precision.name,
            device=device,
            distributed=info.enabled,
            loss_fn=val_loss_fn,
            tta=tc.final_tta,
        )
        if info.is_main:
            from imgcls.report import build_report

            report_path = build_report(run)
    elapsed = time.perf_counter() - t_start
    top1, top5 = summary.get("top1", best_top1), summary.get("top5")
    _say(
        info,
        f"imgcls: done in {_duration(elapsed)}: top-1 {_num(top1, '%')}"
        + (f", top-5 {_num(top5, '%')}" if top5 is not None else "")
        + f" ({'best epoch ' + str(best_epoch) if tc.save == 'best' else 'last epoch'}) · weights "
        f"{run / 'model.safetensors'}" + (f" · report {report_path}" if report_path else ""),
    )
    return RunResult(
        run_dir=run,
        epochs=len(history),
        best_top1=best_top1,
        best_epoch=best_epoch,
        top1=top1,
        top5=top5,
        seconds=elapsed,
        precision=precision.name,
        report=report_path,
        history=history,
    )


@dataclass(frozen=True)
class _NoValidation:
    loss: None = None
    top1: None = None
    top5: None = None


_NOT_VALIDATED = _NoValidation()


def _frozen_parameters(
    net: nn.Module, freeze_after: dict[str, int], epoch: int, requires_grad: bool
) -> list[nn.Parameter]:
    """The parameters whose ``train.freeze_after`` epochs are over at (0-based) ``epoch``; with
    ``requires_grad`` they also stop requiring a gradient."""
    frozen = [
        p
        for name, p in net.named_parameters()
        if any(name.startswith(prefix) and epoch >= epochs for prefix, epochs in freeze_after.items())
    ]
    if requires_grad:
        for p in frozen:
            p.requires_grad_(False)
    return frozen


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


def _num(value: float | None, unit: str = "") -> str:
    return "—" if value is None else f"{value:.4f}{unit}" if not unit else f"{value:.2f}{unit}"


__all__ = ["CHECKPOINT", "METRICS_COLUMNS", "RunResult", "TrainingDiverged", "check_run_dir", "train"]
