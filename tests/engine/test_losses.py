"""Each loss against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from imgcls.engine.losses import build_loss, compute_loss
from imgcls.errors import UserError


def test_cross_entropy_hard_target():
    logits = torch.tensor([[2.0, 0.0, 0.0]])
    loss = build_loss("ce")(logits, torch.tensor([0]))
    # -log(e^2 / (e^2 + 2)) = log(1 + 2 e^-2)
    assert loss.item() == pytest.approx(math.log(1 + 2 * math.exp(-2)), rel=1e-6)


def test_cross_entropy_label_smoothing_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0]])
    z = math.exp(2) + 2
    logp = [2 - math.log(z), -math.log(z), -math.log(z)]
    q = [1 - 0.3 + 0.1, 0.1, 0.1]  # eps = 0.3 spread over K = 3 classes
    expected = -sum(qi * li for qi, li in zip(q, logp))
    assert build_loss("ce", label_smoothing=0.3)(logits, torch.tensor([0])).item() == pytest.approx(expected, rel=1e-6)
    # The same smoothing applied to a one-hot soft target gives the same number.
    soft = torch.tensor([[1.0, 0.0, 0.0]])
    assert build_loss("ce", label_smoothing=0.3)(logits, soft).item() == pytest.approx(expected, rel=1e-6)


def test_cross_entropy_soft_target_mixup():
    logits = torch.tensor([[1.0, 0.0]])
    soft = torch.tensor([[0.25, 0.75]])
    z = math.e + 1
    expected = -(0.25 * (1 - math.log(z)) + 0.75 * (0 - math.log(z)))
    assert build_loss("ce")(logits, soft).item() == pytest.approx(expected, rel=1e-6)


def test_bce_multilabel_by_hand():
    logits = torch.tensor([[0.0, 2.0]])
    target = torch.tensor([[1.0, 0.0]])
    # mean of -log(sigmoid(0)) and -log(1 - sigmoid(2))
    expected = (math.log(2) + math.log(1 + math.exp(2))) / 2
    assert build_loss("auto", task="multilabel")(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_multiclass_hinge_by_hand():
    logits = torch.tensor([[1.0, 0.5, -1.0]])
    # sum_{j != y} max(0, 1 - s_y + s_j) / K = (0.5 + 0) / 3
    assert build_loss("hinge")(logits, torch.tensor([0])).item() == pytest.approx(0.5 / 3, rel=1e-6)
    # a soft target counts as its most probable class
    assert build_loss("hinge")(logits, torch.tensor([[0.9, 0.1, 0.0]])).item() == pytest.approx(0.5 / 3, rel=1e-6)


def test_huber_and_l1_on_probabilities_by_hand():
    logits = torch.zeros(1, 2)  # p = (0.5, 0.5)
    target = torch.tensor([0])  # q = (1, 0): both entries are off by 0.5
    assert build_loss("huber")(logits, target).item() == pytest.approx(2 * 0.5 * 0.5**2, rel=1e-6)
    assert build_loss("l1")(logits, target).item() == pytest.approx(1.0, rel=1e-6)


def test_aux_heads_weighted_by_paper_weights():
    main = torch.tensor([[2.0, 0.0]])
    aux1 = torch.tensor([[0.0, 0.0]])
    aux2 = torch.tensor([[0.0, 1.0]])
    target = torch.tensor([0])
    ce = build_loss("ce")
    total, logits = compute_loss(ce, (main, aux1, aux2), target, aux_weights=(0.3, 0.3))
    expected = ce(main, target) + 0.3 * ce(aux1, target) + 0.3 * ce(aux2, target)
    assert torch.equal(logits, main)
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    # Evaluation: a plain tensor is the logits alone, no auxiliary term.
    plain, _ = compute_loss(ce, main, target, aux_weights=(0.3, 0.3))
    assert plain.item() == pytest.approx(ce(main, target).item())


def test_loss_misuse_is_a_user_error():
    with pytest.raises(UserError, match="multi-label"):
        build_loss("ce", task="multilabel")
    with pytest.raises(UserError, match="unknown loss"):
        build_loss("focal")
    with pytest.raises(ValueError, match="auxiliary"):
        compute_loss(build_loss("ce"), (torch.zeros(1, 2), torch.zeros(1, 2)), torch.tensor([0]), aux_weights=())
