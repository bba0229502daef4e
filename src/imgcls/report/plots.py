"""The report's figures, drawn with matplotlib's object API on the Agg canvas.

No ``pyplot``: figures are plain ``Figure`` objects, so drawing never touches a global state or a display and
is safe from any thread or process (a training run, a test, a web server). Each ``*_figure`` function draws one
figure and each ``plot_*`` function writes it as one PNG (atomically: a full disk is a one-line error naming the
file) and returns its path. Sizes grow with the number of classes so that 10 to 100 class names stay readable.

Axes that must stay readable whatever the run did: epochs are whole numbers on every epoch axis; a loss spike
(one epoch several times above its neighbours and the rest of the curve) is drawn at the top edge with its value
written beside it, so that one diverging step does not flatten the whole curve into a line at the bottom.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from imgcls._files import atomic_write_bytes

DPI = 110
# Colour-blind-safe pair (Okabe & Ito 2008) for right/wrong and train/validation.
BLUE, ORANGE, GREEN, VERMILION, GREY = "#0072B2", "#E69F00", "#009E73", "#D55E00", "#9A9A9A"
MAX_LABEL = 22  # characters of a class name shown on an axis
# A loss value is a spike when it exceeds this many times both its neighbours and the median of the other epochs.
SPIKE_FACTOR = 3.0


def _short(name: str, limit: int = MAX_LABEL) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _save(fig: Figure, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    return atomic_write_bytes(path, buf.getvalue())


def _text_inches(labels: Sequence[str], fontsize: float) -> float:
    """Rough width of the longest label in inches (DejaVu Sans averages ~0.58 em per character)."""
    longest = max((len(t) for t in labels), default=0)
    return longest * fontsize * 0.58 / 72


def _axes_inches(fig: Figure, left: float, bottom: float, width: float, height: float):
    """An axes placed in inches from the figure's bottom-left corner.

    Explicit placement instead of a layout engine: constrained layout re-measures every text several times,
    which made a 100-class figure take seconds.
    """
    fw, fh = fig.get_size_inches()
    return fig.add_axes((left / fw, bottom / fh, width / fw, height / fh))


def _style(ax) -> None:
    ax.grid(True, color="#e5e5e5", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _series(rows: Sequence[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, values) of a metrics.csv column, skipping empty cells."""
    pairs = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None and r.get("epoch") is not None]
    if not pairs:
        return np.zeros(0), np.zeros(0)
    epochs, values = zip(*pairs)
    return np.asarray(epochs, dtype=float), np.asarray(values, dtype=float)


def _epoch_axis(ax, epochs: np.ndarray) -> None:
    """Whole-number epoch ticks: every epoch up to 12, else at most ~10 integer ticks."""
    ax.set_xlabel("epoch")
    if len(epochs) and epochs.max() <= 12:
        ax.set_xticks(np.unique(epochs))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=10, integer=True, min_n_ticks=1))


def _line_figure():
    fig = Figure(figsize=(6.4, 4.0))
    return fig, _axes_inches(fig, 0.85, 0.6, 5.35, 3.0)


def spikes(values: np.ndarray) -> np.ndarray:
    """Mask of the values that are spikes: more than ``SPIKE_FACTOR`` times both neighbours and the median of the
    other values (a curve's first, high epochs are not spikes: their neighbour is high too)."""
    v = np.asarray(values, dtype=float)
    mask = np.zeros(len(v), dtype=bool)
    if len(v) < 2:
        return mask
    for i, x in enumerate(v):
        neighbours = v[max(0, i - 1) : i + 2]
        neighbours = np.delete(neighbours, 1 if i > 0 else 0)
        others = np.delete(v, i)
        mask[i] = x > SPIKE_FACTOR * max(neighbours.max(), 0.0) and x > SPIKE_FACTOR * max(np.median(others), 0.0)
    return mask


