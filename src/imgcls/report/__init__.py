"""The run report: PNG plots and ``report/report.html``, built from the files of a run folder alone.

:func:`build_report` reads only what the run folder holds (DESIGN.md, "The run folder"):

- ``metrics.csv`` — one row per epoch: loss, accuracy and learning-rate curves;
- ``eval.json`` — the final evaluation (``imgcls.engine.evaluate.finalize_run``): the confusion matrix and
  per-class scores;
- ``samples.npz`` — a few validation images with their top-5 predictions, for the image grid;
- ``model.json``, ``config.json`` — what was trained on what, for the summary.

Any of them may be missing (a run stopped early, a multi-label task has no confusion matrix): the report then
shows what there is. So it can be rebuilt at any time, e.g. ``python -c "import imgcls.report as r;
r.build_report('runs/demo')"``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from imgcls._files import atomic_write_text
from imgcls.errors import UserError
from imgcls.run_folder import RunFolder


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


def build_report(run_dir: str | os.PathLike) -> Path:
    """Draw the plots of a run and write ``<run_dir>/report/report.html``.

    Args:
        run_dir: a run folder (what ``imgcls train --out`` wrote).

    Returns:
        The path of ``report.html``.
    """
    from imgcls.report import plots
    from imgcls.report.html import FigureRef, render_report

    run = RunFolder(run_dir)
    if not run.root.is_dir():
        raise UserError(f"run folder not found: {run.root}")
    out = run.report_dir
    out.mkdir(exist_ok=True)
    rows = run.read_metrics()
    evaluation = run.read_eval() or {}
    found = run.read_meta_or_none()
    meta = found.to_dict() if found is not None else {}
    config = run.read_config() or {}
    samples = run.read_samples()
    classes = [str(c) for c in evaluation.get("classes") or meta.get("classes") or []]
    task = evaluation.get("task") or meta.get("task") or "multiclass"

    figures: list[FigureRef] = []
    if rows:
        plots.plot_loss(rows, out / "loss.png")
        figures.append(FigureRef("loss.png", "Loss", "Mean loss per image on the training and validation sets."))
        plots.plot_accuracy(rows, out / "accuracy.png")
        figures.append(FigureRef("accuracy.png", "Accuracy", "Validation top-1 and top-5 accuracy per epoch."))
        if any(r.get("lr") is not None for r in rows):
            plots.plot_lr(rows, out / "lr.png")
            figures.append(FigureRef("lr.png", "Learning rate", "At the end of each epoch."))
    matrix = evaluation.get("confusion_matrix")
    if matrix and classes and len(matrix) == len(classes):
        plots.plot_confusion(np.asarray(matrix), classes, out / "confusion.png")
        figures.append(
            FigureRef("confusion.png", "Confusion matrix", "Row i: where the images of class i went.", wide=True)
        )
    per_class = evaluation.get("per_class") or {}
    if classes and per_class:
        multilabel = task == "multilabel"
        values = per_class.get("ap") if multilabel else per_class.get("recall")
        if values:
            label = "average precision" if multilabel else "accuracy"
            plots.plot_per_class(
                [None if v is None else 100 * v for v in values], classes, out / "per_class.png", label=label
            )
            figures.append(
                FigureRef("per_class.png", f"Per-class {label}", "Sorted, worst first; dashed line: the mean.")
            )
    if samples is not None and len(samples.get("images", ())) and (classes or "classes" in samples):
        names = classes or [str(c) for c in samples["classes"]]
        plots.plot_samples(
            samples["images"],
            samples["targets"],
            samples["topk_indices"],
            samples["topk_probs"],
            names,
            out / "samples.png",
            multilabel=str(samples.get("task", task)) == "multilabel",
        )
        figures.append(
            FigureRef("samples.png", "Predictions", "Validation images with their top-5 classes.", wide=True)
        )

    model_name = meta.get("name") or _get(config, "model", "name") or "model"
    spec = _get(config, "data", "spec") or "data"
    best = max((r for r in rows if r.get("val_top1") is not None), key=lambda r: r["val_top1"], default=None)
    headline = [("top-1", _pct(evaluation.get("top1")))]
    if evaluation.get("top5") is not None:
        headline.append(("top-5", _pct(evaluation["top5"])))
    for key, label in (("mAP", "mAP"), ("auc", "ROC-AUC"), ("macro_f1", "macro F1")):
        if evaluation.get(key) is not None:
            value = evaluation[key]
            headline.append((label, f"{value:.3f}" if key == "auc" else _pct(value)))
    seconds = sum(r.get("seconds") or 0.0 for r in rows)
    input_size = meta.get("input_size")
    summary = [
        (
            "model",
            f"{model_name} ({meta.get('num_classes', len(classes))} classes"
            + (f", input {'×'.join(map(str, input_size))})" if input_size else ")"),
        ),
        ("data", str(spec)),
        ("task", str(task)),
        (
            "epochs",
            f"{len(rows)}" + (f" of {_get(config, 'train', 'epochs')}" if _get(config, "train", "epochs") else ""),
        ),
        ("training time", _duration(seconds) if rows else "–"),
        ("validation images", str(evaluation.get("num_samples", "–"))),
        ("final top-1 / top-5", f"{_pct(evaluation.get('top1'))} / {_pct(evaluation.get('top5'))}"),
        ("best val top-1", f"{best['val_top1']:.2f}% (epoch {int(best['epoch'])})" if best else "–"),
        ("final val loss", f"{evaluation['loss']:.4f}" if evaluation.get("loss") is not None else "–"),
    ]
    optim = config.get("optim") or {}
    if optim:
        summary.append(
            (
                "optimiser",
                f"{optim.get('name', '?')}, lr {optim.get('lr', '?')}, weight decay {optim.get('weight_decay', '?')}",
            )
        )
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

    page = render_report(
        title=f"{model_name} on {spec}",
        subtitle=f"imgcls run report — {run.root.resolve().name}",
        headline=headline,
        summary=summary,
        figures=figures,
        per_class=per_class or None,
        classes=classes,
    )
    return atomic_write_text(run.report_page, page)


__all__ = ["build_report"]
