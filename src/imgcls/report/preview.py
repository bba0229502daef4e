"""``imgcls data preview``: a grid of augmented training samples with their labels, before training on them.

`preview_grid` draws a batch through exactly the loader and batch transform training uses (same recipe sections,
same seeded draws), undoes the normalisation and writes a PNG.
"""

from __future__ import annotations

import os
from pathlib import Path

from imgcls._files import atomic_open
from imgcls.config_reader import load_recipe
from imgcls.data import DataConfig, build_data
from imgcls.data.augment import AugmentConfig
from imgcls.data.stats import GRAY_BUILTINS, NATIVE_SIZE


def _label(y, classes: list[str]) -> str:
    import torch

    if y.ndim == 0 or y.dtype == torch.int64:
        return classes[int(y)]
    top = torch.argsort(y, descending=True)[:2]
    parts = [f"{classes[int(i)]} {float(y[i]):.2f}" for i in top if float(y[i]) > 0.005]
    return " / ".join(parts)


def preview_grid(
    spec: str | os.PathLike,
    recipe: str | os.PathLike,
    out: str | os.PathLike,
    *,
    count: int = 32,
    seed: int = 0,
    image_size: int | None = None,
    epoch: int = 0,
) -> Path:
    """Render `count` augmented training samples of `spec` under `recipe` to a PNG grid with labels.

    Args:
        spec: the data.
        recipe: shipped recipe name or YAML path; its ``data`` and ``augment`` sections are used.
        out: PNG path.
        count: samples shown.
        seed: the seed of the augmentation draws (same seed, same picture).
        image_size: input size; default the recipe's ``model.image_size``, else the set's native size (224 for
            folders and lists).
        epoch: which epoch's augmentation (mixing schedules depend on it).

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    sections = load_recipe(recipe)
    data_section = dict(sections.get("data") or {})
    data_section.pop("spec", None)
    cfg = DataConfig.from_dict({**data_section, "batch_size": count})
    aug = AugmentConfig.from_dict(sections.get("augment") or {})
    model = sections.get("model") or {}
    text = str(spec)
    size = image_size or model.get("image_size") or NATIVE_SIZE.get(text, 224)
    in_chans = model.get("in_chans") or (1 if text in GRAY_BUILTINS else 3)
    data = build_data(spec, cfg, aug, image_size=int(size), in_chans=int(in_chans), seed=seed, require_val=False)
    data.train.set_epoch(epoch)
    x, y = next(iter(data.train))
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    pixels = (x.float().cpu() * std + mean).clamp(0, 1)
    n = pixels.shape[0]
    cols = min(8, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 1.8), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = pixels[i].permute(1, 2, 0).numpy()
        ax.imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray" if img.shape[2] == 1 else None, vmin=0, vmax=1)
        ax.set_title(_label(y[i].cpu(), data.classes), fontsize=7)
    fig.suptitle(f"{text} · {Path(str(recipe)).name} · seed {seed}", fontsize=9)
    fig.tight_layout()
    out = Path(out)
    try:
        with atomic_open(out, "wb") as f:
            fig.savefig(f, dpi=100, format="png")
    finally:
        plt.close(fig)
    return out


__all__ = ["preview_grid"]
