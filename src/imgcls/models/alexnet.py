"""AlexNet and ZFNet: five convolutions and three fully connected layers.

- AlexNet: Krizhevsky, Sutskever & Hinton 2012, "ImageNet Classification with Deep Convolutional Neural
  Networks" (NeurIPS), Section 3 and Figure 2. The network is the paper's two-GPU one: conv2, conv4 and conv5
  see only the half of the previous layer on their own GPU, which is a grouped convolution (``groups=2``);
  conv3 and the fully connected layers see everything. ReLU everywhere, local response normalisation after
  conv1 and conv2 (Section 3.3, k=2, n=5, alpha=1e-4, beta=0.75), overlapping 3×3/2 max pooling after both
  normalisations and conv5 (Section 3.4), dropout 0.5 on the outputs of fc6 and fc7 (Section 4.2).
  With 1000 classes it has 60,965,224 parameters (the "60 million" of the abstract).
- ZFNet: Zeiler & Fergus 2013, "Visualizing and Understanding Convolutional Networks" (arXiv:1311.2901),
  Figure 3: AlexNet with a 7×7/2 first layer and a 5×5/2 second layer (so the first layers keep more
  frequency content, Section 4.1) and dense (ungrouped) conv3-5. Each of the first two layers is
  rectified, max pooled 3×3/2 and then contrast normalised across feature maps.

Deviations, both as in torchvision's AlexNet: the 224×224 input gets padding 2 in conv1 so that the paper's
55×55 map comes out (the paper's 224 only works at 227), and an adaptive 6×6 average pool before fc6 lets
other input sizes through (it does nothing at 224). ZFNet's "contrast normalisation" is the same local
response normalisation as AlexNet's (the paper gives no constants), and its pools use ceil rounding, which
gives Figure 3's 110 → 55 and 26 → 13. Initialisation is He-normal rather than the paper's N(0, 0.01) with
unit biases, which trains from scratch without the paper's hand-tuned schedule.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from torch import Tensor, nn

from imgcls.models._base import Classifier
from imgcls.models._registry import register_model
from imgcls.models.layers import FcHeadMixin, LocalResponseNorm, fc_head, init_weights, make_pool


@dataclass(frozen=True)
class ConvRow:
    """One convolutional layer of the paper's figure and what follows its ReLU, in order."""

    out_chans: int
    kernel: int
    stride: int
    padding: int
    groups: int = 1
    then: tuple[str, ...] = ()  # "lrn" and/or "pool"


# Krizhevsky et al. 2012, Section 3.5 and Figure 2 (groups=2: the layer sees only its own GPU's half).
ALEXNET = (
    ConvRow(96, kernel=11, stride=4, padding=2, then=("lrn", "pool")),
    ConvRow(256, kernel=5, stride=1, padding=2, groups=2, then=("lrn", "pool")),
    ConvRow(384, kernel=3, stride=1, padding=1),
    ConvRow(384, kernel=3, stride=1, padding=1, groups=2),
    ConvRow(256, kernel=3, stride=1, padding=1, groups=2, then=("pool",)),
)

# Zeiler & Fergus 2013, Figure 3 (pool, then contrast normalisation).
ZFNET = (
    ConvRow(96, kernel=7, stride=2, padding=1, then=("pool", "lrn")),
    ConvRow(256, kernel=5, stride=2, padding=0, then=("pool", "lrn")),
    ConvRow(384, kernel=3, stride=1, padding=1),
    ConvRow(384, kernel=3, stride=1, padding=1),
    ConvRow(256, kernel=3, stride=1, padding=1, then=("pool",)),
)

SPECS = {"alexnet": ALEXNET, "zfnet": ZFNET}


class AlexNet(FcHeadMixin, Classifier):
    """Five convolutions (``features.conv1`` … ``features.conv5``) and fc6, fc7, fc8 (``classifier.0/3/6``).

    Args:
        rows: the convolutional layers, e.g. ``ALEXNET``.
        num_classes: width of fc8.
        in_chans: input channels.
        drop_rate: dropout on the outputs of fc6 and fc7.
        pool: ``"max"`` (the paper), ``"avg"`` or ``"stochastic"`` for the 3×3/2 pools.
    """

    def __init__(
        self,
        rows: tuple[ConvRow, ...],
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.5,
        pool: str = "max",
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        chans = in_chans
        for i, row in enumerate(rows, start=1):
            layers[f"conv{i}"] = nn.Conv2d(chans, row.out_chans, row.kernel, row.stride, row.padding, groups=row.groups)
            layers[f"relu{i}"] = nn.ReLU(inplace=True)
            for step in row.then:
                if step == "lrn":
                    layers[f"norm{i}"] = LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0)
                else:
                    layers[f"pool{i}"] = make_pool(pool, kernel_size=3, stride=2, ceil_mode=True)
            chans = row.out_chans
        self.features = nn.Sequential(layers)
        self.num_features = chans
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = fc_head(chans * 6 * 6, num_classes, drop_rate)
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)


def _alexnet(variant: str, **kw) -> AlexNet:
    return AlexNet(SPECS[variant], **kw)


@register_model(
    input_size=(3, 224, 224), paper="Krizhevsky et al. 2012 (NeurIPS), Section 3, Figure 2", cam_layer="features.relu5"
)
def alexnet(**kw) -> AlexNet:
    return _alexnet("alexnet", **kw)


@register_model(
    input_size=(3, 224, 224), paper="Zeiler & Fergus 2013 (arXiv:1311.2901), Figure 3", cam_layer="features.relu5"
)
def zfnet(**kw) -> AlexNet:
    return _alexnet("zfnet", **kw)
