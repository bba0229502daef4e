"""VGG: Simonyan & Zisserman 2014, "Very Deep Convolutional Networks for Large-Scale Image Recognition"
(arXiv:1409.1556), Table 1 (configurations A, A-LRN, B, C, D, E) and Table 2 (their parameter counts).

Stacks of 3×3 convolutions (stride 1, padding 1) and 2×2/2 max pools, then fc6 and fc7 (4096, ReLU,
dropout 0.5) and a classifier (Section 2.1). Configuration C puts a 1×1 convolution last in stages 3-5;
A-LRN adds local response normalisation (Krizhevsky's constants, Section 2.1) after its first convolution.

The ``*_bn`` variants put batch normalisation (Ioffe & Szegedy 2015, arXiv:1502.03167) after every convolution,
as torchvision does; the paper has none. ``vgg16_cifar`` is the CIFAR-10 VGG16 of kuangliu/pytorch-cifar:
configuration D with batch norm, at 32×32, and a single 512 → 10 linear classifier instead of fc6/fc7/fc8.

State-dict keys are torchvision's (``features.N``, ``classifier.0/3/6``), so published weights load as they
are. As in torchvision, a 7×7 adaptive average pool before fc6 lets other input sizes through (no-op at 224).
"""

from __future__ import annotations

from torch import Tensor, nn

from imgcls.constants import CIFAR10_MEAN, CIFAR10_STD
from imgcls.models._base import Classifier
from imgcls.models._registry import register_model
from imgcls.models.layers import FcHeadMixin, GlobalPool2d, LocalResponseNorm, fc_head, init_weights, make_pool

