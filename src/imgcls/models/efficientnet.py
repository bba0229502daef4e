"""EfficientNet-B0: Tan & Le 2019, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks"
(arXiv:1905.11946), Table 1 (the B0 network found by the search of Section 4) and Section 5.2 (training details).

Stages of mobile inverted bottlenecks ("MBConv", Sandler et al. 2018 and Tan et al. 2019, arXiv:1807.11626) with
squeeze-and-excitation (Hu et al. 2017) reducing to 1/4 of the block's input width, Swish (SiLU) activations,
dropout 0.2 before the classifier and stochastic depth ("drop connect") whose drop rate grows linearly with the
block index to 0.2 at the last block (Section 5.2). Table 2: 5.3 M parameters and 0.39 B FLOPS (multiply-adds).

Deviations and choices, those of torchvision, whose published file this model loads: batch norm uses PyTorch's
eps 1e-5 and momentum 0.1 (the paper's TPU recipe: momentum 0.99 in TensorFlow's convention, eps 1e-3); the
classifier is initialised uniformly in ±1/sqrt(classes). Only B0 is here: B1-B7 scale its depth, width and
resolution by the compound coefficients of Section 3.3 and would be rows of the same table.

State-dict keys are torchvision's (``features.0.0.weight``, ``features.2.0.block.1.0.weight``,
``features.2.0.block.2.fc1.weight``, ``classifier.1.weight``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor, nn

from imgcls.models._base import Classifier
from imgcls.models._registry import register_model
from imgcls.models.layers import ConvNormAct, SqueezeExcitation, StochasticDepth, make_divisible

__all__ = ["EFFICIENTNET_B0", "EfficientNet", "MBConv", "StageRow"]


class MBConv(nn.Module):
    """Mobile inverted bottleneck with squeeze-and-excitation: 1×1 expansion (unless the ratio is 1), depthwise
    k×k, SE, linear 1×1 projection; the input is added back, after stochastic depth, when shapes allow."""

    def __init__(
        self, in_chans: int, out_chans: int, kernel: int, stride: int, expand_ratio: int, drop_path: float
    ) -> None:
        super().__init__()
        exp = make_divisible(in_chans * expand_ratio)
        self.use_residual = stride == 1 and in_chans == out_chans
        layers: list[nn.Module] = []
        if exp != in_chans:
            layers.append(ConvNormAct(in_chans, exp, 1, act=nn.SiLU))
        layers += [
            ConvNormAct(exp, exp, kernel, stride, groups=exp, act=nn.SiLU),
            SqueezeExcitation(exp, max(1, in_chans // 4), act=nn.SiLU),  # se ratio 0.25 of the block's input
            ConvNormAct(exp, out_chans, 1, act=None),
        ]
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.stochastic_depth(self.block(x)) if self.use_residual else self.block(x)


@dataclass(frozen=True)
class StageRow:
    """One row of Tan & Le 2019, Table 1: operator MBConv`expand_ratio` k×k, output channels, layers; and the
    stride of its first layer (the table's resolution column halves there)."""

    expand_ratio: int
    kernel: int
    stride: int
    out_chans: int
    layers: int


# Tan & Le 2019, Table 1, stages 2-8 (stage 1 is the 3×3/2 stem to 32 channels, stage 9 the 1×1 to 1280 and the
# classifier).
EFFICIENTNET_B0 = (
    StageRow(1, 3, 1, 16, 1),
    StageRow(6, 3, 2, 24, 2),
    StageRow(6, 5, 2, 40, 2),
    StageRow(6, 3, 2, 80, 3),
    StageRow(6, 5, 1, 112, 3),
    StageRow(6, 5, 2, 192, 4),
    StageRow(6, 3, 1, 320, 1),
)


class EfficientNet(Classifier):
    """EfficientNet from a stage table: ``features`` (stem, one Sequential per stage, 1×1 conv) and
    ``classifier`` (dropout, linear).

    Args:
        stages: the stage rows (``EFFICIENTNET_B0``).
        num_classes: classifier outputs; 0 for a feature extractor.
        in_chans: input channels.
        drop_rate: dropout before the classifier (Section 5.2: 0.2 for B0).
        drop_path_rate: stochastic-depth drop rate of the last block; block i of n drops with rate·i/n.
    """

    def __init__(
        self,
        stages: tuple[StageRow, ...],
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.2,
        drop_path_rate: float = 0.2,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        layers: list[nn.Module] = [ConvNormAct(in_chans, 32, 3, stride=2, act=nn.SiLU)]
        total = sum(row.layers for row in stages)
        chans, index = 32, 0
        for row in stages:
            blocks = []
            for i in range(row.layers):
                rate = drop_path_rate * index / total
                blocks.append(
                    MBConv(chans, row.out_chans, row.kernel, row.stride if i == 0 else 1, row.expand_ratio, rate)
                )
                chans, index = row.out_chans, index + 1
            layers.append(nn.Sequential(*blocks))
        self.num_features = 4 * chans  # 1280
        layers.append(ConvNormAct(chans, self.num_features, 1, act=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(drop_rate, inplace=True), self._linear(num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _linear(self, num_classes: int) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        fc = nn.Linear(self.num_features, num_classes)
        bound = 1.0 / math.sqrt(num_classes)
        nn.init.uniform_(fc.weight, -bound, bound)
        nn.init.zeros_(fc.bias)
        return fc

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.classifier[0](x.mean((2, 3)))  # (N, 1280, H, W) -> (N, 1280), dropout
        return x if pre_logits else self.classifier[1](x)

    def get_classifier(self) -> nn.Module:
        return self.classifier[1]

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.classifier[1] = self._linear(num_classes)


@register_model(input_size=(3, 224, 224), paper="Tan & Le 2019 (arXiv:1905.11946), Table 1", cam_layer="features")
def efficientnet_b0(**kw) -> EfficientNet:
    return EfficientNet(EFFICIENTNET_B0, **kw)