def loss_figure(rows: Sequence[dict]) -> Figure:
    """Training and validation loss per epoch (``train_loss``, ``val_loss`` of metrics.csv); spikes clipped."""
    fig, ax = _line_figure()
    clipped: list[tuple[float, float, str]] = []
    ordinary: list[float] = []
    for key, label, color in (("train_loss", "train", BLUE), ("val_loss", "validation", ORANGE)):
        epochs, values = _series(rows, key)
        if not len(values):
            continue
        spike = spikes(values)
        ordinary += values[~spike].tolist()
        clipped += [(e, v, color) for e, v in zip(epochs[spike], values[spike])]
        ax.plot(epochs, values, marker="o", markersize=3, color=color, label=label)
    if clipped and ordinary:
        low, high = min([*ordinary, 0.0]), max(ordinary)
        top = high + 0.12 * (high - low or abs(high) or 1.0)
        ax.set_ylim(low, top)
        for e, v, color in clipped:
            ax.plot([e], [top], marker="^", color=color, markersize=8, clip_on=False, zorder=5)
            ax.annotate(f"{v:.3g}", (e, top), xytext=(0, -14), textcoords="offset points", ha="center",
                        fontsize=8, color=color)  # fmt: skip
        ax.set_title(f"Loss ({len(clipped)} spike{'s' if len(clipped) > 1 else ''} above the axis, value shown)")
    else:
        ax.set_title("Loss")
    ax.set_ylabel("loss")
    _epoch_axis(ax, _series(rows, "epoch")[0])
    _style(ax)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(frameon=False)
    return fig


def plot_loss(rows: Sequence[dict], path: Path) -> Path:
    """Write :func:`loss_figure` to ``path``."""
    return _save(loss_figure(rows), path)


def accuracy_figure(rows: Sequence[dict]) -> Figure:
    """Validation top-1/top-5 (and training top-1 when logged) per epoch, with the best top-1 marked."""
    fig, ax = _line_figure()
    curves = (("train_top1", "train top-1", BLUE, "--"), ("val_top1", "val top-1", ORANGE, "-"))
    for key, label, color, style in (*curves, ("val_top5", "val top-5", GREEN, "-")):
        epochs, values = _series(rows, key)
        if len(values):
            ax.plot(epochs, values, style, marker="o", markersize=3, color=color, label=label)
    epochs, top1 = _series(rows, "val_top1")
    if len(top1):
        best = int(np.argmax(top1))
        ax.annotate(
            f"best {top1[best]:.2f}%",
            (epochs[best], top1[best]),
            xytext=(0, -18),
            textcoords="offset points",
            ha="center",
            fontsize=9,
            color=VERMILION,
        )
        ax.plot([epochs[best]], [top1[best]], "o", color=VERMILION, markersize=6, zorder=5)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy")
    _epoch_axis(ax, _series(rows, "epoch")[0])
    _style(ax)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(frameon=False, loc="lower right")
    return fig


def plot_accuracy(rows: Sequence[dict], path: Path) -> Path:
    """Write :func:`accuracy_figure` to ``path``."""
    return _save(accuracy_figure(rows), path)


def lr_figure(rows: Sequence[dict]) -> Figure:
    """The learning rate per epoch — the mean of the epoch's steps (``lr``), and its highest (``lr_max``, dashed)
    when logged — on a log scale when it spans more than two decades."""
    fig, ax = _line_figure()
    epochs, lr = _series(rows, "lr")
    peak_epochs, peak = _series(rows, "lr_max")
    if len(lr):
        ax.plot(epochs, lr, marker="o", markersize=3, color=BLUE, label="mean of the epoch's steps")
        if len(peak) and (len(peak) != len(lr) or not np.allclose(peak, lr)):  # a constant rate needs one line
            ax.plot(peak_epochs, peak, "--", color=ORANGE, label="highest in the epoch")
            ax.legend(frameon=False)
        values = np.concatenate([lr, peak])
        positive = values[values > 0]
        if len(positive) and positive.max() / positive.min() > 100:
            ax.set_yscale("log")
        else:
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.set_ylabel("learning rate")
    ax.set_title("Learning rate")
    _epoch_axis(ax, epochs)
    _style(ax)
    return fig


def plot_lr(rows: Sequence[dict], path: Path) -> Path:
    """Write :func:`lr_figure` to ``path``."""
    return _save(lr_figure(rows), path)


def plot_confusion(matrix: np.ndarray, classes: Sequence[str], path: Path) -> Path:
    """Write :func:`confusion_figure` to ``path``."""
    return _save(confusion_figure(matrix, classes), path)


