"""Decode a list of image files once into a uint8 array on disk, memory-mapped on every later run.

A cache is two files in the cache folder: ``<key>.u8`` (raw uint8 ``(N, C, S, S)``, rows in list order with
unusable files left out) and ``<key>.json`` (shape, the kept indices, the issues found). The key is a SHA-256 over
the view settings and, for every file, its absolute path, size and modification time (nanoseconds), so adding,
removing, replacing or touching any file builds a new cache. Both files are written through
`imgcls._files.atomic_open` (temporary name, then rename), JSON last, so a crash never leaves a cache that looks
complete; an `imgcls._files.FileLock` keeps concurrent ranks from building the same cache twice.

A build killed with ``kill -9`` leaves nothing that blocks the next one: the decoding workers die with the
process that started them (``PR_SET_PDEATHSIG`` on Linux, and they drop the inherited lock descriptor), a lock
still held by an orphan of a dead owner is broken, and the partial ``.tmp`` files of dead processes are removed
before the next build. A cache folder that cannot be written (read-only, full) is a one-line `UserError` that
says how to stream instead.

Decoding runs in ``workers`` processes when there are enough files to pay for them.

`FileView` is the one description of how a file becomes a uint8 image, shared by the cache and the streaming
path of `imgcls.data.loader`; `channel_stats` and `sample_stats` are the one rule for normalisation statistics.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgcls._files import FileLock, atomic_open, atomic_write_text, pid_alive, remove_stale_temps
from imgcls.data.reader import (
    DEFAULT_MAX_ASPECT,
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_PIXELS,
    ImageError,
    eval_view,
    pil_to_tensor,
    read_image,
    storage_view,
)
from imgcls.errors import UserError

log = logging.getLogger("imgcls.data")

CACHE_VERSION = 2  # 2: thin images refused (max_aspect), settings of the unified FileView
_PARALLEL_MIN_FILES = 512  # below this, process start-up costs more than it saves
_OLD_TEMP = re.compile(r"^[0-9a-f]{32}\.(?:u8|json)\.(\d+)\.tmp$")  # CACHE_VERSION 1's temporary names


@dataclass(frozen=True)
class FileView:
    """How one image file becomes a uint8 ``(C, S, S)`` array (the cache and the streaming path share it).

    ``kind="storage"``: shorter side to `resize`, center `resize` × `resize` square (training).
    ``kind="eval"``: shorter side to `resize`, center crop `size` (validation, identical to `load_for_eval`).
    ``kind="rrc"``: RandomResizedCrop to `size` on the full image (streamed training only; drawn per sample).
    """

    kind: str
    size: int
    resize: int
    in_chans: int
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    max_aspect: float = DEFAULT_MAX_ASPECT
    rrc_scale: tuple[float, float] = (0.08, 1.0)
    rrc_ratio: tuple[float, float] = (3 / 4, 4 / 3)

    @property
    def side(self) -> int:
        """Side of the stored square: `resize` for storage, `size` otherwise."""
        return self.resize if self.kind == "storage" else self.size

    @property
    def limits(self) -> dict:
        """The reader's size limits, as keyword arguments."""
        return {"max_pixels": self.max_pixels, "max_file_bytes": self.max_file_bytes, "max_aspect": self.max_aspect}

    def settings(self) -> dict:
        """What determines a cached array (the cache key): kind, sizes, channels and limits."""
        return {"kind": self.kind, "size": self.size, "resize": self.resize, "in_chans": self.in_chans, **self.limits}


@dataclass
class CachedImages:
    """A memory-mapped cache: `images` uint8 ``(M, C, S, S)`` for the `kept` indices of the input list."""

    images: np.ndarray
    kept: np.ndarray
    issues: list[tuple[str, str]]
    path: Path


def decode(path: str, view: FileView) -> np.ndarray:
    """One file through a ``storage`` or ``eval`` `view` as uint8 ``(C, S, S)``; raises `ImageError`."""
    im = read_image(path, min_side=view.resize, **view.limits)
    if view.kind == "eval":
        out = eval_view(im, view.size, view.resize, view.in_chans)
    elif view.kind == "storage":
        out = storage_view(im, view.resize, view.in_chans)
    else:
        raise ValueError(f"decode: view kind {view.kind!r} is drawn per sample (imgcls.data.loader)")
    return pil_to_tensor(out).numpy()


def _decode_safe(args: tuple[str, FileView]) -> np.ndarray | str:
    path, view = args
    try:
        return decode(path, view)
    except ImageError as exc:
        return exc.reason
    except MemoryError:
        return "out of memory while decoding"


