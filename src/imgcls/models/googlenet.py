"""GoogLeNet (Inception v1): Szegedy et al. 2014, "Going Deeper with Convolutions" (arXiv:1409.4842),
Table 1, Figure 2(b) (the Inception module with dimension reductions), Figure 3 and Section 5.

Each Inception module runs four branches on the same input and concatenates them: a 1×1 convolution; a 1×1
reduction then a 3×3; a 1×1 reduction then a 5×5; a 3×3/1 max pool then a 1×1 projection. Every convolution,
reductions included, is followed by ReLU. The module rows below are Table 1's columns; each module's input
width is the previous module's output, never retyped. No batch norm (that is ``inception_v2``).

Two auxiliary classifiers sit on the outputs of 4a and 4d (Section 5): 5×5/3 average pool, 1×1 convolution
to 128, a 1024-unit fully connected layer, dropout 0.7 and a linear classifier. In training mode ``forward``
returns ``(logits, aux1, aux2)`` and the loss weights them by ``aux_weights = (0.3, 0.3)``; in eval mode it
returns the logits alone, as the paper discards the auxiliary networks at inference.

Deviations: local response normalisation uses the constants of the authors' released Caffe model
(n=5, alpha=1e-4 / 5 per element, beta=0.75, k=1), as the paper gives none; max pools round up (Caffe's rule)
to give Table 1's 112 → 56 → 28 → 14 → 7; the final 7×7 average pool is a global one, so other input sizes
work; initialisation is He-normal.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imgcls.models._base import Classifier
from imgcls.models._registry import register_model
from imgcls.models.layers import ConvBNAct, GlobalPool2d, LocalResponseNorm, init_weights


@dataclass(frozen=True)
class InceptionSpec:
    """One row of Table 1: the output widths of the module's branches."""

    n1x1: int
    n3x3_reduce: int
    n3x3: int
    n5x5_reduce: int
    n5x5: int
    pool_proj: int

    @property
    def out_chans(self) -> int:
        return self.n1x1 + self.n3x3 + self.n5x5 + self.pool_proj


# Szegedy et al. 2014, Table 1: #1×1, #3×3 reduce, #3×3, #5×5 reduce, #5×5, pool proj.
INCEPTIONS = {
    "3a": InceptionSpec(64, 96, 128, 16, 32, 32),
    "3b": InceptionSpec(128, 128, 192, 32, 96, 64),
    "4a": InceptionSpec(192, 96, 208, 16, 48, 64),
    "4b": InceptionSpec(160, 112, 224, 24, 64, 64),
    "4c": InceptionSpec(128, 128, 256, 24, 64, 64),
    "4d": InceptionSpec(112, 144, 288, 32, 64, 64),
    "4e": InceptionSpec(256, 160, 320, 32, 128, 128),
    "5a": InceptionSpec(256, 160, 320, 32, 128, 128),
    "5b": InceptionSpec(384, 192, 384, 48, 128, 128),
}
POOL_AFTER = ("3b", "4e")  # Table 1's 3×3/2 max pools between the stages
AUX_AFTER = ("4a", "4d")  # Section 5
AUX_WEIGHTS = (0.3, 0.3)  # Section 5: "their loss is added to the total loss with a discount weight (0.3)"


def _conv(in_chans: int, out_chans: int, kernel: int, stride: int = 1) -> ConvBNAct:
    """Convolution with bias and ReLU, no norm: GoogLeNet predates batch norm."""
    return ConvBNAct(in_chans, out_chans, kernel, stride, bn=False)


class Inception(nn.Module):
    """Figure 2(b): 1×1 | 1×1 → 3×3 | 1×1 → 5×5 | 3×3 max pool → 1×1, concatenated along channels."""

    def __init__(self, in_chans: int, spec: InceptionSpec) -> None:
        super().__init__()
        self.branch1x1 = _conv(in_chans, spec.n1x1, 1)
        self.branch3x3 = nn.Sequential(_conv(in_chans, spec.n3x3_reduce, 1), _conv(spec.n3x3_reduce, spec.n3x3, 3))
        self.branch5x5 = nn.Sequential(_conv(in_chans, spec.n5x5_reduce, 1), _conv(spec.n5x5_reduce, spec.n5x5, 5))
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), _conv(in_chans, spec.pool_proj, 1))

    def forward(self, x: Tensor) -> Tensor:
        branches = (self.branch1x1, self.branch3x3, self.branch5x5, self.branch_pool)
        return torch.cat([b(x) for b in branches], 1)


