"""AutoAugment, RandAugment and TrivialAugment on whole batches, every draw from the caller's generator.

- AutoAugment (Cubuk et al. 2018, "AutoAugment: Learning Augmentation Policies from Data", arXiv:1805.09501):
  25 learned sub-policies of two ops (op, probability, magnitude level 0–9) per dataset; the tables below are the
  paper's appendix tables for ImageNet, CIFAR-10 and reduced SVHN. One sub-policy is drawn per image.
- RandAugment (Cubuk et al. 2019, arXiv:1909.13719, §3): ``N`` ops drawn uniformly (with replacement) per image
  from the paper's 14, all at magnitude ``M`` on the shared 0–10 scale (10: each op's largest value).
- TrivialAugment (Müller & Hutter 2021, arXiv:2103.10158), the "wide" search space of its Table 1: one op per
  image from the same 14, with a magnitude level drawn uniformly from 0–30.

An op's parameter is ``neutral ± f × max`` with ``f`` = level / 10 (AutoAugment, RandAugment) or level / 30
(TrivialAugment); geometric ops and, for RandAugment and TrivialAugment, the enhance ops take a random sign per
image. Ranges (AutoAugment Table 1, shared by RandAugment; TrivialAugment wide in brackets): shear ±0.3 [±0.99],
translate ±150/331 of the side [±32 px], rotate ±30° [±135°], posterize 8 down to 4 [2] bits, solarize threshold
256 (nothing inverted) down to 0, enhance factors (Brightness, Color, Contrast, Sharpness):

- AutoAugment: the paper's unsigned ``0.1 + 1.8 × level / 10`` (0.1–1.9; level 5 is the identity, level 0 a
  factor of 0.1), as the policies were searched with;
- RandAugment: ``1 ± 0.9 × M / 10`` (0.1–1.9), TrivialAugment: ``1 ± 0.99 × level / 30`` (0.01–1.99), so magnitude
  0 is the identity for every op and a larger magnitude is always a stronger change (torchvision's form). The
  authors' code maps the level to an unsigned factor instead (RandAugment ``0.1 + 1.8 M / 10``, so a fixed M
  only ever brightens; TrivialAugment ``0.01 + 1.99 × level / 30``, the same spread of factors as ours).

Sign conventions (PIL's and torchvision's): a positive Rotate turns the content counter-clockwise, a positive
ShearX samples row ``y`` from ``x + s·(y - cy)`` (PIL's ``AFFINE (1, s, 0, 0, 1, 0)``), a positive TranslateX /
TranslateY moves the content right / down. Brightness above 1 brightens, Contrast above 1 widens the spread about
the mean grey, Color above 1 saturates, Sharpness above 1 sharpens (below 1 blurs).

Deviations from the reference code: shears are about the image centre (the reference shears about the top-left
corner, pushing content off the image), warps are bilinear (torchvision's policies default to nearest),
rotations are not rounded to whole degrees, posterize follows the paper's 4–8 bits (the AutoAugment code's 1–4
contradicts its Table 1). Translations are whole pixels, truncated towards zero as in the reference code.
TrivialAugment's 32-pixel translation is the paper's absolute range: on 32-pixel images its top level (1 in 31
of the draws of a translation) moves the whole image out, leaving the grey fill.

Batched: every image draws its own ops and magnitudes; images are then grouped by op, so each op runs once per
batch. All geometric ops of a stage share one affine warp (fill: mid-grey, the reference's 128). Equalize and
auto-contrast are ours because kornia's ``equalize`` does not spread a low-contrast image the way PIL's
``ImageOps.equalize`` (the op the policies were searched with) does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from kornia.enhance import sharpness as _kornia_sharpness
from kornia.geometry.transform import warp_affine

from imgcls.data.augment.colour import adjust_brightness, adjust_contrast, adjust_saturation
from imgcls.errors import UserError

Op = tuple[str, float, int | None]

# Cubuk et al. 2018, Appendix: the ImageNet policy (25 sub-policies).
IMAGENET_POLICY: tuple[tuple[Op, Op], ...] = (
    (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
    (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
    (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, None)),
    (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
    (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
    (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
    (("Equalize", 0.0, None), ("Equalize", 0.8, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
    (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, None)),
    (("Color", 0.4, 0), ("Equalize", 0.6, None)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
)

# Cubuk et al. 2018, Appendix: the CIFAR-10 policy.
CIFAR10_POLICY: tuple[tuple[Op, Op], ...] = (
    (("Invert", 0.1, None), ("Contrast", 0.2, 6)),
    (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
    (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
    (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
    (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, None), ("Equalize", 0.5, None)),
    (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
    (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
    (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, None)),
    (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.2, None), ("Equalize", 0.6, None)),
    (("Color", 0.9, 9), ("Equalize", 0.6, None)),
    (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
    (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
    (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)),
    (("Equalize", 0.8, None), ("Invert", 0.1, None)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
)

# Cubuk et al. 2018, Appendix: the reduced-SVHN policy.
SVHN_POLICY: tuple[tuple[Op, Op], ...] = (
    (("ShearX", 0.9, 4), ("Invert", 0.2, None)),
    (("ShearY", 0.9, 8), ("Invert", 0.7, None)),
    (("Equalize", 0.6, None), ("Solarize", 0.6, 6)),
    (("Invert", 0.9, None), ("Equalize", 0.6, None)),
    (("Equalize", 0.6, None), ("Rotate", 0.9, 3)),
    (("ShearX", 0.9, 4), ("AutoContrast", 0.8, None)),
    (("ShearY", 0.9, 8), ("Invert", 0.4, None)),
    (("ShearY", 0.9, 5), ("Solarize", 0.2, 6)),
    (("Invert", 0.9, None), ("AutoContrast", 0.8, None)),
    (("Equalize", 0.6, None), ("Rotate", 0.9, 3)),
    (("ShearX", 0.9, 4), ("Solarize", 0.3, 3)),
    (("ShearY", 0.8, 8), ("Invert", 0.7, None)),
    (("Equalize", 0.9, None), ("TranslateY", 0.6, 6)),
    (("Invert", 0.9, None), ("Equalize", 0.6, None)),
    (("Contrast", 0.3, 3), ("Rotate", 0.8, 4)),
    (("Invert", 0.8, None), ("TranslateY", 0.0, 2)),
    (("ShearY", 0.7, 6), ("Solarize", 0.4, 8)),
    (("Invert", 0.6, None), ("Rotate", 0.8, 4)),
    (("ShearY", 0.3, 7), ("TranslateX", 0.9, 3)),
    (("ShearX", 0.1, 6), ("Invert", 0.6, None)),
    (("Solarize", 0.7, 2), ("TranslateY", 0.6, 7)),
    (("ShearY", 0.8, 4), ("Invert", 0.8, None)),
    (("ShearX", 0.7, 9), ("TranslateY", 0.8, 3)),
    (("ShearY", 0.8, 5), ("AutoContrast", 0.7, None)),
    (("ShearX", 0.7, 2), ("Invert", 0.1, None)),
)

POLICIES = {"imagenet": IMAGENET_POLICY, "cifar10": CIFAR10_POLICY, "svhn": SVHN_POLICY}

GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
# RandAugment §3 and TrivialAugment Table 1 share these 14 ops (no Invert, Cutout or SamplePairing).
RANDOM_OPS = (
    "Identity",
    "AutoContrast",
    "Equalize",
    "Rotate",
    "Solarize",
    "Color",
    "Posterize",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
)


@dataclass(frozen=True)
class Magnitude:
    """How a magnitude fraction ``f`` in [0, 1] becomes an op's parameter: ``neutral ± scale(f, side)``.

    ``scale(f, side)`` is the distance from the op's neutral value (``side``: the image side along the op's axis,
    in pixels); ``signed`` ops take a random sign per image, the others move one way only. For every op but
    AutoAugment's unsigned enhance factors, ``f = 0`` gives the neutral value and so the identity.
    """

    scale: Callable[[torch.Tensor, int], torch.Tensor]
    signed: bool = False
    neutral: float = 0.0

    def value(self, frac: torch.Tensor, sign: torch.Tensor, side: int) -> torch.Tensor:
        """The op parameter for float64 fractions ``frac`` and signs ``sign`` (±1, used when ``signed``)."""
        v = self.scale(frac, side)
        return self.neutral + (v * sign if self.signed else v)


# A magnitude space: op name -> its Magnitude.
Space = dict[str, Magnitude]


def _space(shear: float, translate: Callable[[int], float], rotate: float, posterize_bits: int, enhance: str) -> Space:
    none = Magnitude(lambda f, side: torch.zeros_like(f))
    if enhance == "unsigned":  # AutoAugment: factor 0.1 + 1.8·f, never signed (1.0, the identity, at level 5)
        enh = Magnitude(lambda f, side: 1.8 * f, neutral=0.1)
    else:  # RandAugment / TrivialAugment: 1 ± max·f, random sign (1.0, the identity, at magnitude 0)
        top = float(enhance)
        enh = Magnitude(lambda f, side: top * f, signed=True, neutral=1.0)
    return {
        "Identity": none,
        "AutoContrast": none,
        "Equalize": none,
        "Invert": none,
        "ShearX": Magnitude(lambda f, side: shear * f, signed=True),
        "ShearY": Magnitude(lambda f, side: shear * f, signed=True),
        # Whole pixels, truncated towards zero, as the reference implementations shift (int(level · max / 10)).
        "TranslateX": Magnitude(lambda f, side: torch.trunc(translate(side) * f), signed=True),
        "TranslateY": Magnitude(lambda f, side: torch.trunc(translate(side) * f), signed=True),
        "Rotate": Magnitude(lambda f, side: rotate * f, signed=True),
        "Color": enh,
        "Contrast": enh,
        "Brightness": enh,
        "Sharpness": enh,
        "Posterize": Magnitude(lambda f, side: -torch.round(posterize_bits * f), neutral=8.0),  # bits kept
        "Solarize": Magnitude(lambda f, side: -256.0 * f, neutral=256.0),  # threshold in 0..256 grey levels
    }


AUTOAUGMENT_SPACE = _space(0.3, lambda side: 150 / 331 * side, 30.0, 4, "unsigned")
RANDAUGMENT_SPACE = _space(0.3, lambda side: 150 / 331 * side, 30.0, 4, "0.9")
# Müller & Hutter 2021, Table 1 ("wide"): shear 0.99, translate 32 px, rotate 135°, enhance 0.01–1.99, 2–8 bits.
TRIVIALAUGMENT_SPACE = _space(0.99, lambda side: 32.0, 135.0, 6, "0.99")


# --------------------------------------------------------------------------------------------------------------
# Ops on float batches in [0, 1]; ``v`` is the per-image parameter from the space above.


def _grey_levels(x: torch.Tensor) -> torch.Tensor:
    return (x * 255.0).round_().clamp_(0, 255)


def auto_contrast(x: torch.Tensor) -> torch.Tensor:
    """Stretch each channel of each image to the full [0, 1] range (PIL's ``ImageOps.autocontrast``)."""
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (x - lo) / span.clamp_min(1e-12), x)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation per channel, PIL's algorithm (``ImageOps.equalize``) on 256 grey levels.

    ``step = (pixels - count of the brightest level) // 255``; level ``i`` maps to
    ``(step // 2 + #pixels below i) // step``; a channel with a single level or ``step == 0`` is left as is.
    """
    n, c, h, w = x.shape
    q = _grey_levels(x).long().reshape(n * c, h * w)
    hist = torch.zeros(n * c, 256, dtype=torch.long, device=x.device).scatter_add_(1, q, torch.ones_like(q))
    last = hist.gather(1, q.amax(dim=1, keepdim=True))  # count of the brightest level present
    step = (h * w - last) // 255  # (N·C, 1)
    below = hist.cumsum(1) - hist  # pixels strictly below each level
    lut = torch.div(below + step // 2, step.clamp_min(1), rounding_mode="floor").clamp_(0, 255)
    mapped = lut.gather(1, q)
    out = torch.where(step > 0, mapped, q)
    return (out.to(x.dtype) / 255.0).view(n, c, h, w)


def invert(x: torch.Tensor) -> torch.Tensor:
    """``1 - x``."""
    return 1.0 - x


def solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Invert every grey level at or above ``threshold`` (0..256 levels; 256 changes nothing)."""
    t = threshold.to(x.device, x.dtype).view(-1, 1, 1, 1)
    return torch.where(_grey_levels(x) >= t, 1.0 - x, x)


def posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep the ``bits`` most significant bits of each 8-bit level."""
    mask = (256 - 2 ** (8 - bits.long())).to(x.device).view(-1, 1, 1, 1)
    return (_grey_levels(x).long() & mask).to(x.dtype) / 255.0


def sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's ``ImageEnhance.Sharpness``: blend with the 3×3 smoothed image (0 blurs, 1 is the identity)."""
    return _kornia_sharpness(x, factor.to(x.device, x.dtype)).clamp_(0, 1)


_COLOR_OPS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "AutoContrast": lambda x, v: auto_contrast(x),
    "Equalize": lambda x, v: equalize(x),
    "Invert": lambda x, v: invert(x),
    "Solarize": solarize,
    "Posterize": posterize,
    "Color": adjust_saturation,
    "Contrast": adjust_contrast,
    "Brightness": adjust_brightness,
    "Sharpness": sharpness,
}


