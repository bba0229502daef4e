"""The run report: PNG plots and ``report/report.html``, built from the files of a run folder alone.

:func:`build_report` reads only what the run folder holds (DESIGN.md, "The run folder"; names from
:class:`imgcls.run_folder.RunFolder`):

- ``metrics.csv`` — one row per epoch: loss, accuracy and learning-rate curves;
- ``eval.json`` — the final evaluation of the shipped weights (``imgcls.engine.evaluate.finalize_run``): the
  confusion matrix and per-class scores, calibration (ECE and reliability bins before and after temperature
  scaling; `imgcls.report.calibration`), and the separate test split when the data has one;
- ``samples.npz`` — a few validation images with their top predictions, for the image grid, and the images of
  the error gallery and of the most confused pairs (`imgcls.report.anatomy`);
- ``model.safetensors`` — the network itself, for its first-layer filters, the feature maps of one image and the
  Grad-CAM maps of the error gallery (`imgcls.report.anatomy`; classical pipelines have none);
- ``model.json``, ``config.json`` — what was trained on what, for the summary; ``config.json``'s
  ``run.selection`` is the engine's record of the best and the last epoch, which of the two
  ``model.safetensors`` holds, and the run's time (the figure the console prints).

The page shows the best epoch (with its number) and the last one side by side and says which one the shipped
weights are. When the best epoch was chosen on the only held-out split, the validation figures of the shipped
weights are optimistic (the choice looked at those very images), and the page says so; a ``test/`` split,
evaluated once at the end, is reported separately as the unbiased figure.

Any file may be missing (a run stopped early, a multi-label task has no confusion matrix, an older run has no
``run.selection``): the report then shows what there is. So it can be rebuilt at any time, e.g.
``python -c "import imgcls.report as r; r.build_report('runs/demo')"``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgcls._files import atomic_write_text
from imgcls.errors import UserError
from imgcls.run_folder import RunFolder

# train.select_metric -> (metrics.csv column, higher is better), for runs recorded without ``run.selection``.
SELECTION_COLUMNS = {"top1": ("val_top1", True), "top5": ("val_top5", True), "mAP": ("val_mAP", True),
                     "loss": ("val_loss", False)}  # fmt: skip


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h} h {m:02d} min" if h else (f"{m} min {s:02d} s" if m else f"{s} s")


def _pct(value) -> str:
    return "–" if value is None else f"{value:.2f}%"


def _get(d: dict, *keys, default=None):
    for key in keys:
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    return d


@dataclass(frozen=True)
class Epoch:
    """One epoch of the record: its number, the selection metric's value and the validation loss."""

    epoch: int
    value: float | None
    val_loss: float | None


@dataclass(frozen=True)
class Outcome:
    """What the run's record says about its epochs: the best, the last, which one ships, and the time."""

    metric: str  # "top1", "mAP", "loss"...
    best: Epoch | None
    last: Epoch | None
    shipped: str  # "best" or "last"
    shipped_epoch: int | None
    seconds: float | None  # the run's time as recorded (the console's figure); None: not recorded
    epoch_seconds: float  # the sum of metrics.csv's per-epoch seconds


def _row(rows: list[dict], epoch: int | None) -> dict:
    return next((r for r in rows if epoch is not None and r.get("epoch") == epoch), {})