def die_with_parent(parent: int, close_fds: Iterable[int] = ()) -> None:
    """In a worker process: be killed when `parent` dies, and let go of descriptors that hold the parent's locks.

    A forked worker inherits the parent's open files, ``flock`` locks included; one that outlives a killed parent
    would keep the lock (and the next run waiting) for as long as it lives.
    """
    for fd in close_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)


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

    Exact, from a 256-bin histogram per channel (one ``bincount`` pass; no float copy of the data). Images of
    different sizes can be passed as a list of ``(C, H, W)`` arrays.
    """
    return stats_from_histograms(_histograms(images if isinstance(images, np.ndarray) else list(images), chunk))


def stats_from_histograms(hist: np.ndarray) -> tuple[list[float], list[float]]:
    """Mean and standard deviation in [0, 1] units from per-channel 256-bin counts ``(C, 256)`` (std floored at
    1e-3 of the range so a constant channel cannot divide by zero); empty counts give 0.5 and 0.25."""
    count = hist.sum(1)
    c = hist.shape[0]
    if not count.all():
        return [0.5] * c, [0.25] * c
    v = np.arange(256, dtype=np.float64)
    mean = (hist * v).sum(1) / count
    var = (hist * v**2).sum(1) / count - mean**2
    return (mean / 255).tolist(), (np.maximum(np.sqrt(np.maximum(var, 0.0)), 1e-3) / 255).tolist()


def _histograms(images, chunk: int) -> np.ndarray:
    if isinstance(images, np.ndarray):
        c = images.shape[1]
        hist = np.zeros((c, 256), dtype=np.int64)
        for start in range(0, len(images), chunk):
            x = np.asarray(images[start : start + chunk])
            for ch in range(c):
                hist[ch] += np.bincount(x[:, ch].ravel(), minlength=256)
        return hist
    c = images[0].shape[0] if images else 1
    hist = np.zeros((c, 256), dtype=np.int64)
    for x in images:
        for ch in range(c):
            hist[ch] += np.bincount(np.asarray(x[ch]).ravel(), minlength=256)
    return hist


def stats_indices(n: int, sample: int, seed: int = 0) -> np.ndarray:
    """Which of `n` training samples the normalisation statistics are computed on: all of them when
    ``n <= sample``, else a seeded choice of `sample` (sorted). The same indices in every storage path."""
    if n <= sample:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False))


def _load(meta_path: Path, data_path: Path, key: str) -> CachedImages | None:
    try:
        meta = json.loads(meta_path.read_text())
        shape = tuple(meta["shape"])
        if meta.get("key") != key or data_path.stat().st_size != int(np.prod(shape)):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    images = np.memmap(data_path, dtype=np.uint8, mode="r", shape=shape) if shape[0] else np.zeros(shape, np.uint8)
    issues = [(p, r) for p, r in meta["issues"]]
    return CachedImages(images, np.asarray(meta["kept"], dtype=np.int64), issues, data_path)


def _remove_old_temps(cache_dir: Path) -> None:
    """Partial files of killed builds named the way CACHE_VERSION 1 named them (``<key>.u8.<pid>.tmp``)."""
    try:
        names = os.listdir(cache_dir)
    except OSError:
        return
    for name in names:
        match = _OLD_TEMP.match(name)
        if match and not pid_alive(int(match.group(1))):
            with contextlib.suppress(OSError):
                os.unlink(cache_dir / name)


def build_or_load(paths: Sequence[str], view: FileView, cache_dir: Path, *, workers: int = 1) -> CachedImages:
    """Return the cache of `paths` through `view`, building it first when missing or stale.

    Args:
        paths: image files, in sample order.
        view: how each file is decoded (`FileView`, kind ``storage`` or ``eval``).
        cache_dir: folder of caches.
        workers: decoding processes.

    Returns:
        `CachedImages`; files that could not be used are absent from `images` and listed in `issues`.

    Raises:
        UserError: the cache folder cannot be written (read-only, full disk), with the way out.
    """
    key = fingerprint(paths, view.settings())
    data_path, meta_path = cache_dir / f"{key}.u8", cache_dir / f"{key}.json"
    cached = _load(meta_path, data_path, key)
    if cached is not None:
        return cached
    try:
        with FileLock(cache_dir / f"{key}.lock", f"decoding {len(paths)} images into {data_path.name}") as lock:
            cached = _load(meta_path, data_path, key)  # built by another process while we waited
            if cached is not None:
                return cached
            remove_stale_temps(cache_dir)
            _remove_old_temps(cache_dir)
            _build(paths, view, data_path, meta_path, key, workers, lock.fd)
    except UserError as exc:
        hint = "the decode cache: set data.cache_dir to a writable folder, or data.cache=never"
        raise UserError(f"{exc} ({hint})") from None
    loaded = _load(meta_path, data_path, key)
    if loaded is None:
        raise UserError(f"{data_path}: the cache just written cannot be read back (is {cache_dir} shared and full?)")
    return loaded


def _build(paths, view: FileView, data_path: Path, meta_path: Path, key: str, workers: int, lock_fd) -> None:
    log.info("decoding %d images into the cache %s", len(paths), data_path)
    kept: list[int] = []
    issues: list[tuple[str, str]] = []
    jobs = ((p, view) for p in paths)
    with atomic_open(data_path, "wb") as f:
        if workers > 1 and len(paths) >= _PARALLEL_MIN_FILES:
            fds = (lock_fd,) if lock_fd is not None else ()
            with ProcessPoolExecutor(workers, initializer=die_with_parent, initargs=(os.getpid(), fds)) as pool:
                _write_all(pool.map(_decode_safe, jobs, chunksize=64), paths, f, kept, issues)
        else:
            _write_all(map(_decode_safe, jobs), paths, f, kept, issues)
    c, s = view.in_chans, view.side
    meta = {"key": key, "shape": [len(kept), c, s, s], "kept": kept, "issues": issues, "view": view.settings()}
    atomic_write_text(meta_path, json.dumps(meta))


def _write_all(results, paths, f, kept: list[int], issues: list) -> None:
    for i, r in enumerate(results):
        if isinstance(r, str):
            issues.append((paths[i], r))
            continue
        f.write(r.tobytes())
        kept.append(i)


__all__ = [
    "CachedImages",
    "FileView",
    "build_or_load",
    "channel_stats",
    "decode",
    "die_with_parent",
    "fingerprint",
    "stats_from_histograms",
    "stats_indices",
]
