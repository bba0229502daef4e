"""airbench94: the small CIFAR-10 network of the fastest published training recipe.

Keller Jordan, "94% on CIFAR-10 in 3.29 Seconds on a Single GPU", 2024 (arXiv:2404.00498), Section 3 and
Table 1. The network descends from hlb-CIFAR10 (Balsam) and David Page's ResNet-9 speedruns:

    whiten   2×2 conv, 3 → 24 channels, no padding, bias; weights frozen, set from the training images'
             patch covariance (24 = 12 eigenvectors of 2×2×3 patches and their negatives), then GELU
    block1   conv 3×3 24→64   maxpool 2  BN GELU   conv 3×3 64→64    BN GELU
    block2   conv 3×3 64→256  maxpool 2  BN GELU   conv 3×3 256→256  BN GELU
    block3   conv 3×3 256→256 maxpool 2  BN GELU   conv 3×3 256→256  BN GELU
    head     maxpool 3, flatten, linear 256 → classes (no bias), scaled by 1/9

Paper details kept here: BatchNorm with fast running statistics (the paper's momentum 0.6, i.e. torch
``momentum=0.4``), eps 1e-12 and its scale frozen at 1 (only the shift learns); identity (Dirac) initialisation of
the first input channels of every 3×3 conv; the final 1/9 logit scale. airbench94_muon (the ``speedrun`` recipe)
builds the same net with ``logit_scale=1/256`` and ``head_init_std=1`` (its head weights rescaled to unit
standard deviation). Training-side parts (Nesterov SGD with
the 64× BatchNorm-bias learning rate, Lookahead, label smoothing 0.2, alternating flips, translation by 2 pixels,
multi-crop TTA) live in the engine and the ``speedrun`` recipe, not in the model.

CPU note: ``fp32_weight_grad_blocks`` makes the first convolution of the listed blocks compute its weight
gradient in fp32 (`Conv2dFp32WeightGrad`; forward and input gradient stay in bf16; the same arithmetic up to
rounding). It was written when oneDNN's bf16 weight-gradient kernel for block 2's 64 → 256 convolution measured
1.8× slower than fp32 on a busy 2-core AVX-512 machine. On the quiet machine the whole bf16 step is faster
without it (456 vs 417 images/s at batch 1024, ``benchmarks/bench_speedrun_step.py``), so it is off by default
and kept as an option for CPUs where that kernel is slow.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imgcls.constants import CIFAR10_MEAN, CIFAR10_STD
from imgcls.models._base import Classifier
from imgcls.models._registry import register_model


class FrozenScaleBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose scale is fixed at 1; the paper trains only the shift (Section 3.2)."""

    def __init__(self, num_features: int, momentum: float = 0.4, eps: float = 1e-12):
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.weight.requires_grad_(False)


