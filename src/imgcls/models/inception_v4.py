"""Inception-v4 and Inception-ResNet-v2: Szegedy et al. 2016, "Inception-v4, Inception-ResNet and the Impact of
Residual Connections on Learning" (arXiv:1602.07261).

Inception-v4 (Fig. 9): the stem of Fig. 3 (299 → 35×35×384), 4 × Inception-A (Fig. 4), Reduction-A (Fig. 7),
7 × Inception-B (Fig. 5), Reduction-B (Fig. 8), 3 × Inception-C (Fig. 6), average pooling, dropout, softmax.

Inception-ResNet-v2 (Fig. 15): Inception-ResNet-A blocks (Fig. 16), Reduction-A, Inception-ResNet-B blocks
(Fig. 17), the wider Reduction-B of Fig. 18, Inception-ResNet-C blocks (Fig. 19), a 1×1 conv to 1536, pooling.
Fig. 15 draws 5 / 10 / 5 blocks; the released model, whose 55.8 M parameters we match, has 10 / 20 / 10.
Each residual block sums its branches' concatenation, projected by a biased 1×1 conv back to the input width
and scaled by 0.17, 0.10 and 0.20 respectively (Section 3.3, "Scaling of the Residuals": scales between 0.1
and 0.3 keep very wide residual networks from dying early in training). As in the released TensorFlow model,
its stem is Inception-v3's (conv 1a..4a, then the 35×35 block ``mixed_5b``) rather than Fig. 3, and the last
Inception-ResNet-C is unscaled and has no ReLU after its addition.

Both match the published TensorFlow checkpoints as timm ports them: batch-norm eps 1e-3, no-padding ("valid")
convs where the paper marks V, average pools that ignore padding, inputs in [-1, 1] (mean = std = 0.5), and
state-dict keys equal to timm's ``inception_v4`` (``features.0.conv`` .. ``features.21``, ``last_linear``) and
``inception_resnet_v2`` (``conv2d_1a``, ``mixed_5b``, ``repeat``, ``mixed_6a``, ``repeat_1``, ``mixed_7a``,
``repeat_2``, ``block8``, ``conv2d_7b``, ``classif``), so those weights load as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imgcls.models._base import Classifier
from imgcls.models._registry import register_model
from imgcls.models.layers import ConvBNAct, GlobalPool2d

__all__ = [
    "InceptionA",
    "InceptionB",
    "InceptionC",
    "InceptionResNetA",
    "InceptionResNetB",
    "InceptionResNetC",
    "InceptionResNetV2",
    "InceptionV4",
    "ReductionA",
    "ReductionB",
    "ResNetReductionB",
]


def conv_bn(in_chans: int, out_chans: int, kernel_size: int | tuple[int, int], stride: int = 1, padding=0) -> nn.Module:
    """conv (no bias) → BN (eps 1e-3) → ReLU, valid padding unless given (the paper's "V" marks)."""
    return ConvBNAct(in_chans, out_chans, kernel_size, stride, padding, eps=1e-3)


def _avg_pool_3x3() -> nn.Module:
    # TensorFlow's "SAME" average pool divides by the number of real pixels in the window.
    return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)


# ---- Inception-v4 stem (Fig. 3): three filter concatenations after three plain convs.


class Mixed3a(nn.Module):
    """Stem, first concatenation: 3×3/2 max-pool | 3×3/2 conv (96) on 147×147×64 → 73×73×160."""

    def __init__(self) -> None:
        super().__init__()
        self.maxpool = nn.MaxPool2d(3, stride=2)
        self.conv = conv_bn(64, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.maxpool(x), self.conv(x)], 1)


