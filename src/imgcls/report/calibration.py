"""The reliability diagram (Guo et al. 2017, arXiv:1706.04599, Fig. 1): accuracy against confidence per bin.

Drawn from the ``calibration`` record of ``eval.json`` or ``imgcls eval --json``
(``imgcls.engine.calibration.calibration_report``): one panel for the probabilities as the network gives them and,
when a temperature was fitted, one after temperature scaling. In each, the bars are the accuracy of the bin, the
dashed diagonal is perfect calibration, and the hatched part is each bin's gap between accuracy and mean confidence
(red above the bar: more confident than right; yellow over the bar's top: less); the strip below shows the share
of predictions in each bin.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from imgcls._files import atomic_write_bytes
from imgcls.report.html import FigureRef, Section

DPI = 110
BLUE, VERMILION, YELLOW, GREY = "#0072B2", "#D55E00", "#F0E442", "#9A9A9A"  # Okabe & Ito 2008, as elsewhere


def reliability_figure(calibration: dict, split: str = "validation") -> Figure:
    """The reliability diagram of a ``calibration`` record (before and, if fitted, after temperature scaling)."""
    panels = [("as trained", calibration.get("reliability"), calibration.get("ece"))]
    if calibration.get("reliability_calibrated") is not None:
        t = calibration.get("temperature")
        panels.append(
            (f"after temperature T = {t:.3g}", calibration["reliability_calibrated"], calibration.get("ece_calibrated"))
        )
    panels = [p for p in panels if p[1] is not None]
    side, strip, gap = 3.0, 0.7, 0.9
    width = 0.75 + len(panels) * (side + gap)
    height = 0.75 + side + 0.35 + strip + 0.6 + 0.35  # the last: the legend's row under the title
    fig = Figure(figsize=(width, height))
    count = calibration.get("num_samples") or (panels[0][1].get("num_samples") if panels else 0)
    fig.text(
        0.5,
        1 - 0.12 / height,
        f"Reliability on {split} ({count} images, {calibration.get('bins', 15)} bins)",
        ha="center",
        va="top",
        fontsize=11,
    )
    fig.legend(
        handles=_legend_handles(),
        loc="upper center",
        bbox_to_anchor=(0.5, 1 - 0.42 / height),
        ncol=2 if len(panels) < 2 else 4,
        fontsize=8,
        frameon=False,
    )
    for k, (label, bins, ece) in enumerate(panels):
        left = 0.75 + k * (side + gap)
        ax = fig.add_axes((left / width, (0.6 + strip + 0.35) / height, side / width, side / height))
        hist = fig.add_axes((left / width, 0.6 / height, side / width, strip / height))
        _panel(ax, hist, bins)
        ece_text = "–" if ece is None else f"{ece:.2f}%"
        ax.set_title(f"{label}: ECE {ece_text}", fontsize=10)
        if k == 0:
            ax.set_ylabel("accuracy")
            hist.set_ylabel("share", fontsize=8)
    return fig


def _legend_handles() -> list:
    """Explicit handles: the legend names every kind of bar, whether or not a panel has one."""
    return [
        Patch(facecolor=BLUE, label="bins (height: their accuracy)"),
        Patch(facecolor=VERMILION, alpha=0.35, hatch="//", edgecolor=VERMILION, label="gap: more confident than right"),
        Patch(facecolor=YELLOW, hatch="\\\\", edgecolor="#8a6d00", label="gap: less confident than right"),
        Line2D([0], [0], linestyle="--", color="#333333", linewidth=1, label="perfect calibration"),
    ]


def _panel(ax, hist, bins: dict) -> None:
    m = int(bins.get("bins") or len(bins["counts"]))
    edges = np.linspace(0.0, 1.0, m + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    acc = np.array([np.nan if a is None else a for a in bins["accuracy"]], dtype=float)
    conf = np.array([np.nan if c is None else c for c in bins["confidence"]], dtype=float)
    counts = np.asarray(bins["counts"], dtype=float)
    filled = ~np.isnan(acc)
    w = 0.95 / m
    ax.bar(centres[filled], acc[filled], width=w, color=BLUE, zorder=2)
    # The gap between each bin's accuracy and its mean confidence, drawn from one to the other: above the bar
    # where the model is more confident than right, over the bar's top where it is less.
    low, high = np.minimum(acc, conf), np.maximum(acc, conf)
    over = filled & (conf > acc)
    under = filled & (conf <= acc)
    style = dict(width=w, linewidth=0.8, zorder=3)
    ax.bar(centres[over], (high - low)[over], bottom=low[over], color=VERMILION, alpha=0.35, hatch="//",
           edgecolor=VERMILION, **style)  # fmt: skip
    ax.bar(centres[under], (high - low)[under], bottom=low[under], color=YELLOW, hatch="\\\\",
           edgecolor="#8a6d00", **style)  # fmt: skip
    ax.plot([0, 1], [0, 1], linestyle="--", color="#333333", linewidth=1, zorder=4)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xticklabels([])
    ax.grid(True, color="#e5e5e5", linewidth=0.8)
    ax.set_axisbelow(True)
    total = counts.sum() or 1.0
    hist.bar(centres, counts / total, width=w, color=GREY)
    hist.set_xlim(0, 1)
    hist.set_xlabel("confidence (top-class probability)")
    hist.tick_params(labelsize=7.5)
    for a in (ax, hist):
        for side in ("top", "right"):
            a.spines[side].set_visible(False)


def plot_reliability(calibration: dict, path: str | Path, split: str = "validation") -> Path:
    """Write :func:`reliability_figure` to ``path`` as PNG (atomically)."""
    buf = io.BytesIO()
    reliability_figure(calibration, split).savefig(buf, format="png", dpi=DPI, facecolor="white")
    return atomic_write_bytes(path, buf.getvalue())


def calibration_section(run, evaluation: dict, classes) -> Section | None:
    """The report's "Calibration" part: ECE before and after temperature scaling on validation (and test), with
    the reliability diagram; for multi-label runs, the per-class thresholds tuned on validation."""
    thresholds = evaluation.get("tuned_thresholds")
    if thresholds and classes:
        rows = [(str(c), f"{t:.2f}") for c, t in zip(classes, thresholds)]
        text = (
            "Multi-label: each class is predicted at or above its own probability threshold, the one that "
            "maximises its F1 on the validation images (stored in model.json for predict and serve).",
        )
        return Section("Calibration", text, table=(("class", "threshold"), *rows))
    calibration = evaluation.get("calibration")
    if not isinstance(calibration, dict) or calibration.get("reliability") is None:
        return None
    plot_reliability(calibration, run.report_dir / "reliability.png")
    header = ("split", "ECE as trained", "ECE after temperature", "NLL as trained", "NLL after temperature")
    rows = [_row("validation", calibration)]
    test = evaluation.get("test", {}).get("calibration") if isinstance(evaluation.get("test"), dict) else None
    if isinstance(test, dict):
        rows.append(_row("test", test))
    t = calibration.get("temperature")
    text = [
        "Expected calibration error (Guo et al. 2017, 15 equal-width confidence bins): how far the top-class "
        "probability is from the fraction of right answers, averaged over the images. Temperature scaling "
        "divides the logits by one number fitted on validation; it changes no prediction, only the confidence."
    ]
    if t is not None:
        text.append(
            f"Fitted temperature T = {t:.3g} ({'over' if t > 1 else 'under'}-confident as trained), stored in "
            "model.json and applied by predict, serve and export."
            + ("" if test else " The validation ECE after scaling is optimistic: T was fitted on those images.")
        )
    caption = "Accuracy against confidence per bin; the diagonal is perfect calibration."
    figure = FigureRef("reliability.png", "Reliability diagram", caption, wide=True)
    return Section("Calibration", tuple(text), table=(header, *rows), figures=(figure,))


def _row(split: str, c: dict) -> tuple[str, ...]:
    def pct(v):
        return "–" if v is None else f"{v:.2f}%"

    def num(v):
        return "–" if v is None else f"{v:.4f}"

    return (split, pct(c.get("ece")), pct(c.get("ece_calibrated")), num(c.get("nll")), num(c.get("nll_calibrated")))


__all__ = ["calibration_section", "plot_reliability", "reliability_figure"]
