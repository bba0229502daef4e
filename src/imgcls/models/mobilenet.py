"""MobileNetV2 and MobileNetV3: inverted residual blocks with linear bottlenecks.

- MobileNetV2: Sandler, Howard, Zhu, Zhmoginov & Chen 2018, "MobileNetV2: Inverted Residuals and Linear
  Bottlenecks" (arXiv:1801.04381), Table 1 (the bottleneck block) and Table 2 (the network: t, c, n, s per row).
  Width multiplier 1.0 at 224×224: 3.4 M parameters and 300 M multiply-adds (Table 4).
- MobileNetV3: Howard et al. 2019, "Searching for MobileNetV3" (arXiv:1905.02244), Table 1 (Large) and Table 2
  (Small): the V2 block with squeeze-and-excitation in some blocks (Section 5.3, reduced to 1/4 of the expanded
  width, gated by a hard sigmoid), hard-swish in the later layers (Section 5.2), a 16-filter hard-swish stem and
  the efficient last stage (Section 5.1: pooling before the 1280/1024-wide layer, which has no batch norm).
  Table 3: Large 1.0 219 M multiply-adds and 5.4 M parameters, Small 1.0 56 M and 2.5 M.

Deviations and choices, each the one of torchvision, whose published files these models load:

- Every width is rounded to a multiple of 8 (`make_divisible`; the papers' released code does so); at width 1.0
  this changes only the squeeze-and-excitation widths of V3 (e.g. 72 / 4 = 18 → 24).
- Dropout 0.2 before the classifier of V2 and between the last two layers of V3 (the papers give no rate).
- V3's batch norm uses eps 1e-3 and momentum 0.01 (TensorFlow's defaults in the released models); V2's
  PyTorch's 1e-5 and 0.1.
- V2 counts 3,504,872 parameters against Table 4's 3.4 M (the paper rounds and may leave out the classifier's
  bias or batch-norm terms); its multiply-adds agree (300.8 M).

State-dict keys are torchvision's (``features.0.0.weight``, ``features.1.conv.0.0.weight``,
``features.2.block.0.0.weight``, ``classifier.1.weight``), so its published files load as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from imgcls.models._base import Classifier
from imgcls.models._registry import register_model
from imgcls.models.layers import ConvNormAct, SqueezeExcitation, make_divisible

__all__ = ["MOBILENET_V3", "InvertedResidual", "InvertedResidualV3", "MobileNetV2", "MobileNetV3", "V3Row"]


class InvertedResidual(nn.Module):
    """Sandler et al. 2018, Table 1: 1×1 expansion by `t` (ReLU6), 3×3 depthwise (ReLU6), linear 1×1 projection;
    the input is added when stride and width allow (Fig. 4d). Held as ``conv`` (torchvision's layout)."""

    def __init__(self, in_chans: int, out_chans: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = round(in_chans * expand_ratio)
        self.use_residual = stride == 1 and in_chans == out_chans
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvNormAct(in_chans, hidden, 1, act=nn.ReLU6))
        layers += [
            ConvNormAct(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
            nn.Conv2d(hidden, out_chans, 1, bias=False),  # the linear bottleneck (Section 3.2): no activation
            nn.BatchNorm2d(out_chans),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


# Sandler et al. 2018, Table 2: expansion t, output channels c, repeats n, first stride s.
MOBILENET_V2 = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class _MobileNetHead:
    """forward_head / classifier methods shared by both versions: pool, then ``classifier`` whose last entry is the
    linear layer that makes the logits from `pre_logits_width` features."""

    classifier: nn.Sequential
    num_classes: int
    pre_logits_width: int

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.classifier[:-1](x.mean((2, 3)))  # (N, C, H, W) -> (N, C)
        return x if pre_logits else self.classifier[-1](x)

    def get_classifier(self) -> nn.Module:
        return self.classifier[-1]

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.classifier[-1] = nn.Linear(self.pre_logits_width, num_classes) if num_classes > 0 else nn.Identity()
        _init(self.classifier[-1])


def _init(module: nn.Module) -> None:
    # torchvision's initialisation of both versions: He-normal (fan-out) convolutions, N(0, 0.01) linear layers.
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


class MobileNetV2(_MobileNetHead, Classifier):
    """MobileNetV2 at width multiplier 1.0: ``features`` (stem, 17 bottlenecks, 1×1 to 1280) and ``classifier``.

    Args:
        num_classes: classifier outputs; 0 for a feature extractor.
        in_chans: input channels.
        drop_rate: dropout before the classifier.
    """

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.2) -> None:
        super().__init__()
        self.num_classes = num_classes
        layers: list[nn.Module] = [ConvNormAct(in_chans, 32, 3, stride=2, act=nn.ReLU6)]
        chans = 32
        for t, c, n, s in MOBILENET_V2:
            for i in range(n):
                layers.append(InvertedResidual(chans, c, s if i == 0 else 1, t))
                chans = c
        layers.append(ConvNormAct(chans, 1280, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.num_features = self.pre_logits_width = 1280
        self.classifier = nn.Sequential(
            nn.Dropout(drop_rate), nn.Linear(1280, num_classes) if num_classes > 0 else nn.Identity()
        )
        _init(self)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)


@dataclass(frozen=True)
class V3Row:
    """One row of Howard et al. 2019, Tables 1 and 2: kernel, expansion width ("exp size"), output width ("#out"),
    squeeze-and-excitation, non-linearity (``"RE"`` ReLU, ``"HS"`` hard-swish) and stride."""

    kernel: int
    exp: int
    out: int
    se: bool
    nl: str
    stride: int


class InvertedResidualV3(nn.Module):
    """The MobileNetV3 block (Howard et al. 2019, Fig. 4): optional 1×1 expansion, depthwise k×k, optional
    squeeze-and-excitation, linear 1×1 projection, residual when shapes allow. Held as ``block``."""

    def __init__(self, in_chans: int, row: V3Row) -> None:
        super().__init__()
        act = nn.Hardswish if row.nl == "HS" else nn.ReLU
        norm = {"eps": 1e-3, "momentum": 0.01}
        self.use_residual = row.stride == 1 and in_chans == row.out
        layers: list[nn.Module] = []
        if row.exp != in_chans:
            layers.append(ConvNormAct(in_chans, row.exp, 1, act=act, **norm))
        layers.append(ConvNormAct(row.exp, row.exp, row.kernel, row.stride, groups=row.exp, act=act, **norm))
        if row.se:
            # Section 5.3: the squeeze is 1/4 of the expansion layer's width; hard sigmoid gate (Section 5.2).
            layers.append(SqueezeExcitation(row.exp, make_divisible(row.exp // 4), gate=nn.Hardsigmoid))
        layers.append(ConvNormAct(row.exp, row.out, 1, act=None, **norm))
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x) if self.use_residual else self.block(x)


# Howard et al. 2019, Table 1 (Large) and Table 2 (Small); the stem is a 16-filter 3×3/2 conv with hard-swish,
# the last block's output is expanded 6× by a 1×1 conv (960, 576) before the pool, then `head` wide (1280, 1024).
MOBILENET_V3 = {
    "mobilenet_v3_large": (
        V3Row(3, 16, 16, False, "RE", 1),
        V3Row(3, 64, 24, False, "RE", 2),
        V3Row(3, 72, 24, False, "RE", 1),
        V3Row(5, 72, 40, True, "RE", 2),
        V3Row(5, 120, 40, True, "RE", 1),
        V3Row(5, 120, 40, True, "RE", 1),
        V3Row(3, 240, 80, False, "HS", 2),
        V3Row(3, 200, 80, False, "HS", 1),
        V3Row(3, 184, 80, False, "HS", 1),
        V3Row(3, 184, 80, False, "HS", 1),
        V3Row(3, 480, 112, True, "HS", 1),
        V3Row(3, 672, 112, True, "HS", 1),
        V3Row(5, 672, 160, True, "HS", 2),
        V3Row(5, 960, 160, True, "HS", 1),
        V3Row(5, 960, 160, True, "HS", 1),
    ),
    "mobilenet_v3_small": (
        V3Row(3, 16, 16, True, "RE", 2),
        V3Row(3, 72, 24, False, "RE", 2),
        V3Row(3, 88, 24, False, "RE", 1),
        V3Row(5, 96, 40, True, "HS", 2),
        V3Row(5, 240, 40, True, "HS", 1),
        V3Row(5, 240, 40, True, "HS", 1),
        V3Row(5, 120, 48, True, "HS", 1),
        V3Row(5, 144, 48, True, "HS", 1),
        V3Row(5, 288, 96, True, "HS", 2),
        V3Row(5, 576, 96, True, "HS", 1),
        V3Row(5, 576, 96, True, "HS", 1),
    ),
}
V3_HEAD = {"mobilenet_v3_large": 1280, "mobilenet_v3_small": 1024}


class MobileNetV3(_MobileNetHead, Classifier):
    """MobileNetV3 from a table of `V3Row`: ``features`` (stem, blocks, 1×1 expansion) and ``classifier``
    (linear to `head`, hard-swish, dropout, linear to the classes).

    Args:
        rows: the blocks (a value of ``MOBILENET_V3``).
        head: width of the penultimate layer (1280 for Large, 1024 for Small).
        num_classes: classifier outputs; 0 for a feature extractor (the penultimate layer stays).
        in_chans: input channels.
        drop_rate: dropout before the last linear layer.
    """

    def __init__(
        self, rows: tuple[V3Row, ...], head: int, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.2
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        norm = {"eps": 1e-3, "momentum": 0.01}
        layers: list[nn.Module] = [ConvNormAct(in_chans, 16, 3, stride=2, act=nn.Hardswish, **norm)]
        chans = 16
        for row in rows:
            layers.append(InvertedResidualV3(chans, row))
            chans = row.out
        last = 6 * chans
        layers.append(ConvNormAct(chans, last, 1, act=nn.Hardswish, **norm))
        self.features = nn.Sequential(*layers)
        self.num_features = last  # what forward_features gives; pre_logits are the `head` features after pooling
        self.pre_logits_width = head
        self.classifier = nn.Sequential(
            nn.Linear(last, head),
            nn.Hardswish(inplace=True),
            nn.Dropout(drop_rate, inplace=True),
            nn.Linear(head, num_classes) if num_classes > 0 else nn.Identity(),
        )
        _init(self)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)


_SANDLER = "Sandler et al. 2018 (arXiv:1801.04381), Table 2"
_HOWARD = "Howard et al. 2019 (arXiv:1905.02244)"


@register_model(input_size=(3, 224, 224), paper=_SANDLER, cam_layer="features")
def mobilenet_v2(**kw) -> MobileNetV2:
    return MobileNetV2(**kw)


@register_model(input_size=(3, 224, 224), paper=f"{_HOWARD}, Table 1", cam_layer="features")
def mobilenet_v3_large(**kw) -> MobileNetV3:
    return MobileNetV3(MOBILENET_V3["mobilenet_v3_large"], V3_HEAD["mobilenet_v3_large"], **kw)


@register_model(input_size=(3, 224, 224), paper=f"{_HOWARD}, Table 2", cam_layer="features")
def mobilenet_v3_small(**kw) -> MobileNetV3:
    return MobileNetV3(MOBILENET_V3["mobilenet_v3_small"], V3_HEAD["mobilenet_v3_small"], **kw)
