"""Inception v3: Szegedy et al. 2015, "Rethinking the Inception Architecture for Computer Vision"
(arXiv:1512.00567), Table 1 and Figures 5-7, 10.

The paper's design rules, where they appear below:
- Factorise large filters (Section 3): a 5×5 becomes two 3×3 (``InceptionA``'s double-3×3 branch, Fig. 5),
  an n×n becomes 1×n then n×1 (``InceptionC``, n = 7, Fig. 6), and the coarsest grid expands its outputs
  with parallel 1×3 and 3×1 filters (``InceptionE``, Fig. 7).
- Reduce the grid with parallel stride-2 conv and pooling branches concatenated, rather than pooling before or
  after an Inception block (Section 5, Fig. 10): ``ReductionA`` (35 → 17) and ``ReductionB`` (17 → 8).
- An auxiliary classifier on the 17×17 grid, which the paper finds acts as a regulariser (Section 4). It is
  returned in training mode only, weighted 0.4 in the loss (``aux_weights``); in eval mode the model returns
  the logits alone.

Input is 299×299 (every conv without "same" padding is valid, as in the paper's Table 1). Layer names equal
torchvision's ``inception_v3`` (``Conv2d_1a_3x3.conv/bn``, ``Mixed_5b``..``Mixed_7c``, ``AuxLogits``, ``fc``)
and so do the block classes' attribute names, so its published weights load as they are; the blocks carry
the names torchvision gives them (``InceptionA``..``InceptionE``) with ``InceptionB`` and ``InceptionD``
being the paper's grid reductions (Fig. 10). Those weights expect inputs scaled to [-1, 1] (mean = std = 0.5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imgcls.models._base import Classifier
from imgcls.models._registry import register_model
from imgcls.models.layers import ConvBNAct, GlobalPool2d

__all__ = ["InceptionA", "InceptionAux", "InceptionB", "InceptionC", "InceptionD", "InceptionE", "InceptionV3"]


def conv_bn(in_chans: int, out_chans: int, kernel_size: int | tuple[int, int], stride: int = 1, padding=0) -> nn.Module:
    """conv (no bias) → BN (eps 1e-3, as the TensorFlow-trained weights) → ReLU; valid padding unless given."""
    return ConvBNAct(in_chans, out_chans, kernel_size, stride, padding, eps=1e-3)


def _avg_pool_3x3(x: Tensor) -> Tensor:
    return F.avg_pool2d(x, 3, stride=1, padding=1)


class InceptionA(nn.Module):
    """35×35 block (Fig. 5): 1×1 | 1×1 → 5×5 | 1×1 → 3×3 → 3×3 | avg-pool → 1×1 (`pool_features`)."""

    def __init__(self, in_chans: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = conv_bn(in_chans, 64, 1)
        self.branch5x5_1 = conv_bn(in_chans, 48, 1)
        self.branch5x5_2 = conv_bn(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = conv_bn(in_chans, 64, 1)
        self.branch3x3dbl_2 = conv_bn(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = conv_bn(96, 96, 3, padding=1)
        self.branch_pool = conv_bn(in_chans, pool_features, 1)
        self.out_chans = 64 + 64 + 96 + pool_features

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg_pool_3x3(x))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    """Grid reduction 35 → 17 (Fig. 10): 3×3/2 | 1×1 → 3×3 → 3×3/2 | max-pool 3×3/2, concatenated."""

    def __init__(self, in_chans: int) -> None:
        super().__init__()
        self.branch3x3 = conv_bn(in_chans, 384, 3, stride=2)
        self.branch3x3dbl_1 = conv_bn(in_chans, 64, 1)
        self.branch3x3dbl_2 = conv_bn(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = conv_bn(96, 96, 3, stride=2)
        self.out_chans = 384 + 96 + in_chans

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, 3, stride=2)
        return torch.cat([b3, bd, bp], 1)


class InceptionC(nn.Module):
    """17×17 block (Fig. 6, n = 7): 1×1 | 1×7 → 7×1 | (7×1 → 1×7) ×2 | avg-pool → 1×1; inner width `c7`."""

    def __init__(self, in_chans: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = conv_bn(in_chans, 192, 1)
        self.branch7x7_1 = conv_bn(in_chans, c7, 1)
        self.branch7x7_2 = conv_bn(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = conv_bn(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = conv_bn(in_chans, c7, 1)
        self.branch7x7dbl_2 = conv_bn(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = conv_bn(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = conv_bn(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = conv_bn(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = conv_bn(in_chans, 192, 1)
        self.out_chans = 4 * 192

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = conv(bd)
        bp = self.branch_pool(_avg_pool_3x3(x))
        return torch.cat([b1, b7, bd, bp], 1)


class InceptionD(nn.Module):
    """Grid reduction 17 → 8 (Fig. 10): 1×1 → 3×3/2 | 1×1 → 1×7 → 7×1 → 3×3/2 | max-pool 3×3/2."""

    def __init__(self, in_chans: int) -> None:
        super().__init__()
        self.branch3x3_1 = conv_bn(in_chans, 192, 1)
        self.branch3x3_2 = conv_bn(192, 320, 3, stride=2)
        self.branch7x7x3_1 = conv_bn(in_chans, 192, 1)
        self.branch7x7x3_2 = conv_bn(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = conv_bn(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = conv_bn(192, 192, 3, stride=2)
        self.out_chans = 320 + 192 + in_chans

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_1(x)
        for conv in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = conv(b7)
        bp = F.max_pool2d(x, 3, stride=2)
        return torch.cat([b3, b7, bp], 1)


class InceptionE(nn.Module):
    """8×8 block with expanded outputs (Fig. 7): 1×1 | 1×1 → (1×3, 3×1) | 1×1 → 3×3 → (1×3, 3×1) | pool → 1×1."""

    def __init__(self, in_chans: int) -> None:
        super().__init__()
        self.branch1x1 = conv_bn(in_chans, 320, 1)
        self.branch3x3_1 = conv_bn(in_chans, 384, 1)
        self.branch3x3_2a = conv_bn(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = conv_bn(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = conv_bn(in_chans, 448, 1)
        self.branch3x3dbl_2 = conv_bn(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = conv_bn(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = conv_bn(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = conv_bn(in_chans, 192, 1)
        self.out_chans = 320 + 2 * 384 + 2 * 384 + 192

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        bp = self.branch_pool(_avg_pool_3x3(x))
        return torch.cat([b1, b3, bd, bp], 1)


class InceptionAux(nn.Module):
    """Auxiliary classifier on the 17×17 grid (Section 4): avg-pool 5×5/3 → 1×1 (128) → 5×5 (768) → fc.

    It needs a grid of at least 17×17 there, i.e. inputs of about 299×299.
    """

    def __init__(self, in_chans: int, num_classes: int) -> None:
        super().__init__()
        self.conv0 = conv_bn(in_chans, 128, 1)
        self.conv1 = conv_bn(128, 768, 5)
        self.fc = nn.Linear(768, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(self.conv0(F.avg_pool2d(x, 5, stride=3)))
        return self.fc(x.mean((2, 3)))


class InceptionV3(Classifier):
    """Inception v3 (Table 1 of Szegedy et al. 2015).

    Args:
        num_classes: classifier outputs; 0 for a bare feature extractor.
        in_chans: input channels.
        drop_rate: dropout before the classifier (0 by default like every model here; the TF-slim training of
            the published weights used 0.2, torchvision's builder 0.5).
        global_pool: ``"avg"`` (the paper's 8×8 average pool) or ``"max"``.
        aux_logits: build the auxiliary classifier (returned in training mode only).
    """

    aux_weights: tuple[float, ...] = (0.4,)

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
        aux_logits: bool = True,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        # Stem (Table 1, first six rows): 299 → 149 → 147 → 147 → pool 73 → 73 → 71 → pool 35.
        self.Conv2d_1a_3x3 = conv_bn(in_chans, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = conv_bn(32, 32, 3)
        self.Conv2d_2b_3x3 = conv_bn(32, 64, 3, padding=1)
        self.maxpool1 = nn.MaxPool2d(3, stride=2)
        self.Conv2d_3b_1x1 = conv_bn(64, 80, 1)
        self.Conv2d_4a_3x3 = conv_bn(80, 192, 3)
        self.maxpool2 = nn.MaxPool2d(3, stride=2)
        # 3 × Inception on the 35×35 grid (Fig. 5), widths chained from each block's output.
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(self.Mixed_5b.out_chans, pool_features=64)
        self.Mixed_5d = InceptionA(self.Mixed_5c.out_chans, pool_features=64)
        self.Mixed_6a = InceptionB(self.Mixed_5d.out_chans)
        # 4 × Inception on the 17×17 grid (Fig. 6), inner 7×7 width growing 128 → 160 → 160 → 192.
        self.Mixed_6b = InceptionC(self.Mixed_6a.out_chans, c7=128)
        self.Mixed_6c = InceptionC(self.Mixed_6b.out_chans, c7=160)
        self.Mixed_6d = InceptionC(self.Mixed_6c.out_chans, c7=160)
        self.Mixed_6e = InceptionC(self.Mixed_6d.out_chans, c7=192)
        grid17_chans = self.Mixed_6e.out_chans
        self.AuxLogits = InceptionAux(grid17_chans, num_classes) if aux_logits and num_classes > 0 else None
        self.Mixed_7a = InceptionD(grid17_chans)
        # 2 × Inception on the 8×8 grid (Fig. 7).
        self.Mixed_7b = InceptionE(self.Mixed_7a.out_chans)
        self.Mixed_7c = InceptionE(self.Mixed_7b.out_chans)
        self.num_features = self.Mixed_7c.out_chans
        self.global_pool = GlobalPool2d(global_pool)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        # Truncated normals as torchvision initialises this network (std 0.1; the auxiliary head smaller).
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.1, a=-0.2, b=0.2)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.AuxLogits is not None:
            nn.init.trunc_normal_(self.AuxLogits.conv1.conv.weight, std=0.01, a=-0.02, b=0.02)
            nn.init.trunc_normal_(self.AuxLogits.fc.weight, std=0.001, a=-0.002, b=0.002)

    def _to_grid17(self, x: Tensor) -> Tensor:
        x = self.maxpool1(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))))
        x = self.maxpool2(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)))
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))
        x = self.Mixed_6a(x)
        return self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))

    def _from_grid17(self, x: Tensor) -> Tensor:
        return self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))

    def forward_features(self, x: Tensor) -> Tensor:
        return self._from_grid17(self._to_grid17(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.global_pool(x)
        if self.drop_rate > 0:
            x = F.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """Logits; in training mode with the auxiliary head, ``(logits, aux_logits)``."""
        grid17 = self._to_grid17(x)
        logits = self.forward_head(self._from_grid17(grid17))
        if self.training and self.AuxLogits is not None:
            return logits, self.AuxLogits(grid17)
        return logits

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """A new classifier (and auxiliary classifier) for `num_classes` outputs; 0 removes both."""
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes == 0:
            self.AuxLogits = None
        elif self.AuxLogits is not None:
            self.AuxLogits.fc = nn.Linear(self.AuxLogits.fc.in_features, num_classes)


@register_model(
    input_size=(3, 299, 299),
    paper="Szegedy et al. 2015 (arXiv:1512.00567), Table 1",
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    cam_layer="Mixed_7c",
)
def inception_v3(**kw) -> InceptionV3:
    return InceptionV3(**kw)