# Simonyan & Zisserman 2014, Table 1: an int is a 3×3 convolution with that many channels ("conv3-64"),
# (channels, 1) the 1×1 convolution of column C ("conv1-256"), "M" a 2×2/2 max pool, "LRN" column A-LRN's norm.
CFGS: dict[str, list[int | tuple[int, int] | str]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "A-LRN": [64, "LRN", "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "C": [64, 64, "M", 128, 128, "M", 256, 256, (256, 1), "M", 512, 512, (512, 1), "M", 512, 512, (512, 1), "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def make_features(cfg: list[int | tuple[int, int] | str], in_chans: int, batch_norm: bool, pool: str) -> nn.Sequential:
    """The convolutional part as one flat ``nn.Sequential`` (torchvision's indices: conv, [bn], relu, ..., pool)."""
    layers: list[nn.Module] = []
    chans = in_chans
    for item in cfg:
        if item == "M":
            layers.append(make_pool(pool, kernel_size=2, stride=2))
        elif item == "LRN":
            layers.append(LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0))
        else:
            out, kernel = item if isinstance(item, tuple) else (item, 3)
            layers.append(nn.Conv2d(chans, out, kernel, padding=kernel // 2))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU(inplace=True))
            chans = out
    return nn.Sequential(*layers)


class VGG(FcHeadMixin, Classifier):
    """VGG at ImageNet size: ``features``, ``avgpool`` (7×7), ``classifier`` = fc6, fc7, fc8 at indices 0, 3, 6.

    Args:
        cfg: a column of Table 1 (``CFGS["D"]``).
        num_classes: width of the last layer.
        in_chans: input channels.
        batch_norm: batch norm after every convolution.
        drop_rate: dropout on the outputs of fc6 and fc7.
        pool: ``"max"`` (the paper), ``"avg"`` or ``"stochastic"`` for the 2×2/2 pools.
    """

    def __init__(
        self,
        cfg: list[int | tuple[int, int] | str],
        num_classes: int = 1000,
        in_chans: int = 3,
        batch_norm: bool = False,
        drop_rate: float = 0.5,
        pool: str = "max",
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.features = make_features(cfg, in_chans, batch_norm, pool)
        self.num_features = 512
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = fc_head(512 * 7 * 7, num_classes, drop_rate)
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)


class VGGCifar(Classifier):
    """VGG for 32×32 inputs (kuangliu/pytorch-cifar): ``features`` then one linear ``classifier`` on 512 features.

    Five 2×2 pools take 32×32 to 1×1; a global average pool (a no-op at 32×32) lets larger inputs through.
    """

    def __init__(
        self, cfg: list[int | tuple[int, int] | str], num_classes: int = 10, in_chans: int = 3, pool: str = "max"
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.features = make_features(cfg, in_chans, batch_norm=True, pool=pool)
        self.num_features = 512
        self.global_pool = GlobalPool2d("avg")
        self.classifier = nn.Linear(512, num_classes)
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.global_pool(x)  # (N, 512, 1, 1) -> (N, 512)
        return x if pre_logits else self.classifier(x)

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.classifier = nn.Linear(512, num_classes)
        init_weights(self.classifier)


def _vgg(column: str, batch_norm: bool = False, **kw) -> VGG:
    return VGG(CFGS[column], batch_norm=batch_norm, **kw)


_PAPER = "Simonyan & Zisserman 2014 (arXiv:1409.1556), Table 1 col. "
_BN = "; batch norm after each conv (Ioffe & Szegedy 2015, arXiv:1502.03167)"


@register_model(input_size=(3, 224, 224), paper=_PAPER + "A", cam_layer="features.-2")
def vgg11(**kw) -> VGG:
    return _vgg("A", **kw)


@register_model(input_size=(3, 224, 224), paper=_PAPER + "A-LRN", cam_layer="features.-2")
def vgg11_lrn(**kw) -> VGG:
    return _vgg("A-LRN", **kw)


@register_model(input_size=(3, 224, 224), paper=_PAPER + "B", cam_layer="features.-2")
def vgg13(**kw) -> VGG:
    return _vgg("B", **kw)


@register_model(input_size=(3, 224, 224), paper=_PAPER + "C", cam_layer="features.-2")
def vgg16_conv1(**kw) -> VGG:
    return _vgg("C", **kw)


@register_model(input_size=(3, 224, 224), paper=_PAPER + "D", cam_layer="features.-2")
def vgg16(**kw) -> VGG:
    return _vgg("D", **kw)


@register_model(input_size=(3, 224, 224), paper=_PAPER + "E", cam_layer="features.-2")
def vgg19(**kw) -> VGG:
    return _vgg("E", **kw)


@register_model(input_size=(3, 224, 224), paper=_PAPER + "A" + _BN, cam_layer="features.-2")
def vgg11_bn(**kw) -> VGG:
    return _vgg("A", batch_norm=True, **kw)


@register_model(input_size=(3, 224, 224), paper=_PAPER + "B" + _BN, cam_layer="features.-2")
def vgg13_bn(**kw) -> VGG:
    return _vgg("B", batch_norm=True, **kw)


@register_model(input_size=(3, 224, 224), paper=_PAPER + "C" + _BN, cam_layer="features.-2")
def vgg16_conv1_bn(**kw) -> VGG:
    return _vgg("C", batch_norm=True, **kw)


@register_model(input_size=(3, 224, 224), paper=_PAPER + "D" + _BN, cam_layer="features.-2")
def vgg16_bn(**kw) -> VGG:
    return _vgg("D", batch_norm=True, **kw)


@register_model(input_size=(3, 224, 224), paper=_PAPER + "E" + _BN, cam_layer="features.-2")
def vgg19_bn(**kw) -> VGG:
    return _vgg("E", batch_norm=True, **kw)


@register_model(
    input_size=(3, 32, 32),
    paper=_PAPER + "D at 32×32 with batch norm and one linear layer (kuangliu/pytorch-cifar VGG('VGG16'))",
    mean=CIFAR10_MEAN,
    std=CIFAR10_STD,
    cam_layer="features.-2",
)
def vgg16_cifar(**kw) -> VGGCifar:
    return VGGCifar(CFGS["D"], **kw)
