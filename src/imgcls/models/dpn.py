"""Dual Path Networks: Chen et al. 2017, "Dual Path Networks" (arXiv:1707.01629), Table 1 (DPN-92).

A dual path block carries two states: a residual path of fixed width (added to, as in ResNeXt) and a densely
connected path that grows by ``inc`` channels per block (concatenated to, as in DenseNet). Each block reads
their concatenation through a ResNeXt bottleneck (1×1 → grouped 3×3 → 1×1) whose output is split: the first
``bw`` channels are added to the residual path, the last ``inc`` appended to the dense path (Section 3, Eq. 4-5).
The first block of a stage projects its input with a 1×1 conv (stride 2 from the third stage on) into a new
residual path and the first ``2 · inc`` channels of a new dense path.

DPN-92 (Table 1): stem 7×7/2 conv to 64 channels + 3×3/2 max-pool; stages of 3, 4, 20, 3 blocks with residual
widths 256, 512, 1024, 2048, bottleneck widths 96, 192, 384, 768 at cardinality 32, and dense increments
16, 32, 24, 128. Units are pre-activation (BN → ReLU → conv, BN eps 1e-3) as in the authors' MXNet release,
and the concatenated paths pass a last BN → ReLU before pooling. With the same weights, outputs equal timm's
``dpn92`` exactly.

State-dict keys equal timm's ``dpn92`` (``features.conv1_1.conv``, ``features.conv2_1.c1x1_w_s1.bn``,
``features.conv3_1.c1x1_w_s2.conv``, ``c1x1_a``, ``c3x3_b``, ``c1x1_c``, ``features.conv5_bn_ac.bn``, and a
1×1-conv ``classifier``), so its published weights load as they are.

``dpn92_cifar`` is kuangliu/pytorch-cifar's DPN92 (same layers and parameters): a 3×3 stride-1 stem without
max-pool, post-activation units (conv → BN → ReLU, the last BN before the merge, ReLU after it), a projection
that opens a stage with a single dense increment, and no BN after the final concatenation.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imgcls.constants import CIFAR10_MEAN, CIFAR10_STD
from imgcls.models._base import Classifier
from imgcls.models._registry import register_model
from imgcls.models.layers import ConvBNAct, GlobalPool2d

__all__ = ["DPN", "DPNS", "BnActConv2d", "DPNSpec", "DualPathBlock"]


DualState = tuple[Tensor, Tensor]  # (residual path, dense path)


class BnActConv2d(nn.Module):
    """A pre-activation unit: BN → ReLU → conv, held as ``bn`` and ``conv``."""

    def __init__(
        self, in_chans: int, out_chans: int, kernel_size: int, stride: int = 1, groups: int = 1, eps: float = 1e-3
    ) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_chans, eps=eps)
        self.act = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_chans, out_chans, kernel_size, stride, kernel_size // 2, groups=groups, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.act(self.bn(x)))


class DualPathBlock(nn.Module):
    """One dual path block (Chen et al., Fig. 2e).

    Args:
        in_chans: channels of the concatenated input (residual + dense).
        width: bottleneck width (1×1 a and grouped 3×3 b).
        bw: residual path width (the 1×1 c's first output channels).
        inc: dense increment (the 1×1 c's last output channels).
        groups: cardinality of the 3×3.
        kind: ``"proj"`` (stage opener, stride 1), ``"down"`` (stage opener, stride 2) or ``"normal"``.
        preact: pre-activation units (the paper's); post-activation for the CIFAR port.
        proj_incs: dense increments the projection opens the dense path with (2 in the paper, 1 in the port).
        eps: BatchNorm epsilon.
    """

    def __init__(
        self,
        in_chans: int,
        width: int,
        bw: int,
        inc: int,
        groups: int,
        kind: str = "normal",
        preact: bool = True,
        proj_incs: int = 2,
        eps: float = 1e-3,
    ) -> None:
        super().__init__()
        self.bw = bw
        self.preact = preact
        stride = 2 if kind == "down" else 1

        def unit(cin: int, cout: int, k: int, s: int = 1, g: int = 1, act: bool = True) -> nn.Module:
            if preact:
                return BnActConv2d(cin, cout, k, s, g, eps=eps)
            return ConvBNAct(cin, cout, k, s, groups=g, act=act, eps=eps)

        # Two attribute names for the projection, as the published weights spell them.
        self.c1x1_w_s1 = unit(in_chans, bw + proj_incs * inc, 1, act=False) if kind == "proj" else None
        self.c1x1_w_s2 = unit(in_chans, bw + proj_incs * inc, 1, 2, act=False) if kind == "down" else None
        self.c1x1_a = unit(in_chans, width, 1)
        self.c3x3_b = unit(width, width, 3, stride, groups)
        self.c1x1_c = unit(width, bw + inc, 1, act=False)

    def forward(self, x: Tensor | DualState) -> DualState:
        x_in = torch.cat(x, 1) if isinstance(x, tuple) else x
        proj = self.c1x1_w_s1 if self.c1x1_w_s1 is not None else self.c1x1_w_s2
        if proj is not None:
            shortcut = proj(x_in)
            x_res, x_dense = shortcut[:, : self.bw], shortcut[:, self.bw :]
        else:
            x_res, x_dense = x
        out = self.c1x1_c(self.c3x3_b(self.c1x1_a(x_in)))
        resid = x_res + out[:, : self.bw]  # Eq. 4: the residual path adds
        dense = torch.cat([x_dense, out[:, self.bw :]], 1)  # Eq. 5: the dense path concatenates
        if not self.preact:
            resid, dense = F.relu(resid), F.relu(dense)
        return resid, dense


class CatBnAct(nn.Module):
    """Concatenate the two paths, then BN → ReLU (``bn``)."""

    def __init__(self, chans: int, eps: float = 1e-3) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(chans, eps=eps)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: DualState) -> Tensor:
        return self.act(self.bn(torch.cat(x, 1)))


class Cat(nn.Module):
    """Concatenate the two paths (the CIFAR port has no final BN)."""

    def forward(self, x: DualState) -> Tensor:
        return torch.cat(x, 1)


@dataclass(frozen=True)
class DPNSpec:
    """One column of Table 1.

    Attributes:
        depths: blocks per stage (conv2..conv5).
        incs: dense increment per block in each stage.
        k_r: bottleneck width of the first stage; doubles each stage.
        groups: cardinality of the grouped 3×3.
        num_init_features: stem width.
        bw_factor: residual width of the first stage in multiples of 64 (DPN-92: 4, so 256).
        cifar: the kuangliu CIFAR port (3×3 stem, post-activation, one-increment projection, no final BN).
    """

    depths: tuple[int, int, int, int]
    incs: tuple[int, int, int, int]
    k_r: int = 96
    groups: int = 32
    num_init_features: int = 64
    bw_factor: int = 4
    cifar: bool = False


class DPN(Classifier):
    """A dual path network built from a `DPNSpec`.

    Args:
        spec: the variant (a row of ``DPNS``).
        num_classes: classifier outputs; 0 for a bare feature extractor.
        in_chans: input channels.
        drop_rate: dropout before the classifier.
        global_pool: ``"avg"`` or ``"max"``.
    """

    def __init__(
        self,
        spec: DPNSpec,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        self.spec = spec
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        preact = not spec.cifar
        eps = 1e-5 if spec.cifar else 1e-3  # the MXNet-trained weights use 1e-3
        proj_incs = 1 if spec.cifar else 2
        blocks: OrderedDict[str, nn.Module] = OrderedDict()
        if spec.cifar:
            blocks["conv1_1"] = ConvBNAct(in_chans, spec.num_init_features, 3, eps=eps)
        else:
            blocks["conv1_1"] = ConvBNAct(in_chans, spec.num_init_features, 7, stride=2, eps=eps)
            blocks["conv1_pool"] = nn.MaxPool2d(3, stride=2, padding=1)

        chans = spec.num_init_features
        for stage, (depth, inc) in enumerate(zip(spec.depths, spec.incs)):
            bw = 64 * spec.bw_factor * 2**stage
            width = spec.k_r * 2**stage
            for i in range(depth):
                kind = "normal" if i > 0 else ("proj" if stage == 0 else "down")
                name = f"conv{stage + 2}_{i + 1}"
                blocks[name] = DualPathBlock(chans, width, bw, inc, spec.groups, kind, preact, proj_incs, eps)
                chans = bw + (proj_incs + 1) * inc if i == 0 else chans + inc
        if spec.cifar:
            blocks["conv5_cat"] = Cat()
        else:
            blocks["conv5_bn_ac"] = CatBnAct(chans, eps)
        self.features = nn.Sequential(blocks)
        self.num_features = chans
        self.global_pool = GlobalPool2d(global_pool, flatten=False)
        self.classifier = self._make_classifier(num_classes)
        self._init_weights()

    def _make_classifier(self, num_classes: int) -> nn.Module:
        # A 1×1 conv, not a Linear, as the published weights store it (same parameters).
        return nn.Conv2d(self.num_features, num_classes, 1) if num_classes > 0 else nn.Identity()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m is not self.classifier:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.global_pool(x)  # (N, C, 1, 1)
        if self.drop_rate > 0:
            x = F.dropout(x, self.drop_rate, self.training)
        return x.flatten(1) if pre_logits else self.classifier(x).flatten(1)

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.classifier = self._make_classifier(num_classes)


# Chen et al. 2017, Table 1 (DPN-92). CIFAR row: kuangliu/pytorch-cifar's DPN92.
DPNS = {
    "dpn92": DPNSpec(depths=(3, 4, 20, 3), incs=(16, 32, 24, 128)),
    "dpn92_cifar": DPNSpec(depths=(3, 4, 20, 3), incs=(16, 32, 24, 128), cifar=True),
}


def _dpn(name: str, **kw) -> DPN:
    return DPN(DPNS[name], **kw)


_CHEN = "Chen et al. 2017 (arXiv:1707.01629), Table 1"


# The MXNet weights expect mean (124, 117, 104) / 255 and std 1 / (0.0167 · 255) (timm: IMAGENET_DPN_MEAN/STD).
@register_model(
    input_size=(3, 224, 224),
    paper=_CHEN,
    mean=(0.4863, 0.4588, 0.4078),
    std=(0.2348, 0.2348, 0.2348),
    cam_layer="features",
)
def dpn92(**kw) -> DPN:
    return _dpn("dpn92", **kw)


@register_model(
    input_size=(3, 32, 32), paper=f"{_CHEN}; CIFAR port", mean=CIFAR10_MEAN, std=CIFAR10_STD, cam_layer="features"
)
def dpn92_cifar(**kw) -> DPN:
    return _dpn("dpn92_cifar", **kw)
