"""Batch mixing: mixup, CutMix and SamplePairing on a normalised batch, with soft targets.

- mixup (Zhang et al. 2017, "mixup: Beyond Empirical Risk Minimization", arXiv:1710.09412, Eq. 1):
  ``x = λ x_i + (1 - λ) x_j``, ``y = λ y_i + (1 - λ) y_j``, one ``λ ~ Beta(α, α)`` per batch and ``j`` a random
  permutation of the batch (the paper's own implementation).
- CutMix (Yun et al. 2019, arXiv:1905.04899, §3.1): a box of area ``(1 - λ)·H·W`` (``r_w = W √(1 - λ)``,
  ``r_h = H √(1 - λ)``) with a uniform centre is pasted from ``x_j``; the box is clipped at the border and the
  label weight is recomputed from the area actually pasted, so the weights always match the pixels.
- SamplePairing (Inoue 2018, "Data Augmentation by Pairing Samples for Images Classification",
  arXiv:1801.02929, §3): ``x = (x_i + x_j) / 2`` with the label of ``x_i`` alone. The paper's schedule, in epochs:
  off while the network first trains with the basic augmentations (``sample_pairing_start``, default 100), then
  intermittent — on for 8 epochs, off for 2 (the paper's figures for its CIFAR-size sets; ILSVRC used 300k
  images on, 100k off) — and off again for the final fine-tuning epochs from ``sample_pairing_stop``.

Mixing happens with probability ``mix_prob`` per batch; when both mixup and CutMix are on, each mixed batch uses
one of them with equal chance (as in timm and the CutMix authors' comparisons). The targets are always returned
as float ``(N, K)``: one-hot for class indices, or multi-hot rows as given (multi-label data mix the same way).
Beta variates come from a NumPy generator seeded from the caller's torch generator, because torch's Beta
sampler only draws from the global RNG.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from imgcls.data.augment.config import AugmentConfig

Mixer = Callable[[torch.Tensor, torch.Tensor, torch.Generator, int], tuple[torch.Tensor, torch.Tensor]]


def soft_targets(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class indices ``(N,)`` as one-hot float ``(N, K)``; float ``(N, K)`` targets returned as float32."""
    if y.ndim == 1 and not y.is_floating_point():
        return torch.nn.functional.one_hot(y.long(), num_classes).float()
    if y.ndim == 2 and y.shape[1] == num_classes:
        return y.float()
    raise ValueError(f"targets must be class indices (N,) or (N, {num_classes}) rows, got {tuple(y.shape)}")


def _beta(alpha: float, generator: torch.Generator) -> float:
    seed = int(torch.randint(2**62, (1,), generator=generator))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def mixup(
    x: torch.Tensor, y_soft: torch.Tensor, alpha: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """mixup with ``λ ~ Beta(alpha, alpha)`` against a random permutation of the batch.

    Returns:
        ``(x_mixed, y_mixed, λ)``.
    """
    lam = _beta(alpha, generator)
    perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
    x = x * lam + x[perm] * (1.0 - lam)
    y = y_soft * lam + y_soft[perm.to(y_soft.device)] * (1.0 - lam)
    return x, y, lam


def cutmix_box(h: int, w: int, lam: float, generator: torch.Generator) -> tuple[int, int, int, int]:
    """CutMix's box ``(y0, y1, x0, x1)`` for a mixing ratio ``lam``: sides ``√(1 - λ)`` of the image's, centre
    uniform over the image, clipped at the border (Yun et al. 2019, §3.1)."""
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy = int(torch.randint(h, (1,), generator=generator))
    cx = int(torch.randint(w, (1,), generator=generator))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    return y0, y1, x0, x1


def cutmix(
    x: torch.Tensor, y_soft: torch.Tensor, alpha: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """CutMix: paste a box from a permuted batch; the label weight is the pixel share that stays.

    Returns:
        ``(x_mixed, y_mixed, λ)`` with ``λ = 1 - box area / image area`` of the clipped box.
    """
    h, w = x.shape[-2:]
    lam = _beta(alpha, generator)
    perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
    y0, y1, x0, x1 = cutmix_box(h, w, lam, generator)
    x = x.clone()
    x[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
    lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
    y = y_soft * lam + y_soft[perm.to(y_soft.device)] * (1.0 - lam)
    return x, y, lam


def sample_pairing_active(epoch: int, start: int, on: int, off: int, stop: int | None) -> bool:
    """Whether SamplePairing is on in ``epoch`` (0-based) under Inoue's schedule.

    Off before ``start``; from ``start`` on, cycles of ``on`` epochs on then ``off`` epochs off; off from ``stop``
    (the final fine-tuning) when given.
    """
    if epoch < start or (stop is not None and epoch >= stop):
        return False
    return (epoch - start) % (on + off) < on


def sample_pairing(
    x: torch.Tensor, y_soft: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Average each image with a random partner from the batch; keep the first image's label."""
    perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
    return (x + x[perm]) * 0.5, y_soft


def build_mixer(aug: AugmentConfig, num_classes: int) -> Mixer | None:
    """The batch mixer the training loader applies after `build_batch_transform`, or None when none is set.

    Returns:
        ``fn(x, y, generator, epoch) -> (x_mixed, y_soft)``: ``x`` float ``(N, C, H, W)``, ``y`` int64 ``(N,)``
        class indices or float ``(N, K)`` multi-hot rows; ``y_soft`` float32 ``(N, K)`` whose rows keep the sum
        of the input rows (one for single-label data). Every draw comes from ``generator``.
    """
    if not (aug.mixup > 0 or aug.cutmix > 0 or aug.sample_pairing):
        return None

    def mix(
        x: torch.Tensor, y: torch.Tensor, generator: torch.Generator, epoch: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        y_soft = soft_targets(y, num_classes)
        if aug.sample_pairing:
            active = sample_pairing_active(
                epoch, aug.sample_pairing_start, aug.sample_pairing_on, aug.sample_pairing_off, aug.sample_pairing_stop
            )
            if active and float(torch.rand(1, generator=generator)) < aug.mix_prob:
                return sample_pairing(x, y_soft, generator)
            return x, y_soft
        if float(torch.rand(1, generator=generator)) >= aug.mix_prob:
            return x, y_soft
        use_cutmix = aug.cutmix > 0 and (aug.mixup <= 0 or float(torch.rand(1, generator=generator)) < 0.5)
        if use_cutmix:
            x, y_soft, _ = cutmix(x, y_soft, aug.cutmix, generator)
        else:
            x, y_soft, _ = mixup(x, y_soft, aug.mixup, generator)
        return x, y_soft

    return mix
