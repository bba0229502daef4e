"""`DataConfig`: where the data comes from and how it is read, cached and batched (not how it is augmented;
that is `imgcls.data.augment.AugmentConfig`).

Storage-resolution policy (what the disk cache holds):

* Built-in sets (digits, MNIST, CIFAR) are kept at their native resolution (8, 28, 32 px); the batch transform
  resizes to ``image_size`` on the fly when they differ.
* Photo folders and CSV lists: the training split is stored with its shorter side resized to ``resize`` and
  center-cropped to a ``resize``×``resize`` square, so random crops still see more than the evaluation view.
  The validation split is stored exactly as evaluation sees it (shorter side to ``resize``, center crop
  ``image_size``), produced by the same function as `load_for_eval`, so a run predicts as it evaluated.
* ``resize = round(image_size / crop_pct)``. With ``crop_pct=None`` the choice is made from the images: 1.0 (no
  crop) when the typical image is no larger than ``image_size / 0.875`` (CIFAR-sized pictures), else 0.875, the
  ImageNet convention (256 → 224; Krizhevsky et al. 2012, Sec. 2; Szegedy et al. 2015).
* When the cache would exceed ``max_cache_bytes`` (or ``cache="never"``), images are streamed from their files
  through DataLoader workers instead, decoded with Pillow's JPEG draft mode when downscaling.
* Normalisation: the training split's own per-channel mean/std, computed the same way whether it is cached or
  streamed (``stats_images``), so the cache size never changes the model a command trains.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgcls.config_reader import check_settings, read_section, setting
from imgcls.errors import UserError

CACHE_POLICIES = ("auto", "always", "never")


@dataclass
class DataConfig:
    """How a dataset is split, read, cached and batched.

    Attributes:
        batch_size: training batch size per rank.
        eval_batch_size: validation batch size per rank (``None``: twice ``batch_size``).
        val_fraction: share of each class held out for validation when the source has no validation split.
        split_seed: seed of that split; fixed (not the training seed) so runs with different seeds compare on the
            same validation images.
        crop_pct: ``image_size / resize`` of the evaluation center crop; ``None`` chooses it (module docstring).
        cache: ``"auto"`` (decode once to a uint8 disk cache when it fits ``max_cache_bytes``, else stream),
            ``"always"`` or ``"never"`` (always stream from the files).
        cache_dir: where decoded caches live; ``None`` uses ``$IMGCLS_DATA/cache`` (``~/.cache/imgcls/data``).
        max_cache_bytes: largest training cache built before falling back to streaming.
        max_pixels: largest image accepted, width × height read from the header before decoding, also after
            the resize of its shorter side.
        max_file_bytes: largest file accepted.
        max_aspect: largest ratio of an image's longer to its shorter side (thin strips are refused).
        stats_images: training images the normalisation mean/std are computed on (all of them up to this many,
            else a sample seeded by ``split_seed``; the same rule for cached and streamed data).
        label_sep: character separating labels in the ``labels`` column of a CSV list.
        workers: decoding processes for cache building and streaming (``None``: one per CPU core, at most 8;
            0: decode in the training process).

    Valid ranges and choices are declared once, with each field (`imgcls.config_reader.setting`).
        mirror: base URL replacing the official download locations of the built-in sets.
    """

    batch_size: int = setting(128, ge=1)
    eval_batch_size: int | None = setting(None, ge=1)
    val_fraction: float = setting(0.1, ge=0, lt=1)
    split_seed: int = setting(0, ge=0)
    crop_pct: float | None = setting(None, gt=0, le=1)
    cache: str = setting("auto", choices=CACHE_POLICIES)
    cache_dir: str | None = None
    max_cache_bytes: int = setting(8 << 30, ge=0)
    max_pixels: int = setting(100_000_000, ge=1)
    max_file_bytes: int = setting(200 << 20, ge=1)
    max_aspect: float = setting(50.0, ge=1)
    stats_images: int = setting(1000, ge=1)
    label_sep: str = " "
    workers: int | None = setting(None, ge=0)
    mirror: str | None = None

    def __post_init__(self) -> None:
        check_settings(self, "data")
        if len(self.label_sep) != 1:
            raise UserError(f"data.label_sep: must be one character, got {self.label_sep!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> DataConfig:
        """Build from a recipe's ``data`` section (`imgcls.config_reader`: unknown keys and ill-typed values are
        UserErrors naming the setting)."""
        return read_section(cls, d, "data")

    @property
    def eval_batch(self) -> int:
        return self.eval_batch_size or 2 * self.batch_size

    @property
    def limits(self) -> dict:
        """The reader's size limits as keyword arguments (`imgcls.data.reader.open_image`)."""
        return {"max_pixels": self.max_pixels, "max_file_bytes": self.max_file_bytes, "max_aspect": self.max_aspect}

    @property
    def num_workers(self) -> int:
        return self.workers if self.workers is not None else max(1, min(8, os.cpu_count() or 1))


def data_home() -> Path:
    """The user's data cache: ``$IMGCLS_DATA`` or ``~/.cache/imgcls/data``."""
    env = os.environ.get("IMGCLS_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "imgcls" / "data"


def cache_home(cfg: DataConfig) -> Path:
    """Folder of decoded-image caches for `cfg`."""
    return Path(cfg.cache_dir).expanduser() if cfg.cache_dir else data_home() / "cache"