def read_outcome(rows: list[dict], config: dict, task: str) -> Outcome:
    """The best/last/shipped record the engine keeps in ``config.json`` (``run.selection``); for runs without
    one it is derived from ``metrics.csv`` and the saved ``train.save`` and ``train.select_metric``."""
    selection = _get(config, "run", "selection") or {}
    default = "mAP" if task == "multilabel" else "top1"
    metric = str(selection.get("metric") or _get(config, "train", "select_metric") or default)
    if metric == "auto":
        metric = default
    column, higher = SELECTION_COLUMNS.get(metric, (f"val_{metric}", True))
    column = selection.get("column") or column
    scored = [r for r in rows if r.get(column) is not None and r.get("epoch") is not None]
    if selection.get("best_epoch") is not None:
        epoch = int(selection["best_epoch"])
        best = Epoch(epoch, selection.get("best_value"), _row(rows, epoch).get("val_loss"))
    elif scored:
        pick = max if higher else min  # the first of equal values, as the engine keeps it
        top = pick(scored, key=lambda r: r[column])
        best = Epoch(int(top["epoch"]), top[column], top.get("val_loss"))
    else:
        best = None
    last_row = selection.get("last") if isinstance(selection.get("last"), dict) else (rows[-1] if rows else {})
    last_epoch = selection.get("last_epoch") or last_row.get("epoch")
    last = Epoch(int(last_epoch), last_row.get(column), last_row.get("val_loss")) if last_epoch else None
    shipped = str(selection.get("rule") or _get(config, "train", "save") or "best")
    if shipped == "best" and best is None:
        shipped = "last"  # nothing was validated: the last epoch's weights are the ones written
    chosen = best if shipped == "best" else last
    shipped_epoch = selection.get("shipped_epoch") or (chosen.epoch if chosen else None)
    seconds = selection.get("seconds")
    epoch_seconds = float(sum(r.get("seconds") or 0.0 for r in rows))
    return Outcome(metric, best, last, shipped, shipped_epoch, None if seconds is None else float(seconds),
                   epoch_seconds)  # fmt: skip


def _describe(e: Epoch | None, metric: str) -> str:
    """``"6 (top-1 99.00%, val loss 0.0500)"``."""
    if e is None:
        return "–"
    if metric == "loss":
        return f"{e.epoch} (val loss {e.value:.4f})" if e.value is not None else str(e.epoch)
    value = f"{metric} {e.value:.2f}%" if e.value is not None else f"{metric} –"
    loss = f", val loss {e.val_loss:.4f}" if e.val_loss is not None else ""
    return f"{e.epoch} ({value}{loss})"


def _figures(run: RunFolder, rows, evaluation, samples, classes, task) -> list:
    """Draw every figure the files allow; returns their ``FigureRef`` in page order."""
    from imgcls.report import plots
    from imgcls.report.html import FigureRef

    out = run.report_dir
    figures: list[FigureRef] = []
    if rows:
        plots.plot_loss(rows, out / "loss.png")
        figures.append(FigureRef("loss.png", "Loss", "Mean loss per image on the training and validation sets."))
        plots.plot_accuracy(rows, out / "accuracy.png")
        has_top5 = any(r.get("val_top5") is not None for r in rows)
        caption = f"Validation top-1{' and top-5' if has_top5 else ''} accuracy per epoch."
        figures.append(FigureRef("accuracy.png", "Accuracy", caption))
        if any(r.get("lr") is not None for r in rows):
            plots.plot_lr(rows, out / "lr.png")
            caption = "Per epoch, the mean rate of its optimiser steps" + (
                " (dashed: the highest)." if any(r.get("lr_max") is not None for r in rows) else "."
            )
            figures.append(FigureRef("lr.png", "Learning rate", caption))
    matrix = evaluation.get("confusion_matrix")
    if matrix and classes and len(matrix) == len(classes):
        plots.plot_confusion(np.asarray(matrix), classes, out / "confusion.png")
        figures.append(
            FigureRef("confusion.png", "Confusion matrix", "Row i: where the images of class i went.", wide=True)
        )
    per_class = evaluation.get("per_class") or {}
    multilabel = task == "multilabel"
    values = per_class.get("ap") if multilabel else per_class.get("recall")
    if classes and values:
        label = "average precision" if multilabel else "accuracy"
        plots.plot_per_class([None if v is None else 100 * v for v in values], classes, out / "per_class.png",
                             label=label)  # fmt: skip
        figures.append(FigureRef("per_class.png", f"Per-class {label}", "Sorted, worst first; dashed line: the mean."))
    if samples is not None and len(samples.get("images", ())) and (classes or "classes" in samples):
        names = classes or [str(c) for c in samples["classes"]]
        shown = int(samples["topk_indices"].shape[1])
        plots.plot_samples(
            samples["images"],
            samples["targets"],
            samples["topk_indices"],
            samples["topk_probs"],
            names,
            out / "samples.png",
            multilabel=str(samples.get("task", task)) == "multilabel",
        )
        caption = f"Validation images with their {plots.topk_words(shown)}."
        figures.append(FigureRef("samples.png", "Predictions", caption, wide=True))
    return figures


