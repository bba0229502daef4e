"""Parameters and MACs per top-level module, against hand counts and the papers' figures."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import imgcls
from imgcls.models.profile import OTHER, format_table, profile


class WithExtras(nn.Module):
    """Work outside any child (a functional linear), a parameter on the model itself, an unused auxiliary head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.aux = nn.Linear(4, 7)  # only in training, like GoogLeNet's auxiliary classifiers
        self.proj = nn.Parameter(torch.ones(5, 4))

    def forward(self, x):
        x = self.pool(self.conv(x)).flatten(1)
        return F.linear(x, self.proj)


def test_hand_counted_model_rows_sum_to_totals():
    model = WithExtras().train()
    prof = profile(model, (3, 16, 16))
    conv_macs = 4 * 3 * 9 * 8 * 8  # out channels × in channels × kernel area × output positions
    assert prof.macs == conv_macs + 4 * 5
    assert prof.params == sum(p.numel() for p in model.parameters()) == 4 * 27 + 4 + 4 * 7 + 7 + 20
    rows = {r.name: r for r in prof.layers}
    assert [r.name for r in prof.layers] == ["conv", "pool", "aux", OTHER]  # call order, unused, remainder
    assert rows["conv"].macs == conv_macs and rows["conv"].output_shape == (4, 8, 8)
    assert rows["pool"].output_shape == (4, 1, 1) and rows["pool"].macs == 0
    assert rows["aux"].output_shape is None and rows["aux"].params == 35 and rows["aux"].macs == 0
    assert rows[OTHER].params == 20 and rows[OTHER].macs == 20
    assert sum(r.params for r in prof.layers) == prof.params
    assert sum(r.macs for r in prof.layers) == prof.macs
    assert model.training  # mode restored


class SlicedHead(nn.Module):
    """Calls its head in pieces, as VGG does (``classifier[:-1]`` then ``classifier[-1]``)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(3, 4, 1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 4 * 4, 6), nn.ReLU(), nn.Linear(6, 2))

    def forward(self, x):
        return self.head[-1](self.head[:-1](self.body(x)))


def test_child_called_in_pieces_is_attributed_to_it():
    prof = profile(SlicedHead(), (3, 4, 4))
    rows = {r.name: r for r in prof.layers}
    assert set(rows) == {"body", "head"}
    assert rows["head"].macs == 64 * 6 + 6 * 2 and rows["head"].output_shape == (2,)
    assert rows["body"].macs == 4 * 3 * 16


def test_plain_sequential_and_table():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    prof = profile(model, (1, 8, 8))
    assert [r.output_shape for r in prof.layers] == [(2, 6, 6), (2, 6, 6), (72,), (3,)]
    assert prof.macs == 2 * 9 * 36 + 72 * 3
    table = format_table(prof, model)
    assert table.splitlines()[0].split() == ["layer", "type", "output", "shape", "params", "MACs"]
    assert "2×6×6" in table and f"{prof.params:,}" in table.splitlines()[-1]
    paper = format_table(prof, model, paper=True)
    assert "convolution 3×3/1" in paper and "6×6×2" in paper and "linear" in paper


def test_resnet18_matches_paper():
    model = imgcls.create_model("resnet18")
    prof = profile(model)
    # He et al. 2015, Table 1: 1.8 × 10^9 FLOPs (multiply-adds) for 18 layers.
    assert prof.macs == pytest.approx(1.8e9, rel=0.03)
    assert prof.params == sum(p.numel() for p in model.parameters()) == 11_689_512
    rows = {r.name: r for r in prof.layers}
    assert rows["layer1"].output_shape == (64, 56, 56)
    assert rows["layer4"].output_shape == (512, 7, 7)
    assert rows["fc"].output_shape == (1000,) and rows["fc"].macs == 512 * 1000
    assert sum(r.macs for r in prof.layers) == prof.macs
    assert sum(r.params for r in prof.layers) == prof.params


def test_vgg16_matches_paper():
    with torch.device("meta"):  # shapes and counts only: no memory for 138 M weights, no arithmetic
        model = imgcls.create_model("vgg16")
    prof = profile(model)
    # Simonyan & Zisserman 2014, configuration D: 15.5 G multiply-adds (the figure torchvision and timm report).
    assert prof.macs == pytest.approx(15.5e9, rel=0.03)
    assert prof.params == sum(p.numel() for p in model.parameters()) == 138_357_544
    assert sum(r.macs for r in prof.layers) == prof.macs


def test_training_only_heads_are_counted_apart():
    prof = profile(WithExtras(), (3, 16, 16))
    assert [r.name for r in prof.unused] == ["aux"]
    assert prof.inference_params == prof.params - 35
    table = format_table(prof, WithExtras()).splitlines()
    assert table[-3].split()[:3] == ["total", "(test", "time)"] and f"{prof.inference_params:,}" in table[-3]
    assert table[-2].split() == ["+", "training", "only", "(aux)", "35"]
    assert table[-1].split()[-1] == f"{prof.params:,}"
    data = prof.to_dict()
    assert data["inference_params"] == prof.inference_params and data["training_only"] == ["aux"]
    plain = format_table(profile(SlicedHead(), (3, 4, 4))).splitlines()
    assert plain[-1].startswith("total ") and "training" not in "".join(plain)
