"""Batches for the engine: `build_data` and `BatchLoader`.

Two paths give the same interface (ARCHITECTURE.md, "data/"):

* **In memory / memory-mapped** (built-in sets, and folders whose decoded training split fits
  ``DataConfig.max_cache_bytes``): a uint8 ``(N, C, S, S)`` array; each batch is one gather of whole images,
  then the batched augmentation of `imgcls.data.augment` runs on the training device.
* **Streaming** (larger folders, or ``cache="never"``): files are decoded in DataLoader worker processes, one
  whole batch per work item, with Pillow's JPEG draft mode when downscaling. RandomResizedCrop is done per
  sample there (on the full image, so that the draft scale can follow the crop size); every other augmentation
  is the same batched transform as above, in the main process: the uint8 batch crosses from the workers in a
  quarter of the shared memory of a float one (on 2 busy cores, 224-pixel batches: 1.54x against 1.40x the
  plain pipeline's throughput with the transform in the workers; `benchmarks/bench_data.py`).

Determinism: the sample order of epoch ``e`` is a permutation drawn from ``(seed, e)``; batch ``b`` of rank
``r`` draws all its augmentation from a fresh `torch.Generator` seeded from ``(seed, e, b, r)`` (batch mixing
from a second one), and in the
streaming path sample ``j`` of that batch from ``(seed, e, b, r, j)``. Nothing depends on the global RNG or on
the number of workers (each worker item is a whole batch), so resuming at batch ``b`` replays the run exactly.
Alternating flips (``AugmentConfig.alternate_flip``): sample ``i`` is mirrored in epoch ``e`` when
``first[i] XOR (e odd)``, with ``first`` one fair coin per sample drawn from ``(seed, rank)``; the flip is applied
to the uint8 images before the batch transform.

Sharding: under ``world_size > 1`` rank ``r`` takes every ``world_size``-th sample of the epoch permutation,
after trimming it to a multiple of ``world_size``, so shards are disjoint and of equal length. Validation is
not shuffled and not trimmed: every sample is evaluated exactly once overall (shards differ by at most one).
A training epoch drops its last incomplete batch, unless the rank has fewer samples than one batch.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from imgcls._files import atomic_open, atomic_write_text
from imgcls.constants import DEFAULT_CROP_PCT, LUMA_WEIGHTS_PER_MILLE
from imgcls.data.augment import AugmentConfig, build_batch_transform, build_mixer, mean_image, sample_resized_crop
from imgcls.data.cache import (
    FileView,
    _decode_safe,
    _histograms,
    build_or_load,
    channel_stats,
    decode,
    die_with_parent,
    fingerprint,
    stats_from_histograms,
    stats_indices,
)
from imgcls.data.config import DataConfig, cache_home
from imgcls.data.imbalance import class_balanced_indices, smote_oversample
from imgcls.data.reader import (
    ImageError,
    check_resized,
    decode_image,
    header_size,
    load_for_eval,
    open_image,
    pil_to_tensor,
    to_channels,
)
from imgcls.data.sources import Source, Split, eval_source, resolve_source
from imgcls.data.sources import fingerprint as source_fingerprint
from imgcls.errors import UserError

log = logging.getLogger("imgcls.data")

_ORDER, _BATCH, _SAMPLE, _MIX, _FLIP = 0, 1, 2, 3, 4  # independent random streams
MAX_CONSECUTIVE_FAILURES = 16  # streamed files in a row that may fail before the run stops
_EXIF_TRANSPOSED = {5, 6, 7, 8}  # EXIF orientations that swap width and height


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixing `parts` (NumPy's SeedSequence hash: nearby inputs give unrelated seeds)."""
    words = np.random.SeedSequence([int(p) % (1 << 64) for p in parts]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def generator(*parts: int) -> torch.Generator:
    """A CPU `torch.Generator` seeded from `parts`."""
    return torch.Generator().manual_seed(derive_seed(*parts))


def convert_channels(x: torch.Tensor, in_chans: int) -> torch.Tensor:
    """uint8 ``(N, C, H, W)`` to `in_chans` channels: grey → RGB replicates, RGB → grey is ITU-R 601-2 luma
    (the weights Pillow's ``convert("L")`` uses), so arrays and files convert alike."""
    c = x.shape[1]
    if c == in_chans:
        return x
    if c == 1 and in_chans == 3:
        return x.expand(-1, 3, -1, -1).contiguous()
    if c == 3 and in_chans == 1:
        w = torch.tensor(LUMA_WEIGHTS_PER_MILLE, dtype=torch.int32, device=x.device).view(1, 3, 1, 1)
        return ((x.to(torch.int32) * w).sum(1, keepdim=True) + 500).div(1000, rounding_mode="floor").to(torch.uint8)
    raise UserError(f"in_chans: cannot convert {c}-channel images to {in_chans} channels")


# --------------------------------------------------------------------------------------------------------------
# Samples: where a batch's uint8 images come from.


class ArraySamples:
    """Decoded images in memory or memory-mapped: uint8 ``(N, C, H, W)``.

    For a GPU (`place`), the whole array moves to the GPU once when it takes at most ``DEVICE_SHARE`` of the free
    GPU memory (CIFAR-10's training split is 150 MB), and each batch is gathered there; otherwise batches are
    gathered into pinned host memory, so that their copy to the GPU runs asynchronously (``non_blocking``).
    """

    streaming = False
    DEVICE_SHARE = 0.25

    def __init__(self, images: np.ndarray, targets: np.ndarray, in_chans: int):
        self.images, self.targets, self.in_chans = images, targets, in_chans
        row = int(np.prod(images.shape[1:]))
        self._rows = _as_tensor(images).view(len(images), row) if images.flags.c_contiguous else None
        self._resident: tuple[torch.Tensor, torch.Tensor] | None = None  # (images, targets) on the device
        self._pin = False
        self.placement = "host"

    def __len__(self) -> int:
        return len(self.targets)

    def place(self, device: torch.device, resident: bool | None = None) -> str:
        """Prepare batches for ``device``: ``"device"`` (the array copied there once), ``"pinned"`` (gathered into
        pinned host memory) or ``"host"`` (the CPU). ``resident`` forces the choice (None: the size rule above)."""
        device = torch.device(device)
        if resident is None:
            resident = device.type == "cuda" and self.images.nbytes <= self.DEVICE_SHARE * _free_bytes(device)
        if resident:
            images = torch.empty(self.images.shape, dtype=torch.uint8, device=device)
            for i in range(0, len(self.images), 4096):  # chunks: a memory-mapped cache is never read whole at once
                images[i : i + 4096].copy_(torch.from_numpy(np.ascontiguousarray(self.images[i : i + 4096])))
            targets = torch.from_numpy(np.ascontiguousarray(self.targets)).to(device)
            self._resident, self._pin, self.placement = (images.view(len(images), -1), targets), False, "device"
        else:
            self._resident, self._pin = None, device.type == "cuda"
            self.placement = "pinned" if self._pin else "host"
        return self.placement

    def gather(self, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        # One index_select of whole images (a copy of contiguous rows) from a tensor over the same memory: a third
        # of the time of NumPy's fancy indexing. Reading rows in sorted order buys nothing here: a batch's rows
        # lie about len / batch_size rows apart, so each one is a separate page either way.
        shape = (len(index), *self.images.shape[1:])
        idx = torch.from_numpy(np.asarray(index, dtype=np.int64))
        if self._resident is not None:
            images, targets = self._resident
            idx = idx.to(images.device)
            return convert_channels(images.index_select(0, idx).view(shape), self.in_chans), targets.index_select(
                0, idx
            )
        y = torch.from_numpy(np.asarray(self.targets[index]))
        if self._rows is None:
            x = torch.from_numpy(np.ascontiguousarray(self.images[index]))
            x = x.pin_memory() if self._pin else x
        elif self._pin:
            # Straight into pinned memory; PyTorch's pinned allocator reuses the block only once the copy is done.
            x = torch.empty((len(index), self._rows.shape[1]), dtype=torch.uint8, pin_memory=True)
            torch.index_select(self._rows, 0, idx, out=x)
        else:
            x = self._rows.index_select(0, idx)
        return convert_channels(x.view(shape), self.in_chans), y


class FileSamples:
    """Image files decoded on demand (streaming path)."""

    streaming = True

    def __init__(self, paths: list[str], targets: np.ndarray, view: FileView):
        self.paths, self.targets, self.view = paths, targets, view

    def __len__(self) -> int:
        return len(self.targets)

    def load(self, i: int, seed: int) -> torch.Tensor:
        v, path = self.view, self.paths[i]
        limits = v.limits
        if v.kind == "eval":
            return load_for_eval(path, v.size, v.resize, v.in_chans, **limits)
        if v.kind == "storage":
            return torch.from_numpy(decode(path, v))
        # RandomResizedCrop on the full image: the box is drawn from the header size (after EXIF rotation), so
        # the decoder can skip detail the box will not keep (draft scale chosen from the box, not the image).
        # The file is opened once: header and EXIF first, then the decode from the same handle.
        im = open_image(path, **limits)
        try:
            width, height = im.size
            if im.getexif().get(0x0112, 1) in _EXIF_TRANSPOSED:
                width, height = height, width
        except BaseException:
            im.close()
            raise
        top, left, h, w = sample_resized_crop(height, width, v.rrc_scale, v.rrc_ratio, generator(seed))
        min_side = math.ceil(min(width, height) * v.size / max(1, min(h, w)))
        im = decode_image(im, path, min_side=min_side)
        if im.size == (width, height):
            # Whole pixels: the box's pixels (one copy of the box only) resized by torch's uint8 bilinear kernel,
            # antialiased when shrinking as Pillow's is: 2.5x faster than Pillow's box resize. The filter sees the
            # box alone, as torchvision's RandomResizedCrop on tensors; Pillow's also reads up to a pixel or two
            # beyond the box edges, the only difference (mean 0.01 grey level on 224-pixel crops of photos).
            return _resize_box(to_channels(im.crop((left, top, left + w, top + h)), v.in_chans), v.size)
        sx, sy = im.width / width, im.height / height  # draft scale: a box in fractions of a pixel, which Pillow takes
        box = (left * sx, top * sy, (left + w) * sx, (top + h) * sy)
        im = im.resize((v.size, v.size), resample=2, box=box, reducing_gap=None)  # 2 = bilinear
        return pil_to_tensor(to_channels(im, v.in_chans))

    def load_batch(self, index: np.ndarray, seeds: list[int]) -> tuple[Any, Any, list, str | None]:
        """Decode `index`; a file that fails is replaced by the next sample (deterministically) and reported.

        Returns:
            ``(x, y, issues, error)``: the batch, the ``(path, reason)`` of files that failed, and None — or, when
            `MAX_CONSECUTIVE_FAILURES` files in a row failed, ``(None, None, issues, message)``. Nothing is raised:
            this runs in DataLoader workers, which would turn an exception into a multi-line traceback.
        """
        images, used, issues = [], [], []
        n = len(self)
        for i, seed in zip(index.tolist(), seeds):
            for attempt in range(MAX_CONSECUTIVE_FAILURES):
                k = (i + attempt) % n
                try:
                    images.append(self.load(k, seed))
                    used.append(k)
                    break
                except ImageError as exc:
                    issues.append((exc.path, exc.reason))
            else:
                message = (
                    f"{self.paths[i]} and the {MAX_CONSECUTIVE_FAILURES - 1} files after it could not be decoded "
                    f"while streaming (last: {issues[-1][1]}); the data changed or is damaged, see data_issues.csv"
                )
                return None, None, issues, message
        return torch.stack(images), torch.from_numpy(np.asarray(self.targets[np.asarray(used)])), issues, None


def _resize_box(im: Any, size: int) -> torch.Tensor:
    """A PIL crop to uint8 ``(C, size, size)``: bilinear, antialiased when shrinking (align_corners=False, as PIL)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # PIL's pixels are read-only to NumPy; they are only read here
        a = torch.from_numpy(np.asarray(im))
    hwc = a if a.ndim == 3 else a[:, :, None]
    x = hwc.permute(2, 0, 1)[None]  # (1, C, h, w), channels-last strides: the layout torch's uint8 kernel wants
    out = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return out[0].contiguous()


class _StreamBatches(Dataset):
    """One item per batch (so results do not depend on how batches are spread over workers)."""

    def __init__(
        self,
        samples: FileSamples,
        order: np.ndarray,
        batch_size: int,
        batches: range,
        seeds: tuple,
        flips: np.ndarray | None = None,
    ):
        self.samples, self.order, self.batch_size, self.batches, self.seeds = samples, order, batch_size, batches, seeds
        self.flips = flips

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, item: int):
        b = self.batches[item]
        index = self.order[b * self.batch_size : (b + 1) * self.batch_size]
        seeds = [derive_seed(*self.seeds, b, j, _SAMPLE) for j in range(len(index))]
        x, y, issues, error = self.samples.load_batch(index, seeds)
        if self.flips is not None and x is not None:
            x = _flip_where(x, self.flips[b * self.batch_size : (b + 1) * self.batch_size])
        return x, y, issues, error


def _flip_where(x: torch.Tensor, flips: np.ndarray | None) -> torch.Tensor:
    """Mirror the images of ``x`` (``(N, C, H, W)``) where ``flips`` is true."""
    if flips is None or not flips.any():
        return x
    mask = torch.from_numpy(np.ascontiguousarray(flips)).to(x.device)
    return torch.where(mask[:, None, None, None], x.flip(-1), x)


def _worker_init(_: int, parent: int) -> None:
    torch.set_num_threads(1)  # one decoding process per core; intra-op threads would oversubscribe
    die_with_parent(parent)


# --------------------------------------------------------------------------------------------------------------


class BatchLoader:
    """Batches of one split for one rank (module docstring for order, seeding and sharding).

    Args:
        samples: `ArraySamples` or `FileSamples`.
        batch_size: samples per batch on this rank.
        train: shuffle, drop the last incomplete batch, augment and mix; else the fixed evaluation order.
        seed: the run's seed.
        transform: ``fn(x_uint8, generator) -> x_float`` (`imgcls.data.augment.build_batch_transform`).
        mixer: ``fn(x, y, generator, epoch) -> (x, y_soft)`` or None.
        device: where batches are delivered.
        rank, world_size: this process's shard.
        balanced: draw each epoch with `class_balanced_indices` instead of a permutation.
        workers: decoding processes of the streaming path (0: in this process).
        issues: list to which files found unusable while streaming are appended (each file once, as a
            ``(path, reason)`` tuple, with one warning).
        alternate_flip: mirror each sample in every other epoch (module docstring); training only.
        on_issues: called after new files were appended to `issues` (`Data` rewrites data_issues.csv with it).
    """

    def __init__(
        self,
        samples: ArraySamples | FileSamples,
        *,
        batch_size: int,
        train: bool,
        seed: int,
        transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
        mixer: Callable | None = None,
        device: str | torch.device = "cpu",
        rank: int = 0,
        world_size: int = 1,
        balanced: bool = False,
        workers: int = 0,
        issues: list | None = None,
        alternate_flip: bool = False,
        on_issues: Callable[[], None] | None = None,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.samples, self.batch_size, self.train, self.seed = samples, batch_size, train, seed
        self.transform, self.mixer, self.device = transform, mixer, torch.device(device)
        self.rank, self.world_size, self.balanced, self.workers = rank, world_size, balanced, workers
        self.issues = issues if issues is not None else []
        self.on_issues = on_issues
        self.epoch = 0
        self.first_flip: np.ndarray | None = None
        if alternate_flip and train:
            g = generator(seed, rank, _FLIP)
            self.first_flip = (torch.rand(len(samples), generator=g) < 0.5).numpy()
        if isinstance(samples, ArraySamples):
            samples.place(self.device)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation the next `iterate` replays."""
        self.epoch = int(epoch)

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch."""
        n = len(self.samples)
        if self.train:
            return n // self.world_size
        return len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        n = self.num_samples
        if self.train and n >= self.batch_size:
            return n // self.batch_size
        return math.ceil(n / self.batch_size)

    def order(self) -> np.ndarray:
        """This rank's sample indices for the current epoch, in batch order."""
        n = len(self.samples)
        if not self.train:
            return np.arange(self.rank, n, self.world_size)
        g = generator(self.seed, self.epoch, _ORDER)
        if self.balanced:
            targets = torch.as_tensor(np.asarray(self.samples.targets))
            perm = class_balanced_indices(targets, n, g)
        else:
            perm = torch.randperm(n, generator=g)
        per_rank = n // self.world_size
        return perm.numpy()[self.rank : per_rank * self.world_size : self.world_size]

    def flips(self, index: np.ndarray) -> np.ndarray | None:
        """Which of the samples ``index`` are mirrored this epoch (alternating flips), or None when off."""
        if self.first_flip is None:
            return None
        return self.first_flip[index] ^ bool(self.epoch % 2)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iterate()

    def iterate(self, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)`` for batches ``start_batch, ..., len(self) - 1`` of the current epoch."""
        order, bs, total = self.order(), self.batch_size, len(self)
        batches = range(start_batch, total)
        if not self.samples.streaming:
            for b in batches:
                index = order[b * bs : (b + 1) * bs]
                x, y = self.samples.gather(index)
                yield self._finish(_flip_where(x, self.flips(index)), y, b)
            return
        # The workers decode; the batch transform runs here, on uint8 batches (module docstring).
        flips = self.flips(order)
        dataset = _StreamBatches(self.samples, order, bs, batches, (self.seed, self.epoch, self.rank), flips=flips)
        loader = DataLoader(
            dataset,
            batch_size=None,
            shuffle=False,
            num_workers=self.workers,
            generator=torch.Generator().manual_seed(self.seed),
            worker_init_fn=functools.partial(_worker_init, parent=os.getpid()) if self.workers else None,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if self.workers else None,
        )
        for b, (x, y, issues, error) in zip(batches, loader):
            self._note(issues)
            if error is not None:
                raise UserError(error)
            yield self._finish(x, y, b)

    def _note(self, issues: list) -> None:
        """Record files that failed while streaming: once each, with one warning (the DataLoader hands the
        ``(path, reason)`` pairs back as lists: compared as tuples, or every epoch would add them again)."""
        new = []
        for issue in issues:
            item = (str(issue[0]), str(issue[1]))
            if item not in self.issues:
                log.warning("skipped %s: %s", *item)
                self.issues.append(item)
                new.append(item)
        if new and self.on_issues is not None:
            self.on_issues()

    def _finish(self, x: torch.Tensor, y: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(self.device, non_blocking=True)
        x = self.transform(x, generator(self.seed, self.epoch, b, self.rank, _BATCH))
        y = y.to(self.device, non_blocking=True)
        if self.mixer is not None:
            x, y = self.mixer(x, y, generator(self.seed, self.epoch, b, self.rank, _MIX), self.epoch)
        return x, y


# --------------------------------------------------------------------------------------------------------------


def _write_issues(path: str | Path, issues: list[tuple[str, str]]) -> Path:
    path = Path(path)
    with atomic_open(path, "w") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "reason"])
        writer.writerows(sorted(set(issues)))
    return path


@dataclass
class Data:
    """What `build_data` returns (ARCHITECTURE.md, "data/").

    `test` is the separate test split of a ``train/ val/ test/`` folder (None otherwise), evaluated once at the
    end; `fingerprint` is `imgcls.data.sources.fingerprint` of the source (compare it on ``--resume``).
    """

    spec: str
    classes: list[str]
    task: str
    mean: list[float]
    std: list[float]
    resize: int
    image_size: int
    in_chans: int
    issues: list[tuple[str, str]]
    train: BatchLoader
    val: BatchLoader | None
    storage: str  # "memory" | "cache" | "stream"
    test: BatchLoader | None = None
    fingerprint: str = ""
    issues_path: Path | None = field(default=None, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def write_issues(self, path: str | Path) -> Path:
        """Write ``path,reason`` for every skipped file (header included, even when there are none), atomically;
        a full disk or read-only folder is a one-line `UserError` naming the file. Files that break later while
        streaming are added to the same file as they are found."""
        self.issues_path = _write_issues(path, self.issues)
        return self.issues_path

    def rewrite_issues(self) -> None:
        """Bring the file `write_issues` wrote up to date (the loaders call it when streaming finds a bad file)."""
        if self.issues_path is not None:
            _write_issues(self.issues_path, self.issues)

    def loaders(self) -> list[BatchLoader]:
        return [x for x in (self.train, self.val, self.test) if x is not None]


@dataclass
class EvalData:
    """What `build_eval_data` returns: the one split an evaluation reads (`split`: ``val``, ``test``, ``all``)."""

    spec: str
    split: str
    classes: list[str]
    task: str
    mean: list[float]
    std: list[float]
    resize: int
    image_size: int
    in_chans: int
    issues: list[tuple[str, str]]
    loader: BatchLoader
    storage: str  # "memory" | "cache" | "stream"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def write_issues(self, path: str | Path) -> Path:
        """As `Data.write_issues`."""
        return _write_issues(path, self.issues)


def choose_resize(paths: list[str] | None, image_size: int, crop_pct: float | None, limits: dict) -> int:
    """Shorter side before the evaluation center crop (policy in `imgcls.data.config`); `paths` None for arrays."""
    if paths is None:
        return image_size
    if crop_pct is None:
        probe = paths[:: max(1, len(paths) // 64)][:64]
        sides = []
        for p in probe:
            try:
                sides.append(min(header_size(p, **limits)))
            except ImageError:
                continue
        typical = float(np.median(sides)) if sides else image_size
        crop_pct = 1.0 if typical <= image_size / DEFAULT_CROP_PCT else DEFAULT_CROP_PCT
    return max(image_size, round(image_size / crop_pct))


def _prescan(paths: list[str], limits: dict, side: int) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Header check of every file before streaming (empty, not an image, too large or too thin, also once resized
    to `side`); truncation shows later."""
    good, issues = [], []
    for i, p in enumerate(paths):
        try:
            check_resized(p, *header_size(p, **limits), side, limits["max_pixels"])
            good.append(i)
        except ImageError as exc:
            issues.append((exc.path, exc.reason))
    return np.asarray(good, dtype=np.int64), issues


def _report(split_name: str, spec: str, total: int, issues: list, kept: int) -> None:
    if issues:
        log.warning(
            "%s: skipped %d of %d %s files (unreadable, too large or not images; listed in data_issues.csv)",
            spec,
            len(issues),
            total,
            split_name,
        )
    if total and kept == 0:
        raise UserError(f"{spec}: none of the {total} {split_name} image files could be used (first: {issues[0][1]})")


def _warn_empty_classes(targets: np.ndarray, classes: list[str], spec: str) -> None:
    if targets.ndim != 1:
        return
    counts = np.bincount(targets, minlength=len(classes))
    for name, count in zip(classes, counts):
        if count == 0:
            log.warning("%s: class %r has no usable training image", spec, name)


def _check_shape(image_size: int, in_chans: int) -> None:
    if in_chans not in (1, 3):
        raise UserError(f"in_chans: must be 1 or 3, got {in_chans}")
    if image_size < 1:
        raise UserError(f"--image-size: must be positive, got {image_size}")


def _require_validation(source: Source, cfg: DataConfig) -> None:
    """No run without held-out images: say why there are none and what to change."""
    if source.val is not None and len(source.val):
        return
    if cfg.val_fraction <= 0:
        raise UserError(
            f"{source.spec}: nothing to validate on: no val/ or test/ folder and data.val_fraction is 0 "
            "(set data.val_fraction, e.g. 0.1)"
        )
    raise UserError(
        f"{source.spec}: nothing to validate on: every class has fewer than 2 usable images, so data.val_fraction="
        f"{cfg.val_fraction:g} holds none out (add images, or a val/ folder)"
    )


def build_data(
    spec: str | Path,
    cfg: DataConfig | None = None,
    aug: Any = None,
    *,
    image_size: int,
    in_chans: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    device: str | torch.device = "cpu",
    task: str | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    require_val: bool = True,
) -> Data:
    """Resolve `spec`, decode or cache its images and return the training, validation (and test) loaders.

    Args:
        spec: folder, CSV list or built-in name (`imgcls.data.sources`).
        cfg: reading, caching and batching settings.
        aug: `imgcls.data.augment.AugmentConfig` (None: no augmentation).
        image_size: side of the square model input.
        in_chans: 1 or 3; images are converted deliberately (`convert_channels`).
        seed: the run's seed (order and augmentation; the validation split uses ``cfg.split_seed``).
        rank, world_size: this process's shard.
        device: where batches are delivered and augmented.
        task: ``multiclass``, ``binary`` or ``multilabel``; None infers it from the source.
        mean, std: normalisation in [0, 1] units; None: the training split's own (`_training_stats`: the same
            rule whether the split is cached or streamed).
        require_val: a source without validation images is a UserError saying why (False: ``val`` is None).

    Returns:
        `Data` with ``classes``, ``task``, ``num_classes``, ``mean``, ``std``, ``resize``, ``issues``,
        ``write_issues(path)``, ``train``, ``val``, ``test`` and ``fingerprint``.
    """
    cfg = cfg or DataConfig()
    aug = aug or AugmentConfig()
    _check_shape(image_size, in_chans)
    source = resolve_source(spec, cfg, task)
    if require_val:
        _require_validation(source, cfg)
    files = source.train.paths if source.kind != "builtin" else None
    resize = choose_resize(files, image_size, cfg.crop_pct, cfg.limits)
    issues: list[tuple[str, str]] = list(source.issues)
    train_samples, storage, stats = _training_samples(source, cfg, aug, image_size, resize, in_chans, issues)
    _warn_empty_classes(np.asarray(train_samples.targets), source.classes, source.spec)
    if aug.smote:
        train_samples = _smote(train_samples, seed)
        stats = None if source.train.images is not None else stats
    if mean is None or std is None:
        mean, std = stats if stats is not None else _array_stats(train_samples)
    norm_mean = _normaliser_mean(aug, train_samples, mean, std, in_chans)
    common = {"seed": seed, "device": device, "rank": rank, "world_size": world_size, "issues": issues}
    train = BatchLoader(
        train_samples,
        batch_size=cfg.batch_size,
        train=True,
        transform=build_batch_transform(_streamed_aug(aug, storage), True, image_size, norm_mean, std),
        mixer=_mixer(aug, source),
        balanced=aug.sampler == "balanced",
        workers=cfg.num_workers if train_samples.streaming else 0,
        alternate_flip=aug.alternate_flip,
        **common,
    )
    held = {}
    for name, split in (("validation", source.val), ("test", source.test)):
        held[name] = None
        if split is not None and len(split):
            samples = _eval_samples(split, cfg, image_size, resize, in_chans, issues, source.spec, name)
            transform = build_batch_transform(aug, False, image_size, norm_mean, std)
            held[name] = _eval_loader(samples, cfg, transform, common)
    data = Data(
        spec=str(spec),
        classes=list(source.classes),
        task=source.task,
        mean=[float(v) for v in mean],
        std=[float(v) for v in std],
        resize=resize,
        image_size=image_size,
        in_chans=in_chans,
        issues=issues,
        train=train,
        val=held["validation"],
        storage=storage,
        test=held["test"],
        fingerprint=source_fingerprint(source),
    )
    for loader in data.loaders():
        loader.on_issues = data.rewrite_issues
    return data


def _smote(samples: ArraySamples | FileSamples, seed: int) -> ArraySamples:
    if samples.streaming:
        raise UserError("augment.smote: needs the decoded training set in memory; use a smaller dataset or cache")
    x = np.asarray(samples.images)
    x, y = smote_oversample(torch.from_numpy(x.copy()), torch.from_numpy(samples.targets), seed)
    return ArraySamples(np.asarray(x), np.asarray(y), samples.in_chans)


def _normaliser_mean(aug: Any, samples: ArraySamples | FileSamples, mean: list, std: list, in_chans: int) -> Any:
    """The per-channel `mean`, or the training set's mean image under ``augment.normalize: mean_image``."""
    if len(mean) != in_chans or len(std) != in_chans:
        raise UserError(f"mean/std: need {in_chans} values each, got {len(mean)} and {len(std)}")
    if aug.normalize != "mean_image":
        return mean
    if samples.streaming:
        raise UserError("augment.normalize: 'mean_image' needs the decoded training set (not streaming)")
    return mean_image(convert_channels(_as_tensor(samples.images), in_chans))


def _streamed_aug(aug: Any, storage: str) -> Any:
    """Streamed RandomResizedCrop happens per file in the workers (`FileSamples`), not in the batch transform."""
    if storage == "stream" and aug.random_resized_crop:
        return dataclasses.replace(aug, random_resized_crop=False)
    return aug


def _mixer(aug: Any, source: Source) -> Callable | None:
    if (aug.mixup > 0 or aug.cutmix > 0 or aug.sample_pairing) and source.task != "multilabel":
        return build_mixer(aug, len(source.classes))
    return None


def _eval_loader(samples: ArraySamples | FileSamples, cfg: DataConfig, transform: Callable, common: dict):
    workers = cfg.num_workers if samples.streaming else 0
    return BatchLoader(samples, batch_size=cfg.eval_batch, train=False, transform=transform, workers=workers, **common)


def _streams(cfg: DataConfig, estimate: int) -> bool:
    return cfg.cache == "never" or (cfg.cache == "auto" and estimate > cfg.max_cache_bytes)


def _training_samples(
    source: Source, cfg: DataConfig, aug: Any, image_size: int, resize: int, in_chans: int, issues: list
) -> tuple[ArraySamples | FileSamples, str, tuple[list[float], list[float]] | None]:
    """The training split as arrays (built-in), cached files or streamed files, and its normalisation statistics
    (None: computed from the arrays by the caller)."""
    split = source.train
    if split.images is not None:
        return ArraySamples(split.images, split.targets, in_chans), "memory", None
    assert split.paths is not None
    view = FileView("storage", image_size, resize, in_chans, **cfg.limits)
    if _streams(cfg, len(split) * in_chans * resize * resize):
        good, found = _prescan(split.paths, cfg.limits, resize)
        issues += found
        _report("training", source.spec, len(split), found, len(good))
        kept = split.subset(good)
        stream_view = view
        if aug.random_resized_crop:
            stream_view = dataclasses.replace(
                view, kind="rrc", rrc_scale=tuple(aug.rrc_scale), rrc_ratio=tuple(aug.rrc_ratio)
            )
        stats = _training_stats(split.paths, view, cfg, None)
        return FileSamples(kept.paths, kept.targets, stream_view), "stream", stats
    cached = build_or_load(split.paths, view, cache_home(cfg), workers=cfg.num_workers)
    issues += cached.issues
    _report("training", source.spec, len(split), cached.issues, len(cached.kept))
    samples = ArraySamples(cached.images, split.targets[cached.kept], in_chans)
    return samples, "cache", _training_stats(split.paths, view, cfg, cached)


def _training_stats(paths: list[str], view: FileView, cfg: DataConfig, cached: Any) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of the training split, one rule for cached and streamed data (issue: the same command
    must not normalise differently with another cache size): exact 256-bin histograms of the storage view of the
    files `stats_indices` picks (all when there are at most ``cfg.stats_images``), files that fail skipped. From
    the cache's rows when cached; decoded (once, result kept in the cache folder) when streamed."""
    picked = stats_indices(len(paths), cfg.stats_images, cfg.split_seed)
    if cached is not None:
        pos = np.searchsorted(cached.kept, picked)
        inside = pos < len(cached.kept)
        rows = pos[inside][cached.kept[pos[inside]] == picked[inside]]
        hist = sum(
            (_histograms(np.asarray(cached.images[rows[i : i + 256]]), 256) for i in range(0, len(rows), 256)),
            np.zeros((view.in_chans, 256), dtype=np.int64),
        )
        return stats_from_histograms(hist)
    files = [paths[i] for i in picked]
    record = cache_home(cfg) / f"stats-{fingerprint(files, {'stats_of': view.settings()})}.json"
    try:
        known = json.loads(record.read_text())
        return list(known["mean"]), list(known["std"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    jobs = [(p, view) for p in files]
    if cfg.num_workers > 1 and len(jobs) >= 64:
        with ProcessPoolExecutor(cfg.num_workers, initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
            results = list(pool.map(_decode_safe, jobs, chunksize=16))
    else:
        results = [_decode_safe(job) for job in jobs]
    arrays = [r for r in results if not isinstance(r, str)]
    hist = _histograms(arrays, 256) if arrays else np.zeros((view.in_chans, 256), dtype=np.int64)
    mean, std = stats_from_histograms(hist)
    try:
        atomic_write_text(record, json.dumps({"mean": mean, "std": std, "images": len(arrays)}))
    except UserError as exc:
        log.info("normalisation statistics not kept for the next run (%s)", exc)
    return mean, std


def _eval_samples(
    split: Split, cfg: DataConfig, image_size: int, resize: int, in_chans: int, issues: list, spec: str, name: str
) -> ArraySamples | FileSamples:
    """A held-out split as evaluation sees it (the `load_for_eval` view), cached or streamed."""
    if split.images is not None:
        return ArraySamples(split.images, split.targets, in_chans)
    assert split.paths is not None
    view = FileView("eval", image_size, resize, in_chans, **cfg.limits)
    if _streams(cfg, len(split) * in_chans * image_size * image_size):
        good, found = _prescan(split.paths, cfg.limits, resize)
        issues += found
        _report(name, spec, len(split), found, len(good))
        kept = split.subset(good)
        return FileSamples(kept.paths, kept.targets, view)
    cached = build_or_load(split.paths, view, cache_home(cfg), workers=cfg.num_workers)
    issues += cached.issues
    _report(name, spec, len(split), cached.issues, len(cached.kept))
    return ArraySamples(cached.images, split.targets[cached.kept], in_chans)


def build_eval_data(
    spec: str | Path,
    cfg: DataConfig | None = None,
    aug: Any = None,
    *,
    image_size: int,
    in_chans: int,
    mean: list[float],
    std: list[float],
    resize: int | None = None,
    split: str = "auto",
    task: str | None = None,
    classes: list[str] | None = None,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    device: str | torch.device = "cpu",
) -> EvalData:
    """The loader of the one split an evaluation reads; nothing else is listed beyond need or decoded.

    Args:
        spec: folder, CSV list or built-in name.
        cfg: the run's data settings (split fraction and seed for ``split="val"``, cache, batch size).
        aug: the run's augmentation settings (only its evaluation side is used).
        image_size: side of the square batches (the crop; for ten-crop, the resize).
        in_chans: 1 or 3.
        mean, std: the run's normalisation.
        resize: shorter side before the center crop (the run's); None chooses it as `build_data` does.
        split: ``"auto"``, ``"val"`` or ``"test"`` (`imgcls.data.sources.eval_source`): ``"auto"`` evaluates a
            folder of class subfolders or a CSV list entirely, the held-out folder of a ``train/`` layout, a
            built-in's test set; ``"val"`` is exactly training's validation split.
        task: the run's task.
        classes: the run's class map (the data's classes must be among them; their indices are used).
        seed, rank, world_size, device: as in `build_data`.

    Returns:
        `EvalData` (``loader``, ``classes``, ``task``, ``split``, ``issues``...).
    """
    cfg = cfg or DataConfig()
    aug = aug or AugmentConfig()
    _check_shape(image_size, in_chans)
    source = eval_source(spec, cfg, split=split, task=task, classes=classes)
    paths = source.samples.paths
    resize = resize or choose_resize(paths, image_size, cfg.crop_pct, cfg.limits)
    if resize < image_size:
        raise UserError(f"resize ({resize}) must be at least the crop size ({image_size})")
    issues: list[tuple[str, str]] = list(source.issues)
    name = {"val": "validation", "test": "test"}.get(source.split, "evaluation")
    samples = _eval_samples(source.samples, cfg, image_size, resize, in_chans, issues, source.spec, name)
    transform = build_batch_transform(aug, False, image_size, mean, std)
    common = {"seed": seed, "device": device, "rank": rank, "world_size": world_size, "issues": issues}
    return EvalData(
        spec=str(spec),
        split=source.split,
        classes=list(source.classes),
        task=source.task,
        mean=[float(v) for v in mean],
        std=[float(v) for v in std],
        resize=resize,
        image_size=image_size,
        in_chans=in_chans,
        issues=issues,
        loader=_eval_loader(samples, cfg, transform, common),
        storage="memory" if paths is None else ("stream" if samples.streaming else "cache"),
    )


def _free_bytes(device: torch.device) -> int:
    """Free memory of a CUDA ``device`` in bytes."""
    return int(torch.cuda.mem_get_info(device)[0])


def _as_tensor(images: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only memory map: we never write through it
        return torch.from_numpy(np.asarray(images))


def _array_stats(samples: ArraySamples) -> tuple[list[float], list[float]]:
    images = samples.images
    if images.shape[1] == samples.in_chans:
        return channel_stats(images)
    if images.shape[1] == 1:  # grey replicated to RGB: the same statistics in every channel
        m, s = channel_stats(images)
        return m * 3, s * 3
    luma = np.concatenate(
        [convert_channels(_as_tensor(images[i : i + 4096]), 1).numpy() for i in range(0, len(images), 4096)]
    )
    return channel_stats(luma)


__all__ = [
    "MAX_CONSECUTIVE_FAILURES",
    "ArraySamples",
    "BatchLoader",
    "Data",
    "EvalData",
    "FileSamples",
    "FileView",
    "build_data",
    "build_eval_data",
    "choose_resize",
    "derive_seed",
    "generator",
]
