"""RegNetX and RegNetY: Radosavovic, Kosaraju, Girshick, He & Dollár 2020, "Designing Network Design Spaces"
(arXiv:2003.13678).

A RegNet is a stem (3×3/2 conv to 32), four stages of residual bottleneck blocks with group convolution (the
"X block" of Section 3.1, Fig. 4, bottleneck ratio 1) and a linear classifier. Its widths and depths come from
six numbers (Section 3.3, Eq. 2-4): depth d, initial width w0, slope wa and multiplier wm give the per-block
widths ``u_j = w0 + wa·j``, quantized to ``w0·wm^round(log(u_j/w0)/log(wm))`` and to a multiple of 8; blocks of
equal width form a stage; g is the group width. RegNetY adds squeeze-and-excitation (Section 5, "RegNetY"),
reducing to 1/4 of the block's input width. The rows below are the paper's models (Appendix; the pycls model
zoo lists the same parameters): 400MF and 800MF of both kinds, 0.4 and 0.8 G multiply-adds at 224×224.

Deviation, that of torchvision, whose published files these models load: making a stage's width divisible by
its group width rounds halves up, where pycls rounds them to even (Python's ``round``). For RegNetX-400MF the
last stage is 400 channels wide here and in torchvision's files (392 → 400 for group width 16), 384 in pycls;
for RegNetY-800MF 784 against 768. So those two count 5.50 M and 6.43 M parameters against the paper's 5.2 M and
6.3 M (pycls: 5.16 M, 6.26 M); RegNetY-400MF (4.34 M) and RegNetX-800MF (7.26 M) are the same in both.

State-dict keys are torchvision's: ``stem.0.weight``, ``trunk_output.block1.block1-0.proj.0.weight``,
``...f.a.0.weight``, ``...f.b.0.weight`` (the group conv), ``...f.se.fc1.weight``, ``...f.c.1.weight``, ``fc``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

from torch import Tensor, nn

from imgcls.models._base import Classifier
from imgcls.models._registry import register_model
from imgcls.models.layers import ConvNormAct, SqueezeExcitation, make_divisible

__all__ = ["REGNETS", "RegNet", "RegNetSpec", "ResBottleneckBlock", "stage_plan"]


class ResBottleneckBlock(nn.Module):
    """The X block (Radosavovic et al. 2020, Fig. 4): 1×1, 3×3 group conv (stride here), [SE], 1×1 without
    activation; added to the input (through a strided 1×1 projection when the shape changes), then ReLU."""

    def __init__(self, in_chans: int, out_chans: int, stride: int, groups: int, se_ratio: float) -> None:
        super().__init__()
        self.proj = (
            ConvNormAct(in_chans, out_chans, 1, stride, act=None) if in_chans != out_chans or stride != 1 else None
        )
        layers = OrderedDict(
            a=ConvNormAct(in_chans, out_chans, 1),
            b=ConvNormAct(out_chans, out_chans, 3, stride, groups=groups),
        )
        if se_ratio > 0:
            layers["se"] = SqueezeExcitation(out_chans, round(se_ratio * in_chans))
        layers["c"] = ConvNormAct(out_chans, out_chans, 1, act=None)
        self.f = nn.Sequential(layers)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.proj is None else self.proj(x)
        return self.activation(shortcut + self.f(x))


@dataclass(frozen=True)
class RegNetSpec:
    """The six numbers of a RegNet (Radosavovic et al. 2020, Section 3.3) and its SE ratio (0 for RegNetX)."""

    depth: int
    w0: int
    wa: float
    wm: float
    group_width: int
    se_ratio: float = 0.0


def stage_plan(spec: RegNetSpec) -> list[tuple[int, int, int]]:
    """``(width, depth, groups)`` of each stage, from Eq. 2-4 of the paper and the group-width adjustment."""
    widths = []
    for j in range(spec.depth):
        u = spec.w0 + spec.wa * j  # Eq. 2: linear widths
        s = round(math.log(u / spec.w0) / math.log(spec.wm))  # Eq. 3: the exponent of wm, rounded
        widths.append(int(round(spec.w0 * spec.wm**s / 8) * 8))  # Eq. 4, then a multiple of 8
    stages: list[list[int]] = []  # runs of equal width: [width, depth]
    for w in widths:
        if stages and stages[-1][0] == w:
            stages[-1][1] += 1
        else:
            stages.append([w, 1])
    plan = []
    for w, d in stages:
        g = min(spec.group_width, w)  # a group cannot be wider than the layer
        w = make_divisible(w, g)  # the width must be a multiple of the group width (halves rounded up)
        plan.append((w, d, w // g))
    return plan


# Radosavovic et al. 2020, Appendix (the RegNetX / RegNetY models; pycls's model zoo): d, w0, wa, wm, g.
REGNETS = {
    "regnet_x_400mf": RegNetSpec(depth=22, w0=24, wa=24.48, wm=2.54, group_width=16),
    "regnet_x_800mf": RegNetSpec(depth=16, w0=56, wa=35.73, wm=2.28, group_width=16),
    "regnet_y_400mf": RegNetSpec(depth=16, w0=48, wa=27.89, wm=2.09, group_width=8, se_ratio=0.25),
    "regnet_y_800mf": RegNetSpec(depth=14, w0=56, wa=38.84, wm=2.4, group_width=16, se_ratio=0.25),
}


class RegNet(Classifier):
    """A RegNet built from a `RegNetSpec`: ``stem``, ``trunk_output`` (``block1`` … ``block4``) and ``fc``.

    Args:
        spec: the variant (a value of ``REGNETS``).
        num_classes: classifier outputs; 0 for a feature extractor.
        in_chans: input channels.
        drop_rate: dropout before the classifier (the paper uses none).
    """

    def __init__(self, spec: RegNetSpec, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.stem = ConvNormAct(in_chans, 32, 3, stride=2)
        stages = OrderedDict()
        chans = 32
        for i, (width, depth, groups) in enumerate(stage_plan(spec), start=1):
            blocks = OrderedDict()
            for j in range(depth):
                blocks[f"block{i}-{j}"] = ResBottleneckBlock(chans, width, 2 if j == 0 else 1, groups, spec.se_ratio)
                chans = width
            stages[f"block{i}"] = nn.Sequential(blocks)
        self.trunk_output = nn.Sequential(stages)
        self.num_features = chans
        self.fc = nn.Linear(chans, num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():  # as torchvision (and pycls): He-normal fan-out convolutions, N(0, 0.01) linear
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.trunk_output(self.stem(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = x.mean((2, 3))  # (N, C, H, W) -> (N, C)
        if self.drop_rate > 0:
            x = nn.functional.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.fc(x)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()


_RADOSAVOVIC = "Radosavovic et al. 2020 (arXiv:2003.13678)"


@register_model(input_size=(3, 224, 224), paper=f"{_RADOSAVOVIC}, RegNetX-400MF", cam_layer="trunk_output")
def regnet_x_400mf(**kw) -> RegNet:
    return RegNet(REGNETS["regnet_x_400mf"], **kw)


@register_model(input_size=(3, 224, 224), paper=f"{_RADOSAVOVIC}, RegNetX-800MF", cam_layer="trunk_output")
def regnet_x_800mf(**kw) -> RegNet:
    return RegNet(REGNETS["regnet_x_800mf"], **kw)


@register_model(input_size=(3, 224, 224), paper=f"{_RADOSAVOVIC}, RegNetY-400MF", cam_layer="trunk_output")
def regnet_y_400mf(**kw) -> RegNet:
    return RegNet(REGNETS["regnet_y_400mf"], **kw)


@register_model(input_size=(3, 224, 224), paper=f"{_RADOSAVOVIC}, RegNetY-800MF", cam_layer="trunk_output")
def regnet_y_800mf(**kw) -> RegNet:
    return RegNet(REGNETS["regnet_y_800mf"], **kw)
