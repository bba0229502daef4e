"""AutoAugment, RandAugment and TrivialAugment on whole batches, every draw from the caller's generator.

- AutoAugment (Cubuk et al. 2018, "AutoAugment: Learning Augmentation Policies from Data", arXiv:1805.09501):
  25 learned sub-policies of two ops (op, probability, magnitude 0–9) per dataset; the tables below are the
  paper's appendix tables for ImageNet, CIFAR-10 and reduced SVHN. One sub-policy is drawn per image.
- RandAugment (Cubuk et al. 2019, arXiv:1909.13719): ``N`` ops drawn uniformly (with replacement) per image
  from 14, all at magnitude ``M`` on the shared 0–10 scale.
- TrivialAugment (Müller & Hutter 2021, arXiv:2103.10158), the "wide" search space: one op per image, with a
  magnitude level drawn uniformly from 0–30.

Magnitudes map linearly onto each op's range, ``value = level / 10 × max`` as in the AutoAugment authors' code
(paper Table 1: shear ±0.3, translate ±150/331 of the side, rotate ±30°, enhance factors 0.1–1.9, posterize 4–8
bits, solarize threshold 0–256). Geometric ops get a random sign. RandAugment and TrivialAugment use enhance
factors ``1 ± v`` with a random sign (so magnitude 0 is the identity, as torchvision and timm do); AutoAugment
keeps the paper's unsigned ``0.1 + 1.8 × level / 10``. Deviations: shears are about the image centre (the
reference shears about the top-left corner, pushing content off the image), warps are bilinear, and posterize
follows the paper's 4–8 bits (the reference code's 1–4 contradicts its Table 1).

Batched: every image draws its own ops and magnitudes; images are then grouped by op, so each op runs once per
batch. All geometric ops of a stage share one affine warp (fill: mid-grey, the reference's 128). Equalize and
auto-contrast are ours because kornia's ``equalize`` does not spread a low-contrast image the way PIL's
``ImageOps.equalize`` (the op the policies were searched with) does.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from kornia.enhance import sharpness as _kornia_sharpness
from kornia.geometry.transform import warp_affine

from imgcls.data.transforms import adjust_brightness, adjust_contrast, adjust_saturation
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

# A magnitude space: op -> (fn(fraction in [0, 1], image side in px) -> op parameter, random sign?).
Space = dict[str, tuple[Callable[[torch.Tensor, int], torch.Tensor], bool]]


def _space(shear: float, translate: Callable[[int], float], rotate: float, posterize_bits: int, enhance: str) -> Space:
    none = (lambda f, side: torch.zeros_like(f), False)
    if enhance == "unsigned":  # AutoAugment: factor 0.1 + 1.8·f, never signed
        enh = (lambda f, side: 0.1 + 1.8 * f, False)
    else:  # RandAugment / TrivialAugment: 1 ± max·f
        top = float(enhance)
        enh = (lambda f, side: top * f, True)
    return {
        "Identity": none,
        "AutoContrast": none,
        "Equalize": none,
        "Invert": none,
        "ShearX": (lambda f, side: shear * f, True),
        "ShearY": (lambda f, side: shear * f, True),
        "TranslateX": (lambda f, side: translate(side) * f, True),
        "TranslateY": (lambda f, side: translate(side) * f, True),
        "Rotate": (lambda f, side: rotate * f, True),
        "Color": enh,
        "Contrast": enh,
        "Brightness": enh,
        "Sharpness": enh,
        "Posterize": (lambda f, side: 8 - torch.round(posterize_bits * f), False),
        "Solarize": (lambda f, side: 256.0 * (1 - f), False),  # threshold in 0..256 grey levels
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
    q = _grey_levels(x).long().view(n * c, h * w)
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
    """Forward (source -> output) 2×3 matrices in pixel units, about the image centre, one per image."""
    n = len(names)
    m = torch.zeros(n, 2, 3, dtype=torch.float64)
    m[:, 0, 0] = m[:, 1, 1] = 1.0
    cx, cy = (w - 1) / 2, (h - 1) / 2
    for i, (name, val) in enumerate(zip(names, v.tolist())):
        if name == "ShearX":  # x' = x + s·(y - cy)
            m[i, 0, 1], m[i, 0, 2] = val, -val * cy
        elif name == "ShearY":  # y' = y + s·(x - cx)
            m[i, 1, 0], m[i, 1, 2] = val, -val * cx
        elif name == "TranslateX":
            m[i, 0, 2] = val
        elif name == "TranslateY":
            m[i, 1, 2] = val
        elif name == "Rotate":
            a = math.radians(val)
            cos, sin = math.cos(a), math.sin(a)
            m[i, 0] = torch.tensor([cos, -sin, cx - cos * cx + sin * cy], dtype=torch.float64)
            m[i, 1] = torch.tensor([sin, cos, cy - sin * cx - cos * cy], dtype=torch.float64)
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
        fn, signed = space[name]
        side = h if name.endswith("Y") and name.startswith(("Shear", "Translate")) else w
        v = fn(frac[sel].double(), side)
        if signed:
            v = v * sign[sel]
        value[sel] = v.double() if isinstance(v, torch.Tensor) else v
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
