"""How far to trust a probability: expected calibration error, reliability bins and temperature scaling.

All three follow Guo et al. 2017, "On Calibration of Modern Neural Networks" (arXiv:1706.04599):

- Reliability bins (Section 2): the predictions are grouped by their confidence (the top class's probability)
  into ``M = 15`` equal-width bins ``((m-1)/M, m/M]``; each bin's accuracy is the fraction of its predictions
  that are right, and its confidence the mean top probability. A calibrated model has accuracy = confidence in
  every bin (the diagonal of the reliability diagram).
- Expected calibration error (Eq. 3): ``ECE = sum_m |B_m| / n * |acc(B_m) - conf(B_m)|``, here in percent.
- Temperature scaling (Section 4.2): every logit vector is divided by one scalar ``T > 0`` fitted to minimise
  the negative log-likelihood on the validation set. Dividing by the same positive number never changes which
  class is largest, so top-1 (and every top-k) is unchanged; only the confidence moves. The NLL of
  ``softmax(z / T)`` is convex in ``1 / T`` (a log-sum-exp of linear functions minus a linear one), so a
  golden-section search over ``1 / T`` in ``[1 / T_MAX, 1 / T_MIN]`` finds its minimum; the bounds keep a
  validation set the model gets entirely right (whose NLL falls forever as ``T -> 0``) from sending ``T`` to 0.

Multi-class and binary tasks only: with several true labels per image (multi-label) "the" confidence has no
meaning, and its decisions are tuned per class instead (``imgcls.engine.metrics.tune_thresholds``).
A single binary logit ``z`` counts as the pair ``(0, z)``, whose softmax is ``sigmoid(z)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from imgcls.engine.metrics import class_logits, class_targets

NUM_BINS = 15  # Guo et al. 2017, Section 5 (M = 15 bins throughout their tables)
T_MIN, T_MAX = 0.05, 20.0  # the search range of the temperature
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


@dataclass(frozen=True)
class Reliability:
    """Reliability bins of one set of predictions.

    Attributes:
        ece: expected calibration error in percent (``None`` without samples).
        counts: predictions per bin (``NUM_BINS`` values).
        accuracy: fraction right per bin, ``None`` for an empty bin.
        confidence: mean top probability per bin, ``None`` for an empty bin.
        num_samples: predictions counted.
    """

    ece: float | None
    counts: list[int]
    accuracy: list[float | None]
    confidence: list[float | None]
    num_samples: int

    def to_dict(self) -> dict:
        return {
            "ece": self.ece,
            "bins": len(self.counts),
            "counts": self.counts,
            "accuracy": self.accuracy,
            "confidence": self.confidence,
            "num_samples": self.num_samples,
        }


def reliability(probs: Tensor, targets: Tensor, num_bins: int = NUM_BINS) -> Reliability:
    """Reliability bins and ECE of class probabilities ``(N, K)`` against targets (indices or one-hot rows).

    Bin ``m`` (1-based) holds the confidences in ``((m-1)/M, m/M]``; a confidence of exactly 0 cannot occur for
    ``K >= 1`` classes (the top probability is at least ``1/K``).
    """
    probs = probs.detach().double().cpu()
    labels = class_targets(targets.detach().cpu())
    n = int(probs.shape[0])
    if n == 0:
        return Reliability(None, [0] * num_bins, [None] * num_bins, [None] * num_bins, 0)
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels).double()
    # ceil(c * M) - 1 puts c in ((m-1)/M, m/M]; clamp sends the (impossible) c = 0 to the first bin.
    index = (torch.ceil(confidence * num_bins).long() - 1).clamp_(0, num_bins - 1)
    counts = torch.bincount(index, minlength=num_bins)
    acc_sum = torch.bincount(index, weights=correct, minlength=num_bins)
    conf_sum = torch.bincount(index, weights=confidence, minlength=num_bins)
    gap = (acc_sum - conf_sum).abs().sum()  # sum_m |B_m| * |acc - conf| = sum_m |sum(correct) - sum(conf)|
    accuracy = [float(a / c) if c else None for a, c in zip(acc_sum.tolist(), counts.tolist())]
    mean_conf = [float(s / c) if c else None for s, c in zip(conf_sum.tolist(), counts.tolist())]
    return Reliability(100.0 * float(gap) / n, [int(c) for c in counts.tolist()], accuracy, mean_conf, n)


def softmax_probabilities(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Class probabilities of ``logits / temperature`` (a single binary logit as ``(0, z)``)."""
    return torch.softmax(class_logits(logits.detach().double()) / temperature, dim=1)


