"""DenseNet-BC: Huang et al. 2016, "Densely Connected Convolutional Networks" (arXiv:1608.06993), Table 1.

Each dense layer sees the concatenation of every earlier feature map in its block and adds ``growth_rate``
new channels: BN → ReLU → 1×1 conv to ``bn_size · growth_rate`` (the "B" bottleneck), BN → ReLU → 3×3 conv to
``growth_rate``. Between blocks a transition halves the channels (the "C" compression 0.5) with BN → ReLU →
1×1 conv and 2×2 average pooling. The ImageNet networks use growth 32, bn_size 4 and a 64-channel stem
(7×7 stride-2 conv, BN, ReLU, 3×3 stride-2 max-pool); DenseNet-121/169/201 differ only in the number of
layers per block.

State-dict keys equal torchvision's (``features.conv0``, ``features.denseblock1.denselayer1.norm1``,
``features.transition1.conv``, ``features.norm5``, ``classifier``), so its published weights load as they are.

``densenet121_cifar`` is kuangliu/pytorch-cifar's DenseNet121 at 32×32 (same layers and parameters): a bare
3×3 stride-1 stem conv to 64 channels, no stem norm or pooling, then the same blocks and transitions.

``memory_efficient=True`` recomputes each layer's concatenation and bottleneck in the backward pass instead of
storing them (Pleiss et al. 2017, arXiv:1707.06990): far less activation memory for about 15-20 % more time.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import Tensor, nn

from imgcls.constants import CIFAR10_MEAN, CIFAR10_STD
from imgcls.models._base import Classifier
from imgcls.models._registry import register_model
from imgcls.models.layers import GlobalPool2d

__all__ = ["DENSENETS", "DenseBlock", "DenseLayer", "DenseNet", "DenseNetSpec", "Transition"]


class DenseLayer(nn.Module):
    """BN-ReLU-conv1×1 (to ``bn_size · growth_rate``), BN-ReLU-conv3×3 (to ``growth_rate``): Section 3, "DenseNet-B".

    Args:
        in_chans: channels of the concatenated input.
        growth_rate: new channels this layer adds (the paper's k).
        bn_size: bottleneck width as a multiple of `growth_rate` (the paper uses 4).
        drop_rate: dropout on the new features (Section 4.2 uses 0.2 on CIFAR without augmentation).
        memory_efficient: recompute the bottleneck in the backward pass instead of storing it.
    """

    def __init__(
        self, in_chans: int, growth_rate: int, bn_size: int, drop_rate: float = 0.0, memory_efficient: bool = False
    ) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_chans)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_chans, bn_size * growth_rate, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.memory_efficient = memory_efficient

    def bottleneck(self, *inputs: Tensor) -> Tensor:
        return self.conv1(self.relu1(self.norm1(torch.cat(inputs, 1))))

    def forward(self, inputs: list[Tensor]) -> Tensor:
        if self.memory_efficient and torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
            # The tensors are passed one by one: the block keeps appending to its list, and the recomputation in
            # the backward pass must see this layer's inputs only. (Like torchvision's, the recomputation runs
            # norm1 in training mode a second time, so its running statistics take two momentum steps.)
            out = cp.checkpoint(self.bottleneck, *inputs, use_reentrant=False)
        else:
            out = self.bottleneck(*inputs)
        out = self.conv2(self.relu2(self.norm2(out)))
        if self.drop_rate > 0:
            out = F.dropout(out, self.drop_rate, self.training)
        return out


class DenseBlock(nn.ModuleDict):
    """`num_layers` dense layers; layer i sees the block input and the outputs of layers 1..i-1 (Eq. 2)."""

    def __init__(self, num_layers: int, in_chans: int, growth_rate: int, bn_size: int, **layer_kw) -> None:
        super().__init__()
        for i in range(num_layers):
            layer = DenseLayer(in_chans + i * growth_rate, growth_rate, bn_size, **layer_kw)
            self.add_module(f"denselayer{i + 1}", layer)

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    """BN-ReLU-conv1×1 then 2×2 average pooling, between dense blocks (Section 3, "Pooling layers")."""

    def __init__(self, in_chans: int, out_chans: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_chans)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_chans, out_chans, 1, bias=False)
        self.pool = nn.AvgPool2d(2, stride=2)


@dataclass(frozen=True)
class DenseNetSpec:
    """One row of Table 1.

    Attributes:
        block_config: dense layers per block.
        growth_rate: channels each dense layer adds (k).
        num_init_features: stem width (2k in the paper).
        bn_size: bottleneck width in multiples of k.
        compression: fraction of channels a transition keeps (θ).
        cifar_stem: a bare 3×3 stride-1 stem conv (kuangliu's CIFAR port) instead of the ImageNet stem.
    """

    block_config: tuple[int, ...]
    growth_rate: int = 32
    num_init_features: int = 64
    bn_size: int = 4
    compression: float = 0.5
    cifar_stem: bool = False


class DenseNet(Classifier):
    """A DenseNet-BC built from a `DenseNetSpec`.

    Args:
        spec: the variant (a row of ``DENSENETS``).
        num_classes: classifier outputs; 0 for a bare feature extractor.
        in_chans: input channels.
        drop_rate: dropout before the classifier.
        global_pool: ``"avg"`` (the paper's) or ``"max"``.
        dense_drop_rate: dropout on each dense layer's new features (Huang et al., Section 4.2).
        memory_efficient: checkpoint each dense layer's bottleneck to save activation memory.
    """

    def __init__(
        self,
        spec: DenseNetSpec,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
        dense_drop_rate: float = 0.0,
        memory_efficient: bool = False,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        chans = spec.num_init_features
        if spec.cifar_stem:
            stem = [("conv0", nn.Conv2d(in_chans, chans, 3, padding=1, bias=False))]
        else:
            stem = [
                ("conv0", nn.Conv2d(in_chans, chans, 7, stride=2, padding=3, bias=False)),
                ("norm0", nn.BatchNorm2d(chans)),
                ("relu0", nn.ReLU(inplace=True)),
                ("pool0", nn.MaxPool2d(3, stride=2, padding=1)),
            ]
        self.features = nn.Sequential(OrderedDict(stem))
        for i, num_layers in enumerate(spec.block_config):
            block = DenseBlock(
                num_layers,
                chans,
                spec.growth_rate,
                spec.bn_size,
                drop_rate=dense_drop_rate,
                memory_efficient=memory_efficient,
            )
            self.features.add_module(f"denseblock{i + 1}", block)
            chans += num_layers * spec.growth_rate
            if i != len(spec.block_config) - 1:
                out_chans = int(chans * spec.compression)
                self.features.add_module(f"transition{i + 1}", Transition(chans, out_chans))
                chans = out_chans
        self.features.add_module("norm5", nn.BatchNorm2d(chans))
        self.num_features = chans
        self.global_pool = GlobalPool2d(global_pool)
        self.classifier = nn.Linear(chans, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        # norm5 is the last BN; the ReLU after it belongs to the features (pooling sees activations).
        return F.relu(self.features(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.global_pool(x)
        if self.drop_rate > 0:
            x = F.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.classifier(x)

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()


# Huang et al. 2016, Table 1 (k = 32). CIFAR row: kuangliu/pytorch-cifar's DenseNet121.
DENSENETS = {
    "densenet121": DenseNetSpec(block_config=(6, 12, 24, 16)),
    "densenet169": DenseNetSpec(block_config=(6, 12, 32, 32)),
    "densenet201": DenseNetSpec(block_config=(6, 12, 48, 32)),
    "densenet121_cifar": DenseNetSpec(block_config=(6, 12, 24, 16), cifar_stem=True),
}


def _densenet(name: str, **kw) -> DenseNet:
    return DenseNet(DENSENETS[name], **kw)


_HUANG = "Huang et al. 2016 (arXiv:1608.06993), Table 1"


@register_model(input_size=(3, 224, 224), paper=_HUANG, cam_layer="features")
def densenet121(**kw) -> DenseNet:
    return _densenet("densenet121", **kw)


@register_model(input_size=(3, 224, 224), paper=_HUANG, cam_layer="features")
def densenet169(**kw) -> DenseNet:
    return _densenet("densenet169", **kw)


@register_model(input_size=(3, 224, 224), paper=_HUANG, cam_layer="features")
def densenet201(**kw) -> DenseNet:
    return _densenet("densenet201", **kw)


@register_model(
    input_size=(3, 32, 32), paper=f"{_HUANG}; CIFAR stem", mean=CIFAR10_MEAN, std=CIFAR10_STD, cam_layer="features"
)
def densenet121_cifar(**kw) -> DenseNet:
    return _densenet("densenet121_cifar", **kw)
