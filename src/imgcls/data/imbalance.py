"""Class imbalance: a class-balanced sampler and SMOTE oversampling.

- Class-balanced sampling: every image is drawn with probability proportional to ``1 / n_c`` of its class, so
  each class is expected to fill ``1 / K`` of an epoch (sampling with replacement, as in the re-sampling
  baselines of Buda et al. 2018, "A systematic study of the class imbalance problem in CNNs").
- SMOTE (Chawla et al. 2002, "SMOTE: Synthetic Minority Over-sampling Technique", JAIR 16): new minority
  samples on the segment between a sample and one of its ``k`` nearest same-class neighbours, until every class
  has as many samples as the largest. We call imbalanced-learn's implementation on flattened pixels; on images
  this interpolates whole images (a blend of two neighbours), which is what SMOTE means for raw pixels.
"""

from __future__ import annotations

import numpy as np
import torch

from imgcls.errors import UserError


def class_balanced_indices(targets: torch.Tensor, num_samples: int, generator: torch.Generator) -> torch.Tensor:
    """Indices drawn with replacement so that every class is equally likely.

    Args:
        targets: ``(N,)`` class indices.
        num_samples: how many indices to draw (an epoch's worth, usually ``N``).
        generator: the only source of randomness.

    Returns:
        LongTensor ``(num_samples,)`` of indices into ``targets``.
    """
    targets = torch.as_tensor(targets)
    if targets.ndim != 1:
        raise UserError("augment.sampler: 'balanced' needs single-label targets (one class per image)")
    if targets.numel() == 0:
        raise ValueError("class_balanced_indices: no targets")
    counts = torch.bincount(targets.long())
    weights = 1.0 / counts[targets.long()].double()
    return torch.multinomial(weights, num_samples, replacement=True, generator=generator)


def smote_oversample(
    images: torch.Tensor, targets: torch.Tensor, seed: int, k_neighbors: int = 5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Balance a uint8 image set with SMOTE: every class grows to the size of the largest.

    Args:
        images: uint8 ``(N, C, H, W)``.
        targets: ``(N,)`` class indices.
        seed: SMOTE's random state.
        k_neighbors: neighbours per sample (the paper's 5), reduced when the smallest class is smaller.

    Returns:
        ``(images, targets)``: the originals first, in order, then the synthetic samples (uint8, int64).

    Raises:
        UserError: a class with a single image (SMOTE needs a neighbour to interpolate with).
    """
    from imblearn.over_sampling import SMOTE  # heavy import, only when asked for

    if images.ndim != 4 or images.dtype != torch.uint8:
        raise ValueError(f"smote_oversample expects uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    y = torch.as_tensor(targets).long().cpu().numpy()
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2 or counts.min() == counts.max():
        return images, torch.as_tensor(y)
    if counts.min() < 2:
        rare = classes[counts.argmin()]
        raise UserError(f"augment.smote: class {rare} has a single image; SMOTE needs at least two per class")
    k = min(k_neighbors, int(counts.min()) - 1)
    n, c, h, w = images.shape
    flat = images.reshape(n, -1).cpu().numpy().astype(np.float32)
    x_res, y_res = SMOTE(k_neighbors=k, random_state=seed).fit_resample(flat, y)
    out = torch.from_numpy(np.clip(np.rint(x_res), 0, 255).astype(np.uint8)).view(-1, c, h, w)
    return out, torch.from_numpy(np.asarray(y_res, dtype=np.int64))