class _Fp32WeightGrad(torch.autograd.Function):
    """A stride-1, same-padding, bias-free conv whose weight gradient is computed in fp32 (module docstring)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, padding: int) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        return F.conv2d(x, weight, padding=padding)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        args = (None, [1, 1], [ctx.padding] * 2, [1, 1], False, [0, 0], 1)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(grad, x, weight, *args, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            grad_w = torch.ops.aten.convolution_backward(
                grad.float(), x.float(), weight.float(), *args, [False, True, False]
            )[1].to(weight.dtype)
        return grad_x, grad_w, None


class Conv2dFp32WeightGrad(nn.Conv2d):
    """A 3×3 ``nn.Conv2d`` (stride 1, padding 1, no bias) that computes its weight gradient in fp32 under bf16
    autocast on the CPU; everywhere else it is a plain convolution."""

    def forward(self, x: Tensor) -> Tensor:
        if not (torch.is_autocast_enabled("cpu") and x.device.type == "cpu" and torch.is_grad_enabled()):
            return super().forward(x)
        dtype = torch.get_autocast_dtype("cpu")
        with torch.autocast("cpu", enabled=False):
            return _Fp32WeightGrad.apply(x.to(dtype), self.weight.to(dtype), self.padding[0])


class ConvGroup(nn.Module):
    """conv → maxpool 2 → BN → GELU → conv → BN → GELU (one row group of the paper's Table 1)."""

    def __init__(self, in_chans: int, out_chans: int, fp32_weight_grad: bool = False):
        super().__init__()
        conv = Conv2dFp32WeightGrad if fp32_weight_grad else nn.Conv2d
        self.conv1 = conv(in_chans, out_chans, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = FrozenScaleBatchNorm2d(out_chans)
        self.conv2 = nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False)
        self.norm2 = FrozenScaleBatchNorm2d(out_chans)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class AirBench(Classifier):
    """The airbench94 network; ``init_whitening(images)`` sets the frozen first layer from training data."""

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        widths: tuple[int, int, int] = (64, 256, 256),
        logit_scale: float = 1 / 9,
        fp32_weight_grad_blocks: tuple[int, ...] = (),
        head_init_std: float | None = None,
    ):
        super().__init__()
        self.num_classes = num_classes
        whiten_width = 2 * in_chans * 2 * 2  # every eigenvector of a 2×2 patch, and its negative
        self.whiten = nn.Conv2d(in_chans, whiten_width, kernel_size=2, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        self.act = nn.GELU()
        chans = (whiten_width, *widths)
        self.blocks = nn.Sequential(
            *(ConvGroup(chans[i], chans[i + 1], i in fp32_weight_grad_blocks) for i in range(len(widths)))
        )
        self.pool = nn.MaxPool2d(3)
        self.num_features = widths[-1]
        self.logit_scale = logit_scale
        self.fc = nn.Linear(self.num_features, num_classes, bias=False)
        if head_init_std is not None:  # airbench94_muon: unit-std head weights with logit_scale 1/256
            with torch.no_grad():
                self.fc.weight.mul_(head_init_std / self.fc.weight.std())
        self._init_dirac()

    def _init_dirac(self) -> None:
        # Paper Section 3.3: each conv starts as an identity on its first in_channels outputs.
        for m in self.blocks.modules():
            if isinstance(m, nn.Conv2d):
                w = m.weight.data
                torch.nn.init.dirac_(w[: w.size(1)])

    @torch.no_grad()
    def init_whitening(self, images: Tensor, eps: float = 5e-4) -> None:
        """Set the frozen 2×2 conv to whiten the patches of `images` (float (N, C, H, W), normalised)."""
        c, k = images.size(1), self.whiten.kernel_size[0]
        patches = images.unfold(2, k, 1).unfold(3, k, 1)  # (N, C, H', W', k, k)
        # (N, W', H', C, k, k) -> (N·W'·H', C·k·k): each row is one patch, ordered like a conv filter.
        patches = patches.transpose(1, 3).reshape(-1, c * k * k).double()
        patches = patches - patches.mean(0)
        cov = patches.T @ patches / len(patches)
        eigvals, eigvecs = torch.linalg.eigh(cov)
        filters = (eigvecs.T / torch.sqrt(eigvals + eps)[:, None]).reshape(-1, c, k, k)
        self.whiten.weight.copy_(torch.cat([filters, -filters]).to(self.whiten.weight.dtype))

    def forward_features(self, x: Tensor) -> Tensor:
        # The whitening bias is added apart from the convolution: with the weight frozen and no input gradient,
        # oneDNN's convolution backward for the bias alone measured a quarter of a CPU training step (on busy
        # cores); as an addition its gradient is one sum over the batch.
        x = F.conv2d(x, self.whiten.weight)
        x = x + self.whiten.bias.to(x.dtype).view(1, -1, 1, 1)
        return self.pool(self.blocks(self.act(x)))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = x.flatten(1)
        return x if pre_logits else self.fc(x) * self.logit_scale

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes, bias=False)


@register_model(
    input_size=(3, 32, 32),
    paper="Jordan 2024 (arXiv:2404.00498), airbench94",
    mean=CIFAR10_MEAN,
    std=CIFAR10_STD,
    cam_layer="blocks",
)
def airbench94(**kw) -> AirBench:
    return AirBench(**kw)