def _headline(evaluation: dict) -> list[tuple[str, str]]:
    test = evaluation.get("test") if isinstance(evaluation.get("test"), dict) else None
    headline = []
    if test:
        headline.append(("test top-1", _pct(test.get("top1"))))
        if test.get("top5") is not None:
            headline.append(("test top-5", _pct(test["top5"])))
        if test.get("mAP") is not None:
            headline.append(("test mAP", _pct(test["mAP"])))
    prefix = "val " if test else ""
    headline.append((f"{prefix}top-1", _pct(evaluation.get("top1"))))
    if evaluation.get("top5") is not None:
        headline.append((f"{prefix}top-5", _pct(evaluation["top5"])))
    for key, label in (("mAP", "mAP"), ("auc", "ROC-AUC"), ("macro_f1", "macro F1")):
        if evaluation.get(key) is not None:
            value = evaluation[key]
            headline.append((prefix + label, f"{value:.3f}" if key == "auc" else _pct(value)))
    return headline


def _scores(evaluation: dict) -> str:
    """``top-1 X% / top-5 Y%`` (top-5 only where it exists; mAP for multi-label)."""
    parts = [f"top-1 {_pct(evaluation.get('top1'))}"]
    if evaluation.get("top5") is not None:
        parts.append(f"top-5 {_pct(evaluation['top5'])}")
    if evaluation.get("mAP") is not None:
        parts.append(f"mAP {_pct(evaluation['mAP'])}")
    return " / ".join(parts)


def _results(outcome: Outcome, evaluation: dict) -> tuple[list[tuple[str, str]], list[str]]:
    """Summary rows about the epochs and the shipped weights, and the notes the page must carry."""
    metric = "top-1" if outcome.metric == "top1" else outcome.metric
    rows = [("best epoch", _describe(outcome.best, metric)), ("last epoch", _describe(outcome.last, metric))]
    if outcome.shipped_epoch is not None:
        why = f"the best epoch by validation {metric}" if outcome.shipped == "best" else "the last epoch"
        rows.append(("shipped weights", f"epoch {outcome.shipped_epoch} ({why}) — model.safetensors"))
    test = evaluation.get("test") if isinstance(evaluation.get("test"), dict) else None
    if evaluation:
        tta = evaluation.get("tta")
        how = f", TTA {tta}" if tta and tta != "none" else ""
        count = evaluation.get("num_samples", "–")
        rows.append(("validation (shipped weights)", f"{_scores(evaluation)} on {count} images{how}"))
        if evaluation.get("loss") is not None:
            rows.append(("validation loss (shipped weights)", f"{evaluation['loss']:.4f}"))
    if test:
        count = test.get("num_samples", "–")
        rows.append(("test (shipped weights)", f"{_scores(test)} on {count} images, evaluated once at the end"))
    notes = []
    if outcome.shipped == "best" and outcome.best is not None and not test:
        notes.append(
            f"The shipped weights are those of the best epoch by validation {metric}, chosen on the same "
            "validation images that the figures above are measured on: they are optimistic. For an unbiased "
            "figure, give the data a separate test/ folder beside train/ and val/; it is evaluated once, at the end."
        )
    return rows, notes


