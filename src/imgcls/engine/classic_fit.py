"""``imgcls train --model <classic pipeline>``: fit one in a single pass and fill the same run folder as a CNN.

The engine's ``train(cfg)`` hands a classic model's configuration to :func:`train_classic`, which:

1. refuses, before anything is written, what does not apply (``--resume``, ``--weights``, a final TTA,
   multi-label data, several processes) and a missing optional library;
2. builds the data with the data layer (same sources, splits, decoding and ``data_issues.csv`` as a CNN run),
   without augmentation and with mean 0 / std 1, so the model sees ``pixels / 255``; the training images are
   read in their evaluation view (shorter side to ``resize``, centre crop), exactly as validation, predict and
   serve read theirs;
3. writes ``config.json``, fits the pipeline (`imgcls.classic.pipeline`), saves ``model.safetensors`` +
   ``model.json`` (the full pipeline settings as ``model_kwargs``), runs the engine's final evaluation
   (``eval.json``, ``predictions.csv``, ``samples.npz``), writes one ``metrics.csv`` row (epoch 1: training log
   loss, validation loss/top-1/top-5, no learning rate, the seconds of fit + validation) and the report.

There is no ``checkpoints/last.pt``: a fit is one pass with nothing to resume. Optimiser, schedule, epoch and
batch-size settings do not apply (``data.batch_size`` is only the size of the feature-extraction batches).
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from pathlib import Path

from imgcls.classic import not_applicable
from imgcls.errors import UserError


def _refuse_what_does_not_apply(cfg, name: str) -> None:
    from imgcls.engine import distributed as D

    tc, mc = cfg.train, cfg.model
    if tc.resume:
        raise not_applicable("--resume (a fit is one pass; use --overwrite to fit again)", name)
    if mc.weights:
        raise not_applicable("--weights (fine-tuning)", name)
    if tc.final_tta != "none":
        raise not_applicable(f"train.final_tta={tc.final_tta} (test-time augmentation)", name)
    if tc.task == "multilabel":
        raise not_applicable("--task multilabel", name)
    if D.env_info().enabled:
        raise not_applicable("data-parallel training (torchrun)", name)


def train_classic(cfg):
    """Fit the classic pipeline ``cfg.model.name`` into ``cfg.train.out`` (module docstring).

    Everything is checked and the data is built before the run folder is created; the folder is locked while
    the fit runs (a second ``train`` on it is refused), and a fit that fails or is interrupted leaves no
    half-made run: a folder it created is removed, an existing one loses the files this run wrote.

    Returns:
        The engine's ``RunResult`` (``epochs`` is 1).

    Raises:
        UserError: a setting that does not apply, a bad ``model.kwargs`` value, missing data or library, or an
            output folder that holds another run (nothing is overwritten).
    """
    from imgcls._files import FileLock
    from imgcls.data import build_data
    from imgcls.data.transforms import AugmentConfig
    from imgcls.engine.train import check_run_dir
    from imgcls.models import create_model, model_entry
    from imgcls.run_folder import RunFolder

    t_start = time.perf_counter()
    tc, mc = cfg.train, cfg.model
    name = mc.name
    if not cfg.data_spec:
        raise UserError("--data is required: a folder, a CSV file or a built-in name such as digits")
    _refuse_what_does_not_apply(cfg, name)
    entry = model_entry(name)
    in_chans = mc.in_chans or entry.input_size[0]
    image_size = mc.image_size or entry.input_size[-1]
    kwargs = {**(mc.kwargs or {}), "image_size": image_size}
    model = create_model(name, num_classes=2, in_chans=in_chans, **kwargs)  # validates model.kwargs
    model.pipeline.check_libraries()
    if cfg.data.workers is not None:
        model.pipeline.workers = max(1, int(cfg.data.workers))
    run = RunFolder(check_run_dir(tc.out, resume=False, overwrite=tc.overwrite))

    no_aug = AugmentConfig()
    zeros = [0.0] * in_chans
    data = build_data(
        cfg.data_spec,
        cfg.data,
        no_aug,
        image_size=image_size,
        in_chans=in_chans,
        seed=tc.seed,
        device="cpu",
        task=tc.task,
        mean=zeros,
        std=[1.0] * in_chans,
    )
    if data.task == "multilabel":
        raise not_applicable(f"multi-label data ({cfg.data_spec})", name)
    model.num_classes = data.num_classes

    # Only now the folder: created (or cleared for --overwrite) under its lock, and undone if the fit fails.
    created = _make_folder(run.root)
    lock = FileLock(run.lock, f"imgcls train --out {run.root}", timeout=0)
    try:
        try:
            lock.acquire()
        except UserError:
            raise UserError(f"--out {run.root}: another imgcls train is writing this run folder right now") from None
        check_run_dir(str(run.root), resume=False, overwrite=tc.overwrite)  # again, under the lock
        if tc.overwrite:
            run.clear()
        return _fit_into(run, cfg, model, data, entry, image_size, in_chans, t_start)
    except BaseException:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        elif lock.fd is not None:
            run.clear()
        raise
    finally:
        lock.release()


def _make_folder(root: Path) -> Path | None:
    """Create ``root``; the topmost folder this created, or None when it existed."""
    top = next((f for f in (root, *root.parents) if not f.exists() and f.parent.exists()), None)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {root}: cannot write there ({exc.strerror or exc})") from None
    return top


def _fit_into(run, cfg, model, data, entry, image_size: int, in_chans: int, t_start: float):
    import numpy as np

    from imgcls.classic.module import to_uint8_images
    from imgcls.data import BatchLoader
    from imgcls.data.transforms import AugmentConfig, build_batch_transform
    from imgcls.engine.bundle import save_bundle
    from imgcls.engine.evaluate import finalize_run

    tc = cfg.train
    no_aug = AugmentConfig()
    zeros, ones = [0.0] * in_chans, [1.0] * in_chans
    _write_record(run, cfg, model, data, image_size, in_chans, no_aug)
    data.write_issues(run.issues)
    n_val = data.val.num_samples if data.val is not None else 0
    _announce(run, cfg, entry, data, image_size, n_val, no_aug)

    # The training split in its evaluation view: same resize and centre crop as validation, predict and serve.
    train_view = BatchLoader(
        data.train.samples,
        batch_size=cfg.data.batch_size,
        train=False,
        seed=tc.seed,
        transform=build_batch_transform(no_aug, False, image_size, zeros, ones),
        workers=data.train.workers,
        issues=data.issues,
    )

    def batches():
        for x, y in train_view.iterate():
            yield to_uint8_images(x), np.asarray(y, dtype=np.int64)

    t_fit = time.perf_counter()
    fitted = model.pipeline.fit(batches, train_view.num_samples, data.num_classes, seed=tc.seed, log=_say)
    model.eval()
    save_bundle(run, model, _meta(cfg, model, data, image_size, in_chans))
    summary: dict = {}
    if data.val is not None and n_val:
        summary = finalize_run(run.root, model, data, precision="fp32", device="cpu", tta="none")
    seconds = time.perf_counter() - t_fit
    data.write_issues(run.issues)  # streaming may have found more while reading
    return _finish(run, cfg, fitted, summary, seconds, t_start)


def _say(text: str) -> None:
    print(f"imgcls: {text}", flush=True)


def _write_record(run, cfg, model, data, image_size: int, in_chans: int, no_aug) -> None:
    """config.json as the engine writes it, with the pipeline's settings (no augmentation: it is never used)."""
    from imgcls.engine.config import config_record

    record = config_record(
        dataclasses.replace(cfg, augment=no_aug),
        run={
            "classes": list(data.classes),
            "task": data.task,
            "num_classes": data.num_classes,
            "image_size": image_size,
            "in_chans": in_chans,
            "mean": [0.0] * in_chans,
            "std": [1.0] * in_chans,
            "resize": data.resize,
            "precision": "fp32",
            "world_size": 1,
            "pipeline": model.config.to_dict(),
        },
    )
    run.write_config(record)


