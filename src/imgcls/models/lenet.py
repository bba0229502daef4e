"""LeNet-5: LeCun, Bottou, Bengio & Haffner 1998, "Gradient-Based Learning Applied to Document Recognition"
(Proc. IEEE 86(11)), Section II.B and Figure 2.

A 32×32 input, C1 (6 maps, 5×5), S2 (2×2 subsampling), C3 (16 maps, 5×5), S4 (2×2), C5 (120 maps, 5×5,
which is 1×1 at this input size), F6 (84 units) and the output layer. The squashing function is the paper's
``f(a) = 1.7159 tanh(2a/3)`` (Appendix A).

Deviations from 1998, each chosen so that the model is the one people mean by "LeNet-5" today and has
exactly 61,706 parameters at 1 input channel and 10 classes:

- C3 connects every S2 map to every C3 map; the paper's Table I connects each C3 map to 3, 4 or 6 of them
  only (to break symmetry and save parameters: 1,516 instead of 2,416).
- S2 and S4 are parameter-free average pools (``pool="max"`` or ``"stochastic"`` are offered); the paper's
  subsampling units add the 4 inputs, multiply by a trainable coefficient, add a trainable bias and squash
  (12 and 32 parameters), with no squashing here because C1/C3 already did.
- The output layer is linear (logits for the cross-entropy loss) instead of the Euclidean RBF units with
  fixed ±1 7×12 bitmap codes of Section II.B.
- C5 is followed by a global average pool, a no-op at 32×32 that lets larger inputs through.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from imgcls.constants import MNIST_MEAN, MNIST_STD
from imgcls.models._base import Classifier
from imgcls.models._registry import register_model
from imgcls.models.layers import GlobalPool2d, make_pool


def scaled_tanh(x: Tensor) -> Tensor:
    """LeCun et al. 1998, Appendix A, Eq. 7: ``f(a) = A tanh(S a)`` with A = 1.7159 and S = 2/3, so f(±1) = ±1."""
    return 1.7159 * torch.tanh(x * (2.0 / 3.0))


class LeNet5(Classifier):
    """LeNet-5 with layers named as in the paper's Figure 2: ``c1``, ``s2``, ``c3``, ``s4``, ``c5``, ``f6``, ``fc``.

    Args:
        num_classes: size of the output layer.
        in_chans: input channels (1 for digits).
        pool: ``"avg"`` (closest to the paper's subsampling), ``"max"`` or ``"stochastic"`` for S2 and S4.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 1, pool: str = "avg") -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.c1 = nn.Conv2d(in_chans, 6, 5)  # 32×32 -> 6@28×28
        self.s2 = make_pool(pool, kernel_size=2, stride=2)  # -> 6@14×14
        self.c3 = nn.Conv2d(6, 16, 5)  # -> 16@10×10
        self.s4 = make_pool(pool, kernel_size=2, stride=2)  # -> 16@5×5
        self.c5 = nn.Conv2d(16, 120, 5)  # -> 120@1×1
        self.num_features = 120
        self.global_pool = GlobalPool2d("avg")
        self.f6 = nn.Linear(120, 84)
        self.fc = nn.Linear(84, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # LeCun et al. 1998, "Efficient BackProp", Section 4.6: std = fan_in^-1/2 keeps the weighted sums at unit
        # variance, where f(a) = 1.7159 tanh(2a/3) is neither flat nor linear. (The ±2.4/fan-in of Appendix C
        # assumes the paper's second-order optimiser and shrinks the signal ~2000× by C5 under plain SGD.)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight, 0.0, 1.0 / math.sqrt(m.weight[0].numel()))
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.s2(scaled_tanh(self.c1(x)))
        x = self.s4(scaled_tanh(self.c3(x)))
        return scaled_tanh(self.c5(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = scaled_tanh(self.f6(self.global_pool(x)))  # (N, 120, 1, 1) -> (N, 84)
        return x if pre_logits else self.fc(x)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(84, num_classes)


@register_model(
    input_size=(1, 32, 32),
    paper="LeCun et al. 1998 (Proc. IEEE), Figure 2",
    mean=MNIST_MEAN,
    std=MNIST_STD,
    cam_layer="s4",
)
def lenet5(num_classes: int = 10, in_chans: int = 1, **kw) -> LeNet5:
    return LeNet5(num_classes=num_classes, in_chans=in_chans, **kw)
