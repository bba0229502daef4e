"""What ``imgcls data stats`` shows: look at the data before training on it.

`dataset_stats` reports classes, per-split counts, image sizes and modes (from the file headers, so every file is
checked without decoding it), per-channel mean/std (exact for built-in sets, else estimated on a seeded sample of
decoded images) and every problem found. (``imgcls data preview`` draws augmented samples:
`imgcls.report.preview`.)
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from imgcls.data.cache import channel_stats, die_with_parent
from imgcls.data.config import DataConfig
from imgcls.data.reader import ImageError, decode_image, open_image, pil_to_tensor
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


def _inspect(job: tuple[str, dict, bool]) -> tuple | str:
    """One file, decoded (JPEG at a reduced scale): ``(width, height, mode, thumbnail or None)`` or the reason
    it cannot be used. Decoding every file is what finds truncated ones; the header alone does not."""
    path, limits, thumb = job
    try:
        im = open_image(path, **limits)
        width, height, mode = im.width, im.height, im.mode
        small = decode_image(im, path, min_side=64)
    except ImageError as exc:
        return exc.reason
    if not thumb:
        return width, height, mode, None
    small = small.convert("RGB")
    small.thumbnail((64, 64))  # statistics do not need full resolution
    return width, height, mode, pil_to_tensor(small.resize((64, 64))).numpy()


def dataset_stats(spec: str | os.PathLike, cfg: DataConfig | None = None, *, sample: int = 500, seed: int = 0) -> dict:
    """Describe a dataset.

    Args:
        spec: folder, CSV list or built-in name.
        cfg: data settings (limits, CSV separator, split, workers).
        sample: images used to estimate mean/std of file-based data (at 64 px: an estimate; training computes
            its own at its input size).
        seed: which images that sample takes.

    Returns:
        A JSON-ready dict: ``spec``, ``kind``, ``task``, ``classes``, ``counts`` (usable images per split and
        class), ``images`` (usable images per split), ``sizes`` (width/height min/median/max), ``modes``,
        ``mean``, ``std``, ``stats_from``, ``issues`` (``[{"path", "reason"}]``: every file that cannot be used,
        each decoded to find out).
    """
    cfg = cfg or DataConfig()
    source = resolve_source(spec, cfg)
    splits = {"train": source.train, "val": source.val}
    issues = list(source.issues)
    result: dict[str, Any] = {"spec": str(spec), "kind": source.kind, "task": source.task, "classes": source.classes}
    if source.train.images is not None:
        h, w = source.train.images.shape[2:]
        channels = source.train.images.shape[1]
        result["sizes"] = {"width": {"min": w, "median": w, "max": w}, "height": {"min": h, "median": h, "max": h}}
        result["modes"] = {"L" if channels == 1 else "RGB": len(source.train) + (len(source.val or []))}
        mean, std = channel_stats(source.train.images)
        result["stats_from"] = f"all {len(source.train)} training images"
    else:
        splits, found = _inspect_files(splits, cfg, sample, seed)
        issues += found["issues"]
        result["sizes"] = {"width": _summary(found["widths"]), "height": _summary(found["heights"])}
        result["modes"] = dict(found["modes"].most_common())
        arrays = found["thumbs"]
        mean, std = channel_stats(np.stack(arrays)) if arrays else ([], [])
        result["stats_from"] = f"{len(arrays)} of {len(splits['train'])} training images (seeded sample, 64 px)"
    result["counts"] = {name: _counts(s, source.classes) for name, s in splits.items()}
    result["images"] = {name: len(s) if s is not None else 0 for name, s in splits.items()}
    result["mean"] = [round(v, 4) for v in mean]
    result["std"] = [round(v, 4) for v in std]
    result["issues"] = [{"path": p, "reason": r} for p, r in sorted(set(issues))]
    return result


def _inspect_files(splits: dict, cfg: DataConfig, sample: int, seed: int) -> tuple[dict, dict]:
    """Decode every file of every split (in ``cfg.num_workers`` processes); the splits keep the usable files."""
    train_paths = splits["train"].paths or []
    picked = set(np.random.default_rng(seed).permutation(len(train_paths))[:sample].tolist())
    found: dict[str, Any] = {"issues": [], "widths": [], "heights": [], "modes": Counter(), "thumbs": []}
    kept = {}
    for name, split in splits.items():
        if split is None:
            kept[name] = None
            continue
        jobs = [(p, cfg.limits, name == "train" and i in picked) for i, p in enumerate(split.paths or [])]
        if cfg.num_workers > 1 and len(jobs) >= 256:
            with ProcessPoolExecutor(cfg.num_workers, initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
                results = list(pool.map(_inspect, jobs, chunksize=32))
        else:
            results = [_inspect(job) for job in jobs]
        good = []
        for i, ((path, _, _), r) in enumerate(zip(jobs, results)):
            if isinstance(r, str):
                found["issues"].append((path, r))
                continue
            good.append(i)
            found["widths"].append(r[0])
            found["heights"].append(r[1])
            found["modes"][r[2]] += 1
            if r[3] is not None:
                found["thumbs"].append(r[3])
        kept[name] = split.subset(np.asarray(good, dtype=np.int64))
    return kept, found


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
