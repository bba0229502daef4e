"""See inside the model: explanation figures, the model's anatomy, the most confused pairs and the error gallery.

What the report draws from the run folder alone (``model.safetensors`` + ``model.json``, SHA-256 checked when the
weights load; ``samples.npz``; ``eval.json``), and the figure ``imgcls explain`` writes for one image:

- **First-layer filters** as an image grid, each filter scaled to its own range (as in Krizhevsky et al. 2012,
  Fig. 3, and Zeiler & Fergus 2013, Fig. 5/6): the first convolution looks at pixels, so its weights are pictures.
- **Feature maps at each stage** of one validation image: the strongest channels of the last map at every
  resolution (`imgcls.models.saliency.stage_maps`), as in ZFNet's Fig. 2.
- **Most confused pairs**: the largest off-diagonal cells of the confusion matrix, with the validation images of
  each pair the model was surest about.
- **Error gallery**: the validation images the model got wrong with the highest confidence, each beside its
  Grad-CAM map for the class it wrongly said (`imgcls.models.saliency.grad_cam`).

The images come from ``samples.npz``: ``finalize_run`` keeps them (:func:`select_gallery` picks which) at the
network's input size, so the maps here are computed on exactly the pixels the network saw.

Everything is drawn with matplotlib's object API on the Agg canvas (no ``pyplot``), as in `imgcls.report.plots`;
grids of images are drawn on one axes whose units are inches (one axes per tile costs seconds to lay out).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from imgcls._files import atomic_write_bytes
from imgcls.constants import LUMA_WEIGHTS
from imgcls.errors import UserError
from imgcls.report.html import FigureRef, Section

log = logging.getLogger("imgcls.report")

DPI = 110
GALLERY_SIZE = 16  # highest-confidence mistakes kept for the error gallery
CONFUSED_PAIRS = 6  # pairs in the "most confused" table
PAIR_EXAMPLES = 4  # example images per pair
STAGE_CHANNELS = 8  # channels shown per stage
MAX_STAGES = 6
MAX_FILTERS = 128
CAM_COLORMAP = "inferno"  # perceptually uniform, readable in grey and by colour-blind readers
OCCLUSION_COLORMAP = "RdBu_r"  # diverging: red where hiding the pixel lowers the class's probability
OVERLAY_ALPHA = 0.5
VERMILION, GREEN = "#D55E00", "#009E73"  # Okabe & Ito 2008, as in the report's other figures


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write a figure as PNG (atomically: a full disk is a one-line error naming the file)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    return atomic_write_bytes(path, buf.getvalue())


def _short(name: str, limit: int = 18) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


# --- which validation images the report keeps ------------------------------------------------------------------


def select_gallery(
    probs,
    labels,
    errors: int = GALLERY_SIZE,
    pairs: int = CONFUSED_PAIRS,
    examples: int = PAIR_EXAMPLES,
) -> dict[str, np.ndarray]:
    """Pick the validation images of the error gallery and of the most confused pairs.

    Args:
        probs: ``(N, K)`` class probabilities (as predict gives them).
        labels: ``(N,)`` true class indices.
        errors: how many of the highest-confidence mistakes to keep.
        pairs: how many ``(true, predicted)`` pairs, most frequent first (ties: lower class indices first).
        examples: images per pair, the most confident mistakes of that pair first.

    Returns:
        ``errors_index``, ``errors_target``, ``errors_pred``, ``errors_prob`` (the predicted class's probability);
        ``pairs`` ``(P, 2)`` as ``(true, predicted)``, ``pair_counts`` ``(P,)``, ``pair_index`` ``(P, examples)``
        (-1 where a pair has fewer images) and ``pair_prob`` (the predicted class's probability, 0 for -1).
        Indices are positions in the validation order.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    predicted = probs.argmax(axis=1) if len(probs) else np.zeros(0, np.int64)
    confidence = probs.max(axis=1) if len(probs) else np.zeros(0)
    wrong = np.flatnonzero(predicted != labels)
    # Most confident first; among equals the earlier image (a stable sort of the negated confidence).
    ranked = wrong[np.argsort(-confidence[wrong], kind="stable")]
    top = ranked[:errors]
    k = probs.shape[1] if probs.ndim == 2 else 0
    counts = np.zeros((k, k), dtype=np.int64)
    np.add.at(counts, (labels[wrong], predicted[wrong]), 1)
    cells = [(int(counts[t, p]), t, p) for t, p in zip(*np.nonzero(counts))]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    chosen = cells[:pairs]
    pair_index = np.full((len(chosen), examples), -1, dtype=np.int64)
    pair_prob = np.zeros((len(chosen), examples), dtype=np.float32)
    for row, (_, t, p) in enumerate(chosen):
        members = [i for i in ranked if labels[i] == t and predicted[i] == p][:examples]
        pair_index[row, : len(members)] = members
        pair_prob[row, : len(members)] = confidence[members]
    return {
        "errors_index": top.astype(np.int64),
        "errors_target": labels[top].astype(np.int64),
        "errors_pred": predicted[top].astype(np.int64),
        "errors_prob": confidence[top].astype(np.float32),
        "pairs": np.asarray([(t, p) for _, t, p in chosen], dtype=np.int64).reshape(-1, 2),
        "pair_counts": np.asarray([c for c, _, _ in chosen], dtype=np.int64),
        "pair_index": pair_index,
        "pair_prob": pair_prob,
    }


# --- overlays --------------------------------------------------------------------------------------------------


def heat_rgb(heat: np.ndarray, cmap: str = CAM_COLORMAP) -> np.ndarray:
    """A map with values in [0, 1] as uint8 RGB ``(H, W, 3)`` through a matplotlib colour map."""
    lut = (colormaps[cmap](np.linspace(0.0, 1.0, 256))[:, :3] * 255.0).round().astype(np.uint8)
    return lut[(np.clip(np.asarray(heat, dtype=np.float64), 0.0, 1.0) * 255.0).round().astype(np.int64)]


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = OVERLAY_ALPHA, cmap: str = CAM_COLORMAP) -> np.ndarray:
    """uint8 ``(H, W, 3)``: the image (``(H, W, C)``, C = 1 or 3) in grey, blended with the coloured map of the
    same size (grey underneath, so that the colours read as the map's and not the photo's)."""
    image = np.asarray(image, dtype=np.float64)
    grey = image[..., 0] if image.shape[-1] == 1 else image[..., :3] @ np.asarray(LUMA_WEIGHTS)
    mixed = (1.0 - alpha) * grey[..., None] + alpha * heat_rgb(heat, cmap).astype(np.float64)
    return np.clip(mixed.round(), 0, 255).astype(np.uint8)


def to_network_input(images: np.ndarray, mean: Sequence[float], std: Sequence[float]):
    """uint8 ``(N, H, W, C)`` -> the normalised float ``(N, C, H, W)`` tensor the network takes."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    c = x.shape[1]
    m = torch.tensor(list(mean), dtype=torch.float32)[:c].view(1, -1, 1, 1)
    s = torch.tensor(list(std), dtype=torch.float32)[:c].view(1, -1, 1, 1)
    return (x - m) / s


# --- drawing helpers -------------------------------------------------------------------------------------------


def _axes_inches(fig: Figure, left: float, bottom: float, width: float, height: float):
    fw, fh = fig.get_size_inches()
    return fig.add_axes((left / fw, bottom / fh, width / fw, height / fh))


def _canvas(width: float, height: float):
    """A figure and one axes spanning it whose data units are inches from the bottom-left corner."""
    fig = Figure(figsize=(width, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    return fig, ax


def _tile(ax, image: np.ndarray, x0: float, y0: float, w: float, h: float, **kw) -> None:
    """Draw an image (RGB ``(H, W, 3)``, grey ``(H, W, 1)`` or a 2-D map with ``cmap``) into a box in inches."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
        kw.setdefault("cmap", "gray")
        kw.setdefault("vmin", 0)
        kw.setdefault("vmax", 255)
    small = max(image.shape[:2]) <= 64  # show the real pixels of small images, not a blur
    kw.setdefault("interpolation", "nearest" if small else "antialiased")
    ax.imshow(image, extent=(x0, x0 + w, y0, y0 + h), **kw)
    ax.add_patch(Rectangle((x0, y0), w, h, fill=False, edgecolor="#bbbbbb", linewidth=0.6))


def _map01(values: np.ndarray) -> np.ndarray:
    """A map scaled to [0, 1] by its own range (constant maps become 0)."""
    values = np.asarray(values, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    return (values - low) / (high - low) if high > low else np.zeros_like(values)


# --- the figure of one explained image -------------------------------------------------------------------------


def explain_figure(
    image: np.ndarray,
    *,
    title: str,
    predictions: Sequence[tuple[str, float]],
    explained: str,
    cam: np.ndarray | None = None,
    cam_layer: str | None = None,
    occlusion: np.ndarray | None = None,
    window: int | None = None,
    stride: int | None = None,
    channels: np.ndarray | None = None,
    channel_index: Sequence[int] = (),
    channel_layer: str | None = None,
    channel_count: int | None = None,
) -> Figure:
    """One image explained: the network's input, its Grad-CAM and occlusion maps over it, the top predictions,
    and the strongest channels of one layer.

    About 90 lines on purpose: one matplotlib layout, panel after panel in reading order, sharing the grid, the
    colour scale and the legend; each panel is a few lines and makes no sense alone.

    Args:
        image: uint8 ``(H, W, C)``, the network's input (after resize and crop).
        title: the line above everything (file name and prediction).
        predictions: ``(label, probability)`` of the top classes, most probable first.
        explained: the label the maps are about.
        cam: ``(H, W)`` Grad-CAM in [0, 1] (``None``: not drawn); ``cam_layer`` its layer.
        occlusion: ``(H, W)`` drop in the explained class's probability; ``window``/``stride`` in pixels.
        channels: ``(k, h, w)`` activations of ``channel_layer`` (of ``channel_count`` channels), strongest first,
            with their channel numbers ``channel_index``.
    """
    side, gap, bar_gap = 2.6, 0.35, 1.15  # a panel with a colour bar needs room for its ticks and label
    names = [_short(label, 16) for label, _ in predictions][::-1]
    label_w = max(len(n) for n in names) * 8.5 * 0.6 / 72 + 0.15 if names else 0.5  # ~0.6 em per character
    bars_w = label_w + 2.3
    panels = [True, cam is not None, occlusion is not None]
    k = 0 if channels is None else len(channels)
    tile = 1.05
    per_row = max(1, min(k, 8))
    rows = -(-k // per_row) if k else 0
    width = 0.3 + side + gap + sum(side + bar_gap for shown in panels[1:] if shown) + bars_w + 0.3
    bottom = (0.55 + rows * (tile + 0.3)) if k else 0.55  # without channels: room for the bars' x label
    height = bottom + side + 0.95
    fig = Figure(figsize=(width, height))
    fig.text(0.3 / width, 1 - 0.22 / height, title, fontsize=12, fontweight="bold", va="top")
    y0 = bottom + 0.05
    x = 0.3
    # Maps are drawn over the picture in grey, so that their colours read as the map's and not the photo's.
    grey = image[..., 0] if image.shape[-1] == 1 else image[..., :3].astype(np.float64) @ np.asarray(LUMA_WEIGHTS)
    smooth = "nearest" if max(image.shape[:2]) <= 64 else "antialiased"

    def picture(left: float, caption: str, colour: bool = False):
        ax = _axes_inches(fig, left, y0, side, side)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(caption, fontsize=9.5)
        if colour and image.shape[-1] == 3:
            ax.imshow(image[..., :3], interpolation=smooth)
        else:
            ax.imshow(grey, cmap="gray", vmin=0, vmax=255, interpolation=smooth)
        return ax

    def colour_bar(shown, left: float, label: str, ticks=None) -> None:
        cax = _axes_inches(fig, left + side + 0.08, y0 + 0.15 * side, 0.12, 0.7 * side)
        # Two significant digits on every tick: no "1e-6" offset text printed over the bar's top.
        bar = fig.colorbar(shown, cax=cax, ticks=ticks, format="{x:.2g}")
        bar.ax.tick_params(labelsize=7.5)
        bar.set_label(label, fontsize=8)

    picture(x, f"network input ({image.shape[1]}×{image.shape[0]})", colour=True)
    x += side + gap
    if cam is not None:
        ax = picture(x, f"Grad-CAM for {_short(explained)}\n(at {cam_layer})")
        shown = ax.imshow(cam, cmap=CAM_COLORMAP, alpha=0.6, vmin=0.0, vmax=1.0, interpolation="bilinear")
        colour_bar(shown, x, "relative importance", ticks=[0, 0.5, 1])
        x += side + bar_gap
    if occlusion is not None:
        span = float(np.abs(occlusion).max()) or 1e-6
        how = f"{window}px grey square, step {stride}px" if window else "grey square"
        ax = picture(x, f"occlusion: drop in p({_short(explained)})\n({how})")
        shown = ax.imshow(
            occlusion, cmap=OCCLUSION_COLORMAP, alpha=0.7, vmin=-span, vmax=span, interpolation="bilinear"
        )
        colour_bar(shown, x, "probability lost when hidden")
        x += side + bar_gap
    ax = _axes_inches(fig, x + label_w, y0, bars_w - label_w, side)
    values = [float(p) for _, p in predictions][::-1]
    colors = [GREEN if label == explained else "#7f9fc6" for label, _ in predictions][::-1]
    ax.barh(range(len(values)), values, color=colors, height=0.7)
    ax.set_yticks(range(len(values)), names, fontsize=8.5)
    ax.set_xlim(0, 1.0)
    n = len(values)
    ax.set_ylim(n - max(n, 5) - 0.5, n - 0.5)  # fewer than five classes: bars as thick as five, at the top
    ax.set_xlabel("probability", fontsize=8.5)
    ax.tick_params(axis="x", labelsize=8)
    ax.set_title(f"top {len(values)} (green: explained)", fontsize=9.5)
    for y, v in enumerate(values):
        inside = v > 0.8  # no room to the right of the bar: the value goes inside it, in white
        ax.text(v - 0.02 if inside else v + 0.02, y, f"{v:.3f}", va="center", ha="right" if inside else "left",
                fontsize=8, color="white" if inside else "black")  # fmt: skip
    for spine in ("top", "right"):
        ax.spines[spine].set_visible(False)
    if k:
        canvas = fig.add_axes((0, 0, 1, bottom / height))
        canvas.set_axis_off()
        canvas.set_xlim(0, width)
        canvas.set_ylim(0, bottom)
        of = f" of {channel_count}" if channel_count else ""
        canvas.text(
            0.3,
            bottom - 0.12,
            f"{channel_layer}: the {k} strongest channels{of} (by mean activation; "
            "each tile scaled to its own range, bright = high)",
            fontsize=9.5,
            va="top",
        )
        for j in range(k):
            r, c = divmod(j, per_row)
            tx, ty = 0.3 + c * (tile + 0.25), bottom - 0.45 - (r + 1) * (tile + 0.3) + 0.3
            _tile(canvas, _map01(channels[j]), tx, ty, tile, tile, cmap="viridis", vmin=0, vmax=1)
            number = int(channel_index[j]) if j < len(channel_index) else j
            canvas.text(tx + tile / 2, ty - 0.04, f"#{number}", ha="center", va="top", fontsize=7.5)
    return fig


# --- the model's anatomy ---------------------------------------------------------------------------------------


def filters_figure(weight: np.ndarray, layer: str) -> Figure:
    """The filters of a first convolution ``(out, in, kh, kw)`` as a grid of small images.

    Three input channels are shown as colour, one as grey, any other number as their mean in grey. Each filter
    is scaled to its own minimum and maximum, so mid-grey is its smallest weight only when it is zero-centred.
    """
    weight = np.asarray(weight, dtype=np.float64)
    out, chans, kh, kw = weight.shape
    shown = min(out, MAX_FILTERS)
    columns = int(min(shown, max(4, np.ceil(np.sqrt(shown * 1.6)))))
    rows = -(-shown // columns)
    cell = float(np.clip(6.0 / columns, 0.35, 0.9))
    width = max(4.5, columns * cell + 0.6)
    height = rows * cell + 0.8
    fig, ax = _canvas(width, height)
    more = f" (first {shown})" if shown < out else ""
    ax.text(
        width / 2,
        height - 0.15,
        f"{layer}: {out} filters{more}, {chans}×{kh}×{kw}, each scaled to its own range",
        ha="center",
        va="top",
        fontsize=10,
    )
    x_start = (width - columns * cell) / 2
    for i in range(shown):
        w = weight[i]
        picture = w.transpose(1, 2, 0) if chans == 3 else w.mean(axis=0)[..., None]
        scaled = _map01(picture)
        r, c = divmod(i, columns)
        x0, y0 = x_start + c * cell, height - 0.5 - (r + 1) * cell
        pad = 0.06 * cell
        if chans == 3:
            _tile(ax, scaled, x0 + pad, y0 + pad, cell - 2 * pad, cell - 2 * pad, interpolation="nearest")
        else:
            _tile(
                ax,
                scaled[..., 0],
                x0 + pad,
                y0 + pad,
                cell - 2 * pad,
                cell - 2 * pad,
                cmap="gray",
                vmin=0,
                vmax=1,
                interpolation="nearest",
            )
    return fig


def stages_figure(image: np.ndarray, stages: Sequence[tuple[str, np.ndarray]]) -> Figure:
    """One validation image and, per stage, its ``STAGE_CHANNELS`` strongest channels (``maps``: ``(K, h, w)``)."""
    label_w, tile, gap = 2.1, 0.95, 0.12
    rows = len(stages)
    width = label_w + STAGE_CHANNELS * (tile + gap) + 0.3
    img_side = 1.6
    height = 0.55 + img_side + 0.45 + rows * (tile + 0.28)
    fig, ax = _canvas(width, height)
    ax.text(
        0.2,
        height - 0.15,
        "Feature maps of one validation image: the strongest channels at each stage "
        "(each tile scaled to its own range, bright = high)",
        fontsize=10,
        va="top",
    )
    top = height - 0.55
    _tile(ax, image, 0.2, top - img_side, img_side, img_side)
    ax.text(
        0.2 + img_side + 0.15, top - img_side / 2, f"input {image.shape[1]}×{image.shape[0]}", va="center", fontsize=9
    )
    y = top - img_side - 0.45
    for name, maps in stages:
        maps = np.asarray(maps, dtype=np.float64)
        y -= tile
        strength = maps.mean(axis=(1, 2))
        order = np.argsort(-strength, kind="stable")[:STAGE_CHANNELS]
        ax.text(
            0.2,
            y + tile / 2,
            f"{_short(name, 22)}\n{maps.shape[0]}×{maps.shape[1]}×{maps.shape[2]}",
            va="center",
            fontsize=8.5,
        )
        for j, ch in enumerate(order):
            x0 = label_w + j * (tile + gap)
            _tile(ax, _map01(maps[ch]), x0, y, tile, tile, cmap="viridis", vmin=0, vmax=1)
            ax.text(x0 + tile / 2, y - 0.03, f"#{int(ch)}", ha="center", va="top", fontsize=6.5, color="#555555")
        y -= 0.28
    return fig


def pairs_figure(
    pairs: np.ndarray,
    counts: np.ndarray,
    examples: Sequence[Sequence[tuple[np.ndarray, float]]],
    classes: Sequence[str],
) -> Figure:
    """One row per confused pair: ``true → predicted (count)`` and its example images with their confidence."""
    label_w, tile, gap = 2.6, 1.25, 0.15
    columns = max(1, max((len(e) for e in examples), default=1))
    width = label_w + columns * (tile + gap) + 0.2
    height = 0.5 + len(pairs) * (tile + 0.4)
    fig, ax = _canvas(width, height)
    ax.text(
        0.2,
        height - 0.15,
        "Most confused pairs: validation images of each pair, most confident mistake first",
        fontsize=10,
        va="top",
    )
    y = height - 0.5
    for (t, p), count, shown in zip(pairs, counts, examples):
        y -= tile + 0.1
        ax.text(
            0.2,
            y + tile / 2,
            f"true {_short(classes[int(t)], 20)}\n→ said {_short(classes[int(p)], 20)}\n"
            f"{int(count)} image{'s' if count != 1 else ''}",
            va="center",
            fontsize=9,
        )
        for j, (img, prob) in enumerate(shown):
            x0 = label_w + j * (tile + gap)
            _tile(ax, img, x0, y, tile, tile)
            ax.text(x0 + tile / 2, y - 0.04, f"p = {prob:.2f}", ha="center", va="top", fontsize=7.5)
        y -= 0.3
    return fig


def gallery_figure(
    images: np.ndarray,
    maps: np.ndarray | None,
    targets: Sequence[str],
    predicted: Sequence[str],
    probs: Sequence[float],
    columns: int = 4,
) -> Figure:
    """The highest-confidence mistakes: each image with ``true → said (p)`` and, given ``maps`` ``(N, H, W)``,
    its Grad-CAM overlay for the class it said."""
    n = len(images)
    tile = 1.35
    per = 2 if maps is not None else 1
    cell_w, cell_h = per * tile + 0.1 * per + 0.35, tile + 0.7
    columns = max(1, min(columns, n))
    rows = max(1, -(-n // columns))
    width, height = columns * cell_w + 0.2, rows * cell_h + 0.55
    fig, ax = _canvas(width, height)
    what = (
        " — left: the image; right: Grad-CAM of the class it said (bright: what raised that class)"
        if maps is not None
        else ""
    )
    ax.text(0.2, height - 0.15, f"Error gallery: the {n} most confident mistakes{what}", fontsize=10, va="top")
    for i in range(n):
        r, c = divmod(i, columns)
        x0, y0 = 0.2 + c * cell_w, height - 0.55 - (r + 1) * cell_h + 0.2
        _tile(ax, images[i], x0, y0, tile, tile)
        if maps is not None:
            _tile(ax, overlay(images[i], maps[i]), x0 + tile + 0.1, y0, tile, tile)
        middle = x0 + (per * tile + 0.1 * (per - 1)) / 2
        ax.text(
            middle,
            y0 + tile + 0.06,
            f"true {_short(targets[i], 14)}",
            ha="center",
            va="bottom",
            fontsize=8,
            color=GREEN,
        )
        ax.text(
            middle,
            y0 + tile + 0.24,
            f"said {_short(predicted[i], 14)} ({probs[i]:.2f})",
            ha="center",
            va="bottom",
            fontsize=8,
            color=VERMILION,
            fontweight="bold",
        )
    return fig


# --- the report's sections -------------------------------------------------------------------------------------


def load_model(run, meta):
    """The run's network in eval mode (weights SHA-256 checked against ``model.json``), or ``None`` when the
    run has no weights yet or the model is a classical pipeline (nothing inside to look at)."""
    from imgcls.classic import is_classic
    from imgcls.models import create_model

    if not run.weights.is_file() or is_classic(meta.name):
        return None
    model = create_model(
        meta.name, num_classes=meta.num_classes, in_chans=meta.in_chans, weights=str(run.weights), **meta.model_kwargs
    )
    return model.float().eval()


def build_anatomy(run, meta, samples: dict | None, evaluation: dict, classes: Sequence[str]) -> list[Section]:
    """Draw the anatomy, confused-pairs and error-gallery figures of a run into its ``report/`` folder and
    return the page's sections for them (none when the files hold nothing to draw).

    Args:
        run: the :class:`imgcls.run_folder.RunFolder`.
        meta: its :class:`imgcls.run_folder.ModelMeta` (``None``: nothing about the model is drawn).
        samples: ``samples.npz``'s arrays (``None`` when absent).
        evaluation: ``eval.json`` (its confusion matrix names the pairs).
        classes: class names in index order.
    """
    sections: list[Section] = []
    if meta is None:
        return sections
    model = None
    try:
        model = load_model(run, meta)
    except UserError as exc:  # a damaged or mismatched weights file: the rest of the report still stands
        log.warning("report: the model is not drawn (%s)", exc)
        sections.append(Section("Model anatomy", (f"Not drawn: {exc}",)))
    out = run.report_dir
    images = samples.get("images") if samples else None
    if model is not None:
        sections.append(_anatomy_section(model, meta, images, out))
    if samples and "errors_index" in samples:
        sections += _mistakes_sections(model, meta, samples, evaluation, classes, out)
    return [s for s in sections if s is not None]


def _anatomy_section(model, meta, images, out: Path) -> Section | None:
    from imgcls.models.saliency import first_conv, stage_maps

    figures = []
    conv = first_conv(model)
    if conv is not None:
        name = next(n for n, m in model.named_modules() if m is conv)
        save_figure(filters_figure(conv.weight.detach().float().cpu().numpy(), name), out / "filters.png")
        figures.append(
            FigureRef(
                "filters.png",
                "First-layer filters",
                f"The {conv.out_channels} filters of {name}, the convolution that looks at pixels.",
            )
        )
    if images is not None and len(images):
        x = to_network_input(images[:1], meta.mean, meta.std)
        stages = [s for s in stage_maps(model, x) if s.maps.shape[-1] * s.maps.shape[-2] > 1]  # 1×1: no picture
        if len(stages) > MAX_STAGES:  # evenly spaced, always with the last one (what the classifier sees)
            keep = np.unique(np.linspace(0, len(stages) - 1, MAX_STAGES).round().astype(int))
            stages = [stages[i] for i in keep]
        save_figure(stages_figure(images[0], [(s.name, s.maps.numpy()) for s in stages]), out / "stages.png")
        figures.append(
            FigureRef(
                "stages.png",
                "Feature maps by stage",
                "The last map at each resolution of the forward pass, for the first validation image of the grid.",
                wide=True,
            )
        )
    if not figures:
        return None
    return Section("Model anatomy", (), figures=tuple(figures))


def _mistakes_sections(model, meta, samples, evaluation, classes, out: Path) -> list[Section]:
    import torch

    from imgcls.models.saliency import cam_layer, grad_cam

    sections = []
    lookup = {int(i): k for k, i in enumerate(samples.get("gallery_index", []))}
    gallery_images = samples.get("gallery_images")
    names = list(classes) or [str(c) for c in samples.get("classes", [])]
    pairs, counts = samples.get("pairs", np.zeros((0, 2))), samples.get("pair_counts", np.zeros(0))
    if len(pairs) and names:
        matrix = np.asarray(evaluation.get("confusion_matrix") or [], dtype=np.int64)
        totals = matrix.sum(axis=1) if matrix.size else None
        header = ("true class", "predicted as", "images", "share of the true class")
        rows = []
        examples = []
        probs = _pair_probs(samples)
        for (t, p), count, members in zip(pairs, counts, samples["pair_index"]):
            share = f"{100 * count / totals[t]:.1f}%" if totals is not None and totals[t] else "–"
            rows.append((names[int(t)], names[int(p)], str(int(count)), share))
            examples.append(
                [
                    (gallery_images[lookup[int(i)]], probs.get(int(i), float("nan")))
                    for i in members
                    if int(i) >= 0 and int(i) in lookup
                ]
            )
        figures = ()
        if any(examples):
            save_figure(pairs_figure(pairs, counts, examples, names), out / "confused_pairs.png")
            figures = (
                FigureRef(
                    "confused_pairs.png",
                    "Most confused pairs",
                    "Examples of each pair, as the network saw them (p: its probability for the wrong class, as "
                    "trained: before temperature scaling).",
                    wide=True,
                ),
            )
        sections.append(Section("Most confused pairs", (), table=(header, *rows), figures=figures))
    index = samples["errors_index"]
    if len(index) and gallery_images is not None and names:
        shown = np.stack([gallery_images[lookup[int(i)]] for i in index if int(i) in lookup])
        maps = None
        if model is not None:
            x = to_network_input(shown, meta.mean, meta.std)
            target = torch.as_tensor(samples["errors_pred"], dtype=torch.long)
            layer = cam_layer(meta.name)
            maps = np.concatenate(
                [grad_cam(model, x[i : i + 8], target[i : i + 8], layer).maps.numpy() for i in range(0, len(x), 8)]
            )
        fig = gallery_figure(
            shown,
            maps,
            [names[int(t)] for t in samples["errors_target"]],
            [names[int(p)] for p in samples["errors_pred"]],
            [float(p) for p in samples["errors_prob"]],
        )
        save_figure(fig, out / "errors.png")
        caption = (
            "Validation images the model got wrong with the highest confidence (as trained: before temperature scaling)"
        )
        if maps is not None:
            caption += f"; Grad-CAM (layer {cam_layer(meta.name)}) shows what the wrong class was read from"
        sections.append(
            Section("Error gallery", (), figures=(FigureRef("errors.png", "Error gallery", caption + ".", wide=True),))
        )
    return sections


def _pair_probs(samples: dict) -> dict[int, float]:
    """The wrong class's probability of each image kept for a pair (``pair_prob``), by validation index."""
    pairs = zip(np.ravel(samples.get("pair_index", [])), np.ravel(samples.get("pair_prob", [])))
    return {int(i): float(p) for i, p in pairs if int(i) >= 0}


__all__ = [
    "build_anatomy",
    "explain_figure",
    "filters_figure",
    "gallery_figure",
    "heat_rgb",
    "load_model",
    "overlay",
    "pairs_figure",
    "save_figure",
    "select_gallery",
    "stages_figure",
    "to_network_input",
]
