"""Network in Network: Lin, Chen & Yan 2013 (arXiv:1312.4400), Sections 3.1-3.2 and Figure 2.

Each "mlpconv" layer is a k×k convolution followed by a small multilayer perceptron applied at every position,
that is, 1×1 convolutions, all with ReLU (Section 3.1, Eq. 2). Instead of fully connected layers, the last
mlpconv layer produces one map per class and global average pooling turns each map into a logit
(Section 3.2). Dropout is applied to the outputs of all but the last mlpconv layer (Section 4.1).

- ``nin_cifar``: the CIFAR-10 network of Section 4.2 with the layer sizes of the authors' released model:
  mlpconv (5×5 192, 160, 96), 3×3/2 max pool, mlpconv (5×5 192, 192, 192), 3×3/2 average pool,
  mlpconv (3×3 192, 192, classes), global average pool over 8×8.
- ``nin``: the four-mlpconv ImageNet network of the authors' released model: (11×11/4 96, 96, 96),
  (5×5 256, 256, 256), (3×3 384, 384, 384), each followed by a 3×3/2 max pool, then (3×3 1024, 1024, classes).

Deviations: the class maps are not rectified (the released models put a ReLU on them, which forbids negative
logits), and since a 1×1 convolution commutes with averaging, the head averages first and then applies the
class layer: the same logits for H·W times fewer operations. Pools round up (Caffe's rule), giving the
released models' 16 → 8 (CIFAR) and 54 → 27 → 13 → 6 (ImageNet) map sizes.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from torch import Tensor, nn

from imgcls.constants import CIFAR10_MEAN, CIFAR10_STD
from imgcls.models._base import Classifier
from imgcls.models._registry import register_model
from imgcls.models.layers import GlobalPool2d, init_weights, make_pool


@dataclass(frozen=True)
class MlpConvSpec:
    """One mlpconv layer: a k×k convolution to ``channels[0]``, then 1×1 convolutions to ``channels[1:]``."""

    kernel: int
    stride: int
    padding: int
    channels: tuple[int, ...]
    pool: str | None  # 3×3/2 pool after the layer ("max" or "avg"); None for the last layer


# The authors' released CIFAR-10 model (Section 4.2); the last layer's class maps are the classifier.
NIN_CIFAR = (
    MlpConvSpec(kernel=5, stride=1, padding=2, channels=(192, 160, 96), pool="max"),
    MlpConvSpec(kernel=5, stride=1, padding=2, channels=(192, 192, 192), pool="avg"),
    MlpConvSpec(kernel=3, stride=1, padding=1, channels=(192, 192), pool=None),
)

# The authors' released ImageNet model (four mlpconv layers).
NIN_IMAGENET = (
    MlpConvSpec(kernel=11, stride=4, padding=0, channels=(96, 96, 96), pool="max"),
    MlpConvSpec(kernel=5, stride=1, padding=2, channels=(256, 256, 256), pool="max"),
    MlpConvSpec(kernel=3, stride=1, padding=1, channels=(384, 384, 384), pool="max"),
    MlpConvSpec(kernel=3, stride=1, padding=1, channels=(1024, 1024), pool=None),
)

SPECS = {"nin": NIN_IMAGENET, "nin_cifar": NIN_CIFAR}


class MlpConv(nn.Sequential):
    """Lin et al. 2013, Eq. 2: a k×k convolution and 1×1 convolutions, each followed by ReLU."""

    def __init__(self, in_chans: int, spec: MlpConvSpec) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        chans = in_chans
        for i, out in enumerate(spec.channels):
            kernel, stride, padding = (spec.kernel, spec.stride, spec.padding) if i == 0 else (1, 1, 0)
            layers[f"conv{i}"] = nn.Conv2d(chans, out, kernel, stride, padding)
            layers[f"relu{i}"] = nn.ReLU(inplace=True)
            chans = out
        super().__init__(layers)
        self.out_chans = chans


class NiN(Classifier):
    """Stacked mlpconv layers and a global-average-pooled 1×1 class layer (``classifier``).

    Args:
        specs: the mlpconv layers, e.g. ``NIN_CIFAR``.
        num_classes: number of class maps.
        in_chans: input channels.
        drop_rate: dropout after every mlpconv layer but the last.
        pool: ``None`` keeps each layer's pool from the table; ``"max"``, ``"avg"`` or ``"stochastic"`` sets all.
    """

    def __init__(
        self,
        specs: tuple[MlpConvSpec, ...],
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.5,
        pool: str | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        chans = in_chans
        for i, spec in enumerate(specs, start=1):
            block = MlpConv(chans, spec)
            layers[f"mlpconv{i}"] = block
            chans = block.out_chans
            if spec.pool is not None:
                layers[f"pool{i}"] = make_pool(pool or spec.pool, kernel_size=3, stride=2, ceil_mode=True)
                layers[f"drop{i}"] = nn.Dropout(drop_rate)
        self.features = nn.Sequential(layers)
        self.num_features = chans
        self.global_pool = GlobalPool2d("avg", flatten=False)
        self.classifier = nn.Conv2d(chans, num_classes, 1)
        init_weights(self)
        self._init_classifier()

    def _init_classifier(self) -> None:
        # The class layer produces logits: start small, like the linear classifiers elsewhere in the zoo.
        nn.init.normal_(self.classifier.weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        # mean_hw(W x + b) = W mean_hw(x) + b: averaging before the 1×1 class layer gives the same logits.
        x = self.global_pool(x)  # (N, C, H, W) -> (N, C, 1, 1)
        return x.flatten(1) if pre_logits else self.classifier(x).flatten(1)

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.classifier = nn.Conv2d(self.num_features, num_classes, 1)
        self._init_classifier()


def _nin(variant: str, **kw) -> NiN:
    return NiN(SPECS[variant], **kw)


@register_model(
    input_size=(3, 224, 224), paper="Lin et al. 2013 (arXiv:1312.4400), ImageNet model, 4 mlpconv", cam_layer="features"
)
def nin(**kw) -> NiN:
    return _nin("nin", **kw)


@register_model(
    input_size=(3, 32, 32),
    paper="Lin et al. 2013 (arXiv:1312.4400), Section 4.2, CIFAR-10 model",
    mean=CIFAR10_MEAN,
    std=CIFAR10_STD,
    cam_layer="features",
)
def nin_cifar(**kw) -> NiN:
    return _nin("nin_cifar", **kw)
