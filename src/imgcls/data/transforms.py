"""Batched, seeded augmentation: every classic op of the CNN papers applied to a whole uint8 batch at once.

`build_batch_transform` turns an `AugmentConfig` into one function ``fn(x_uint8 (N, C, h, w), generator) ->
float32 (N, C, S, S)`` normalised. The batch comes at storage resolution (8×8 digits, a 32×32 CIFAR cache, a
256-square cache for 224 crops) and leaves at the model's input size. Every random draw comes from the
`torch.Generator` passed in (drawn on the CPU, then moved to the batch's device), never from the global RNG, so
the same seed gives the same batch on any device and a resumed run replays the same augmentation.

Training order (the order of the papers' pipelines: geometry on the raw image, photometric changes, normalisation,
then erasing in normalised space so the erased value is the dataset mean):

1. geometry — RandomResizedCrop (Szegedy et al. 2015, "Going deeper with convolutions", §6), or a random crop of
   ``S`` from a larger stored image (Krizhevsky et al. 2012, §4.1), with zero/reflect/edge padding and translation
   (the CIFAR "pad 4 and crop", He et al. 2016 §4.2), horizontal and vertical flips;
2. AutoAugment / RandAugment / TrivialAugment (see `imgcls.data.autoaugment`);
3. rotation and scale/aspect distortion (one affine warp);
4. colour jitter (brightness, contrast, saturation, hue in a random order per batch; Howard 2013, "Some
   improvements on deep CNN based image classification", §2.1), AlexNet's PCA lighting (Krizhevsky et al. 2012,
   §4.1), channel permutation, Gaussian blur (Chen et al. 2020, SimCLR, Appendix A), Gaussian noise;
5. normalisation by per-channel mean/std, or AlexNet's mean-image centring (Krizhevsky et al. 2012, §2);
6. Cutout (DeVries & Taylor 2017), Coarse Dropout (several holes of random size) and Random Erasing (Zhong et al.
   2017) on the normalised batch.

Why some ops are our own rather than kornia's:

- Crop with padding, translation and flips are one index computation and one ``gather`` on the uint8 batch
  (flips are the index order reversed); with zero padding and horizontal flips only (the CIFAR recipe), one pick
  of whole windows from a padded buffer holding the batch and mirrors of the images to flip (`_window_select`).
  Per-sample crops or kornia's float warps do 4–30× more memory traffic; this is the CIFAR hot path
  (`benchmarks/bench_data.py` measures it against a per-sample PIL pipeline).
- Cutout picks each image's 0/1 multiplier as a window of one precomputed plane (`_CutoutPlane`); Coarse Dropout
  and Random Erasing build their boxes from row/column ranges (one batched matrix product for the whole batch,
  `box_keep`); all erase with one in-place multiply, where kornia's ``RandomErasing`` loops over boxes and draws
  from the global RNG.
- RandomResizedCrop uses kornia's ``crop_and_resize`` (one bilinear resampling of the whole batch), with boxes we
  sample ourselves; a horizontal flip is folded into the box by swapping its left and right corners.
- Colour jitter: brightness, contrast and saturation are torchvision's blends (with black, the mean grey, the
  per-pixel grey; PIL's ImageEnhance), written as in-place per-image scale-and-add steps over cache-sized slices of
  the batch; kornia's versions allocate a new full batch per step and ran 7x slower at 224 px. Hue is a rotation
  about the grey axis of the RGB cube, one 3 × 3 matrix per image (`hue_matrices`, an approximation of the HSV
  shift that kornia computes through an RGB → HSV → RGB round trip, 15x slower).
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from kornia.filters import gaussian_blur2d
from kornia.geometry.transform import crop_and_resize, get_rotation_matrix2d, warp_affine

from imgcls.config_reader import check_settings, read_section
from imgcls.errors import UserError

BatchTransform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

# Krizhevsky et al. 2012 §4.1: eigen-decomposition of the RGB covariance of ImageNet pixels in [0, 1] units
# (the figures published with fb.resnet.torch, used by every later reimplementation).
IMAGENET_PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_PCA_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)

_PADDING_MODES = ("constant", "reflect", "edge")
_AUTOAUGMENT_POLICIES = ("imagenet", "cifar10", "svhn")
_SAMPLERS = ("random", "balanced")
_NORMALIZE = ("mean_std", "mean_image")


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

    Batch mixing (`imgcls.data.mixing`): ``mixup`` and ``cutmix`` are Beta(α, α) parameters (0 = off), applied to a
    batch with probability ``mix_prob`` (which also gates SamplePairing); ``sample_pairing`` with its schedule in
    epochs: off before ``sample_pairing_start``, then ``sample_pairing_on`` epochs on and ``sample_pairing_off``
    off, off for good from ``sample_pairing_stop`` (fine-tuning; ``None``: never).

    Imbalance and normalisation: ``smote`` (oversample minority classes before training), ``sampler``
    ("random" | "balanced"), ``normalize`` ("mean_std" | "mean_image").
    """

    crop_padding: int = 0
    padding_mode: str = "constant"
    translate: float = 0.0
    hflip: float = 0.0
    alternate_flip: bool = False
    vflip: float = 0.0
    rotation: float = 0.0
    random_resized_crop: bool = False
    rrc_scale: tuple[float, float] = (0.08, 1.0)
    rrc_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    scale_aspect: tuple[float, float] = (0.0, 0.0)
    color_jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    pca_lighting: float = 0.0
    channel_permute: float = 0.0
    gaussian_noise: float = 0.0
    gaussian_blur: float = 0.0
    gaussian_blur_sigma: tuple[float, float] = (0.1, 2.0)
    cutout: int = 0
    cutout_holes: int = 1
    coarse_dropout: int = 0
    coarse_dropout_size: float = 0.125
    random_erasing: float = 0.0
    autoaugment: str | None = None
    randaugment: str | None = None
    trivialaugment: bool = False
    mixup: float = 0.0
    cutmix: float = 0.0
    mix_prob: float = 1.0
    sample_pairing: bool = False
    sample_pairing_start: int = 100
    sample_pairing_on: int = 8
    sample_pairing_off: int = 2
    sample_pairing_stop: int | None = None
    smote: bool = False
    sampler: str = "random"
    normalize: str = "mean_std"

    def __post_init__(self) -> None:
        check_settings(self, "augment")
        _validate(self)

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

    @property
    def randaugment_params(self) -> tuple[int, float] | None:
        """``(N, M)`` parsed from ``randaugment`` ("2,9"), or None when off."""
        if not self.randaugment:
            return None
        return _parse_randaugment(self.randaugment)


