"""`AugmentConfig`, the ``augment`` section of a recipe: what the training transform does, checked when made.

Each field's valid choices and range are declared once on the field (`imgcls.config_reader.setting`): the same
metadata drives validation and any command-line choices. Rules between fields (a range given low first, one
policy at a time, SamplePairing without mixup/CutMix...) are checked after, in `_check_relations`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from imgcls.config_reader import check_settings, read_section, setting
from imgcls.data.augment.policies import POLICIES
from imgcls.errors import UserError

PADDING_MODES = ("constant", "reflect", "edge")
SAMPLERS = ("random", "balanced")
NORMALIZE = ("mean_std", "mean_image")
MAX_PIXELS = 4096  # largest crop padding, hole side or epoch number the checks accept


@dataclass(frozen=True)
class AugmentConfig:
    """What to do to a training batch. The defaults do nothing: no augmentation, per-channel mean/std.

    Geometry:
        crop_padding: pixels of padding before a random crop back to the input size (CIFAR: 4).
        padding_mode: "constant" (zeros), "reflect" or "edge" for the padded border.
        translate: maximum shift as a fraction of the input size, added to the padding range.
        hflip, vflip: probability of a horizontal / vertical flip per image.
        alternate_flip: flip each training image in every other epoch, starting from a random per-image choice
            (airbench, Jordan 2024, arXiv:2404.00498, Section 3.6): every image is seen both ways in any two
            consecutive epochs. Done by the loader, which knows the sample index; exclusive with ``hflip``.
        rotation: maximum rotation in degrees (uniform in ``[-rotation, rotation]``).
        random_resized_crop: Inception-style crop of a random area and aspect ratio, resized to the input size.
        rrc_scale, rrc_ratio: its area fraction and aspect-ratio ranges (Szegedy et al. 2015: 8–100 %, 3/4–4/3).
        scale_aspect: ``(s, a)``: isotropic scale uniform in ``[1 - s, 1 + s]`` and aspect ratio log-uniform in
            ``[1 / (1 + a), 1 + a]`` about the image centre (a milder distortion than RandomResizedCrop).

    Photometric:
        color_jitter: ``(brightness, contrast, saturation, hue)``; factors uniform in ``[1 - v, 1 + v]``, hue shift
            uniform in ``[-hue, hue]`` of a full turn (``hue <= 0.5``).
        pca_lighting: standard deviation of AlexNet's α (the paper: 0.1).
        channel_permute: probability of shuffling the colour channels of an image.
        gaussian_noise: standard deviation of additive noise, in [0, 1] pixel units.
        gaussian_blur: probability of blurring an image; sigma uniform in ``gaussian_blur_sigma`` pixels
            (SimCLR: p = 0.5, sigma 0.1–2.0, kernel 10 % of the image side).

    Erasing (on the normalised image; the fill 0 is the dataset mean):
        cutout: side in pixels of each Cutout square (CIFAR-10: 16), ``cutout_holes`` squares per image.
        coarse_dropout: maximum number of holes, each a square of random side up to
            ``coarse_dropout_size`` (fraction of the image side).
        random_erasing: probability of erasing one random rectangle with random values (Zhong et al.: 0.5).

    Policies: ``autoaugment`` ("imagenet" | "cifar10" | "svhn"), ``randaugment`` ("N,M", e.g. "2,9"),
    ``trivialaugment``.

    Batch mixing (`imgcls.data.augment.mixing`): ``mixup`` and ``cutmix`` are Beta(α, α) parameters (0 = off),
    applied to a batch with probability ``mix_prob`` (which also gates SamplePairing); ``sample_pairing`` with its
    schedule in epochs: off before ``sample_pairing_start``, then ``sample_pairing_on`` epochs on and
    ``sample_pairing_off`` off, off for good from ``sample_pairing_stop`` (fine-tuning; ``None``: never).

    Imbalance and normalisation: ``smote`` (oversample minority classes before training), ``sampler``
    ("random" | "balanced"), ``normalize`` ("mean_std" | "mean_image").
    """

    crop_padding: int = setting(0, ge=0, le=MAX_PIXELS)
    padding_mode: str = setting("constant", choices=PADDING_MODES)
    translate: float = setting(0.0, ge=0.0, le=1.0)
    hflip: float = setting(0.0, ge=0.0, le=1.0)
    alternate_flip: bool = False
    vflip: float = setting(0.0, ge=0.0, le=1.0)
    rotation: float = setting(0.0, ge=0.0, le=180.0)
    random_resized_crop: bool = False
    rrc_scale: tuple[float, float] = setting((0.08, 1.0), ge=1e-4, le=1.0)
    rrc_ratio: tuple[float, float] = setting((3 / 4, 4 / 3), ge=1e-2, le=100.0)
    scale_aspect: tuple[float, float] = setting((0.0, 0.0), ge=0.0, le=0.99)
    color_jitter: tuple[float, float, float, float] = setting((0.0, 0.0, 0.0, 0.0), ge=0.0)
    pca_lighting: float = setting(0.0, ge=0.0, le=10.0)
    channel_permute: float = setting(0.0, ge=0.0, le=1.0)
    gaussian_noise: float = setting(0.0, ge=0.0, le=1.0)
    gaussian_blur: float = setting(0.0, ge=0.0, le=1.0)
    gaussian_blur_sigma: tuple[float, float] = setting((0.1, 2.0), ge=1e-3, le=100.0)
    cutout: int = setting(0, ge=0, le=MAX_PIXELS)
    cutout_holes: int = setting(1, ge=1, le=MAX_PIXELS)
    coarse_dropout: int = setting(0, ge=0, le=MAX_PIXELS)
    coarse_dropout_size: float = setting(0.125, ge=0.0, le=1.0)
    random_erasing: float = setting(0.0, ge=0.0, le=1.0)
    autoaugment: str | None = setting(None, choices=(None, *POLICIES))
    randaugment: str | None = None
    trivialaugment: bool = False
    mixup: float = setting(0.0, ge=0.0, le=100.0)
    cutmix: float = setting(0.0, ge=0.0, le=100.0)
    mix_prob: float = setting(1.0, ge=0.0, le=1.0)
    sample_pairing: bool = False
    sample_pairing_start: int = setting(100, ge=0, le=MAX_PIXELS)
    sample_pairing_on: int = setting(8, ge=1, le=MAX_PIXELS)
    sample_pairing_off: int = setting(2, ge=1, le=MAX_PIXELS)
    sample_pairing_stop: int | None = None
    smote: bool = False
    sampler: str = setting("random", choices=SAMPLERS)
    normalize: str = setting("mean_std", choices=NORMALIZE)

    def __post_init__(self) -> None:
        check_settings(self, "augment")
        _check_relations(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> AugmentConfig:
        """Build a config from a recipe's ``augment`` mapping; lists become tuples, ``-`` in keys reads as ``_``.

        Raises:
            UserError: an unknown key (named, with the known ones) or a value out of range.
        """
        return read_section(cls, d, "augment")

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain JSON-able values (tuples as lists), the inverse of `from_dict`."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


def parse_randaugment(text: str) -> tuple[int, float]:
    """RandAugment's ``"N,M"`` setting as ``(N, M)``: N ops per image (1–10), magnitude M on the paper's 0–10."""
    parts = str(text).replace(" ", "").split(",")
    try:
        n, m = int(parts[0]), float(parts[1])
        if len(parts) != 2:
            raise ValueError
    except (ValueError, IndexError):
        raise UserError(f"augment.randaugment: expected 'N,M' such as '2,9', got {text!r}") from None
    if not 1 <= n <= 10 or not 0.0 <= m <= 10.0:
        raise UserError(f"augment.randaugment: N must be 1..10 and M 0..10 (the paper's scale), got {text!r}")
    return n, m


def _check_relations(a: AugmentConfig) -> None:
    """The rules between settings (single settings are checked by their declarations)."""

    def fail(name: str, reason: str) -> None:
        raise UserError(f"augment.{name}: {reason}, got {getattr(a, name)!r}")

    for name in ("rrc_scale", "rrc_ratio", "gaussian_blur_sigma"):
        low, high = getattr(a, name)
        if low > high:
            fail(name, "expected the low end first")
    if a.color_jitter[3] > 0.5:
        fail("color_jitter", "hue must be at most 0.5 (half a turn)")
    if a.alternate_flip and a.hflip > 0:
        fail("alternate_flip", "alternating flips replace random ones: set hflip to 0")
    if a.sample_pairing_stop is not None and a.sample_pairing_stop < a.sample_pairing_start:
        fail("sample_pairing_stop", "expected an epoch >= sample_pairing_start, or null")
    if a.randaugment:
        parse_randaugment(a.randaugment)
    if sum(bool(v) for v in (a.autoaugment, a.randaugment, a.trivialaugment)) > 1:
        fail("autoaugment", "choose one of autoaugment, randaugment and trivialaugment")
    if a.sample_pairing and (a.mixup or a.cutmix):
        fail("sample_pairing", "SamplePairing replaces mixup/CutMix; turn those off to use it")
