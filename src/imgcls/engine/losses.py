"""Training losses, from logits, with hard (class index) or soft (per-class probability) targets.

Which loss fits which problem:

- ``ce`` — cross-entropy (log loss). The default for one label per image (multi-class and binary). Accepts
  label smoothing (Szegedy et al. 2015, arXiv:1512.00567, Sec. 7) and soft targets (mixup, CutMix).
- ``bce`` — binary cross-entropy on each logit independently. For multi-label data, where an image carries
  any number of labels (targets are multi-hot ``(N, K)``).
- ``hinge`` — multi-class hinge (Weston & Watkins 1999, as ``torch.nn.MultiMarginLoss``): an SVM-style
  margin. Stops pushing once the right class leads by the margin, so it is less swayed by easy examples;
  predicted scores are not calibrated probabilities.
- ``huber`` / ``l1`` — regression losses on the softmax probabilities against the one-hot (or soft) target.
  Bounded, hence robust to mislabelled images, but slower to train than cross-entropy because the gradient
  vanishes when the softmax saturates on a wrong class. With ``delta=1`` Huber on probabilities is half the
  squared error (the Brier score / 2), since a probability error never exceeds 1.

Auxiliary heads (GoogLeNet, Inception v3) add their own loss with the paper's weight: GoogLeNet 0.3 per
head (Szegedy et al. 2014, arXiv:1409.4842, Sec. 5), Inception v3 0.4 (the weight used by the reference
implementations; the paper, arXiv:1512.00567 Sec. 4, describes the head without a number). The models expose
the weights as ``aux_weights`` and return ``(logits, aux...)`` only in training mode, so evaluation sees the
main logits alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imgcls.engine.config import LOSSES
from imgcls.errors import UserError


def _soft_targets(target: Tensor, num_classes: int, smoothing: float = 0.0) -> Tensor:
    """Class indices or soft targets -> ``(N, K)`` float probabilities, smoothed toward uniform."""
    if target.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
        soft = F.one_hot(target.long(), num_classes).float()
    else:
        soft = target.float()
    if smoothing > 0:
        # Szegedy et al. 2015, Sec. 7: q' = (1 - eps) q + eps / K
        soft = soft * (1.0 - smoothing) + smoothing / num_classes
    return soft


class CrossEntropy(nn.Module):
    """Cross-entropy with label smoothing; hard targets ``(N,)`` or soft targets ``(N, K)``."""

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if target.ndim == 1:
            return F.cross_entropy(logits.float(), target.long(), label_smoothing=self.label_smoothing)
        soft = _soft_targets(target, logits.shape[1], self.label_smoothing)
        return -(soft * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


class BinaryCrossEntropy(nn.Module):
    """Per-class sigmoid cross-entropy for multi-label targets ``(N, K)`` in [0, 1], averaged over all entries.

    Label smoothing moves each target toward 0.5: ``t' = t (1 - eps) + eps / 2``.
    """

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if target.ndim == 1:
            target = F.one_hot(target.long(), logits.shape[1])
        target = target.float()
        if self.label_smoothing > 0:
            target = target * (1.0 - self.label_smoothing) + self.label_smoothing / 2
        return F.binary_cross_entropy_with_logits(logits.float(), target)


class MultiClassHinge(nn.Module):
    """``mean_n sum_{j != y_n} max(0, margin - s_y + s_j) / K`` (``torch.nn.MultiMarginLoss``).

    Soft targets are reduced to their most probable class: a hinge has no notion of a target distribution.
    """

    def __init__(self, margin: float = 1.0):
        super().__init__()
        self.margin = margin

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if target.ndim == 2:
            target = target.argmax(dim=1)
        return F.multi_margin_loss(logits.float(), target.long(), margin=self.margin)


class ProbabilityRegression(nn.Module):
    """Huber or L1 distance between ``softmax(logits)`` and the target distribution.

    Summed over classes, averaged over the batch: ``mean_n sum_k rho(p_nk - q_nk)``.
    """

    def __init__(self, kind: str = "huber", delta: float = 1.0, label_smoothing: float = 0.0):
        super().__init__()
        self.kind = kind
        self.delta = delta
        self.label_smoothing = label_smoothing

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        prob = F.softmax(logits.float(), dim=1)
        soft = _soft_targets(target, logits.shape[1], self.label_smoothing)
        if self.kind == "l1":
            per_entry = F.l1_loss(prob, soft, reduction="none")
        else:
            per_entry = F.huber_loss(prob, soft, reduction="none", delta=self.delta)
        return per_entry.sum(dim=1).mean()


def build_loss(name: str = "ce", *, task: str = "multiclass", label_smoothing: float = 0.0) -> nn.Module:
    """The loss called ``name`` (see the module docstring for when each fits).

    Args:
        name: one of ``ce``, ``bce``, ``hinge``, ``huber``, ``l1``; ``auto`` picks ``bce`` for multi-label
            data and ``ce`` otherwise.
        task: ``multiclass``, ``binary`` or ``multilabel``; multi-label data needs ``bce``.
        label_smoothing: epsilon of label smoothing (``ce``, ``bce``, ``huber``, ``l1``).
    """
    if name == "auto":
        name = "bce" if task == "multilabel" else "ce"
    if name not in LOSSES:
        raise UserError(f"unknown loss: {name} (choose from {', '.join(LOSSES)})")
    if task == "multilabel" and name != "bce":
        raise UserError(f"loss {name} does not fit multi-label data (use bce)")
    if not 0.0 <= label_smoothing < 1.0:
        raise UserError(f"label smoothing must be in [0, 1): {label_smoothing}")
    if name == "ce":
        return CrossEntropy(label_smoothing)
    if name == "bce":
        return BinaryCrossEntropy(label_smoothing)
    if name == "hinge":
        return MultiClassHinge()
    return ProbabilityRegression(name, label_smoothing=label_smoothing)


def compute_loss(
    loss_fn: nn.Module, output: Tensor | Sequence[Tensor], target: Tensor, aux_weights: Sequence[float] = ()
) -> tuple[Tensor, Tensor]:
    """Loss of a model's training output, with auxiliary heads weighted as in their papers.

    Args:
        loss_fn: a loss from ``build_loss``.
        output: logits, or ``(logits, aux1, ...)`` from a model with auxiliary heads in training mode.
        target: class indices ``(N,)`` or soft / multi-hot targets ``(N, K)``.
        aux_weights: one weight per auxiliary output (the model's ``aux_weights``).

    Returns:
        ``(total loss, main logits)``; the logits are what accuracy is measured on.
    """
    if isinstance(output, (tuple, list)):
        logits, *aux = output
        if len(aux) != len(aux_weights):
            raise ValueError(f"model returned {len(aux)} auxiliary outputs but has {len(aux_weights)} aux_weights")
        loss = loss_fn(logits, target)
        for weight, aux_logits in zip(aux_weights, aux):
            loss = loss + weight * loss_fn(aux_logits, target)
        return loss, logits
    return loss_fn(output, target), output


__all__ = [
    "LOSSES",
    "BinaryCrossEntropy",
    "CrossEntropy",
    "MultiClassHinge",
    "ProbabilityRegression",
    "build_loss",
    "compute_loss",
]
