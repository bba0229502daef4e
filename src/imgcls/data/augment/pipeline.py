"""The batch transform the loaders call: `build_batch_transform`, normalisation and the mean image.

``fn(x_uint8 (N, C, h, w), generator) -> float32 (N, C, S, S)`` normalised. The batch comes at storage
resolution (8×8 digits, a 32×32 CIFAR cache, a 256-square cache for 224 crops) and leaves at the model's input
size. Every random draw comes from the `torch.Generator` passed in (see `imgcls.data.augment._common`).

Training order (the order of the papers' pipelines: geometry on the raw image, photometric changes,
normalisation, then erasing in normalised space so the erased value is the dataset mean):

1. geometry (`imgcls.data.augment.geometry`): RandomResizedCrop, or a random crop of ``S`` from a padded and/or
   larger stored image with translation, and horizontal and vertical flips;
2. AutoAugment / RandAugment / TrivialAugment (`imgcls.data.augment.policies`);
3. rotation and scale/aspect distortion (one affine warp);
4. colour jitter, PCA lighting, channel permutation, Gaussian blur, Gaussian noise (`imgcls.data.augment.colour`);
5. normalisation by per-channel mean/std, or AlexNet's mean-image centring (Krizhevsky et al. 2012, §2);
6. Cutout, Coarse Dropout and Random Erasing on the normalised batch (`imgcls.data.augment.erase`).

Evaluation: the shorter side resized (to ``resize``, or up to ``S`` when smaller), centre crop, normalisation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from imgcls.data.augment._common import Scratch, bernoulli
from imgcls.data.augment.colour import (
    channel_permute,
    color_jitter,
    gaussian_blur,
    gaussian_noise,
    pca_lighting,
)
from imgcls.data.augment.config import AugmentConfig, parse_randaugment
from imgcls.data.augment.erase import CutoutPlane, erase
from imgcls.data.augment.geometry import (
    affine_warp,
    crop_flip,
    resize_center_crop,
    resize_short_side,
    resized_crop_flip,
    sample_resized_crops,
    window_select,
)
from imgcls.data.augment.policies import AutoAugment, RandAugment, TrivialAugment
from imgcls.errors import UserError

BatchTransform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
Policy = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


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

    policy = _build_policy(aug)
    floats = policy is not None or _warps(aug) or _photometric_ops(aug)
    shift = aug.crop_padding + round(aug.translate * image_size)
    cutout = CutoutPlane(image_size, image_size, aug.cutout) if aug.cutout > 0 else None
    scratch = Scratch()

    def train_transform(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        _check_batch(x)
        g = generator
        n = x.shape[0]
        hflip = bernoulli(g, n, aug.hflip) if aug.hflip > 0 else None
        vflip = bernoulli(g, n, aug.vflip) if aug.vflip > 0 else None
        if aug.random_resized_crop:
            boxes = sample_resized_crops(n, *x.shape[-2:], aug.rrc_scale, aug.rrc_ratio, g)
            out, unit = resized_crop_flip(x, boxes, image_size, hflip, vflip).div_(255.0), True
        else:
            out, unit = _random_crop(x, aug, image_size, shift, hflip, vflip, g, scratch), False
        if floats:
            if not unit:
                out, unit = out.float().div_(255.0), True
            out = _float_stages(out, aug, policy, g)
        return erase(normalize(out, unit=unit), aug, g, normalize, cutout, scratch)

    return train_transform


def _random_crop(
    x: torch.Tensor,
    aug: AugmentConfig,
    size: int,
    shift: int,
    hflip: torch.Tensor | None,
    vflip: torch.Tensor | None,
    g: torch.Generator,
    scratch: Scratch,
) -> torch.Tensor:
    """A random ``size`` crop, ``shift`` pixels past each border at most, with the flips drawn; uint8 stays uint8."""
    if min(x.shape[-2:]) < size:
        x = resize_short_side(x, size)
    n, _, h, w = x.shape
    top = torch.randint(-shift, h - size + shift + 1, (n,), generator=g)
    left = torch.randint(-shift, w - size + shift + 1, (n,), generator=g)
    if shift > 0 and vflip is None and aug.padding_mode == "constant":
        # The CIFAR hot path; the offsets' range is known, so the padding needs no reduction over them.
        flips = None if hflip is None else hflip.numpy()
        return window_select(x, top.numpy(), left.numpy(), size, flips, shift, shift, scratch)
    return crop_flip(x, top, left, size, hflip, vflip, aug.padding_mode)


def _warps(aug: AugmentConfig) -> bool:
    return aug.rotation > 0 or any(v > 0 for v in aug.scale_aspect)


def _photometric_ops(aug: AugmentConfig) -> bool:
    return (
        any(v > 0 for v in aug.color_jitter)
        or aug.pca_lighting > 0
        or aug.channel_permute > 0
        or aug.gaussian_blur > 0
        or aug.gaussian_noise > 0
    )


def _float_stages(out: torch.Tensor, aug: AugmentConfig, policy: Policy | None, g: torch.Generator) -> torch.Tensor:
    """Stages 2–4 on a float batch in [0, 1] that the caller owns, in the documented order."""
    if policy is not None:
        out = policy(out, g)
    if _warps(aug):
        out = affine_warp(out, aug.rotation, aug.scale_aspect, g)
    if any(v > 0 for v in aug.color_jitter):
        out = color_jitter(out, aug.color_jitter, g)
    if aug.pca_lighting > 0:
        out = pca_lighting(out, aug.pca_lighting, g)
    if aug.channel_permute > 0:
        out = channel_permute(out, aug.channel_permute, g)
    if aug.gaussian_blur > 0:
        out = gaussian_blur(out, aug.gaussian_blur, aug.gaussian_blur_sigma, g)
    if aug.gaussian_noise > 0:
        out = gaussian_noise(out, aug.gaussian_noise, g)
    return out


def _check_batch(x: torch.Tensor) -> None:
    if x.ndim != 4 or x.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 (N, C, H, W) batch, got {x.dtype} {tuple(x.shape)}")


def _build_policy(aug: AugmentConfig) -> Policy | None:
    if aug.autoaugment:
        return AutoAugment(aug.autoaugment)
    if aug.randaugment:
        return RandAugment(*parse_randaugment(aug.randaugment))
    if aug.trivialaugment:
        return TrivialAugment()
    return None
