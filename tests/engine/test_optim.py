"""Parameter groups: decay exclusion, layer-wise learning rates, frozen backbone, the three optimisers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from imgcls.engine.config import OptimConfig
from imgcls.engine.optim import build_optimizer
from imgcls.errors import UserError
from imgcls.models import Classifier


class TinyNet(Classifier):
    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, bias=True)
        self.bn = nn.BatchNorm2d(4)
        self.num_features = 4
        self.num_classes = num_classes
        self.fc = nn.Linear(4, num_classes)

    def forward_features(self, x):
        return self.bn(self.conv(x)).mean((2, 3))

    def forward_head(self, x, pre_logits=False):
        return x if pre_logits else self.fc(x)

    def get_classifier(self):
        return self.fc


def _groups(opt):
    return {g["group_name"]: g for g in opt.param_groups}


def test_weight_decay_skips_norm_and_bias():
    model = TinyNet()
    opt = build_optimizer(model, OptimConfig(name="sgd", lr=0.1, weight_decay=5e-4))
    groups = _groups(opt)
    assert groups["backbone"]["params"] == [model.conv.weight]
    assert {id(p) for p in groups["backbone_no_decay"]["params"]} == {
        id(model.conv.bias),
        id(model.bn.weight),
        id(model.bn.bias),
    }
    assert groups["backbone_no_decay"]["weight_decay"] == 0.0
    assert groups["head"]["params"] == [model.fc.weight]
    assert groups["head"]["weight_decay"] == 5e-4


def test_decay_step_with_zero_gradient_by_hand():
    # With a zero loss gradient SGD's only move is weight decay: w <- w - lr * wd * w, and never on biases.
    model = TinyNet()
    opt = build_optimizer(model, OptimConfig(name="sgd", lr=0.5, weight_decay=0.1, momentum=0.9))
    w0, b0, g0 = model.fc.weight.detach().clone(), model.fc.bias.detach().clone(), model.bn.weight.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.allclose(model.fc.weight, w0 * (1 - 0.5 * 0.1))
    assert torch.equal(model.fc.bias, b0)
    assert torch.equal(model.bn.weight, g0)


def test_backbone_learning_rate_multiplier():
    opt = build_optimizer(TinyNet(), OptimConfig(name="adamw", lr=1e-3, backbone_lr_mult=0.1))
    groups = _groups(opt)
    assert groups["head"]["lr"] == pytest.approx(1e-3)
    assert groups["backbone"]["lr"] == pytest.approx(1e-4)
    assert groups["backbone"]["base_lr"] == pytest.approx(1e-4)


def test_frozen_backbone_trains_the_classifier_only():
    torch.manual_seed(0)
    model = TinyNet()
    opt = build_optimizer(model, OptimConfig(name="sgd", lr=0.1, freeze_backbone=True))
    conv0, fc0 = model.conv.weight.detach().clone(), model.fc.weight.detach().clone()
    loss = nn.functional.cross_entropy(model(torch.randn(4, 1, 8, 8)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    opt.step()
    assert not model.conv.weight.requires_grad
    assert all(name.startswith("head") for name in _groups(opt))
    assert torch.equal(model.conv.weight, conv0)
    assert not torch.equal(model.fc.weight, fc0)


def test_rmsprop_uses_inception_v3_settings_and_nesterov_sgd():
    rms = build_optimizer(TinyNet(), OptimConfig(name="rmsprop", lr=0.045))
    assert isinstance(rms, torch.optim.RMSprop)
    assert rms.defaults["alpha"] == 0.9 and rms.defaults["eps"] == 1.0
    sgd = build_optimizer(TinyNet(), OptimConfig(name="sgd", nesterov=True))
    assert sgd.defaults["nesterov"] is True


def test_bad_optimizer_settings_are_user_errors():
    # The settings are checked where they are defined (OptimConfig), before any model exists.
    with pytest.raises(UserError, match=r"optim\.name: must be one of sgd, adamw, rmsprop"):
        OptimConfig(name="lamb")
    with pytest.raises(UserError, match=r"optim\.lr: must be > 0"):
        OptimConfig(lr=0.0)