class Mixed4a(nn.Module):
    """Stem, second concatenation: 1×1 → 3×3 | 1×1 → 7×1 → 1×7 → 3×3 (96 each) → 71×71×192."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = nn.Sequential(conv_bn(160, 64, 1), conv_bn(64, 96, 3))
        self.branch1 = nn.Sequential(
            conv_bn(160, 64, 1),
            conv_bn(64, 64, (1, 7), padding=(0, 3)),
            conv_bn(64, 64, (7, 1), padding=(3, 0)),
            conv_bn(64, 96, 3),
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch0(x), self.branch1(x)], 1)


class Mixed5a(nn.Module):
    """Stem, third concatenation: 3×3/2 conv (192) | 3×3/2 max-pool → 35×35×384."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = conv_bn(192, 192, 3, stride=2)
        self.maxpool = nn.MaxPool2d(3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.conv(x), self.maxpool(x)], 1)


# ---- Inception-v4 blocks.


class InceptionA(nn.Module):
    """35×35 block (Fig. 4): 1×1 (96) | 1×1 → 3×3 (96) | 1×1 → 3×3 → 3×3 (96) | avg-pool → 1×1 (96)."""

    def __init__(self, in_chans: int = 384) -> None:
        super().__init__()
        self.branch0 = conv_bn(in_chans, 96, 1)
        self.branch1 = nn.Sequential(conv_bn(in_chans, 64, 1), conv_bn(64, 96, 3, padding=1))
        self.branch2 = nn.Sequential(
            conv_bn(in_chans, 64, 1), conv_bn(64, 96, 3, padding=1), conv_bn(96, 96, 3, padding=1)
        )
        self.branch3 = nn.Sequential(_avg_pool_3x3(), conv_bn(in_chans, 96, 1))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], 1)


class ReductionA(nn.Module):
    """35 → 17 grid reduction (Fig. 7): 3×3/2 (n) | 1×1 (k) → 3×3 (l) → 3×3/2 (m) | 3×3/2 max-pool.

    Table 1 gives (k, l, m, n): Inception-v4 (192, 224, 256, 384), Inception-ResNet-v2 (256, 256, 384, 384).
    """

    def __init__(self, in_chans: int, k: int, l: int, m: int, n: int) -> None:  # noqa: E741  (the paper's names)
        super().__init__()
        self.branch0 = conv_bn(in_chans, n, 3, stride=2)
        self.branch1 = nn.Sequential(conv_bn(in_chans, k, 1), conv_bn(k, l, 3, padding=1), conv_bn(l, m, 3, stride=2))
        self.branch2 = nn.MaxPool2d(3, stride=2)
        self.out_chans = n + m + in_chans

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x)], 1)


class InceptionB(nn.Module):
    """17×17 block (Fig. 5): 1×1 (384) | 1×1 → 1×7 → 7×1 (256) | 1×1 → 7×1 → 1×7 → 7×1 → 1×7 (256) | pool → 1×1."""

    def __init__(self, in_chans: int = 1024) -> None:
        super().__init__()
        self.branch0 = conv_bn(in_chans, 384, 1)
        self.branch1 = nn.Sequential(
            conv_bn(in_chans, 192, 1),
            conv_bn(192, 224, (1, 7), padding=(0, 3)),
            conv_bn(224, 256, (7, 1), padding=(3, 0)),
        )
        self.branch2 = nn.Sequential(
            conv_bn(in_chans, 192, 1),
            conv_bn(192, 192, (7, 1), padding=(3, 0)),
            conv_bn(192, 224, (1, 7), padding=(0, 3)),
            conv_bn(224, 224, (7, 1), padding=(3, 0)),
            conv_bn(224, 256, (1, 7), padding=(0, 3)),
        )
        self.branch3 = nn.Sequential(_avg_pool_3x3(), conv_bn(in_chans, 128, 1))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], 1)


class ReductionB(nn.Module):
    """17 → 8 grid reduction (Fig. 8): 1×1 → 3×3/2 (192) | 1×1 → 1×7 → 7×1 → 3×3/2 (320) | 3×3/2 max-pool."""

    def __init__(self, in_chans: int = 1024) -> None:
        super().__init__()
        self.branch0 = nn.Sequential(conv_bn(in_chans, 192, 1), conv_bn(192, 192, 3, stride=2))
        self.branch1 = nn.Sequential(
            conv_bn(in_chans, 256, 1),
            conv_bn(256, 256, (1, 7), padding=(0, 3)),
            conv_bn(256, 320, (7, 1), padding=(3, 0)),
            conv_bn(320, 320, 3, stride=2),
        )
        self.branch2 = nn.MaxPool2d(3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x)], 1)


