"""Muon (`imgcls.engine.muon`): the Newton–Schulz orthogonalisation, the update rule, the SGD groups, and the
parameter groups and recipe of the speedrun (airbench94_muon)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from imgcls.engine.config import OptimConfig, resolve_config
from imgcls.engine.muon import Muon, orthogonalize
from imgcls.engine.optim import build_optimizer, parameter_groups
from imgcls.errors import UserError
from imgcls.models import create_model


@pytest.mark.parametrize("shape", [(64, 576), (256, 2304), (576, 64), (10, 10)])
def test_orthogonalize_pushes_singular_values_near_one(shape):
    torch.manual_seed(0)
    # A badly conditioned matrix: singular values spread over three decades.
    u, _ = torch.linalg.qr(torch.randn(shape[0], shape[0]))
    v, _ = torch.linalg.qr(torch.randn(shape[1], shape[1]))
    k = min(shape)
    s = torch.logspace(0, -3, k)
    g = u[:, :k] @ torch.diag(s) @ v[:, :k].T
    before = torch.linalg.svdvals(g)
    after = torch.linalg.svdvals(orthogonalize(g, steps=5))
    assert before.max() / before.min() > 500
    # The quintic's fixed point oscillates in about [0.7, 1.2]; the smallest values (1e-3 of the largest) have
    # been lifted by two orders of magnitude or more.
    assert after.max() < 1.3 and after[: k // 2].min() > 0.6
    assert after.min() > 100 * (before.min() / before.max())


def test_orthogonalize_is_equivariant_to_transpose_and_scale_free():
    torch.manual_seed(1)
    g = torch.randn(32, 200)
    assert torch.allclose(orthogonalize(g.T), orthogonalize(g).T, atol=1e-5)
    assert torch.allclose(orthogonalize(1000 * g), orthogonalize(g), atol=1e-4)
    with pytest.raises(ValueError, match="matrix"):
        orthogonalize(torch.randn(2, 3, 4))


def _conv_and_bias():
    torch.manual_seed(2)
    return nn.Parameter(torch.randn(8, 4, 3, 3)), nn.Parameter(torch.randn(8))


def test_sgd_groups_match_torch_sgd_exactly():
    _, ours = _conv_and_bias()
    theirs = nn.Parameter(ours.detach().clone())
    opt = Muon([{"params": [ours], "muon": False}], lr=0.1, momentum=0.85, nesterov=True, weight_decay=0.01)
    ref = torch.optim.SGD([theirs], lr=0.1, momentum=0.85, nesterov=True, weight_decay=0.01)
    torch.manual_seed(3)
    for _ in range(5):
        g = torch.randn(8)
        ours.grad, theirs.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_muon_step_is_the_orthogonalised_nesterov_direction():
    w, _ = _conv_and_bias()
    start = w.detach().clone()
    opt = Muon([w], lr=0.05, momentum=0.6, nesterov=True, ns_steps=3)
    g1, g2 = torch.randn(8, 4, 3, 3), torch.randn(8, 4, 3, 3)
    w.grad = g1
    opt.step()
    w.grad = g2
    opt.step()
    buf = 0.6 * g1 + g2  # the momentum buffer after two steps (the first buffer is the gradient itself)
    expected = start - 0.05 * orthogonalize((g1 + 0.6 * g1).reshape(8, -1), 3).view_as(start)
    expected = expected - 0.05 * orthogonalize((g2 + 0.6 * buf).reshape(8, -1), 3).view_as(start)
    assert torch.allclose(w, expected, atol=1e-6)


def test_muon_update_does_not_depend_on_the_loss_scale():
    a, _ = _conv_and_bias()
    b = nn.Parameter(a.detach().clone())
    opt_a, opt_b = Muon([a], lr=0.1, momentum=0.6), Muon([b], lr=0.1, momentum=0.6)
    torch.manual_seed(4)
    for _ in range(3):
        g = torch.randn_like(a)
        a.grad, b.grad = g, 2000 * g  # a summed loss over a batch of 2000 instead of its mean
        opt_a.step()
        opt_b.step()
    assert torch.allclose(a, b, atol=1e-5)


def test_weight_normalisation_rescales_each_filter_bank_to_root_out():
    w, _ = _conv_and_bias()
    with torch.no_grad():
        w.mul_(7.0)
    opt = Muon([w], lr=0.0, momentum=0.6, normalize_weights=True)
    w.grad = torch.randn_like(w)
    opt.step()
    assert w.norm().item() == pytest.approx(8**0.5, rel=1e-6)


def test_muon_lowers_a_least_squares_loss():
    torch.manual_seed(5)
    x, target = torch.randn(256, 32), torch.randn(256, 16)
    layer = nn.Linear(32, 16, bias=False)
    opt = Muon(layer.parameters(), lr=0.02, momentum=0.9)
    losses = []
    for _ in range(100):
        loss = (layer(x) - target).square().mean()
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.75 * losses[0]


def test_muon_refuses_vectors_in_muon_groups():
    _, bias = _conv_and_bias()
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        Muon([bias])


def test_speedrun_groups_follow_airbench94_muon():
    cfg = resolve_config("speedrun")
    model = create_model(cfg.model.name, num_classes=10, **cfg.model.kwargs)
    groups = {g["group_name"]: g for g in parameter_groups(model, cfg.optim)}
    assert set(groups) == {"muon", "head", "bias"}
    convs = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d) and m.weight.requires_grad]
    assert {id(p) for p in groups["muon"]["params"]} == {id(p) for p in convs} and len(convs) == 6
    assert groups["head"]["params"] == [model.fc.weight]
    assert model.whiten.bias in groups["bias"]["params"] and len(groups["bias"]["params"]) == 7  # + 6 BN shifts
    # The reference's summed-loss figures at batch 2000: Muon 0.24, head 0.67, biases 0.053, decay 2e-6 * 2000.
    batch = cfg.data.batch_size
    assert batch == 2000 and groups["muon"]["lr"] == 0.24 and groups["muon"]["weight_decay"] == 0
    assert groups["head"]["lr"] == pytest.approx(0.67 * batch)
    assert groups["bias"]["lr"] == pytest.approx(0.053 * batch, rel=1e-3)
    for name in ("head", "bias"):
        g = groups[name]
        assert g["lr"] * g["weight_decay"] == pytest.approx(2e-6 * batch, rel=1e-3) and g["momentum"] == 0.85
    optimizer = build_optimizer(model, cfg.optim)
    assert isinstance(optimizer, Muon) and optimizer.ns_steps == 3
    assert cfg.train.epochs == 8 and cfg.train.label_smoothing == 0.2 and cfg.train.lookahead_k in (0, None)
    # The head: unit-std weights, logits scaled by 1/256.
    assert model.fc.weight.std().item() == pytest.approx(1.0, rel=1e-5) and model.logit_scale == 1 / 256


def test_muon_config_errors_are_one_line():
    model = create_model("airbench94", num_classes=10)
    with pytest.raises(UserError, match=r"optim\.sgd_lr"):
        parameter_groups(model, OptimConfig(name="muon", lr=0.24))
    with pytest.raises(UserError, match="freeze-backbone"):
        parameter_groups(model, OptimConfig(name="muon", lr=0.24, sgd_lr=1.0, freeze_backbone=True))


def test_end_at_freeze_gives_the_whitening_bias_a_group_of_its_own():
    cfg = resolve_config("speedrun")
    model = create_model(cfg.model.name, num_classes=10, **cfg.model.kwargs)
    plain = {g["group_name"]: g for g in build_optimizer(model, cfg.optim).param_groups}
    split = {g["group_name"]: g for g in build_optimizer(model, cfg.optim, {"whiten.bias": 3}).param_groups}
    assert set(split) == {"muon", "head", "bias", "bias@3"}
    assert split["bias@3"]["params"] == [model.whiten.bias] and split["bias@3"]["end_epoch"] == 3
    assert id(model.whiten.bias) not in {id(p) for p in split["bias"]["params"]} and len(split["bias"]["params"]) == 6
    for key in ("lr", "base_lr", "momentum", "weight_decay", "muon"):
        assert split["bias@3"][key] == plain["bias"][key], key
    assert "end_epoch" not in split["bias"] and split["muon"]["params"] == plain["muon"]["params"]