def _announce(run, cfg, entry, data, image_size: int, n_val: int, no_aug) -> None:
    _say(
        f"{cfg.model.name} ({entry.paper}) on {cfg.data_spec}: {data.num_classes} classes ({data.task}), "
        f"{data.train.num_samples} train / {n_val} val images at {image_size}px · one pass on the CPU "
        "(optimiser, schedule and epoch settings do not apply)"
    )
    if cfg.augment is not None and cfg.augment != no_aug:
        _say("augmentation settings are ignored: the pipeline sees each training image once, as evaluation does")
    if data.issues:
        _say(f"skipped {len(data.issues)} unreadable file(s), listed in {run.issues}")


def _meta(cfg, model, data, image_size: int, in_chans: int):
    from imgcls.run_folder import ModelMeta

    return ModelMeta(
        name=cfg.model.name,
        num_classes=data.num_classes,
        classes=list(data.classes),
        input_size=[in_chans, image_size, image_size],
        mean=[0.0] * in_chans,
        std=[1.0] * in_chans,
        task=data.task,
        resize=int(data.resize) if data.resize else image_size,
        in_chans=in_chans,
        model_kwargs=model.config.to_dict(),
        epoch=1,
    )


def _finish(run, cfg, fitted, summary: dict, seconds: float, t_start: float):
    """metrics.csv (one row), the report, the closing line and the engine's RunResult."""
    from imgcls.engine.train import METRICS_COLUMNS, RunResult

    row = {
        "epoch": 1,
        "train_loss": fitted.train_loss,
        "val_loss": summary.get("loss"),
        "val_top1": summary.get("top1"),
        "val_top5": summary.get("top5"),
        "seconds": round(seconds, 3),
    }
    run.write_metrics(METRICS_COLUMNS, [row])
    report_path = None
    if cfg.train.report:
        from imgcls.report import build_report

        report_path = build_report(run.root)
    top1, top5 = summary.get("top1"), summary.get("top5")
    elapsed = time.perf_counter() - t_start
    _say(
        f"done in {elapsed:.1f}s: top-1 {_pct(top1)}"
        + (f", top-5 {_pct(top5)}" if top5 is not None else "")
        + f" · weights {run.weights}"
        + (f" · report {report_path}" if report_path else "")
    )
    return RunResult(
        run_dir=run.root,
        epochs=1,
        best_top1=top1,
        best_epoch=1 if top1 is not None else None,
        top1=top1,
        top5=top5,
        seconds=elapsed,
        precision="fp32",
        report=report_path,
        history=[row],
        best_value=top1,
    )


def _pct(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.2f}%"


__all__ = ["train_classic"]