class InceptionC(nn.Module):
    """8×8 block (Fig. 6): 1×1 (256) | 1×1 (384) → (1×3, 3×1) | 1×1 → 3×1 → 1×3 → (1×3, 3×1) | pool → 1×1 (256)."""

    def __init__(self, in_chans: int = 1536) -> None:
        super().__init__()
        self.branch0 = conv_bn(in_chans, 256, 1)
        self.branch1_0 = conv_bn(in_chans, 384, 1)
        self.branch1_1a = conv_bn(384, 256, (1, 3), padding=(0, 1))
        self.branch1_1b = conv_bn(384, 256, (3, 1), padding=(1, 0))
        self.branch2_0 = conv_bn(in_chans, 384, 1)
        self.branch2_1 = conv_bn(384, 448, (3, 1), padding=(1, 0))
        self.branch2_2 = conv_bn(448, 512, (1, 3), padding=(0, 1))
        self.branch2_3a = conv_bn(512, 256, (1, 3), padding=(0, 1))
        self.branch2_3b = conv_bn(512, 256, (3, 1), padding=(1, 0))
        self.branch3 = nn.Sequential(_avg_pool_3x3(), conv_bn(in_chans, 256, 1))

    def forward(self, x: Tensor) -> Tensor:
        x1 = self.branch1_0(x)
        x2 = self.branch2_2(self.branch2_1(self.branch2_0(x)))
        return torch.cat(
            [
                self.branch0(x),
                self.branch1_1a(x1),
                self.branch1_1b(x1),
                self.branch2_3a(x2),
                self.branch2_3b(x2),
                self.branch3(x),
            ],
            1,
        )


class _Head(Classifier):
    """Shared head: global pooling, dropout, a linear classifier stored under `self.CLASSIFIER`."""

    CLASSIFIER = "fc"

    def _init_head(self, num_features: int, num_classes: int, drop_rate: float, global_pool: str) -> None:
        self.num_features = num_features
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.global_pool = GlobalPool2d(global_pool)
        self.reset_classifier(num_classes)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.global_pool(x)
        if self.drop_rate > 0:
            x = F.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.get_classifier()(x)

    def get_classifier(self) -> nn.Module:
        return getattr(self, self.CLASSIFIER)

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        setattr(self, self.CLASSIFIER, head)


class InceptionV4(_Head):
    """Inception-v4 (Fig. 9); ``features`` is the stem and the 18 blocks, indexed as in timm.

    Args:
        num_classes: classifier outputs; 0 for a bare feature extractor.
        in_chans: input channels.
        drop_rate: dropout before the classifier (the paper keeps 0.8, i.e. drops 0.2).
        global_pool: ``"avg"`` (the paper's) or ``"max"``.
    """

    CLASSIFIER = "last_linear"

    def __init__(
        self, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0, global_pool: str = "avg"
    ) -> None:
        super().__init__()
        reduction_a = ReductionA(384, k=192, l=224, m=256, n=384)  # Table 1
        self.features = nn.Sequential(
            # Stem (Fig. 3): 299 → 149 → 147 → 147 (V, V, same).
            conv_bn(in_chans, 32, 3, stride=2),
            conv_bn(32, 32, 3),
            conv_bn(32, 64, 3, padding=1),
            Mixed3a(),
            Mixed4a(),
            Mixed5a(),
            *[InceptionA(384) for _ in range(4)],
            reduction_a,
            *[InceptionB(reduction_a.out_chans) for _ in range(7)],
            ReductionB(1024),
            *[InceptionC(1536) for _ in range(3)],
        )
        self._init_head(1536, num_classes, drop_rate, global_pool)
        self._init_weights()

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)


