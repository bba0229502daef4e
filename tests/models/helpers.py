"""Shared by the model tests: a small real classifier with BatchNorm statistics that are not the identity."""

from __future__ import annotations

import torch
from torch import nn

from imgcls.models import Classifier


class TinyNet(Classifier):
    def __init__(self, num_classes: int = 10, in_chans: int = 3):
        super().__init__()
        self.num_classes = num_classes
        self.num_features = 8
        self.conv1 = nn.Conv2d(in_chans, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x):
        return self.pool(torch.relu(self.bn1(self.conv1(x)))).flatten(1)

    def forward_head(self, x, pre_logits=False):
        return x if pre_logits else self.fc(x)

    def reset_classifier(self, num_classes):
        self.num_classes = num_classes
        self.fc = nn.Linear(8, num_classes) if num_classes else nn.Identity()

    def get_classifier(self):
        return self.fc


def trained_tiny(num_classes: int = 10) -> TinyNet:
    torch.manual_seed(0)
    model = TinyNet(num_classes)
    with torch.no_grad():
        model.bn1.running_mean.uniform_(-0.5, 0.5)
        model.bn1.running_var.uniform_(0.5, 2.0)
    return model.eval()


def outputs(model: nn.Module) -> torch.Tensor:
    x = torch.linspace(-1, 1, 2 * 3 * 8 * 8).reshape(2, 3, 8, 8)
    with torch.no_grad():
        return model.eval()(x)