class AuxClassifier(nn.Module):
    """Section 5: 5×5/3 average pool, 1×1 conv to 128 + ReLU, FC 1024 + ReLU, dropout 0.7, linear classifier."""

    def __init__(self, in_chans: int, num_classes: int, drop_rate: float = 0.7) -> None:
        super().__init__()
        self.conv = _conv(in_chans, 128, 1)
        self.fc1 = nn.Linear(128 * 4 * 4, 1024)
        self.relu = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(drop_rate)
        self.fc2 = nn.Linear(1024, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if min(x.shape[-2:]) >= 5:
            x = F.avg_pool2d(x, 5, stride=3)  # Section 5: 14×14 -> 4×4
        x = F.adaptive_avg_pool2d(x, 4)  # a no-op at 224×224; lets other input sizes through
        x = self.conv(x).flatten(1)  # (N, 128, 4, 4) -> (N, 2048)
        return self.fc2(self.drop(self.relu(self.fc1(x))))


class GoogLeNet(Classifier):
    """GoogLeNet with Table 1's module names: ``conv1`` … ``inception5b``, ``fc``, and ``aux1``/``aux2``.

    Args:
        num_classes: width of ``fc`` and of the auxiliary classifiers.
        in_chans: input channels.
        drop_rate: dropout before ``fc`` (Table 1: 40%).
        aux_logits: build the auxiliary classifiers (their outputs are returned in training mode only).
    """

    def __init__(
        self, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.4, aux_logits: bool = True
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.aux_weights = AUX_WEIGHTS if aux_logits else ()
        # Table 1 and Figure 3: the stem.
        self.conv1 = _conv(in_chans, 64, 7, stride=2)  # 7×7/2 -> 112×112×64
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)  # -> 56×56×64
        self.norm1 = LocalResponseNorm(size=5, alpha=1e-4 / 5, beta=0.75, k=1.0)
        self.conv2 = _conv(64, 64, 1)  # Table 1's "#3×3 reduce" of the 3×3 convolution row
        self.conv3 = _conv(64, 192, 3)  # -> 56×56×192
        self.norm2 = LocalResponseNorm(size=5, alpha=1e-4 / 5, beta=0.75, k=1.0)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)  # -> 28×28×192
        chans = 192
        for name, spec in INCEPTIONS.items():
            self.add_module(f"inception{name}", Inception(chans, spec))
            chans = spec.out_chans
            if name in AUX_AFTER and aux_logits:
                self.add_module(f"aux{AUX_AFTER.index(name) + 1}", AuxClassifier(chans, num_classes))
            if name in POOL_AFTER:
                self.add_module(f"maxpool{POOL_AFTER.index(name) + 3}", nn.MaxPool2d(3, stride=2, ceil_mode=True))
        self.num_features = chans  # 1024
        self.avgpool = GlobalPool2d("avg")  # Table 1: 7×7/1 average pool
        self.dropout = nn.Dropout(drop_rate)
        self.fc = nn.Linear(chans, num_classes)
        init_weights(self)

    def _stages(self, x: Tensor, collect_aux: bool) -> tuple[Tensor, list[Tensor]]:
        x = self.norm1(self.maxpool1(self.conv1(x)))
        x = self.maxpool2(self.norm2(self.conv3(self.conv2(x))))
        aux: list[Tensor] = []
        for name in INCEPTIONS:
            x = getattr(self, f"inception{name}")(x)
            if collect_aux and name in AUX_AFTER:
                aux.append(getattr(self, f"aux{AUX_AFTER.index(name) + 1}")(x))
            if name in POOL_AFTER:
                x = getattr(self, f"maxpool{POOL_AFTER.index(name) + 3}")(x)
        return x, aux

    def forward_features(self, x: Tensor) -> Tensor:
        return self._stages(x, collect_aux=False)[0]

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.dropout(self.avgpool(x))  # (N, 1024, 7, 7) -> (N, 1024)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, ...]:
        x, aux = self._stages(x, collect_aux=self.training and bool(self.aux_weights))
        logits = self.forward_head(x)
        return (logits, *aux) if aux else logits

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes)
        init_weights(self.fc)
        for i in range(1, len(self.aux_weights) + 1):
            aux = getattr(self, f"aux{i}")
            aux.fc2 = nn.Linear(aux.fc2.in_features, num_classes)
            init_weights(aux.fc2)


@register_model(
    input_size=(3, 224, 224), paper="Szegedy et al. 2014 (arXiv:1409.4842), Table 1", cam_layer="inception5b"
)
def googlenet(**kw) -> GoogLeNet:
    return GoogLeNet(**kw)
