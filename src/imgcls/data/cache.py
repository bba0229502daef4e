"""Decode a list of image files once into a uint8 array on disk, memory-mapped on every later run.

A cache is two files in the cache folder: ``<key>.u8`` (raw uint8 ``(N, C, S, S)``, rows in list order with
unusable files left out) and ``<key>.json`` (shape, the kept indices, the issues found, per-channel mean/std).
The key is a SHA-256 over the view settings and, for every file, its absolute path, size and modification time
(nanoseconds), so adding, removing, replacing or touching any file builds a new cache. Both files are written
through `imgcls._files.atomic_open` (temporary name, then rename), JSON last, so a crash never leaves a cache that
looks complete; a `imgcls._files.FileLock` keeps concurrent ranks from building the same cache twice.

Decoding runs in ``workers`` processes when there are enough files to pay for them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgcls._files import FileLock, atomic_open, atomic_write_text, remove_stale_temps
from imgcls.data.reader import ImageError, eval_view, pil_to_tensor, read_image, storage_view

log = logging.getLogger("imgcls.data")

CACHE_VERSION = 1
_PARALLEL_MIN_FILES = 512  # below this, process start-up costs more than it saves


@dataclass(frozen=True)
class View:
    """How a file becomes a cached array.

    ``kind="storage"``: shorter side to `resize`, center square (training). ``kind="eval"``: shorter side to
    `resize`, center crop `size` (validation, identical to `load_for_eval`).
    """

    kind: str
    size: int
    resize: int
    in_chans: int
    max_pixels: int
    max_file_bytes: int

    @property
    def side(self) -> int:
        return self.resize if self.kind == "storage" else self.size


@dataclass
class CachedImages:
    """A memory-mapped cache: `images` uint8 ``(M, C, S, S)`` for the `kept` indices of the input list."""

    images: np.ndarray
    kept: np.ndarray
    issues: list[tuple[str, str]]
    mean: list[float]
    std: list[float]
    path: Path


def decode(path: str, view: View) -> np.ndarray:
    """One file through `view` as uint8 ``(C, S, S)``; raises `ImageError`."""
    im = read_image(path, max_pixels=view.max_pixels, max_file_bytes=view.max_file_bytes, min_side=view.resize)
    if view.kind == "eval":
        out = eval_view(im, view.size, view.resize, view.in_chans)
    else:
        out = storage_view(im, view.resize, view.in_chans)
    return pil_to_tensor(out).numpy()


def _decode_safe(args: tuple[str, View]) -> np.ndarray | str:
    path, view = args
    try:
        return decode(path, view)
    except ImageError as exc:
        return exc.reason
    except MemoryError:
        return "out of memory while decoding"


def fingerprint(paths: Sequence[str], settings: dict) -> str:
    """Cache key over `settings` and each file's absolute path, size and mtime (ns)."""
    h = hashlib.sha256(json.dumps({"version": CACHE_VERSION, **settings}, sort_keys=True).encode())
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{os.path.abspath(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{os.path.abspath(p)}\0missing\n".encode())
    return h.hexdigest()[:32]


def channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of uint8 ``(N, C, H, W)`` images, in [0, 1] units.

    Exact, from a 256-bin histogram per channel (one ``bincount`` pass; no float copy of the data).
    """
    c = images.shape[1]
    hist = np.zeros((c, 256), dtype=np.int64)
    for start in range(0, len(images), chunk):
        x = np.asarray(images[start : start + chunk])
        for ch in range(c):
            hist[ch] += np.bincount(x[:, ch].ravel(), minlength=256)
    count = hist.sum(1)
    if not count.all():
        return [0.5] * c, [0.25] * c
    v = np.arange(256, dtype=np.float64)
    mean = (hist * v).sum(1) / count
    var = (hist * v**2).sum(1) / count - mean**2
    return (mean / 255).tolist(), (np.maximum(np.sqrt(np.maximum(var, 0.0)), 1e-3) / 255).tolist()


def _load(meta_path: Path, data_path: Path, key: str) -> CachedImages | None:
    try:
        meta = json.loads(meta_path.read_text())
        shape = tuple(meta["shape"])
        if meta.get("key") != key or data_path.stat().st_size != int(np.prod(shape)):
            return None
    except (OSError, ValueError, KeyError):
        return None
    images = np.memmap(data_path, dtype=np.uint8, mode="r", shape=shape) if shape[0] else np.zeros(shape, np.uint8)
    issues = [(p, r) for p, r in meta["issues"]]
    return CachedImages(images, np.asarray(meta["kept"], dtype=np.int64), issues, meta["mean"], meta["std"], data_path)


def build_or_load(paths: Sequence[str], view: View, cache_dir: Path, *, workers: int = 1) -> CachedImages:
    """Return the cache of `paths` through `view`, building it first when missing or stale.

    Args:
        paths: image files, in sample order.
        view: how each file is decoded (`View`).
        cache_dir: folder of caches.
        workers: decoding processes.

    Returns:
        `CachedImages`; files that could not be used are absent from `images` and listed in `issues`.
    """
    key = fingerprint(paths, dataclasses.asdict(view))
    data_path, meta_path = cache_dir / f"{key}.u8", cache_dir / f"{key}.json"
    cached = _load(meta_path, data_path, key)
    if cached is not None:
        return cached
    with FileLock(cache_dir / f"{key}.lock", f"decoding {len(paths)} images into the cache {data_path.name}"):
        cached = _load(meta_path, data_path, key)  # built by another process while we waited
        if cached is not None:
            return cached
        remove_stale_temps(cache_dir)
        log.info("decoding %d images into the cache %s", len(paths), data_path)
        kept, issues = [], []
        c, s = view.in_chans, view.side
        total, squares = np.zeros(c), np.zeros(c)
        jobs = ((p, view) for p in paths)
        with atomic_open(data_path, "wb") as f:
            if workers > 1 and len(paths) >= _PARALLEL_MIN_FILES:
                with ProcessPoolExecutor(workers) as pool:
                    results = pool.map(_decode_safe, jobs, chunksize=64)
                    _write_all(results, paths, f, kept, issues, total, squares)
            else:
                _write_all(map(_decode_safe, jobs), paths, f, kept, issues, total, squares)
        count = len(kept) * s * s
        mean = total / max(count, 1)
        std = np.sqrt(np.maximum(squares / max(count, 1) - mean**2, 0.0))
        meta = {
            "key": key,
            "shape": [len(kept), c, s, s],
            "kept": kept,
            "issues": issues,
            "mean": (mean / 255).tolist() if kept else [0.5] * c,
            "std": (np.maximum(std, 1e-3) / 255).tolist() if kept else [0.25] * c,
            "view": dataclasses.asdict(view),
        }
        atomic_write_text(meta_path, json.dumps(meta))
    loaded = _load(meta_path, data_path, key)
    assert loaded is not None
    return loaded


def _write_all(results, paths, f, kept, issues, total, squares) -> None:
    for i, r in enumerate(results):
        if isinstance(r, str):
            issues.append((paths[i], r))
            continue
        f.write(r.tobytes())
        kept.append(i)
        x = r.reshape(r.shape[0], -1).astype(np.float64)
        total += x.sum(1)
        squares += np.square(x).sum(1)


__all__ = ["CachedImages", "View", "build_or_load", "channel_stats", "decode", "fingerprint"]