# ---- Inception-ResNet-v2.


class Mixed5b(nn.Module):
    """End of the released model's stem, 35×35×192 → 320: 1×1 (96) | 1×1 → 5×5 (64) | 1×1 → 3×3 → 3×3 (96) | pool."""

    def __init__(self, in_chans: int = 192) -> None:
        super().__init__()
        self.branch0 = conv_bn(in_chans, 96, 1)
        self.branch1 = nn.Sequential(conv_bn(in_chans, 48, 1), conv_bn(48, 64, 5, padding=2))
        self.branch2 = nn.Sequential(
            conv_bn(in_chans, 64, 1), conv_bn(64, 96, 3, padding=1), conv_bn(96, 96, 3, padding=1)
        )
        self.branch3 = nn.Sequential(_avg_pool_3x3(), conv_bn(in_chans, 64, 1))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], 1)


class _ScaledResidual(nn.Module):
    """``relu(x + scale · conv2d(concat(branches)))`` (Section 3.3), the ReLU optional for the last block."""

    def __init__(self, scale: float, relu: bool = True) -> None:
        super().__init__()
        self.scale = scale
        self.relu = nn.ReLU(inplace=True) if relu else None

    def branches(self, x: Tensor) -> list[Tensor]:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        out = x + self.scale * self.conv2d(torch.cat(self.branches(x), 1))
        return self.relu(out) if self.relu is not None else out


class InceptionResNetA(_ScaledResidual):
    """35×35 residual block (Fig. 16): 1×1 (32) | 1×1 → 3×3 (32) | 1×1 → 3×3 (48) → 3×3 (64), 1×1 conv to 320."""

    def __init__(self, scale: float = 0.17, chans: int = 320) -> None:
        super().__init__(scale)
        self.branch0 = conv_bn(chans, 32, 1)
        self.branch1 = nn.Sequential(conv_bn(chans, 32, 1), conv_bn(32, 32, 3, padding=1))
        self.branch2 = nn.Sequential(
            conv_bn(chans, 32, 1), conv_bn(32, 48, 3, padding=1), conv_bn(48, 64, 3, padding=1)
        )
        self.conv2d = nn.Conv2d(32 + 32 + 64, chans, 1)

    def branches(self, x: Tensor) -> list[Tensor]:
        return [self.branch0(x), self.branch1(x), self.branch2(x)]


class InceptionResNetB(_ScaledResidual):
    """17×17 residual block (Fig. 17): 1×1 (192) | 1×1 (128) → 1×7 (160) → 7×1 (192), 1×1 conv to 1088."""

    def __init__(self, scale: float = 0.10, chans: int = 1088) -> None:
        super().__init__(scale)
        self.branch0 = conv_bn(chans, 192, 1)
        self.branch1 = nn.Sequential(
            conv_bn(chans, 128, 1),
            conv_bn(128, 160, (1, 7), padding=(0, 3)),
            conv_bn(160, 192, (7, 1), padding=(3, 0)),
        )
        self.conv2d = nn.Conv2d(192 + 192, chans, 1)

    def branches(self, x: Tensor) -> list[Tensor]:
        return [self.branch0(x), self.branch1(x)]


class InceptionResNetC(_ScaledResidual):
    """8×8 residual block (Fig. 19): 1×1 (192) | 1×1 (192) → 1×3 (224) → 3×1 (256), 1×1 conv to 2080."""

    def __init__(self, scale: float = 0.20, relu: bool = True, chans: int = 2080) -> None:
        super().__init__(scale, relu)
        self.branch0 = conv_bn(chans, 192, 1)
        self.branch1 = nn.Sequential(
            conv_bn(chans, 192, 1),
            conv_bn(192, 224, (1, 3), padding=(0, 1)),
            conv_bn(224, 256, (3, 1), padding=(1, 0)),
        )
        self.conv2d = nn.Conv2d(192 + 256, chans, 1)

    def branches(self, x: Tensor) -> list[Tensor]:
        return [self.branch0(x), self.branch1(x)]