def _run_rows(outcome: Outcome, rows: list[dict], meta: dict, config: dict, evaluation: dict, classes, task):
    model_name = meta.get("name") or _get(config, "model", "name") or "model"
    input_size = meta.get("input_size")
    epochs_planned = _get(config, "train", "epochs")
    if outcome.seconds is not None:
        time_text = f"{_duration(outcome.seconds)} (the whole run, as the console reported it)"
    else:
        time_text = f"{_duration(outcome.epoch_seconds)} (sum of the epochs)" if rows else "–"
    summary = [
        ("model", f"{model_name} ({meta.get('num_classes', len(classes))} classes"
                  + (f", input {'×'.join(map(str, input_size))})" if input_size else ")")),
        ("data", str(_get(config, "data", "spec") or "data")),
        ("task", str(task)),
        ("epochs", f"{len(rows)}" + (f" of {epochs_planned}" if epochs_planned else "")),
        ("training time", time_text),
    ]  # fmt: skip
    results, notes = _results(outcome, evaluation)
    summary += results
    optim = config.get("optim") or {}
    if optim:
        summary.append(("optimiser", f"{optim.get('name', '?')}, lr {optim.get('lr', '?')}, "
                                     f"weight decay {optim.get('weight_decay', '?')}"))  # fmt: skip
    asked, chosen = _get(config, "train", "precision"), _get(config, "run", "precision")
    if chosen or asked:
        summary.append(("precision", f"{chosen} (asked: {asked})" if chosen and asked and asked != chosen
                        else str(chosen or asked)))  # fmt: skip
    world = _get(config, "run", "world_size")
    if world and world > 1:
        summary.append(("processes", f"{world} (data-parallel)"))
    if meta.get("sha256"):
        summary.append(("weights SHA-256", meta["sha256"][:16] + "…"))
    if config.get("git_commit"):
        summary.append(("git commit", str(config["git_commit"])[:12]))
    return model_name, summary, notes


def build_report(run_dir: str | os.PathLike) -> Path:
    """Draw the plots of a run and write ``<run_dir>/report/report.html``.

    Args:
        run_dir: a run folder (what ``imgcls train --out`` wrote).

    Returns:
        The path of ``report.html``.

    Raises:
        UserError: the folder is missing, one of its files is malformed, or the disk refuses a write (one line
            naming the file).
    """
    from imgcls.report.html import render_report

    run = RunFolder(run_dir)
    if not run.root.is_dir():
        raise UserError(f"run folder not found: {run.root}")
    rows = run.read_metrics()
    evaluation = run.read_eval() or {}
    found = run.read_meta_or_none()
    meta = found.to_dict() if found is not None else {}
    config = run.read_config() or {}
    samples = run.read_samples()
    classes = [str(c) for c in evaluation.get("classes") or meta.get("classes") or []]
    task = evaluation.get("task") or meta.get("task") or "multiclass"
    outcome = read_outcome(rows, config, task)

    figures = _figures(run, rows, evaluation, samples, classes, task)
    from imgcls.report.anatomy import build_anatomy
    from imgcls.report.calibration import calibration_section

    sections = [s for s in (calibration_section(run, evaluation, classes),) if s is not None]
    sections += build_anatomy(run, found, samples, evaluation, classes)
    model_name, summary, notes = _run_rows(outcome, rows, meta, config, evaluation, classes, task)
    page = render_report(
        title=f"{model_name} on {_get(config, 'data', 'spec') or 'data'}",
        subtitle=f"imgcls run report — {run.root.resolve().name}",
        headline=_headline(evaluation),
        summary=summary,
        notes=notes,
        figures=figures,
        per_class=evaluation.get("per_class") or None,
        classes=classes,
        sections=sections,
    )
    return atomic_write_text(run.report_page, page)


__all__ = ["Epoch", "Outcome", "build_report", "read_outcome"]
