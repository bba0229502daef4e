"""ResNet, pre-activation ResNet and ResNeXt: one family of residual networks.

- ResNet: He et al. 2015, "Deep Residual Learning for Image Recognition" (arXiv:1512.03385), Table 1.
- Pre-activation ResNet: He et al. 2016, "Identity Mappings in Deep Residual Networks" (arXiv:1603.05027),
  Fig. 4(e): BN → ReLU → conv inside the residual branch, nothing after the addition.
- ResNeXt: Xie et al. 2016, "Aggregated Residual Transformations for Deep Neural Networks"
  (arXiv:1611.05431), Table 1: the bottleneck's 3×3 conv becomes a grouped conv of `cardinality` groups.

Stride placement. The paper's bottleneck downsamples with its first 1×1 conv (stride 2 on a 1×1 kernel
drops three quarters of the input unseen). We follow torchvision's "ResNet V1.5" and put the stride on the
3×3 conv, as ResNeXt (Xie et al., Section 4) and every published torchvision checkpoint do: about 0.5 % more
top-1 for 4.1 instead of 3.8 G multiply-adds on ResNet-50. ``stride_in_1x1=True`` builds the paper's V1
(same parameters, Table 1's multiply-adds). Basic blocks have one stride position only.

State-dict keys equal torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0/1``,
``fc``), so its published weights load as they are. Pre-activation models reuse the same names; their
projection shortcut is a bare 1×1 conv (``downsample.0``) fed by the pre-activated input, and the final
BN → ReLU of He et al. 2016 (Section 4, "an extra activation after the last addition") is ``norm``.

ResNet-10-T (``resnet10t``, timm's name) is a small network for small data sets and slow machines: one basic
block per stage, with two of the refinements of He et al. 2019, "Bag of Tricks for Image Classification with
Convolutional Neural Networks" (arXiv:1812.01187), Section 4.1 and Fig. 2: ResNet-C's deep stem (three 3×3
convolutions instead of the 7×7; here 24, 32 and 64 wide, timm's "tiered" widths, where the paper has 32, 32,
64) and ResNet-D's shortcut (a 2×2 average pool with stride 2 before a stride-1 1×1 projection, so the projection
sees every position). Its keys are timm's (``conv1.0/1/3/4/6``, ``layer2.0.downsample.1/2``); native input 176,
the size timm trained its published file at.

CIFAR-size models (32×32 input) are the networks behind kuangliu/pytorch-cifar's table, with the same layers
and parameter counts: a 3×3 stride-1 stem and no max-pool (ResNeXt-29 keeps that port's 1×1 stem and its
three stages, after Xie et al., Section 5.2), and for PreActResNet-18 no final BN → ReLU, as in that port.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from imgcls.constants import CIFAR10_MEAN, CIFAR10_STD
from imgcls.models._base import Classifier
from imgcls.models._registry import register_model
from imgcls.models.layers import GlobalPool2d

__all__ = ["RESNETS", "BasicBlock", "Bottleneck", "PreActBasicBlock", "PreActBottleneck", "ResNet", "ResNetSpec"]


def _conv3x3(in_chans: int, out_chans: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_chans, out_chans, 3, stride, padding=1, groups=groups, bias=False)


def _conv1x1(in_chans: int, out_chans: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_chans, out_chans, 1, stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3×3 convs (He et al. 2015, Fig. 5 left): conv-BN-ReLU, conv-BN, add, ReLU."""

    expansion = 1

    def __init__(
        self,
        in_chans: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        width_per_group: int = 64,
        stride_in_1x1: bool = False,
    ) -> None:
        super().__init__()
        if groups != 1 or width_per_group != 64:
            raise ValueError("BasicBlock supports only groups=1 and width_per_group=64")
        self.conv1 = _conv3x3(in_chans, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)

    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn2


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (grouped for ResNeXt), 1×1 expand ×4 (He et al. 2015, Fig. 5 right; Xie et al., Fig. 3c).

    The inner width is ``planes · width_per_group / 64 · groups``: ``planes`` for ResNet, ``2 · planes`` for
    ResNeXt 32×4d (Xie et al., Table 1: 128 channels in conv2's 3×3 of ResNeXt-50).
    """

    expansion = 4

    def __init__(
        self,
        in_chans: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        width_per_group: int = 64,
        stride_in_1x1: bool = False,
    ) -> None:
        super().__init__()
        width = int(planes * width_per_group / 64) * groups
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = _conv1x1(in_chans, width, stride_1x1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride_3x3, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)

    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn3


class PreActBasicBlock(nn.Module):
    """BN-ReLU-conv3×3, BN-ReLU-conv3×3, add (He et al. 2016, Fig. 4e). No activation after the addition."""

    expansion = 1

    def __init__(
        self,
        in_chans: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        width_per_group: int = 64,
        stride_in_1x1: bool = False,
    ) -> None:
        super().__init__()
        if groups != 1 or width_per_group != 64:
            raise ValueError("PreActBasicBlock supports only groups=1 and width_per_group=64")
        self.bn1 = nn.BatchNorm2d(in_chans)
        self.conv1 = _conv3x3(in_chans, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(x))
        # A projection shortcut sees the pre-activated input (He et al. 2016, Section 3.2 / Appendix).
        shortcut = x if self.downsample is None else self.downsample(out)
        out = self.conv1(out)
        out = self.conv2(self.relu(self.bn2(out)))
        return out + shortcut

    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn2


class PreActBottleneck(nn.Module):
    """BN-ReLU-conv1×1, BN-ReLU-conv3×3, BN-ReLU-conv1×1 ×4, add (He et al. 2016, Fig. 4e)."""

    expansion = 4

    def __init__(
        self,
        in_chans: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        width_per_group: int = 64,
        stride_in_1x1: bool = False,
    ) -> None:
        super().__init__()
        width = int(planes * width_per_group / 64) * groups
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.bn1 = nn.BatchNorm2d(in_chans)
        self.conv1 = _conv1x1(in_chans, width, stride_1x1)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride_3x3, groups)
        self.bn3 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(x))
        shortcut = x if self.downsample is None else self.downsample(out)
        out = self.conv1(out)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return out + shortcut

    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn3


_BLOCKS = {
    ("basic", False): BasicBlock,
    ("bottleneck", False): Bottleneck,
    ("basic", True): PreActBasicBlock,
    ("bottleneck", True): PreActBottleneck,
}


@dataclass(frozen=True)
class ResNetSpec:
    """One row of the variant table.

    Attributes:
        block: ``"basic"`` (two 3×3) or ``"bottleneck"`` (1×1, 3×3, 1×1).
        depths: blocks per stage (Table 1's ×N).
        groups: cardinality of the 3×3 conv (ResNeXt); 1 for ResNet.
        width_per_group: channels per group at the first stage's width of 64 (ResNeXt's "d").
        preact: pre-activation blocks (He et al. 2016).
        planes: stage widths before the bottleneck expansion; stage i > 0 downsamples by 2.
        stem_kernel: first conv's kernel (7 for ImageNet, 3 or 1 for the CIFAR models).
        stem_stride: first conv's stride.
        stem_pool: 3×3 stride-2 max-pool after the stem (ImageNet only).
        final_norm: pre-activation models only: BN → ReLU before pooling (the paper's extra activation).
        stem_widths: widths of the 3×3 convolutions (the first with stride 2) that replace the 7×7 stem conv
            before a last 3×3 one to ``planes[0]`` (He et al. 2019, ResNet-C; empty: the plain stem).
        avg_down: a 2×2 average pool before the shortcut's 1×1 projection instead of its stride (ResNet-D).
    """

    block: str
    depths: tuple[int, ...]
    groups: int = 1
    width_per_group: int = 64
    preact: bool = False
    planes: tuple[int, ...] = (64, 128, 256, 512)
    stem_kernel: int = 7
    stem_stride: int = 2
    stem_pool: bool = True
    final_norm: bool = True
    stem_widths: tuple[int, ...] = ()
    avg_down: bool = False


class ResNet(Classifier):
    """A residual network built from a `ResNetSpec`.

    Args:
        spec: the variant (a row of ``RESNETS``).
        num_classes: classifier outputs; 0 for a bare feature extractor (``fc`` is Identity).
        in_chans: input channels.
        drop_rate: dropout before the classifier.
        global_pool: ``"avg"`` (the paper's) or ``"max"``.
        zero_init_residual: start each residual branch's last BN scale at 0 so every block begins as an
            identity (Goyal et al. 2017, arXiv:1706.02677, Section 5.1); +0.2–0.3 % top-1 in torchvision.
        stride_in_1x1: put a bottleneck's stride on its first 1×1 conv, as in the paper (V1), instead of on
            the 3×3 (V1.5, the default).
    """

    def __init__(
        self,
        spec: ResNetSpec,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
        zero_init_residual: bool = False,
        stride_in_1x1: bool = False,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        block = _BLOCKS[(spec.block, spec.preact)]
        stem_width = spec.planes[0]

        self.conv1 = _stem(spec, in_chans)
        # A pre-activation network normalises inside its first block, so its stem is the conv alone.
        self.bn1 = nn.Identity() if spec.preact else nn.BatchNorm2d(stem_width)
        self.relu = nn.Identity() if spec.preact else nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if spec.stem_pool else nn.Identity()

        chans = stem_width
        for i, (planes, depth) in enumerate(zip(spec.planes, spec.depths)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(depth):
                s = stride if j == 0 else 1
                downsample = None
                if s != 1 or chans != planes * block.expansion:
                    proj = [_conv1x1(chans, planes * block.expansion, s)]
                    if spec.avg_down:  # ResNet-D: the 1×1 sees every position, the pool does the striding
                        pool = nn.AvgPool2d(2, s, ceil_mode=True, count_include_pad=False) if s > 1 else nn.Identity()
                        proj = [pool, _conv1x1(chans, planes * block.expansion)]
                    if not spec.preact:
                        proj.append(nn.BatchNorm2d(planes * block.expansion))
                    downsample = nn.Sequential(*proj)
                blocks.append(
                    block(chans, planes, s, downsample, spec.groups, spec.width_per_group, stride_in_1x1=stride_in_1x1)
                )
                chans = planes * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_layers = len(spec.depths)

        has_norm = spec.preact and spec.final_norm
        self.norm = nn.Sequential(nn.BatchNorm2d(chans), nn.ReLU(inplace=True)) if has_norm else nn.Identity()
        self.num_features = chans
        self.global_pool = GlobalPool2d(global_pool)
        self.fc = nn.Linear(chans, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        # He et al. 2015 (arXiv:1502.01852) initialisation for ReLU networks, as in the paper (Section 3.4).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if hasattr(m, "last_norm"):
                    nn.init.zeros_(m.last_norm().weight)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_layers):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.norm(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.global_pool(x)
        if self.drop_rate > 0:
            x = F.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.fc(x)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()


def _stem(spec: ResNetSpec, in_chans: int) -> nn.Module:
    """The first convolution(s): one k×k conv, or a deep stem of 3×3 convs (with BN and ReLU between them)."""
    if not spec.stem_widths:
        k = spec.stem_kernel
        return nn.Conv2d(in_chans, spec.planes[0], k, spec.stem_stride, padding=k // 2, bias=False)
    layers: list[nn.Module] = []
    chans = in_chans
    for i, width in enumerate(spec.stem_widths):
        layers += [_conv3x3(chans, width, stride=2 if i == 0 else 1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        chans = width
    layers.append(_conv3x3(chans, spec.planes[0]))  # its BN and ReLU are the model's bn1 and relu
    return nn.Sequential(*layers)


_CIFAR_STEM = {"stem_kernel": 3, "stem_stride": 1, "stem_pool": False}

# He et al. 2015, Table 1 (ResNet); He et al. 2016, Section 4 (pre-activation); Xie et al. 2016, Table 1 and
# Section 5.2 (ResNeXt; "32x4d" = 32 groups of width 4). CIFAR rows: kuangliu/pytorch-cifar's networks.
RESNETS = {
    "resnet18": ResNetSpec(block="basic", depths=(2, 2, 2, 2)),
    "resnet34": ResNetSpec(block="basic", depths=(3, 4, 6, 3)),
    "resnet50": ResNetSpec(block="bottleneck", depths=(3, 4, 6, 3)),
    "resnet101": ResNetSpec(block="bottleneck", depths=(3, 4, 23, 3)),
    "resnet152": ResNetSpec(block="bottleneck", depths=(3, 8, 36, 3)),
    "preact_resnet18": ResNetSpec(block="basic", depths=(2, 2, 2, 2), preact=True),
    "preact_resnet34": ResNetSpec(block="basic", depths=(3, 4, 6, 3), preact=True),
    "preact_resnet50": ResNetSpec(block="bottleneck", depths=(3, 4, 6, 3), preact=True),
    "preact_resnet101": ResNetSpec(block="bottleneck", depths=(3, 4, 23, 3), preact=True),
    "preact_resnet152": ResNetSpec(block="bottleneck", depths=(3, 8, 36, 3), preact=True),
    "resnext50_32x4d": ResNetSpec(block="bottleneck", depths=(3, 4, 6, 3), groups=32, width_per_group=4),
    "resnext101_32x4d": ResNetSpec(block="bottleneck", depths=(3, 4, 23, 3), groups=32, width_per_group=4),
    "resnext101_32x8d": ResNetSpec(block="bottleneck", depths=(3, 4, 23, 3), groups=32, width_per_group=8),
    # He et al. 2019 (arXiv:1812.01187), Section 4.1: ResNet-C's deep stem with timm's "tiered" widths 24, 32
    # (ResNet-C: 32, 32) and ResNet-D's pooled shortcut, at one basic block per stage (timm's resnet10t).
    "resnet10t": ResNetSpec(block="basic", depths=(1, 1, 1, 1), stem_widths=(24, 32), avg_down=True),
    "resnet18_cifar": ResNetSpec(block="basic", depths=(2, 2, 2, 2), **_CIFAR_STEM),
    "resnet50_cifar": ResNetSpec(block="bottleneck", depths=(3, 4, 6, 3), **_CIFAR_STEM),
    "resnet101_cifar": ResNetSpec(block="bottleneck", depths=(3, 4, 23, 3), **_CIFAR_STEM),
    "preact_resnet18_cifar": ResNetSpec(
        block="basic", depths=(2, 2, 2, 2), preact=True, final_norm=False, **_CIFAR_STEM
    ),
    # ResNeXt-29 (Xie et al., Section 5.2): three stages of 3 bottlenecks at 64/128/256 planes, 1×1 stem as in
    # the kuangliu port; expansion 4 gives its 256/512/1024 outputs.
    "resnext29_32x4d_cifar": ResNetSpec(
        block="bottleneck", depths=(3, 3, 3), groups=32, width_per_group=4, planes=(64, 128, 256),
        stem_kernel=1, stem_stride=1, stem_pool=False,
    ),
    "resnext29_2x64d_cifar": ResNetSpec(
        block="bottleneck", depths=(3, 3, 3), groups=2, width_per_group=64, planes=(64, 128, 256),
        stem_kernel=1, stem_stride=1, stem_pool=False,
    ),
}  # fmt: skip


def _resnet(name: str, **kw) -> ResNet:
    return ResNet(RESNETS[name], **kw)


_HE2015 = "He et al. 2015 (arXiv:1512.03385), Table 1"
_HE2016 = "He et al. 2016 (arXiv:1603.05027), Fig. 4e"
_XIE2016 = "Xie et al. 2016 (arXiv:1611.05431), Table 1"
_CIFAR = {"input_size": (3, 32, 32), "mean": CIFAR10_MEAN, "std": CIFAR10_STD}


@register_model(
    input_size=(3, 176, 176),
    paper="He et al. 2019 (arXiv:1812.01187), ResNet-C/D; timm's resnet10t (1, 1, 1, 1)",
    cam_layer="layer4",
)
def resnet10t(**kw) -> ResNet:
    return _resnet("resnet10t", **kw)


@register_model(input_size=(3, 224, 224), paper=_HE2015, cam_layer="layer4")
def resnet18(**kw) -> ResNet:
    return _resnet("resnet18", **kw)


@register_model(input_size=(3, 224, 224), paper=_HE2015, cam_layer="layer4")
def resnet34(**kw) -> ResNet:
    return _resnet("resnet34", **kw)


@register_model(input_size=(3, 224, 224), paper=_HE2015, cam_layer="layer4")
def resnet50(**kw) -> ResNet:
    return _resnet("resnet50", **kw)


@register_model(input_size=(3, 224, 224), paper=_HE2015, cam_layer="layer4")
def resnet101(**kw) -> ResNet:
    return _resnet("resnet101", **kw)


@register_model(input_size=(3, 224, 224), paper=_HE2015, cam_layer="layer4")
def resnet152(**kw) -> ResNet:
    return _resnet("resnet152", **kw)


@register_model(input_size=(3, 224, 224), paper=_HE2016, cam_layer="norm")
def preact_resnet18(**kw) -> ResNet:
    return _resnet("preact_resnet18", **kw)


@register_model(input_size=(3, 224, 224), paper=_HE2016, cam_layer="norm")
def preact_resnet34(**kw) -> ResNet:
    return _resnet("preact_resnet34", **kw)


@register_model(input_size=(3, 224, 224), paper=_HE2016, cam_layer="norm")
def preact_resnet50(**kw) -> ResNet:
    return _resnet("preact_resnet50", **kw)


@register_model(input_size=(3, 224, 224), paper=_HE2016, cam_layer="norm")
def preact_resnet101(**kw) -> ResNet:
    return _resnet("preact_resnet101", **kw)


@register_model(input_size=(3, 224, 224), paper=_HE2016, cam_layer="norm")
def preact_resnet152(**kw) -> ResNet:
    return _resnet("preact_resnet152", **kw)


@register_model(input_size=(3, 224, 224), paper=_XIE2016, cam_layer="layer4")
def resnext50_32x4d(**kw) -> ResNet:
    return _resnet("resnext50_32x4d", **kw)


@register_model(input_size=(3, 224, 224), paper=_XIE2016, cam_layer="layer4")
def resnext101_32x4d(**kw) -> ResNet:
    return _resnet("resnext101_32x4d", **kw)


@register_model(input_size=(3, 224, 224), paper=_XIE2016, cam_layer="layer4")
def resnext101_32x8d(**kw) -> ResNet:
    return _resnet("resnext101_32x8d", **kw)


@register_model(paper=f"{_HE2015}; CIFAR stem", **_CIFAR, cam_layer="layer4")
def resnet18_cifar(**kw) -> ResNet:
    return _resnet("resnet18_cifar", **kw)


@register_model(paper=f"{_HE2015}; CIFAR stem", **_CIFAR, cam_layer="layer4")
def resnet50_cifar(**kw) -> ResNet:
    return _resnet("resnet50_cifar", **kw)


@register_model(paper=f"{_HE2015}; CIFAR stem", **_CIFAR, cam_layer="layer4")
def resnet101_cifar(**kw) -> ResNet:
    return _resnet("resnet101_cifar", **kw)


@register_model(paper=f"{_HE2016}; CIFAR stem", **_CIFAR, cam_layer="norm")
def preact_resnet18_cifar(**kw) -> ResNet:
    return _resnet("preact_resnet18_cifar", **kw)


@register_model(paper="Xie et al. 2016 (arXiv:1611.05431), Section 5.2 (ResNeXt-29)", **_CIFAR, cam_layer="layer3")
def resnext29_32x4d_cifar(**kw) -> ResNet:
    return _resnet("resnext29_32x4d_cifar", **kw)


@register_model(paper="Xie et al. 2016 (arXiv:1611.05431), Section 5.2 (ResNeXt-29)", **_CIFAR, cam_layer="layer3")
def resnext29_2x64d_cifar(**kw) -> ResNet:
    return _resnet("resnext29_2x64d_cifar", **kw)