def _parse_randaugment(text: str) -> tuple[int, float]:
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


def _validate(a: AugmentConfig) -> None:
    def fail(name: str, reason: str) -> None:
        raise UserError(f"augment.{name}: {reason}, got {getattr(a, name)!r}")

    def number(name: str, lo: float, hi: float = math.inf) -> None:
        v = getattr(a, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
            fail(name, f"expected a number in [{lo}, {hi}]")

    def pair(name: str, lo: float, hi: float, ordered: bool = True) -> None:
        v = getattr(a, name)
        if not isinstance(v, tuple) or len(v) != 2 or not all(isinstance(t, (int, float)) for t in v):
            fail(name, "expected two numbers")
        if not (lo <= v[0] <= hi and lo <= v[1] <= hi) or (ordered and v[0] > v[1]):
            fail(name, f"expected two numbers in [{lo}, {hi}], low first")

    for name in ("crop_padding", "cutout", "coarse_dropout", "sample_pairing_start"):
        number(name, 0, 4096)
        if not isinstance(getattr(a, name), int):
            fail(name, "expected a whole number")
    for name in ("cutout_holes", "sample_pairing_on", "sample_pairing_off"):
        number(name, 1, 4096)
        if not isinstance(getattr(a, name), int):
            fail(name, "expected a whole number")
    if a.sample_pairing_stop is not None and (
        not isinstance(a.sample_pairing_stop, int) or a.sample_pairing_stop < a.sample_pairing_start
    ):
        fail("sample_pairing_stop", "expected an epoch >= sample_pairing_start, or null")
    for name in ("hflip", "vflip", "channel_permute", "gaussian_blur", "random_erasing", "mix_prob"):
        number(name, 0.0, 1.0)
    number("translate", 0.0, 1.0)
    if not isinstance(a.alternate_flip, bool) or (a.alternate_flip and a.hflip > 0):
        fail("alternate_flip", "expected true or false, and hflip 0 when true")
    number("rotation", 0.0, 180.0)
    number("pca_lighting", 0.0, 10.0)
    number("gaussian_noise", 0.0, 1.0)
    number("coarse_dropout_size", 0.0, 1.0)
    number("mixup", 0.0, 100.0)
    number("cutmix", 0.0, 100.0)
    pair("rrc_scale", 1e-4, 1.0)
    pair("rrc_ratio", 1e-2, 100.0)
    pair("scale_aspect", 0.0, 0.99, ordered=False)
    pair("gaussian_blur_sigma", 1e-3, 100.0)
    cj = a.color_jitter
    if not isinstance(cj, tuple) or len(cj) != 4 or not all(isinstance(t, (int, float)) and t >= 0 for t in cj):
        fail("color_jitter", "expected four non-negative numbers (brightness, contrast, saturation, hue)")
    if cj[3] > 0.5:
        fail("color_jitter", "hue must be at most 0.5 (half a turn)")
    if a.padding_mode not in _PADDING_MODES:
        fail("padding_mode", f"expected one of {', '.join(_PADDING_MODES)}")
    if a.autoaugment is not None and a.autoaugment not in _AUTOAUGMENT_POLICIES:
        fail("autoaugment", f"expected one of {', '.join(_AUTOAUGMENT_POLICIES)} or null")
    if a.randaugment:
        _parse_randaugment(a.randaugment)
    if sum(bool(v) for v in (a.autoaugment, a.randaugment, a.trivialaugment)) > 1:
        fail("autoaugment", "choose one of autoaugment, randaugment and trivialaugment")
    if a.sample_pairing and (a.mixup or a.cutmix):
        fail("sample_pairing", "SamplePairing replaces mixup/CutMix; turn those off to use it")
    if a.sampler not in _SAMPLERS:
        fail("sampler", f"expected one of {', '.join(_SAMPLERS)}")
    if a.normalize not in _NORMALIZE:
        fail("normalize", f"expected one of {', '.join(_NORMALIZE)}")
    for name in ("random_resized_crop", "trivialaugment", "sample_pairing", "smote"):
        if not isinstance(getattr(a, name), bool):
            fail(name, "expected true or false")


# --------------------------------------------------------------------------------------------------------------
# Random draws: always on the CPU from the caller's generator, so results do not depend on the device.


def _uniform(g: torch.Generator, shape: Sequence[int] | int, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    u = torch.rand(shape, generator=g, dtype=torch.float64)
    # The unit range needs no scaling (the same numbers; two small ops fewer on the per-batch path).
    return u if (lo, hi) == (0.0, 1.0) else u.mul_(hi - lo).add_(lo)


def _bernoulli(g: torch.Generator, n: int, p: float) -> torch.Tensor:
    return torch.rand(n, generator=g) < p


def sample_resized_crops(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
    attempts: int = 10,
) -> torch.Tensor:
    """RandomResizedCrop boxes for ``n`` images of one size (Szegedy et al. 2015, §6; torchvision's algorithm).

    Each image tries ``attempts`` (area fraction, log-aspect) pairs and keeps the first box that fits; when none
    does, it falls back to the largest centred box whose aspect ratio lies within ``ratio``.

    Returns:
        LongTensor ``(n, 4)`` of ``(top, left, h, w)``.
    """
    area = height * width
    target = _uniform(generator, (n, attempts), scale[0], scale[1]) * area
    aspect = torch.exp(_uniform(generator, (n, attempts), math.log(ratio[0]), math.log(ratio[1])))
    w = torch.sqrt(target * aspect).round()
    h = torch.sqrt(target / aspect).round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(dim=1)  # first fitting attempt (0 when none fits)
    h = h.gather(1, first[:, None]).squeeze(1)
    w = w.gather(1, first[:, None]).squeeze(1)
    found = fits.any(dim=1)
    # Fallback: the whole image, cut to the nearest allowed aspect ratio.
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fh, fw = height, round(height * max(ratio))
    else:
        fw, fh = width, height
    h = torch.where(found, h, torch.full_like(h, fh))
    w = torch.where(found, w, torch.full_like(w, fw))
    pos = _uniform(generator, (n, 2))
    top = torch.floor(pos[:, 0] * (height - h + 1))
    left = torch.floor(pos[:, 1] * (width - w + 1))
    top = torch.where(found, top, torch.full_like(top, (height - fh) // 2))
    left = torch.where(found, left, torch.full_like(left, (width - fw) // 2))
    return torch.stack([top, left, h, w], dim=1).long()


def sample_resized_crop(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], generator: torch.Generator
) -> tuple[int, int, int, int]:
    """One RandomResizedCrop box ``(top, left, h, w)`` for an image of ``height`` × ``width`` (streaming path).

    `sample_resized_crops` for one image: the same three draws from ``generator`` and the same float64 arithmetic,
    done on Python floats because a dozen tensor operations on ten numbers cost more than decoding a small JPEG.
    """
    attempts = 10
    area = height * width
    u_area = torch.rand((1, attempts), generator=generator, dtype=torch.float64)[0].tolist()
    u_aspect = torch.rand((1, attempts), generator=generator, dtype=torch.float64)[0].tolist()
    u_pos = torch.rand((1, 2), generator=generator, dtype=torch.float64)[0].tolist()
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for ua, ur in zip(u_area, u_aspect):
        target = (ua * (scale[1] - scale[0]) + scale[0]) * area
        aspect = math.exp(ur * (log_hi - log_lo) + log_lo)
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return math.floor(u_pos[0] * (height - h + 1)), math.floor(u_pos[1] * (width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


# --------------------------------------------------------------------------------------------------------------
# Geometry on uint8: resize (only when the storage is smaller than the input), crop + pad + translate + flip.


def _resize_short_side(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize so the shorter side is ``size`` (bilinear, antialiased when shrinking); keeps uint8 as uint8."""
    h, w = x.shape[-2:]
    if min(h, w) == size:
        return x
    if h <= w:
        out_hw = (size, max(size, round(w * size / h)))
    else:
        out_hw = (max(size, round(h * size / w)), size)
    y = F.interpolate(x.float(), size=out_hw, mode="bilinear", align_corners=False, antialias=min(h, w) > size)
    return y.round_().clamp_(0, 255).to(torch.uint8) if x.dtype == torch.uint8 else y


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Centre ``size`` × ``size`` crop of a ``(..., H, W)`` tensor (offset ``(H - size) // 2``)."""
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


def resize_center_crop(x: torch.Tensor, size: int, resize: int | None = None) -> torch.Tensor:
    """The evaluation geometry: shorter side to ``resize`` (or up to ``size`` when smaller), then centre crop."""
    short = min(x.shape[-2:])
    target = resize if resize is not None else max(short, size)
    if target < size:
        raise ValueError(f"resize {target} is smaller than the crop {size}")
    return center_crop(_resize_short_side(x, target), size)


def crop_flip(
    x: torch.Tensor,
    top: torch.Tensor,
    left: torch.Tensor,
    size: int,
    hflip: torch.Tensor | None = None,
    vflip: torch.Tensor | None = None,
    padding_mode: str = "constant",
) -> torch.Tensor:
    """Per-image ``size`` × ``size`` crops at ``(top, left)`` (may lie outside: padded), flipped where asked.

    One gather over the flattened pixels: ``out[n, c, i, j] = x[n, c, rows[n, i], cols[n, j]]``, with flips as
    reversed index order. "constant" pads the batch with zeros once (cheaper than masking the output);
    "reflect" and "edge" fold the indices back into the image instead.

    Args:
        x: ``(N, C, H, W)`` batch, any dtype.
        top, left: ``(N,)`` integer offsets of each crop in ``x``'s pixel grid.
        size: output side.
        hflip, vflip: optional ``(N,)`` bool masks.
        padding_mode: "constant" (zeros), "reflect" or "edge".
    """
    n, c, h, w = x.shape
    if size == h == w and not top.any() and not left.any():
        # Nothing to crop (a streamed batch already at the input size): copy and mirror the flipped images only,
        # several times cheaper than the gather below on 224-pixel images. One image at a time: batched advanced
        # indexing (out[idx] = out[idx].flip(dim)) copies element by element, 4x slower on 32 such images.
        out = x.clone()
        for flips, dim in ((hflip, -1), (vflip, -2)):
            if flips is not None and bool(flips.any()):
                for i in flips.nonzero().squeeze(1).tolist():
                    out[i] = out[i].flip(dim)
        return out
    top, left = top.to(x.device), left.to(x.device)
    if padding_mode == "constant":
        lo = int(min(int(top.min()), int(left.min()), 0))
        hi = int(max(int(top.max()) + size - h, int(left.max()) + size - w, 0))
        if vflip is None:
            flips = None if hflip is None else hflip.cpu().numpy()
            return _window_select(x, top.cpu().numpy(), left.cpu().numpy(), size, flips, -lo, hi)
        if lo < 0 or hi > 0:
            x = F.pad(x, (-lo, hi, -lo, hi))
            top, left = top - lo, left - lo
            h, w = x.shape[-2:]
    ar = torch.arange(size, device=x.device)
    rows = top[:, None] + ar  # (N, S)
    cols = left[:, None] + ar  # (N, S)
    if vflip is not None:
        rows = torch.where(vflip.to(x.device)[:, None], rows.flip(1), rows)
    if hflip is not None:
        cols = torch.where(hflip.to(x.device)[:, None], cols.flip(1), cols)
    if padding_mode != "constant":
        rows, cols = _fold(rows, h, padding_mode), _fold(cols, w, padding_mode)
    flat = (rows[:, :, None] * w + cols[:, None, :]).view(n, 1, size * size)  # (N, 1, S·S)
    return x.reshape(n, c, h * w).gather(2, flat.expand(n, c, size * size)).view(n, c, size, size)


class _Scratch(threading.local):
    """Reusable buffers for one transform's large temporaries, one set per thread.

    Freeing them after every batch lets the C allocator hand the memory back to the kernel and take it again next
    batch, one page fault per 4 KiB (about 2 µs each on a virtual machine: as much as the CIFAR transform itself).
    A buffer is zeroed when made; callers that write only part of it rely on the rest staying as they left it.
    """

    def __init__(self) -> None:
        self.buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        t = self.buffers.get(name)
        if t is None or t.shape != shape or t.dtype != dtype or t.device != device:
            t = self.buffers[name] = torch.zeros(shape, dtype=dtype, device=device)
        return t


def _window_select(
    x: torch.Tensor,
    top: np.ndarray,
    left: np.ndarray,
    size: int,
    hflip: np.ndarray | None,
    before: int,
    after: int,
    scratch: _Scratch | None = None,
) -> torch.Tensor:
    """Crops of ``x`` zero-padded by ``before`` / ``after`` pixels, at ``(top, left)`` in ``x``'s own pixel grid
    (``-before <= top, left`` and ``top + size <= H + after``, likewise for ``left``; not checked).

    The padded batch, followed by mirrored copies of the images to flip, is written into one zeroed buffer; a
    strided view whose first index is a flat start offset then holds every ``(C, size, size)`` window of it, so
    the crops are ``N`` whole-window picks (not ``N·C·S·S`` element indices as in a gather): about twice as fast
    on CPU as pad + gather. The ``(N,)`` offsets are computed in NumPy: on CPU a small torch op costs its call
    overhead, several times the arithmetic, and this runs once per batch on the CIFAR hot path. With ``scratch``
    the buffer is kept between calls: only interiors are ever written, so its zero borders stay zero.
    """
    n, c, h, w = x.shape
    hp, wp = h + before + after, w + before + after
    plane = c * hp * wp
    top, left = top + before, left + before  # in the padded grid
    # Flat start of each window: image i at i·plane, then row top and column left.
    start = np.arange(0, n * plane, plane) + top * wp + left
    flipped = np.flatnonzero(hflip) if hflip is not None else ()
    if scratch is None:
        buf = x.new_zeros((n + len(flipped), c, hp, wp))
    else:  # room for every image to be mirrored; the windows below never reach past the images in use
        buf = scratch.get("windows", (2 * n, c, hp, wp), x.dtype, x.device)
    strides = (plane, hp * wp, wp, 1)
    # The interiors as strided views (cheaper per call than slicing four dimensions).
    buf.as_strided(x.shape, strides, before * (wp + 1)).copy_(x)
    if len(flipped):
        # Image n + k is the mirror of the k-th image to flip, padded (so with its left and right padding swapped);
        # a window at column ``left`` of the original starts at column ``wp - size - left`` of the mirror.
        mirrored = x.index_select(0, _index(flipped, x.device)).flip(-1)
        buf.as_strided(mirrored.shape, strides, n * plane + before * wp + after).copy_(mirrored)
        mirrors = np.arange(n * plane, (n + len(flipped)) * plane, plane)
        start[flipped] = mirrors + top[flipped] * wp + (wp - size) - left[flipped]
    # Every flat offset at which a whole (C, size, size) window still fits in the buffer.
    count = buf.numel() - ((c - 1) * hp * wp + (size - 1) * wp + size) + 1
    windows = buf.view(-1).as_strided((count, c, size, size), (1, hp * wp, wp, 1))
    return windows.index_select(0, _index(start, x.device))


def _index(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """A NumPy index array as a tensor on ``device`` (no copy on the CPU)."""
    t = torch.from_numpy(a)
    return t if device.type == "cpu" else t.to(device)


def _fold(idx: torch.Tensor, n: int, mode: str) -> torch.Tensor:
    """Map out-of-range indices into ``[0, n)``: mirrored without repeating the edge ("reflect") or clamped."""
    if mode == "edge":
        return idx.clamp(0, n - 1)
    period = 2 * (n - 1) if n > 1 else 1
    idx = idx.remainder(period)
    return torch.where(idx >= n, period - idx, idx)


# --------------------------------------------------------------------------------------------------------------
# Photometric ops on float images in [0, 1].


def _per_sample(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


# ITU-R BT.601 luma: the grey of PIL's convert("L"), torchvision and kornia.
LUMA = (0.299, 0.587, 0.114)
# Colour ops work on slices of about this many bytes, so that their several passes stay in the CPU's cache.
_CHUNK_BYTES = 1 << 20


def _luma(x: torch.Tensor) -> torch.Tensor:
    """Grey ``(N, 1, H, W)`` of an RGB batch: one matrix product over the channels."""
    n, c, h, w = x.shape
    weights = torch.tensor(LUMA, device=x.device, dtype=x.dtype).view(1, 1, 3).expand(n, 1, 3)
    return torch.bmm(weights, x.reshape(n, c, h * w)).view(n, 1, h, w)


def _brightness_(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return x.mul_(f).clamp_(0, 1)


def _contrast_(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    # The mean grey level is the luma of the per-channel means (linear), one reduction pass.
    means = x.mean(dim=(2, 3))  # (N, C)
    if x.shape[1] == 3:
        grey = means @ torch.tensor(LUMA, device=x.device, dtype=x.dtype)
    else:
        grey = means.mean(dim=1)
    return x.mul_(f).add_(grey.view(-1, 1, 1, 1) * (1 - f)).clamp_(0, 1)


def _saturation_(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    if x.shape[1] != 3:
        return x
    grey = _luma(x).mul_(1 - f)  # before x changes in place
    return x.mul_(f).add_(grey).clamp_(0, 1)


def _mix_channels_(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``x <- clip(M x)`` per pixel, with one 3 × 3 matrix ``M`` per image (``m``: ``(N, 3, 3)``)."""
    n, c, h, w = x.shape
    return x.copy_(torch.bmm(m, x.reshape(n, c, h * w)).view(n, c, h, w)).clamp_(0, 1)


def hue_matrices(shift: torch.Tensor) -> torch.Tensor:
    """RGB → RGB matrices ``(N, 3, 3)`` that turn the hue by ``shift`` turns: rotations of the RGB cube about its
    grey diagonal (Rodrigues' formula about the unit axis ``(1, 1, 1) / √3``).

    HSV's hexcone (Smith 1978, "Color gamut transform pairs") is the RGB cube seen along that diagonal, and its hue
    is the angle around it; rotating about the diagonal (Haeberli 1993, "Matrix operations for image processing",
    hue rotation) therefore moves the primaries and secondaries by exactly the hue angle, fixes every grey and keeps
    ``(R + G + B) / 3``. It approximates torchvision's HSV hue shift: HSV keeps max(R, G, B) and the saturation
    instead, so colours come out somewhat darker or leave the cube and are clipped. On uniform random colours the
    change it makes points the same way as the HSV one (cosine similarity 0.8 at 0.02 turn, 0.98 at 0.25), twice
    as close as a rotation of YIQ's chroma plane. The gain: one 3 × 3 matrix per image instead of an
    RGB → HSV → RGB round trip per pixel. A positive shift turns red towards yellow, as torchvision's does.
    """
    theta = shift.to(torch.float64) * (2 * math.pi)
    cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    k = torch.full((3,), 1 / math.sqrt(3), dtype=torch.float64)
    cross = torch.tensor([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]], dtype=torch.float64)
    return (cos * torch.eye(3, dtype=torch.float64) + sin * cross + (1 - cos) * torch.outer(k, k)).float()


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with black: ``x · factor`` (PIL's ImageEnhance.Brightness)."""
    return _brightness_(x.clone(), _per_sample(factor, x))


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the image's mean grey level (PIL's ImageEnhance.Contrast); grey images included."""
    return _contrast_(x.clone(), _per_sample(factor, x))


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the grey image (PIL's ImageEnhance.Color); identity for one-channel images."""
    return _saturation_(x.clone(), _per_sample(factor, x))


def adjust_hue_turns(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Turn the hue by ``shift`` turns (in [-0.5, 0.5]) about the grey axis (`hue_matrices`); identity for grey."""
    if x.shape[1] != 3:
        return x
    return _mix_channels_(x.clone(), hue_matrices(shift).to(x.device, x.dtype))


def _color_jitter(x: torch.Tensor, jitter: tuple[float, float, float, float], g: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation and hue in a random order per batch, each clipped to [0, 1] as
    torchvision's ColorJitter does. ``x`` is a batch the caller owns: it is changed in place."""
    n = x.shape[0]
    b, c, s, h = jitter
    ops = []
    if b > 0:
        ops.append((_brightness_, _uniform(g, n, max(0.0, 1 - b), 1 + b)))
    if c > 0:
        ops.append((_contrast_, _uniform(g, n, max(0.0, 1 - c), 1 + c)))
    if s > 0:
        ops.append((_saturation_, _uniform(g, n, max(0.0, 1 - s), 1 + s)))
    if h > 0:
        ops.append((_mix_channels_, _uniform(g, n, -h, h)))
    # A random order per batch, as torchvision's ColorJitter draws one per image: the four do not commute.
    order = torch.randperm(len(ops), generator=g).tolist()
    if x.shape[1] != 3:  # saturation and hue leave grey images as they are
        order = [k for k in order if ops[k][0] in (_brightness_, _contrast_)]
    params = []
    for fn, v in ops:
        v = hue_matrices(v) if fn is _mix_channels_ else v.float().view(-1, 1, 1, 1)
        params.append(v.to(x.device, x.dtype))
    x = x.contiguous()
    # Image by image slices of about _CHUNK_BYTES: each op makes two or three passes, which then hit the cache
    # instead of memory (a 32 × 3 × 224 × 224 float batch is 19 MB); the ops are per image, so slicing is exact.
    step = max(1, _CHUNK_BYTES // max(1, x[0].numel() * x.element_size()))
    for i in range(0, n, step):
        part = x[i : i + step]
        for k in order:
            ops[k][0](part, params[k][i : i + step])
    return x


def pca_lighting(x: torch.Tensor, alpha_std: float, g: torch.Generator) -> torch.Tensor:
    """AlexNet's lighting noise (Krizhevsky et al. 2012, §4.1): add ``Σ_i α_i λ_i p_i`` to every RGB pixel.

    ``α_i ~ N(0, alpha_std)`` per image; ``λ_i, p_i`` are ImageNet's RGB eigenvalues and eigenvectors.
    Identity for images that are not RGB (the eigenvectors are colour axes).
    """
    if x.shape[1] != 3:
        return x
    alpha = torch.randn(x.shape[0], 3, generator=g) * alpha_std  # (N, 3)
    eigvec = torch.tensor(IMAGENET_PCA_EIGVEC)  # rows: R, G, B; columns: components
    rgb = (alpha * torch.tensor(IMAGENET_PCA_EIGVAL)) @ eigvec.T  # (N, 3)
    return (x + rgb.to(x.device, x.dtype)[:, :, None, None]).clamp_(0, 1)


def channel_permute(x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    """Shuffle the channels of each image with probability ``p`` (a random permutation per image)."""
    n, c = x.shape[:2]
    perm = torch.rand(n, c, generator=g).argsort(dim=1)
    keep = ~_bernoulli(g, n, p)
    perm[keep] = torch.arange(c)
    idx = perm.to(x.device)[:, :, None, None].expand_as(x)
    return x.gather(1, idx)


def gaussian_blur(x: torch.Tensor, p: float, sigma: tuple[float, float], g: torch.Generator) -> torch.Tensor:
    """Blur each image with probability ``p``, sigma uniform in ``sigma`` pixels (SimCLR, Chen et al. 2020).

    The kernel spans about 10 % of the image side (odd, at least 3), as SimCLR's.
    """
    n, _, h, w = x.shape
    chosen = _bernoulli(g, n, p)
    s = _uniform(g, n, sigma[0], sigma[1]).float()
    idx = chosen.nonzero().squeeze(1)
    if idx.numel() == 0:
        return x
    k = max(3, int(0.1 * min(h, w)) // 2 * 2 + 1)
    sig = s[idx].to(x.device, x.dtype)[:, None].expand(-1, 2).contiguous()
    out = x.clone()
    out[idx.to(x.device)] = gaussian_blur2d(x[idx.to(x.device)], (k, k), sig, border_type="reflect")
    return out


def gaussian_noise(x: torch.Tensor, std: float, g: torch.Generator) -> torch.Tensor:
    """Add independent N(0, std²) noise to every pixel (std in [0, 1] pixel units), then clip to [0, 1]."""
    noise = torch.randn(x.shape, generator=g) * std
    return (x + noise.to(x.device, x.dtype)).clamp_(0, 1)


def affine_warp(
    x: torch.Tensor, rotation: float, scale_aspect: tuple[float, float], g: torch.Generator
) -> torch.Tensor:
    """Random rotation (uniform in ``[-rotation, rotation]`` degrees) and scale/aspect about the centre, one warp.

    Bilinear, zero (black) fill outside the source image.
    """
    n, _, h, w = x.shape
    angle = _uniform(g, n, -rotation, rotation).float()
    s, a = scale_aspect
    scale = _uniform(g, n, 1 - s, 1 + s).float()
    aspect = torch.exp(_uniform(g, n, -math.log1p(a), math.log1p(a))).float()
    sx, sy = scale * aspect.sqrt(), scale / aspect.sqrt()
    center = torch.tensor([(w - 1) / 2, (h - 1) / 2]).expand(n, 2)
    m = get_rotation_matrix2d(center, angle, torch.stack([sx, sy], dim=1))  # (N, 2, 3), source -> output
    return warp_affine(x, m.to(x.device, x.dtype), (h, w), mode="bilinear", padding_mode="zeros", align_corners=True)


# --------------------------------------------------------------------------------------------------------------
# Erasing on the normalised batch.


def box_mask(y0: torch.Tensor, x0: torch.Tensor, y1: torch.Tensor, x1: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Union of boxes ``[y0, y1) × [x0, x1)`` given as ``(N, K)`` tensors, as a bool mask ``(N, H, W)``."""
    return box_keep(y0, x0, y1, x1, h, w)[:, 0] == 0


def box_keep(y0: torch.Tensor, x0: torch.Tensor, y1: torch.Tensor, x1: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The multiplier that erases boxes ``[y0, y1) × [x0, x1)`` (``(N, K)`` tensors): float ``(N, 1, H, W)``, 0 in
    any box and 1 elsewhere.

    A box is the outer product of its row and column indicators, so the number of boxes covering each pixel is one
    batched matrix product ``rows^T · cols`` (``(N, H, K) @ (N, K, W)``); ``1 - count`` clipped at 0 is the
    multiplier. One ``baddbmm`` and one clip: the cheapest form measured on CPU (bool masks need a broadcast AND per
    box and a conversion).
    """
    rows = torch.arange(h, device=y0.device, dtype=y0.dtype)
    # Square images share the index row: on CPU these small ops cost their call overhead, not their arithmetic.
    cols = (
        rows
        if (w, x0.dtype, x0.device) == (h, y0.dtype, y0.device)
        else torch.arange(w, device=x0.device, dtype=x0.dtype)
    )
    in_rows = ((rows >= y0[..., None]) & (rows < y1[..., None])).float()  # (N, K, H)
    in_cols = ((cols >= x0[..., None]) & (cols < x1[..., None])).float()  # (N, K, W)
    one = torch.ones((1, 1, 1), device=in_rows.device)
    return torch.baddbmm(one, in_rows.transpose(1, 2), in_cols, alpha=-1).clamp_(min=0)[:, None]


class _CutoutPlane:
    """Every clipped Cutout square of side ``size`` on ``h × w`` images, as the windows of one plane.

    A ``(2h - 1) × (2w - 1)`` plane of ones with the square zeroed in its middle: the ``h × w`` window starting at
    row ``h - 1 - cy`` and column ``w - 1 - cx`` is the multiplier of a hole centred at ``(cy, cx)``, clipped at the
    image border as in the paper. A batch's multiplier is then one pick of windows from a strided view of the plane
    (no per-pixel comparison; `box_keep` does two per box and a matrix product). Built once per transform.
    """

    def __init__(self, h: int, w: int, size: int) -> None:
        half, wq = size // 2, 2 * w - 1
        plane = torch.ones((2 * h - 1, wq))
        plane[
            max(0, h - 1 - half) : max(0, h - 1 - half + size), max(0, w - 1 - half) : max(0, w - 1 - half + size)
        ] = 0
        self.h, self.w, self.wq = h, w, wq
        self.corner = (h - 1) * wq + w - 1  # flat start of the window of a hole centred at (0, 0)
        self.windows = plane.view(-1).as_strided((plane.numel() - self.corner, h, w), (1, wq, 1))

    def keep(self, n: int, holes: int, g: torch.Generator, out: torch.Tensor | None = None) -> torch.Tensor:
        """Float ``(N, 1, h, w)``: 0 in ``holes`` squares per image, 1 elsewhere; the draws of `cutout_mask`.

        ``out``: a float ``(N·holes, h, w)`` tensor to write the windows into instead of a new one.
        """
        cy = _uniform(g, (n, holes)).numpy() * self.h
        cx = _uniform(g, (n, holes)).numpy() * self.w
        # floor(cy), floor(cx): the centres are non-negative, so truncation is the floor.
        start = self.corner - cy.astype(np.int64) * self.wq - cx.astype(np.int64)
        index = torch.from_numpy(start.reshape(-1))
        keep = (
            self.windows.index_select(0, index) if out is None else torch.index_select(self.windows, 0, index, out=out)
        )
        if holes > 1:
            keep = keep.view(n, holes, self.h, self.w).amin(dim=1)
        return keep.view(n, 1, self.h, self.w)


def cutout_keep(n: int, h: int, w: int, size: int, holes: int, g: torch.Generator) -> torch.Tensor:
    """Cutout as the multiplier that erases it: float ``(N, 1, H, W)``, 0 in the holes and 1 elsewhere; the same
    draws and squares as `cutout_mask`, from windows of one plane (`_CutoutPlane`)."""
    return _CutoutPlane(h, w, size).keep(n, holes, g)


def _cutout_boxes(n: int, h: int, w: int, size: int, holes: int, g: torch.Generator) -> tuple[torch.Tensor, ...]:
    cy = torch.floor(_uniform(g, (n, holes)) * h)
    cx = torch.floor(_uniform(g, (n, holes)) * w)
    half = size // 2
    y0, y1 = (cy - half).clamp(0, h), (cy - half + size).clamp(0, h)
    x0, x1 = (cx - half).clamp(0, w), (cx - half + size).clamp(0, w)
    return y0, x0, y1, x1


def cutout_mask(n: int, h: int, w: int, size: int, holes: int, g: torch.Generator) -> torch.Tensor:
    """Cutout (DeVries & Taylor 2017): ``holes`` squares of side ``size`` per image, centres uniform over the
    image, clipped at the border (so a square near an edge erases less, as in the paper)."""
    return box_mask(*_cutout_boxes(n, h, w, size, holes, g), h, w)


def _coarse_dropout_boxes(
    n: int, h: int, w: int, max_holes: int, max_size: float, g: torch.Generator
) -> tuple[torch.Tensor, ...]:
    count = torch.floor(_uniform(g, n) * max_holes) + 1  # (N,)
    side_max = max(1, round(max_size * min(h, w)))
    side = torch.floor(_uniform(g, (n, max_holes)) * side_max) + 1
    cy = torch.floor(_uniform(g, (n, max_holes)) * h)
    cx = torch.floor(_uniform(g, (n, max_holes)) * w)
    active = torch.arange(max_holes)[None, :] < count[:, None]
    y0 = (cy - side // 2).clamp(0, h)
    x0 = (cx - side // 2).clamp(0, w)
    y1 = torch.where(active, (y0 + side).clamp(0, h), y0)
    x1 = torch.where(active, (x0 + side).clamp(0, w), x0)
    return y0, x0, y1, x1


def coarse_dropout_mask(n: int, h: int, w: int, max_holes: int, max_size: float, g: torch.Generator) -> torch.Tensor:
    """Coarse Dropout: 1..``max_holes`` squares per image, each of side uniform in ``[1, max_size · min(H, W)]``."""
    return box_mask(*_coarse_dropout_boxes(n, h, w, max_holes, max_size, g), h, w)


def random_erasing_mask(
    n: int,
    h: int,
    w: int,
    p: float,
    g: torch.Generator,
    area: tuple[float, float] = (0.02, 0.4),
    ratio: float = 0.3,
    attempts: int = 10,
) -> torch.Tensor:
    """Random Erasing (Zhong et al. 2017, Alg. 1): with probability ``p`` one rectangle of area fraction in
    ``area`` (0.02–0.4) and aspect in ``[ratio, 1 / ratio]`` (0.3), retried until it fits (here: ``attempts``)."""
    chosen = _bernoulli(g, n, p)
    target = _uniform(g, (n, attempts), area[0], area[1]) * h * w
    aspect = torch.exp(_uniform(g, (n, attempts), math.log(ratio), -math.log(ratio)))
    eh = torch.sqrt(target * aspect).round()
    ew = torch.sqrt(target / aspect).round()
    fits = (eh >= 1) & (ew >= 1) & (eh < h) & (ew < w)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)
    eh, ew = eh.gather(1, first).squeeze(1), ew.gather(1, first).squeeze(1)
    ok = chosen & fits.any(dim=1)
    pos = _uniform(g, (n, 2))
    y0 = torch.floor(pos[:, 0] * (h - eh + 1))
    x0 = torch.floor(pos[:, 1] * (w - ew + 1))
    y1 = torch.where(ok, y0 + eh, y0)
    x1 = torch.where(ok, x0 + ew, x0)
    return box_mask(y0[:, None], x0[:, None], y1[:, None], x1[:, None], h, w)


# --------------------------------------------------------------------------------------------------------------
# Normalisation.


def mean_image(images: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """AlexNet's mean image (Krizhevsky et al. 2012, §2): the per-pixel mean of a uint8 ``(N, C, H, W)`` set.

    Returns:
        float32 ``(C, H, W)`` in [0, 1] units; summed in float64 batches so a large memory-mapped set is fine.
    """
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError("mean_image needs a non-empty (N, C, H, W) tensor")
    total = torch.zeros(images.shape[1:], dtype=torch.float64)
    for i in range(0, images.shape[0], batch_size):
        total += images[i : i + batch_size].to(torch.float64).sum(dim=0).cpu()
    return (total / (255.0 * images.shape[0])).float()


class _Normalizer:
    """``(x / 255 - mean) / std`` fused into one multiply-add; ``mean`` may be a per-pixel mean image."""

    def __init__(self, mean: Any, std: Sequence[float], image_size: int, resize: int | None) -> None:
        std_t = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)
        mean_t = torch.as_tensor(mean, dtype=torch.float32)
        if mean_t.ndim == 3:
            # Mean-image centring: put the mean image through the evaluation geometry so it lines up with the
            # crops (random crops of a larger storage are off by at most the crop range; AlexNet did the same).
            mean_t = resize_center_crop(mean_t[None], image_size, resize)[0]
        else:
            mean_t = mean_t.view(-1, 1, 1)
        self.channels = std_t.shape[0]
        self.scale = 1.0 / (255.0 * std_t)  # (C, 1, 1)
        self.shift = mean_t / std_t  # (C, 1, 1) or (C, S, S)
        self._cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._cache:
            self._cache[device] = (self.scale.to(device), self.shift.to(device))
        return self._cache[device]

    def __call__(self, x: torch.Tensor, unit: bool = False) -> torch.Tensor:
        """Normalise ``x`` given in [0, 255] (uint8), or float in [0, 1] when ``unit``.

        A float32 input is normalised in place: callers pass batches they own (fresh from a transform step).
        """
        if x.shape[1] != self.channels:
            raise ValueError(f"batch has {x.shape[1]} channels, normalisation has {self.channels}")
        scale, shift = self._on(x.device)
        if unit:
            scale = scale * 255.0
        y = (
            x
            if x.dtype == torch.float32 and x.is_contiguous()
            else x.to(torch.float32, memory_format=torch.contiguous_format)
        )
        # In place, against stride-0 expanded statistics: several times faster on CPU than a broadcast addcmul.
        return y.mul_(scale.expand_as(y)).sub_(shift.expand_as(y))


# --------------------------------------------------------------------------------------------------------------
# The batch transform.


def build_batch_transform(
    aug: AugmentConfig,
    train: bool,
    image_size: int,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float],
    resize: int | None = None,
) -> BatchTransform:
    """The function the loaders call on every batch.

    Args:
        aug: what to do in training (ignored when ``train`` is false).
        train: random augmentation (True) or the deterministic evaluation geometry (False).
        image_size: side ``S`` of the square output.
        mean, std: per-channel statistics in [0, 1] units; with ``aug.normalize == "mean_image"``, ``mean`` is a
            ``(C, H, W)`` mean image (see `mean_image`).
        resize: evaluation only: shorter side before the centre crop. None: the storage resolution (a cache
            already resized to it), upscaled to ``S`` when smaller.

    Returns:
        ``fn(x, generator) -> x_out``: ``x`` uint8 ``(N, C, h, w)`` on any device; ``x_out`` float32
        ``(N, C, S, S)`` normalised, on the same device. ``generator`` (a CPU ``torch.Generator``) supplies every
        random draw; evaluation ignores it.
    """
    if aug.normalize == "mean_image" and torch.as_tensor(mean).ndim != 3:
        raise UserError("augment.normalize: 'mean_image' needs the training set's mean image, not per-channel means")
    normalize = _Normalizer(mean, std, image_size, resize)

    if not train:

        def eval_transform(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
            _check_batch(x)
            return normalize(resize_center_crop(x, image_size, resize))

        return eval_transform

    policy = _build_policy(aug, image_size)
    photometric = (
        any(v > 0 for v in aug.color_jitter)
        or aug.pca_lighting > 0
        or aug.channel_permute > 0
        or aug.gaussian_blur > 0
        or aug.gaussian_noise > 0
    )
    warp = aug.rotation > 0 or any(v > 0 for v in aug.scale_aspect)
    shift = aug.crop_padding + round(aug.translate * image_size)
    cutout = _CutoutPlane(image_size, image_size, aug.cutout) if aug.cutout > 0 else None
    scratch = _Scratch()

    def train_transform(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        _check_batch(x)
        g = generator
        n = x.shape[0]
        hflip = _bernoulli(g, n, aug.hflip) if aug.hflip > 0 else None
        vflip = _bernoulli(g, n, aug.vflip) if aug.vflip > 0 else None
        if aug.random_resized_crop:
            h, w = x.shape[-2:]
            boxes = sample_resized_crops(n, h, w, aug.rrc_scale, aug.rrc_ratio, g).to(x.device)
            top, left, bh, bw = boxes.unbind(1)
            x0, x1, y0, y1 = left, left + bw - 1, top, top + bh - 1
            if hflip is not None:
                # A horizontal flip is the same box with its left and right corners swapped.
                hf = hflip.to(x.device)
                x0, x1 = torch.where(hf, x1, x0), torch.where(hf, x0, x1)
            corners = torch.stack([torch.stack([x0, y0], 1), torch.stack([x1, y0], 1)], 1)
            corners = torch.cat([corners, torch.stack([torch.stack([x1, y1], 1), torch.stack([x0, y1], 1)], 1)], 1)
            out = crop_and_resize(x.float(), corners.float(), (image_size, image_size), align_corners=True)
            if vflip is not None:
                out = torch.where(vflip.to(x.device)[:, None, None, None], out.flip(-2), out)
            out = out.div_(255.0)
            unit = True
        else:
            if min(x.shape[-2:]) < image_size:
                x = _resize_short_side(x, image_size)
            h, w = x.shape[-2:]
            top = torch.randint(-shift, h - image_size + shift + 1, (n,), generator=g)
            left = torch.randint(-shift, w - image_size + shift + 1, (n,), generator=g)
            if shift > 0 and vflip is None and aug.padding_mode == "constant":
                # The CIFAR hot path; the offsets' range is known, so the padding needs no reduction over them.
                flips = None if hflip is None else hflip.numpy()
                out = _window_select(x, top.numpy(), left.numpy(), image_size, flips, shift, shift, scratch)
            else:
                out = crop_flip(x, top, left, image_size, hflip, vflip, aug.padding_mode)
            unit = False
        if policy is not None or warp or photometric:
            if not unit:
                out = out.float().div_(255.0)
                unit = True
            if policy is not None:
                out = policy(out, g)
            if warp:
                out = affine_warp(out, aug.rotation, aug.scale_aspect, g)
            if any(v > 0 for v in aug.color_jitter):
                out = _color_jitter(out, aug.color_jitter, g)
            if aug.pca_lighting > 0:
                out = pca_lighting(out, aug.pca_lighting, g)
            if aug.channel_permute > 0:
                out = channel_permute(out, aug.channel_permute, g)
            if aug.gaussian_blur > 0:
                out = gaussian_blur(out, aug.gaussian_blur, aug.gaussian_blur_sigma, g)
            if aug.gaussian_noise > 0:
                out = gaussian_noise(out, aug.gaussian_noise, g)
        out = normalize(out, unit=unit)
        return _erase(out, aug, g, normalize, cutout, scratch)

    return train_transform


def _check_batch(x: torch.Tensor) -> None:
    if x.ndim != 4 or x.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 (N, C, H, W) batch, got {x.dtype} {tuple(x.shape)}")


def _build_policy(
    aug: AugmentConfig, image_size: int
) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None:
    from imgcls.data import autoaugment  # local: autoaugment imports this module's colour ops

    if aug.autoaugment:
        return autoaugment.AutoAugment(aug.autoaugment)
    if aug.randaugment:
        n, m = _parse_randaugment(aug.randaugment)
        return autoaugment.RandAugment(n, m)
    if aug.trivialaugment:
        return autoaugment.TrivialAugment()
    return None


def _erase(
    x: torch.Tensor,
    aug: AugmentConfig,
    g: torch.Generator,
    normalize: _Normalizer,
    cutout: _CutoutPlane | None,
    scratch: _Scratch,
) -> torch.Tensor:
    n, _, h, w = x.shape
    keep = None
    if aug.cutout > 0:
        if cutout is None or (cutout.h, cutout.w) != (h, w):
            cutout = _CutoutPlane(h, w, aug.cutout)
        out = scratch.get("cutout", (n * aug.cutout_holes, h, w), torch.float32, torch.device("cpu"))
        keep = cutout.keep(n, aug.cutout_holes, g, out=out)
    if aug.coarse_dropout > 0:
        y0, x0, y1, x1 = (
            b.to(x.device) for b in _coarse_dropout_boxes(n, h, w, aug.coarse_dropout, aug.coarse_dropout_size, g)
        )
        dropout = box_keep(y0, x0, y1, x1, h, w)
        keep = dropout if keep is None else dropout.mul_(keep.to(x.device))
    if keep is not None:
        # In place, by a stride-0 expanded keep multiplier: one pass over the batch (masked_fill_ is slower on CPU).
        x = x.mul_(keep.to(x.device, x.dtype).expand_as(x))
    if aug.random_erasing > 0:
        mask = random_erasing_mask(n, h, w, aug.random_erasing, g).to(x.device)
        if bool(mask.any()):
            # Zhong et al. fill with random pixel values in [0, 255]: uniform noise, normalised like the image.
            noise = normalize(torch.rand(x.shape, generator=g).to(x.device), unit=True)
            x = torch.where(mask[:, None], noise, x)
    return x