def confusion_figure(matrix: np.ndarray, classes: Sequence[str]) -> Figure:
    """Row-normalised confusion matrix (row = true class): each row shows where that class's images went.

    Cells are annotated with percentages up to 20 classes; beyond that the colour carries the value, and the
    figure grows with the class count so that every name keeps a readable row (100 classes: ~16 px per row).
    """
    cm = np.asarray(matrix, dtype=float)
    k = cm.shape[0]
    totals = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)
    annotate = k <= 20
    fontsize = 9.0 if annotate else max(6.5, 9 - k / 40)
    side = float(np.clip(0.45 * k, 3.5, 9.0)) if annotate else max(0.15, 1.6 * fontsize / 72) * k
    names = [_short(c) for c in classes]
    label = _text_inches(names, fontsize) + 0.15
    left, bottom, top, right = label + 0.45, label + 0.45, 0.5, 1.25
    fig = Figure(figsize=(left + side + right, bottom + side + top))
    ax = _axes_inches(fig, left, bottom, side, side)
    cmap = LinearSegmentedColormap.from_list("imgcls_blues", ["#ffffff", "#c6dbef", "#4292c6", "#08306b"])
    image = ax.imshow(norm, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest", aspect="auto")
    ax.set_xticks(range(k), names, rotation=90, fontsize=fontsize)
    ax.set_yticks(range(k), names, fontsize=fontsize)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"Confusion matrix (rows normalised, {int(cm.sum())} images)")
    if annotate:
        for i, j in zip(*np.nonzero(norm >= 0.005)):
            color = "white" if norm[i, j] > 0.55 else "#222222"
            ax.text(j, i, f"{100 * norm[i, j]:.0f}", ha="center", va="center", fontsize=8, color=color)
    else:  # a faint grid so that a cell can be followed to its labels (two line collections: cheap)
        edges = np.arange(-0.5, k, 1)
        ax.hlines(edges, -0.5, k - 0.5, color="#eeeeee", linewidth=0.4)
        ax.vlines(edges, -0.5, k - 0.5, color="#eeeeee", linewidth=0.4)
    cax = _axes_inches(fig, left + side + 0.2, bottom + side * 0.2, 0.18, side * 0.6)
    bar = fig.colorbar(image, cax=cax)
    bar.set_label("fraction of the true class")
    return fig


def plot_per_class(values: Sequence[float | None], classes: Sequence[str], path: Path, *, label: str) -> Path:
    """Write :func:`per_class_figure` to ``path``."""
    return _save(per_class_figure(values, classes, label=label), path)


def per_class_figure(values: Sequence[float | None], classes: Sequence[str], *, label: str) -> Figure:
    """Horizontal bars of a per-class score in percent (accuracy, or AP for multi-label), worst class on top.

    Classes without a value (e.g. AP of a class with no positive) are left out.
    """
    pairs = sorted(((float(v), c) for v, c in zip(values, classes) if v is not None), key=lambda p: p[0])
    k = len(pairs)
    fontsize = 9.0 if k <= 40 else 7.5
    names = [_short(c, 28) for _, c in pairs]
    label_in = _text_inches(names, fontsize) + 0.2
    height = max(2.0, (0.26 if k <= 40 else 0.2) * k)
    fig = Figure(figsize=(label_in + 5.6, height + 1.1))
    ax = _axes_inches(fig, label_in, 0.6, 5.3, height)
    if pairs:
        scores = np.array([p[0] for p in pairs])
        ypos = np.arange(k)[::-1]  # worst at the top
        colors = [VERMILION if v < 50 else (ORANGE if v < 80 else GREEN) for v in scores]
        ax.barh(ypos, scores, color=colors, height=0.72)
        ax.set_yticks(ypos, names, fontsize=fontsize)
        mean = float(scores.mean())
        ax.axvline(mean, color=GREY, linestyle="--", linewidth=1)
        ax.text(mean, k - 0.4, f" mean {mean:.1f}%", color="#555555", fontsize=8, va="bottom")
        if k <= 40:
            for y, v in zip(ypos, scores):
                ax.text(min(v, 100) + 0.8, y, f"{v:.1f}", va="center", fontsize=8, color="#333333")
        ax.set_ylim(-0.7, k + 0.3)
    else:
        ax.set_yticks([])
    ax.set_xlim(0, 108)
    ax.set_xlabel(f"{label} (%)")
    ax.set_title(f"Per-class {label}")
    _style(ax)
    ax.grid(False, axis="y")
    return fig


def topk_words(k: int) -> str:
    """``"top-5 predictions"`` for 5, ``"top-2 predictions"`` for a 2-class task, ``"top prediction"`` for 1: a
    caption names as many as are shown."""
    return "top prediction" if k == 1 else f"top-{k} predictions"


def plot_samples(
    images: np.ndarray,
    targets: np.ndarray,
    topk_indices: np.ndarray,
    topk_probs: np.ndarray,
    classes: Sequence[str],
    path: Path,
    *,
    multilabel: bool = False,
    columns: int = 4,
) -> Path:
    """Write :func:`samples_figure` to ``path``."""
    figure = samples_figure(images, targets, topk_indices, topk_probs, classes, multilabel=multilabel,
                            columns=columns)  # fmt: skip
    return _save(figure, path)