class ResNetReductionB(nn.Module):
    """17 → 8 grid reduction of Inception-ResNet-v2 (Fig. 18): three conv towers ending in 3×3/2 and a max-pool."""

    def __init__(self, in_chans: int = 1088) -> None:
        super().__init__()
        self.branch0 = nn.Sequential(conv_bn(in_chans, 256, 1), conv_bn(256, 384, 3, stride=2))
        self.branch1 = nn.Sequential(conv_bn(in_chans, 256, 1), conv_bn(256, 288, 3, stride=2))
        self.branch2 = nn.Sequential(
            conv_bn(in_chans, 256, 1), conv_bn(256, 288, 3, padding=1), conv_bn(288, 320, 3, stride=2)
        )
        self.branch3 = nn.MaxPool2d(3, stride=2)
        self.out_chans = 384 + 288 + 320 + in_chans

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], 1)


class InceptionResNetV2(_Head):
    """Inception-ResNet-v2 (Fig. 15) as released: Inception-v3 stem, 10 / 20 / 10 residual blocks.

    Args:
        num_classes: classifier outputs; 0 for a bare feature extractor.
        in_chans: input channels.
        drop_rate: dropout before the classifier (the paper keeps 0.8, i.e. drops 0.2).
        global_pool: ``"avg"`` (the paper's) or ``"max"``.
    """

    CLASSIFIER = "classif"

    def __init__(
        self, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0, global_pool: str = "avg"
    ) -> None:
        super().__init__()
        # Stem: 299 → 149 → 147 → 147 → pool 73 → 73 → 71 → pool 35 → mixed_5b (35×35×320).
        self.conv2d_1a = conv_bn(in_chans, 32, 3, stride=2)
        self.conv2d_2a = conv_bn(32, 32, 3)
        self.conv2d_2b = conv_bn(32, 64, 3, padding=1)
        self.maxpool_3a = nn.MaxPool2d(3, stride=2)
        self.conv2d_3b = conv_bn(64, 80, 1)
        self.conv2d_4a = conv_bn(80, 192, 3)
        self.maxpool_5a = nn.MaxPool2d(3, stride=2)
        self.mixed_5b = Mixed5b(192)
        self.repeat = nn.Sequential(*[InceptionResNetA(0.17) for _ in range(10)])
        self.mixed_6a = ReductionA(320, k=256, l=256, m=384, n=384)  # Table 1
        self.repeat_1 = nn.Sequential(*[InceptionResNetB(0.10) for _ in range(20)])
        self.mixed_7a = ResNetReductionB(self.mixed_6a.out_chans)
        self.repeat_2 = nn.Sequential(*[InceptionResNetC(0.20) for _ in range(9)])
        self.block8 = InceptionResNetC(scale=1.0, relu=False)
        self.conv2d_7b = conv_bn(self.mixed_7a.out_chans, 1536, 1)
        self._init_head(1536, num_classes, drop_rate, global_pool)
        self._init_weights()

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.maxpool_3a(self.conv2d_2b(self.conv2d_2a(self.conv2d_1a(x))))
        x = self.maxpool_5a(self.conv2d_4a(self.conv2d_3b(x)))
        x = self.repeat(self.mixed_5b(x))
        x = self.repeat_1(self.mixed_6a(x))
        x = self.block8(self.repeat_2(self.mixed_7a(x)))
        return self.conv2d_7b(x)


_PAPER = "Szegedy et al. 2016 (arXiv:1602.07261)"
_INCEPTION = {"input_size": (3, 299, 299), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}


@register_model(paper=f"{_PAPER}, Fig. 9", **_INCEPTION, cam_layer="features")
def inception_v4(**kw) -> InceptionV4:
    return InceptionV4(**kw)


@register_model(paper=f"{_PAPER}, Fig. 15", **_INCEPTION, cam_layer="conv2d_7b")
def inception_resnet_v2(**kw) -> InceptionResNetV2:
    return InceptionResNetV2(**kw)
