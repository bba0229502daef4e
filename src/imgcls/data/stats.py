"""What ``imgcls data stats`` shows: look at the data before training on it.

`dataset_stats` reports classes, per-split counts, image sizes and modes (from the file headers, so every file is
checked without decoding it), per-channel mean/std (exact for built-in sets, else estimated on a seeded sample of
decoded images) and every problem found. (``imgcls data preview`` draws augmented samples:
`imgcls.report.preview`.)
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import numpy as np

from imgcls.data.cache import channel_stats
from imgcls.data.config import DataConfig
from imgcls.data.reader import ImageError, open_image, pil_to_tensor, read_image
from imgcls.data.sources import Split, resolve_source

NATIVE_SIZE = {"digits": 8, "mnist": 28, "fashion-mnist": 28, "cifar10": 32, "cifar100": 32, "cifar100:coarse": 32}
GRAY_BUILTINS = ("digits", "mnist", "fashion-mnist")


def _counts(split: Split | None, classes: list[str]) -> dict[str, int]:
    if split is None:
        return {c: 0 for c in classes}
    t = np.asarray(split.targets)
    per = t.sum(0).astype(int) if t.ndim == 2 else np.bincount(t, minlength=len(classes))
    return {c: int(n) for c, n in zip(classes, per)}


def _summary(values: list[int]) -> dict[str, int]:
    if not values:
        return {}
    a = np.asarray(values)
    return {"min": int(a.min()), "median": int(np.median(a)), "max": int(a.max())}


def dataset_stats(spec: str | os.PathLike, cfg: DataConfig | None = None, *, sample: int = 500, seed: int = 0) -> dict:
    """Describe a dataset.

    Args:
        spec: folder, CSV list or built-in name.
        cfg: data settings (limits, CSV separator, split).
        sample: images decoded to estimate mean/std of file-based data.
        seed: which images that sample takes.

    Returns:
        A JSON-ready dict: ``spec``, ``kind``, ``task``, ``classes``, ``counts`` (per split and class),
        ``images`` (per split), ``sizes`` (width/height min/median/max), ``modes``, ``mean``, ``std``,
        ``stats_from``, ``issues`` (``[{"path", "reason"}]``).
    """
    cfg = cfg or DataConfig()
    source = resolve_source(spec, cfg)
    splits = {"train": source.train, "val": source.val}
    issues = list(source.issues)
    result: dict[str, Any] = {
        "spec": str(spec),
        "kind": source.kind,
        "task": source.task,
        "classes": source.classes,
        "counts": {name: _counts(s, source.classes) for name, s in splits.items()},
        "images": {name: len(s) if s is not None else 0 for name, s in splits.items()},
    }
    limits = {"max_pixels": cfg.max_pixels, "max_file_bytes": cfg.max_file_bytes}
    if source.train.images is not None:
        h, w = source.train.images.shape[2:]
        channels = source.train.images.shape[1]
        result["sizes"] = {"width": {"min": w, "median": w, "max": w}, "height": {"min": h, "median": h, "max": h}}
        result["modes"] = {"L" if channels == 1 else "RGB": len(source.train) + (len(source.val or []))}
        mean, std = channel_stats(source.train.images)
        result["stats_from"] = f"all {len(source.train)} training images"
    else:
        widths, heights, modes, good = [], [], Counter(), []
        for split in splits.values():
            for p in split.paths if split is not None else []:
                try:
                    im = open_image(p, **limits)
                except ImageError as exc:
                    issues.append((exc.path, exc.reason))
                    continue
                widths.append(im.width)
                heights.append(im.height)
                modes[im.mode] += 1
                im.close()
                if split is source.train:
                    good.append(p)
        result["sizes"] = {"width": _summary(widths), "height": _summary(heights)}
        result["modes"] = dict(modes.most_common())
        rng = np.random.default_rng(seed)
        picked = [good[i] for i in np.sort(rng.permutation(len(good))[:sample])]
        arrays = []
        for p in picked:
            try:
                im = read_image(p, min_side=64, **limits).convert("RGB")
            except ImageError as exc:
                issues.append((exc.path, exc.reason))
                continue
            im.thumbnail((64, 64))  # statistics do not need full resolution
            arrays.append(pil_to_tensor(im.resize((64, 64))).numpy())
        mean, std = channel_stats(np.stack(arrays)) if arrays else ([], [])
        result["stats_from"] = f"{len(arrays)} of {len(good)} training images (seeded sample)"
    result["mean"] = [round(v, 4) for v in mean]
    result["std"] = [round(v, 4) for v in std]
    result["issues"] = [{"path": p, "reason": r} for p, r in sorted(set(issues))]
    return result


def format_stats(stats: dict) -> str:
    """Plain-text report of `dataset_stats`."""
    lines = [f"{stats['spec']}: {stats['kind']}, task {stats['task']}, {len(stats['classes'])} classes"]
    width = max(len(c) for c in stats["classes"]) if stats["classes"] else 5
    lines.append(f"  {'class':<{width}}  {'train':>7}  {'val':>7}")
    for c in stats["classes"]:
        lines.append(f"  {c:<{width}}  {stats['counts']['train'][c]:>7}  {stats['counts']['val'][c]:>7}")
    lines.append(f"  {'total':<{width}}  {stats['images']['train']:>7}  {stats['images']['val']:>7}")
    sz = stats["sizes"]
    if sz.get("width"):
        lines.append(
            "image size: width {min}/{median}/{max}".format(**sz["width"])
            + ", height {min}/{median}/{max} (min/median/max)".format(**sz["height"])
        )
    lines.append("modes: " + ", ".join(f"{m} {n}" for m, n in stats["modes"].items()))
    lines.append(f"mean {stats['mean']}  std {stats['std']}  ({stats['stats_from']})")
    issues = stats["issues"]
    lines.append(f"problems: {len(issues)}")
    lines.extend(f"  {i['path']}: {i['reason']}" for i in issues[:20])
    if len(issues) > 20:
        lines.append(f"  ... and {len(issues) - 20} more (use --json for all)")
    return "\n".join(lines)


__all__ = ["dataset_stats", "format_stats"]