def samples_figure(
    images: np.ndarray,
    targets: np.ndarray,
    topk_indices: np.ndarray,
    topk_probs: np.ndarray,
    classes: Sequence[str],
    *,
    multilabel: bool = False,
    columns: int = 4,
) -> Figure:
    """A grid of validation images, each beside bars of its top-k classes and probabilities.

    As in the Places365 examples of the classic lectures: the true class is written above the image (green
    when the top-1 guess is right, red otherwise) and its bar is green. ``images`` is uint8 ``(S, H, W, C)``;
    ``targets`` class indices ``(S,)``, or multi-hot ``(S, K)`` when ``multilabel``.

    Everything is drawn on one axes whose units are inches: 2×S separate axes cost seconds to lay out.
    """
    s = len(images)
    columns = max(1, min(columns, s))
    rows = max(1, -(-s // columns))
    shown = [_short(classes[int(t)], 16) for t in np.unique(topk_indices)]
    img_in, label_in, bar_in = 1.55, max(0.3, _text_inches(shown, 8) + 0.15), 1.45
    cell_w, cell_h, head = img_in + label_in + bar_in + 0.45, img_in + 0.55, 0.55
    width, height = columns * cell_w + 0.1, rows * cell_h + head
    fig = Figure(figsize=(width, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    truth_words = "true labels" if multilabel else "true class"
    ax.text(width / 2, height - 0.2, f"Validation images: {truth_words} above, {topk_words(topk_indices.shape[1])} "
            f"beside (green: {'a true label' if multilabel else 'the true class'})", ha="center", va="top",
            fontsize=11)  # fmt: skip
    small = images.shape[1] <= 64  # show the real pixels of small images, not a blur
    row_h = (img_in - 0.2) / max(1, topk_indices.shape[1])
    for i in range(s):
        r, c = divmod(i, columns)
        x0, y0 = 0.15 + c * cell_w, (rows - 1 - r) * cell_h + 0.15
        img = images[i]
        extent = (x0, x0 + img_in, y0, y0 + img_in)
        if img.shape[-1] == 1:
            ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest", extent=extent)
        else:
            ax.imshow(img, interpolation="nearest" if small else "antialiased", extent=extent)
        ax.add_patch(Rectangle((x0, y0), img_in, img_in, fill=False, edgecolor="#bbbbbb", linewidth=0.6))
        truth = set(np.flatnonzero(targets[i]).tolist()) if multilabel else {int(targets[i])}
        top = [int(j) for j in topk_indices[i]]
        title = ", ".join(_short(classes[t], 16) for t in sorted(truth)) or "(no label)"
        color = GREEN if top[0] in truth else VERMILION
        ax.text(x0 + img_in / 2, y0 + img_in + 0.07, _short(title, 28), ha="center", va="bottom", fontsize=9,
                color=color, fontweight="bold")  # fmt: skip
        bx = x0 + img_in + label_in
        for rank, (t, p) in enumerate(zip(top, np.asarray(topk_probs[i], dtype=float))):
            y = y0 + img_in - 0.1 - (rank + 0.5) * row_h  # best on top
            bar_h = 0.72 * row_h
            ax.add_patch(Rectangle((bx, y - bar_h / 2), bar_in, bar_h, color="#f1f1f1", linewidth=0))
            ax.add_patch(
                Rectangle((bx, y - bar_h / 2), bar_in * min(max(p, 0.0), 1.0), bar_h, linewidth=0,
                          color=GREEN if t in truth else "#7f9fc6")
            )  # fmt: skip
            ax.text(bx - 0.06, y, _short(classes[t], 16), ha="right", va="center", fontsize=8)
            # A long bar carries its number inside its end (white); a short one leaves it at the track's end.
            inside = p >= 0.8
            ax.text(bx + bar_in * (min(p, 1.0) if inside else 1.0) - 0.03, y, f"{p:.2f}", ha="right", va="center",
                    fontsize=7, color="white" if inside else "#333333")  # fmt: skip
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_aspect("auto")
    return fig


__all__ = [
    "accuracy_figure",
    "confusion_figure",
    "loss_figure",
    "lr_figure",
    "per_class_figure",
    "plot_accuracy",
    "plot_confusion",
    "plot_loss",
    "plot_lr",
    "plot_per_class",
    "plot_samples",
    "samples_figure",
    "spikes",
    "topk_words",
]
