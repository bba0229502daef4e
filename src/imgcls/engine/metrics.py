"""Classification metrics from logits and targets (their exact cross-rank versions gather with
`imgcls.engine.distributed`).

Everything here takes the model's raw outputs (``logits``, ``(N, K)``) and the targets the data layer yields:
class indices ``(N,)`` int64, or ``(N, K)`` float soft/multi-hot rows. Accuracies are in percent, like the
tables of the papers (Krizhevsky et al. 2012 report top-1 and top-5 *error* rates; we report accuracy).

Conventions:
- Top-k accuracy: a sample counts when its target class is among the ``k`` highest logits (ties broken by
  ``torch.topk``). Soft targets count by their argmax. ``None`` when ``k`` exceeds the number of classes.
- Binary problems may have one logit per sample (``(N,)`` or ``(N, 1)``, BCE-trained) or two (CE-trained); one
  logit ``z`` is read as the two logits ``(0, z)``, whose softmax is ``(1 - sigmoid(z), sigmoid(z))``.
- Per-class precision/recall/F1 follow scikit-learn's definitions with ``zero_division=0``; macro averages run
  over all ``K`` classes (scikit-learn's ``labels=range(K)``). Per-class recall is per-class accuracy.
- Multi-label: mean average precision over the classes that have at least one positive (a class with no
  positive has no defined AP), F1 at a probability threshold (micro and macro).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

TASKS = ("multiclass", "binary", "multilabel")


# --- shapes ----------------------------------------------------------------------------------------------------


def class_logits(logits: Tensor) -> Tensor:
    """``(N, K)`` logits; a single binary logit ``z`` (shape ``(N,)`` or ``(N, 1)``) becomes ``(0, z)``."""
    if logits.ndim == 1:
        logits = logits[:, None]
    if logits.shape[1] == 1:
        logits = torch.cat([torch.zeros_like(logits), logits], dim=1)
    return logits


def class_targets(targets: Tensor) -> Tensor:
    """Class indices ``(N,)``: soft or one-hot rows ``(N, K)`` count by their argmax."""
    if targets.ndim == 2 and targets.shape[1] > 1:
        return targets.argmax(dim=1)
    return targets.reshape(-1).long()


def probabilities(logits: Tensor, task: str) -> Tensor:
    """Class probabilities ``(N, K)`` in float32: sigmoid per label for multi-label, softmax otherwise."""
    logits = logits.float()
    if task == "multilabel":
        return torch.sigmoid(logits)
    return torch.softmax(class_logits(logits), dim=1)


# --- multi-class -----------------------------------------------------------------------------------------------


def topk_correct(logits: Tensor, targets: Tensor, ks: tuple[int, ...] = (1, 5)) -> Tensor:
    """Number of samples whose target is among the top ``k`` logits, for each ``k`` in ``ks`` (int64, ``(len(ks),)``).

    Counts rather than percentages so that they can be summed over batches and ranks before dividing.
    ``k`` larger than the number of classes counts every sample.
    """
    logits = class_logits(logits)
    target = class_targets(targets).to(logits.device)
    maxk = min(max(ks), logits.shape[1])
    top = logits.topk(maxk, dim=1).indices  # (N, maxk), best first
    hit = top.eq(target[:, None])
    return torch.stack([hit[:, : min(k, maxk)].any(dim=1).sum() for k in ks]).to(torch.int64)


def topk_accuracy(logits: Tensor, targets: Tensor, ks: tuple[int, ...] = (1, 5)) -> list[float | None]:
    """Top-k accuracy in percent for each ``k`` in ``ks``; ``None`` where ``k`` exceeds the number of classes or
    there are no samples (an accuracy of nothing is undefined, and JSON has no NaN).

    Args:
        logits: ``(N, K)`` scores (a single binary logit is accepted, see the module docstring).
        targets: ``(N,)`` class indices or ``(N, K)`` soft targets (counted by argmax).
        ks: the ``k`` values, e.g. ``(1, 5)``.
    """
    num_classes = class_logits(logits).shape[1]
    n = logits.shape[0]
    correct = topk_correct(logits, targets, ks)
    return [None if k > num_classes or not n else 100.0 * int(c) / n for k, c in zip(ks, correct.tolist())]


def confusion_matrix(preds: Tensor, targets: Tensor, num_classes: int) -> Tensor:
    """``(K, K)`` int64 counts; row = true class, column = predicted class (scikit-learn's layout).

    Args:
        preds: predicted class indices ``(N,)``, or logits ``(N, K)`` (argmax taken).
        targets: class indices ``(N,)`` or soft targets ``(N, K)`` (argmax taken).
        num_classes: ``K``.
    """
    if preds.is_floating_point():
        preds = class_logits(preds).argmax(dim=1)
    preds = preds.reshape(-1).long().cpu()
    target = class_targets(targets).cpu()
    flat = target * num_classes + preds
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros(num.shape, dtype=np.float64), where=den != 0)


def per_class_metrics(confusion: Tensor | np.ndarray) -> dict[str, list]:
    """Per-class precision, recall, F1 and support from a confusion matrix (row = true class).

    Returns:
        ``{"precision", "recall", "f1", "support"}``, each a list of length ``K``; a class never predicted
        (or never present) gets 0 precision (recall), as scikit-learn does with ``zero_division=0``.
    """
    cm = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(cm)
    predicted = cm.sum(axis=0)
    support = cm.sum(axis=1)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    return {
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "support": support.astype(np.int64).tolist(),
    }


def binary_auc(logits: Tensor, targets: Tensor) -> float | None:
    """Area under the ROC curve of the positive class (index 1); ``None`` when only one class is present.

    Args:
        logits: one logit ``(N,)``/``(N, 1)`` or two ``(N, 2)`` per sample.
        targets: 0/1 labels ``(N,)`` (or one-hot ``(N, 2)``).
    """
    from sklearn.metrics import roc_auc_score

    y = class_targets(targets).cpu().numpy()
    if len(np.unique(y)) < 2:
        return None
    score = probabilities(logits, "binary")[:, 1].cpu().numpy()
    return float(roc_auc_score(y, score))


# --- multi-label -----------------------------------------------------------------------------------------------


def multilabel_metrics(logits: Tensor, targets: Tensor, threshold: float | list[float] = 0.5) -> dict:
    """Multi-label metrics: mAP, F1 at a probability threshold, precision@1 and exact-match accuracy.

    Args:
        logits: ``(N, K)`` per-label logits (sigmoid gives each label's probability).
        targets: ``(N, K)`` multi-hot (values ≥ 0.5 count as positive, so smoothed labels work too).
        threshold: a label is predicted when its probability is at least this (one value, or one per class).

    Returns:
        ``mAP`` (percent; mean of per-class average precision over the classes with a positive, scikit-learn's
        ``average_precision_score``), ``f1_micro`` / ``f1_macro`` (percent), ``precision_at_1`` (percent of
        samples whose highest-scoring label is positive), ``subset_accuracy`` (percent of samples with every
        label right), ``threshold`` and ``per_class`` (``ap`` — ``None`` where undefined —, ``precision``,
        ``recall``, ``f1``, ``support``).
    """
    from sklearn.metrics import average_precision_score

    probs = torch.sigmoid(logits.float()).cpu().numpy()
    truth = (targets.float().cpu().numpy() >= 0.5).astype(np.int64)
    n, k = truth.shape
    ap: list[float | None] = []
    for c in range(k):
        ap.append(float(average_precision_score(truth[:, c], probs[:, c])) if truth[:, c].any() else None)
    defined = [a for a in ap if a is not None]
    cut = np.asarray(threshold, dtype=np.float64)
    pred = (probs >= (cut if cut.ndim == 0 else cut[None, :])).astype(np.int64)
    tp = (pred & truth).sum(axis=0).astype(np.float64)
    fp = (pred & (1 - truth)).sum(axis=0).astype(np.float64)
    fn = ((1 - pred) & truth).sum(axis=0).astype(np.float64)
    precision = _safe_div(tp, tp + fp)
    recall = _safe_div(tp, tp + fn)
    f1 = _safe_div(2 * tp, 2 * tp + fp + fn)
    micro_den = 2 * tp.sum() + fp.sum() + fn.sum()
    best = probs.argmax(axis=1) if k else np.zeros(n, dtype=np.int64)
    return {
        "mAP": 100.0 * float(np.mean(defined)) if defined else None,
        "f1_micro": 100.0 * float(2 * tp.sum() / micro_den) if micro_den else 0.0,
        "f1_macro": 100.0 * float(f1.mean()) if k else 0.0,
        "precision_at_1": 100.0 * float(truth[np.arange(n), best].mean()) if n else None,
        "subset_accuracy": 100.0 * float((pred == truth).all(axis=1).mean()) if n else None,
        "threshold": threshold if np.ndim(threshold) == 0 else [float(t) for t in threshold],
        "per_class": {
            "ap": ap,
            "precision": precision.tolist(),
            "recall": recall.tolist(),
            "f1": f1.tolist(),
            "support": truth.sum(axis=0).astype(np.int64).tolist(),
        },
    }


def tune_thresholds(logits: Tensor, targets: Tensor, default: float = 0.5) -> list[float]:
    """Per-class probability thresholds that maximise each class's F1 on these samples (multi-label).

    For each class the samples are ranked by probability and every cut between two distinct probabilities is
    tried (predict the samples above it); the threshold is the midpoint of the best cut, so that it generalises
    to probabilities between the two. A class without a positive (F1 undefined) keeps ``default``, and so does a
    class whose best F1 is 0. Ties in F1 keep the highest threshold (the fewest positive predictions).

    Args:
        logits: ``(N, K)`` per-label logits.
        targets: ``(N, K)`` multi-hot (≥ 0.5 counts as positive).
        default: the threshold of classes that cannot be tuned.

    Returns:
        ``K`` thresholds in [0, 1].
    """
    probs = torch.sigmoid(logits.float()).cpu().numpy().astype(np.float64)
    truth = targets.float().cpu().numpy() >= 0.5
    out = []
    for c in range(probs.shape[1]):
        positives = int(truth[:, c].sum())
        if positives == 0:
            out.append(default)
            continue
        order = np.argsort(-probs[:, c], kind="stable")
        p, t = probs[order, c], truth[order, c]
        tp = np.cumsum(t)
        fp = np.cumsum(~t)
        f1 = 2 * tp / (2 * tp + fp + (positives - tp))
        distinct = np.append(p[:-1] > p[1:], True)  # a cut after i is realisable only between distinct values
        f1 = np.where(distinct, f1, -1.0)
        i = int(np.argmax(f1))
        if f1[i] <= 0:
            out.append(default)
            continue
        below = p[i + 1] if i + 1 < len(p) else 0.0
        out.append(round(float((p[i] + below) / 2), 6))
    return out


# --- everything at once ----------------------------------------------------------------------------------------


def classification_metrics(logits: Tensor, targets: Tensor, task: str, *, threshold: float | list[float] = 0.5) -> dict:
    """Every metric that fits ``task``, as plain Python values (ready for ``json.dumps``).

    Multi-class and binary: ``top1``, ``top5`` (``None`` under 5 classes), ``macro_precision``,
    ``macro_recall``, ``macro_f1``, ``balanced_accuracy`` (mean per-class recall), ``per_class``
    (precision/recall/F1/support) and ``confusion_matrix`` (row = true class); binary adds ``auc``.
    Multi-label: the keys of :func:`multilabel_metrics`, plus ``top1`` = precision@1 and ``top5 = None``
    (top-k accuracy has no single meaning with several true labels). Percentages throughout.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    logits = logits.detach().float().cpu()
    targets = targets.detach().cpu()
    n = int(logits.shape[0])
    if task == "multilabel":
        out = multilabel_metrics(logits, targets, threshold)
        return {"num_samples": n, "top1": out["precision_at_1"], "top5": None, **out}
    two = class_logits(logits)
    num_classes = two.shape[1]
    top1, top5 = topk_accuracy(two, targets, (1, 5))
    cm = confusion_matrix(two, targets, num_classes)
    per_class = per_class_metrics(cm)
    # balanced accuracy (scikit-learn's): mean recall over the classes present in the targets
    present_recall = [r for r, s in zip(per_class["recall"], per_class["support"]) if s]

    def macro(key: str) -> float | None:  # undefined (None) without samples
        return 100.0 * float(np.mean(per_class[key])) if n else None

    out = {
        "num_samples": n,
        "top1": top1,
        "top5": top5,
        "macro_precision": macro("precision"),
        "macro_recall": macro("recall"),
        "macro_f1": macro("f1"),
        "balanced_accuracy": 100.0 * float(np.mean(present_recall)) if present_recall else None,
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
    }
    if task == "binary" or num_classes == 2:
        out["auc"] = binary_auc(two, targets) if num_classes == 2 else None
    return out


def default_loss(logits: Tensor, targets: Tensor, task: str) -> Tensor:
    """The evaluation loss when none is given: cross-entropy (log loss), or BCE-with-logits for multi-label and
    single-logit binary outputs. Mean over the batch."""
    logits = logits.float()
    single_logit = logits.ndim == 1 or logits.shape[1] == 1
    if task == "multilabel" or (task == "binary" and single_logit):
        target = targets.float().reshape(logits.shape) if single_logit else targets.float()
        return F.binary_cross_entropy_with_logits(logits, target)
    if targets.ndim == 2:  # soft targets (label smoothing, mixup) — cross-entropy against a distribution
        return F.cross_entropy(logits, targets.float())
    return F.cross_entropy(logits, targets.long())


def finite_or_none(value: float | None) -> float | None:
    """``None`` for NaN/inf (JSON has no NaN), else the float."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


__all__ = [
    "TASKS",
    "binary_auc",
    "class_logits",
    "class_targets",
    "classification_metrics",
    "confusion_matrix",
    "default_loss",
    "finite_or_none",
    "multilabel_metrics",
    "per_class_metrics",
    "probabilities",
    "topk_accuracy",
    "topk_correct",
    "tune_thresholds",
]