def nll(logits: Tensor, targets: Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the targets under ``softmax(logits / temperature)``."""
    z = class_logits(logits.detach().double().cpu()) / temperature
    labels = class_targets(targets.detach().cpu())
    return float(torch.nn.functional.cross_entropy(z, labels))


def fit_temperature(logits: Tensor, targets: Tensor, t_min: float = T_MIN, t_max: float = T_MAX) -> float:
    """The temperature ``T`` in ``[t_min, t_max]`` that minimises the NLL of ``softmax(logits / T)``.

    Golden-section search over ``beta = 1 / T`` (the NLL is convex in ``beta``), to a relative width of 1e-6.
    Without samples the answer is 1 (nothing to fit).
    """
    z = class_logits(logits.detach().double().cpu())
    labels = class_targets(targets.detach().cpu())
    if z.shape[0] == 0:
        return 1.0
    # -log softmax(beta z)_y = log(1 + sum_{j != y} exp(beta (z_j - z_y))), written as softplus(logsumexp(...)) so
    # that the tiny losses of confident right answers stay apart instead of rounding to 0 (ties would stop the
    # search short of the bound on a validation set the model gets all right).
    margins = z - z.gather(1, labels.view(-1, 1))  # (N, K), 0 at the true class
    true_class = torch.zeros_like(z, dtype=torch.bool).scatter_(1, labels.view(-1, 1), True)

    def loss(beta: float) -> float:
        others = (beta * margins).masked_fill(true_class, float("-inf"))
        return float(torch.nn.functional.softplus(torch.logsumexp(others, dim=1)).mean())

    lo, hi = 1.0 / t_max, 1.0 / t_min
    a, b = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
    fa, fb = loss(a), loss(b)
    while hi - lo > 1e-6 * hi:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - _GOLDEN * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + _GOLDEN * (hi - lo)
            fb = loss(b)
    beta = (lo + hi) / 2.0
    return float(1.0 / beta)


def calibration_report(logits: Tensor, targets: Tensor, temperature: float | None = None) -> dict:
    """ECE and reliability bins before and, given a temperature, after scaling — plain values for JSON.

    Returns:
        ``{"bins", "ece", "nll", "reliability"}`` for the logits as they are, and with ``temperature``:
        ``"temperature"``, ``"ece_calibrated"``, ``"nll_calibrated"``, ``"reliability_calibrated"``. ECE in
        percent, bin accuracy and confidence as fractions.
    """
    before = reliability(softmax_probabilities(logits), targets)
    n = before.num_samples
    out = {
        "bins": NUM_BINS,
        "num_samples": n,
        "ece": before.ece,
        "nll": nll(logits, targets) if n else None,
        "reliability": before.to_dict(),
    }
    if temperature is not None:
        after = reliability(softmax_probabilities(logits, temperature), targets)
        out.update(
            temperature=float(temperature),
            ece_calibrated=after.ece,
            nll_calibrated=nll(logits, targets, temperature) if n else None,
            reliability_calibrated=after.to_dict(),
        )
    return out


__all__ = [
    "NUM_BINS",
    "T_MAX",
    "T_MIN",
    "Reliability",
    "calibration_report",
    "fit_temperature",
    "nll",
    "reliability",
    "softmax_probabilities",
]
