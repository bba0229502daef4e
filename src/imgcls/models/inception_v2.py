"""BN-Inception (Inception v2): Ioffe & Szegedy 2015, "Batch Normalization: Accelerating Deep Network
Training by Reducing Internal Covariate Shift" (arXiv:1502.03167), Section 4.2, Appendix and Figure 5.

GoogLeNet (``googlenet.py``) with the Appendix's changes: batch normalisation after every convolution (before
its ReLU), each 5×5 convolution replaced by two 3×3 ones (the "double 3×3" branch), three 28×28 modules
instead of two, average or max pooling in the pool branch as Figure 5 says, and no pooling layers between
modules: modules 3c and 4e halve the resolution themselves, with stride-2 convolutions at the end of the 3×3
and double-3×3 branches and a stride-2 max pool passed through without projection. No local response
normalisation and no dropout (Section 4.2.1 removes both); ``drop_rate`` is offered and 0 by default.

Deviations: Figure 5 lists the output depth of 4c and 4d as 576 and of 4e as 1024, but its own columns add up
to 608, 608 and 1056 (the released Caffe model has the column widths); the widths here are derived from the
columns. Max pools round up (Caffe's rule) for 112 → 56 → 28; the final 7×7 average pool is a global one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from imgcls.models._base import Classifier
from imgcls.models._registry import register_model
from imgcls.models.layers import ConvBNAct, GlobalPool2d, init_weights


@dataclass(frozen=True)
class InceptionV2Spec:
    """One row of Figure 5. ``pool_proj=0`` with ``stride=2`` is "max + pass through"."""

    n1x1: int
    n3x3_reduce: int
    n3x3: int
    n3x3dbl_reduce: int
    n3x3dbl: int
    pool: str  # "avg" or "max"
    pool_proj: int
    stride: int = 1

    def out_chans(self, in_chans: int) -> int:
        return self.n1x1 + self.n3x3 + self.n3x3dbl + (self.pool_proj or in_chans)


# Ioffe & Szegedy 2015, Figure 5: #1×1, #3×3 reduce, #3×3, double #3×3 reduce, double #3×3, pool + proj.
INCEPTIONS = {
    "3a": InceptionV2Spec(64, 64, 64, 64, 96, "avg", 32),
    "3b": InceptionV2Spec(64, 64, 96, 64, 96, "avg", 64),
    "3c": InceptionV2Spec(0, 128, 160, 64, 96, "max", 0, stride=2),
    "4a": InceptionV2Spec(224, 64, 96, 96, 128, "avg", 128),
    "4b": InceptionV2Spec(192, 96, 128, 96, 128, "avg", 128),
    "4c": InceptionV2Spec(160, 128, 160, 128, 160, "avg", 128),
    "4d": InceptionV2Spec(96, 128, 192, 160, 192, "avg", 128),
    "4e": InceptionV2Spec(0, 128, 192, 192, 256, "max", 0, stride=2),
    "5a": InceptionV2Spec(352, 192, 320, 160, 224, "avg", 128),
    "5b": InceptionV2Spec(352, 192, 320, 192, 224, "max", 128),
}


class InceptionV2(nn.Module):
    """One Figure 5 module: 1×1 | 1×1 → 3×3 | 1×1 → 3×3 → 3×3 | pool (→ 1×1), concatenated along channels."""

    def __init__(self, in_chans: int, spec: InceptionV2Spec) -> None:
        super().__init__()
        s = spec.stride
        self.branch1x1 = ConvBNAct(in_chans, spec.n1x1, 1) if spec.n1x1 else None
        self.branch3x3 = nn.Sequential(
            ConvBNAct(in_chans, spec.n3x3_reduce, 1), ConvBNAct(spec.n3x3_reduce, spec.n3x3, 3, stride=s)
        )
        self.branch3x3dbl = nn.Sequential(
            ConvBNAct(in_chans, spec.n3x3dbl_reduce, 1),
            ConvBNAct(spec.n3x3dbl_reduce, spec.n3x3dbl, 3),
            ConvBNAct(spec.n3x3dbl, spec.n3x3dbl, 3, stride=s),
        )
        pool_cls = nn.AvgPool2d if spec.pool == "avg" else nn.MaxPool2d
        pool = pool_cls(3, stride=s, padding=1)
        proj = ConvBNAct(in_chans, spec.pool_proj, 1) if spec.pool_proj else nn.Identity()
        self.branch_pool = nn.Sequential(pool, proj)

    def forward(self, x: Tensor) -> Tensor:
        branches = (self.branch1x1, self.branch3x3, self.branch3x3dbl, self.branch_pool)
        return torch.cat([b(x) for b in branches if b is not None], 1)


class BNInception(Classifier):
    """BN-Inception with GoogLeNet's module names: ``conv1`` … ``inception3a`` … ``inception5b``, ``fc``.

    Args:
        num_classes: width of ``fc``.
        in_chans: input channels.
        drop_rate: dropout before ``fc`` (0: Section 4.2.1 removes dropout).
    """

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        # Figure 5: the stem.
        self.conv1 = ConvBNAct(in_chans, 64, 7, stride=2)  # 7×7/2 -> 112×112×64
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)  # -> 56×56×64
        self.conv2 = ConvBNAct(64, 64, 1)  # the "#3×3 reduce" of the 3×3 convolution row
        self.conv3 = ConvBNAct(64, 192, 3)  # -> 56×56×192
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)  # -> 28×28×192
        chans = 192
        for name, spec in INCEPTIONS.items():
            self.add_module(f"inception{name}", InceptionV2(chans, spec))
            chans = spec.out_chans(chans)
        self.num_features = chans  # 1024
        self.avgpool = GlobalPool2d("avg")  # Figure 5: 7×7/1 average pool
        self.dropout = nn.Dropout(drop_rate)
        self.fc = nn.Linear(chans, num_classes)
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.maxpool1(self.conv1(x))
        x = self.maxpool2(self.conv3(self.conv2(x)))
        for name in INCEPTIONS:
            x = getattr(self, f"inception{name}")(x)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.dropout(self.avgpool(x))  # (N, 1024, 7, 7) -> (N, 1024)
        return x if pre_logits else self.fc(x)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes)
        init_weights(self.fc)


@register_model(
    input_size=(3, 224, 224), paper="Ioffe & Szegedy 2015 (arXiv:1502.03167), Figure 5", cam_layer="inception5b"
)
def inception_v2(**kw) -> BNInception:
    return BNInception(**kw)