def _affine_matrices(names: list[str], v: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Forward (source -> output) 2×3 matrices in pixel units (x right, y down), about the image centre.

    Sign conventions (PIL's, the library the policies were searched with, and torchvision's): a positive Rotate
    turns the content counter-clockwise; a positive ShearX samples row ``y`` from ``x + s·(y - cy)`` (PIL's
    ``AFFINE (1, s, 0, 0, 1, 0)``, so rows below the centre move left), ShearY likewise with the axes swapped; a
    positive TranslateX / TranslateY moves the content right / down (torchvision's sign).
    """
    n = len(names)
    m = torch.zeros(n, 2, 3, dtype=torch.float64)
    m[:, 0, 0] = m[:, 1, 1] = 1.0
    cx, cy = (w - 1) / 2, (h - 1) / 2
    for i, (name, val) in enumerate(zip(names, v.tolist())):
        if name == "ShearX":  # x_out = x - s·(y - cy)
            m[i, 0, 1], m[i, 0, 2] = -val, val * cy
        elif name == "ShearY":  # y_out = y - s·(x - cx)
            m[i, 1, 0], m[i, 1, 2] = -val, val * cx
        elif name == "TranslateX":
            m[i, 0, 2] = val
        elif name == "TranslateY":
            m[i, 1, 2] = val
        elif name == "Rotate":  # counter-clockwise on screen: (1, 0) relative to the centre goes to (cos, -sin)
            a = math.radians(val)
            cos, sin = math.cos(a), math.sin(a)
            m[i, 0] = torch.tensor([cos, sin, cx - cos * cx - sin * cy], dtype=torch.float64)
            m[i, 1] = torch.tensor([-sin, cos, cy + sin * cx - cos * cy], dtype=torch.float64)
    return m


def apply_ops(x: torch.Tensor, ops: tuple[str, ...], choice: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Apply op ``ops[choice[i]]`` with parameter ``value[i]`` to image ``i`` (``choice < 0``: untouched).

    Args:
        x: float ``(N, C, H, W)`` in [0, 1].
        ops: op names.
        choice: ``(N,)`` long, index into ``ops`` or -1.
        value: ``(N,)`` op parameters (degrees, pixels, factors, bits or thresholds).
    """
    n, _, h, w = x.shape
    out = x
    geo = [k for k, name in enumerate(ops) if name in GEOMETRIC]
    geo_mask = torch.zeros(n, dtype=torch.bool)
    for k in geo:
        geo_mask |= choice == k
    idx = geo_mask.nonzero().squeeze(1)
    if idx.numel():
        names = [ops[k] for k in choice[idx].tolist()]
        m = _affine_matrices(names, value[idx], h, w).to(x.device, x.dtype)
        sel = idx.to(x.device)
        # Warp (x - ½) with zero padding: the area uncovered by the warp becomes mid-grey.
        warped = warp_affine(x[sel] - 0.5, m, (h, w), mode="bilinear", padding_mode="zeros", align_corners=True)
        out = out.clone()
        out[sel] = (warped + 0.5).clamp_(0, 1)
    for k, name in enumerate(ops):
        if name in GEOMETRIC or name == "Identity":
            continue
        idx = (choice == k).nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        if out is x:
            out = x.clone()
        sel = idx.to(x.device)
        out[sel] = _COLOR_OPS[name](out[sel], value[idx].float())
    return out


def _values(
    ops: tuple[str, ...], choice: torch.Tensor, frac: torch.Tensor, sign: torch.Tensor, space: Space, h: int, w: int
) -> torch.Tensor:
    """Per-image parameters: each image's op mapped from its magnitude fraction, with a sign where the op has one."""
    value = torch.zeros(choice.shape[0], dtype=torch.float64)
    for k, name in enumerate(ops):
        sel = choice == k
        if not bool(sel.any()):
            continue
        side = h if name.endswith("Y") and name.startswith(("Shear", "Translate")) else w
        value[sel] = space[name].value(frac[sel].double(), sign[sel], side).double()
    return value


def _signs(g: torch.Generator, n: int) -> torch.Tensor:
    return torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).double()


class AutoAugment:
    """Cubuk et al. 2018: one of the policy's 25 sub-policies per image, each op applied with its probability."""

    def __init__(self, policy: str) -> None:
        if policy not in POLICIES:
            raise UserError(f"augment.autoaugment: unknown policy {policy!r} (known: {', '.join(POLICIES)})")
        self.policy = policy
        table = POLICIES[policy]
        self.ops = tuple(sorted({op[0] for sub in table for op in sub}))
        # Per stage, per sub-policy: op index, probability, magnitude level (0 for ops without one).
        self._op = torch.tensor([[self.ops.index(sub[s][0]) for sub in table] for s in range(2)])
        self._prob = torch.tensor([[sub[s][1] for sub in table] for s in range(2)], dtype=torch.float64)
        self._level = torch.tensor([[sub[s][2] or 0 for sub in table] for s in range(2)], dtype=torch.float64)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment a float ``(N, C, H, W)`` batch in [0, 1]."""
        n, _, h, w = x.shape
        sub = torch.randint(self._op.shape[1], (n,), generator=generator)
        for stage in range(2):
            applied = torch.rand(n, generator=generator, dtype=torch.float64) < self._prob[stage, sub]
            choice = torch.where(applied, self._op[stage, sub], -1)
            frac = self._level[stage, sub] / 10.0
            value = _values(self.ops, choice, frac, _signs(generator, n), AUTOAUGMENT_SPACE, h, w)
            x = apply_ops(x, self.ops, choice, value)
        return x


class RandAugment:
    """Cubuk et al. 2019: ``num_ops`` ops per image, uniformly from 14, all at ``magnitude`` (0–10)."""

    def __init__(self, num_ops: int = 2, magnitude: float = 9.0) -> None:
        self.num_ops = num_ops
        self.magnitude = magnitude

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment a float ``(N, C, H, W)`` batch in [0, 1]."""
        n, _, h, w = x.shape
        frac = torch.full((n,), self.magnitude / 10.0, dtype=torch.float64)
        for _ in range(self.num_ops):
            choice = torch.randint(len(RANDOM_OPS), (n,), generator=generator)
            value = _values(RANDOM_OPS, choice, frac, _signs(generator, n), RANDAUGMENT_SPACE, h, w)
            x = apply_ops(x, RANDOM_OPS, choice, value)
        return x


class TrivialAugment:
    """Müller & Hutter 2021 (wide): one op per image uniformly from 14, magnitude level uniform in 0–30."""

    levels = 30

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment a float ``(N, C, H, W)`` batch in [0, 1]."""
        n, _, h, w = x.shape
        choice = torch.randint(len(RANDOM_OPS), (n,), generator=generator)
        frac = torch.randint(self.levels + 1, (n,), generator=generator).double() / self.levels
        value = _values(RANDOM_OPS, choice, frac, _signs(generator, n), TRIVIALAUGMENT_SPACE, h, w)
        return apply_ops(x, RANDOM_OPS, choice, value)
