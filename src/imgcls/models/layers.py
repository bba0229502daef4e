"""Layers shared by the model families: local response normalisation, stochastic pooling, global pooling,
conv + batch-norm + activation, squeeze-and-excitation, stochastic depth, and `make_pool` so a family can offer
``pool="max" | "avg" | "stochastic"``.

The API here is small on purpose; several families import it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imgcls.errors import UserError

__all__ = [
    "POOL_KINDS",
    "ConvBNAct",
    "ConvNormAct",
    "GlobalPool2d",
    "LocalResponseNorm",
    "SqueezeExcitation",
    "StochasticDepth",
    "StochasticPool2d",
    "init_weights",
    "make_divisible",
    "make_pool",
]

POOL_KINDS = ("max", "avg", "stochastic")


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class LocalResponseNorm(nn.LocalResponseNorm):
    """Local response normalisation across channels with `alpha` as the paper writes it.

    Krizhevsky et al. 2012, Section 3.3: ``b = a / (k + alpha * sum_{n neighbours} a^2) ** beta`` with
    ``k=2, n=5, alpha=1e-4, beta=0.75`` (the defaults here). ``torch.nn.LocalResponseNorm`` (like Caffe) divides
    its alpha by the window size, so this class passes ``alpha * size`` to it: the constants are the paper's.

    Args:
        size: number of neighbouring channels summed over (the paper's n).
        alpha: scale of the sum of squares, in the paper's convention (not divided by `size`).
        beta: exponent.
        k: additive constant.
    """

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0) -> None:
        super().__init__(size=size, alpha=alpha * size, beta=beta, k=k)
        self.paper_alpha = alpha

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.paper_alpha} (paper convention), beta={self.beta}, k={self.k}"


class StochasticPool2d(nn.Module):
    """Stochastic pooling (Zeiler & Fergus 2013, arXiv:1301.3557, Eq. 3-4 and Section 2.2).

    In training, each pooling region outputs one of its activations, drawn with probability
    ``p_i = a_i / sum_j a_j`` (Eq. 3-4). At test time it outputs the probability-weighted average
    ``sum_i p_i a_i`` (Section 2.2). The paper pools non-negative (ReLU) activations; for other inputs the
    probabilities use ``max(a, 0)``. A region whose activations are all zero (or negative) has no defined
    probabilities: it is treated as uniform, so it outputs its plain mean at test time and a uniformly drawn
    element in training (for the usual all-zero ReLU region both are 0). Padded positions never count.

    Gradients flow to the sampled element in training (like max pooling) and through the weighted average
    at test time. Draws use the global torch RNG, so ``torch.manual_seed`` makes them reproducible.

    Args:
        kernel_size: pooling window.
        stride: step between windows; defaults to `kernel_size`.
        padding: implicit zero padding on each side (padded positions are never drawn).
        ceil_mode: as in ``nn.MaxPool2d``: keep a last partial window at the bottom/right edge.
    """

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
        ceil_mode: bool = False,
    ) -> None:
        super().__init__()
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride) if stride is not None else self.kernel_size
        self.padding = _pair(padding)
        self.ceil_mode = ceil_mode

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, ceil_mode={self.ceil_mode}"
        )

    def _out_size(self, size: int, dim: int) -> int:
        k, s, p = self.kernel_size[dim], self.stride[dim], self.padding[dim]
        span = size + 2 * p - k
        out = (-(-span // s) if self.ceil_mode else span // s) + 1
        # As in torch's pooling: the last window must start inside the input or the left padding.
        if self.ceil_mode and (out - 1) * s >= size + p:
            out -= 1
        return out

    def _windows(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """(N, C, H, W) -> windows (N, C, Ho, Wo, kh·kw) and a validity mask of the same shape (None if all valid)."""
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        h, w = x.shape[-2:]
        ho, wo = self._out_size(h, 0), self._out_size(w, 1)
        # Pad enough on the bottom/right for the last (possibly partial, ceil_mode) window.
        pad_b = max(0, (ho - 1) * sh + kh - h - ph)
        pad_r = max(0, (wo - 1) * sw + kw - w - pw)
        mask = None
        if ph or pw or pad_b or pad_r:
            x = F.pad(x, (pw, pad_r, ph, pad_b))
            valid = torch.ones(1, 1, h, w, dtype=x.dtype, device=x.device)
            mask = F.pad(valid, (pw, pad_r, ph, pad_b))
            mask = mask.unfold(2, kh, sh).unfold(3, kw, sw)[:, :, :ho, :wo].reshape(1, 1, ho, wo, kh * kw)
        windows = x.unfold(2, kh, sh).unfold(3, kw, sw)[:, :, :ho, :wo]  # (N, C, Ho, Wo, kh, kw)
        return windows.reshape(*windows.shape[:4], kh * kw), mask

    def forward(self, x: Tensor) -> Tensor:
        windows, mask = self._windows(x)
        weights = windows.detach().clamp(min=0)
        if mask is not None:
            weights = weights * mask
        total = weights.sum(-1, keepdim=True)
        # All-zero region: uniform over its valid positions (see the class docstring).
        fallback = mask.expand_as(weights) if mask is not None else torch.ones_like(weights)
        empty = total <= 0
        weights = torch.where(empty, fallback, weights)
        total = torch.where(empty, fallback.sum(-1, keepdim=True), total)
        if not self.training:
            return (windows * weights).sum(-1) / total.squeeze(-1)
        # Inverse-CDF draw: u in (0, total], index = first position whose cumulative weight reaches u.
        # Zero-weight positions are never chosen because u > 0.
        cdf = weights.cumsum(-1)
        u = (1.0 - torch.rand_like(total)) * total
        index = (cdf < u).sum(-1, keepdim=True).clamp_(max=windows.shape[-1] - 1)
        return windows.gather(-1, index).squeeze(-1)


class GlobalPool2d(nn.Module):
    """Global average or max pooling over H×W: (N, C, H, W) -> (N, C), or (N, C, 1, 1) with ``flatten=False``.

    Args:
        kind: ``"avg"`` or ``"max"``.
        flatten: drop the two spatial dimensions.
    """

    def __init__(self, kind: str = "avg", flatten: bool = True) -> None:
        super().__init__()
        if kind not in ("avg", "max"):
            raise UserError(f"global pool must be 'avg' or 'max', got {kind!r} (check global_pool)")
        self.kind = kind
        self.flatten = flatten

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, flatten={self.flatten}"

    def forward(self, x: Tensor) -> Tensor:
        x = x.mean((2, 3), keepdim=True) if self.kind == "avg" else x.amax((2, 3), keepdim=True)
        return x.flatten(1) if self.flatten else x


class ConvBNAct(nn.Module):
    """Conv2d, optional BatchNorm2d, optional ReLU, held as ``conv``, ``bn``, ``act``.

    With ``bn=True`` the convolution has no bias (the norm's shift replaces it); without it, it has one.
    The state-dict keys (``conv.weight``, ``bn.running_mean``...) match torchvision's ``BasicConv2d``.

    Args:
        in_chans: input channels.
        out_chans: output channels.
        kernel_size: square or (h, w) kernel.
        stride: convolution stride.
        padding: defaults to "same" for odd kernels at stride 1 (``kernel_size // 2``).
        groups: convolution groups.
        bn: add BatchNorm2d.
        act: add ReLU (in place).
        eps: BatchNorm epsilon (Inception v3 checkpoints use 1e-3).
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: int | tuple[int, int] | None = None,
        groups: int = 1,
        bn: bool = True,
        act: bool = True,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        kernel_size = _pair(kernel_size)
        if padding is None:
            padding = (kernel_size[0] // 2, kernel_size[1] // 2)
        self.conv = nn.Conv2d(in_chans, out_chans, kernel_size, stride, padding, groups=groups, bias=not bn)
        self.bn = nn.BatchNorm2d(out_chans, eps=eps) if bn else nn.Identity()
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class ConvNormAct(nn.Sequential):
    """Conv2d (no bias), BatchNorm2d and an optional activation as ``0``, ``1``, ``2``.

    The indices are the state-dict layout of torchvision's ``Conv2dNormActivation`` (``features.0.0.weight``,
    ``features.0.1.running_var``), which MobileNet, EfficientNet and RegNet files use.

    Args:
        in_chans: input channels.
        out_chans: output channels.
        kernel_size: square kernel; padding keeps the size at stride 1 (``(k - 1) // 2``).
        stride: convolution stride.
        groups: convolution groups (``in_chans`` for a depthwise convolution).
        act: the activation class, built in place (``nn.ReLU``, ``nn.ReLU6``, ``nn.Hardswish``, ``nn.SiLU``), or
            None for a linear layer.
        eps: BatchNorm epsilon.
        momentum: BatchNorm momentum (PyTorch's convention: the weight of the new batch).
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        act: type[nn.Module] | None = nn.ReLU,
        eps: float = 1e-5,
        momentum: float = 0.1,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_chans, out_chans, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_chans, eps=eps, momentum=momentum),
        ]
        if act is not None:
            layers.append(act(inplace=True))
        super().__init__(*layers)
        self.out_chans = out_chans


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2017, arXiv:1709.01507, Fig. 2): global average, a 1×1 reduction with an
    activation, a 1×1 expansion and a gate that rescales each channel.

    Submodules ``fc1`` and ``fc2`` (1×1 convolutions with bias) carry torchvision's key names.

    Args:
        chans: channels in and out.
        squeeze_chans: width of the reduction.
        act: activation after ``fc1`` (ReLU; SiLU in EfficientNet).
        gate: ``nn.Sigmoid`` (the paper) or ``nn.Hardsigmoid`` (MobileNetV3, Section 5.2).
    """

    def __init__(
        self,
        chans: int,
        squeeze_chans: int,
        act: type[nn.Module] = nn.ReLU,
        gate: type[nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(chans, squeeze_chans, 1)
        self.fc2 = nn.Conv2d(squeeze_chans, chans, 1)
        self.act = act()
        self.gate = gate()

    def forward(self, x: Tensor) -> Tensor:
        scale = x.mean((2, 3), keepdim=True)  # (N, C, H, W) -> (N, C, 1, 1)
        return x * self.gate(self.fc2(self.act(self.fc1(scale))))


class StochasticDepth(nn.Module):
    """Drop a residual branch per sample with probability `p` in training (Huang et al. 2016, arXiv:1603.09382),
    scaling the kept ones by ``1 / (1 - p)`` so that the identity at test time matches the expectation.

    Args:
        p: probability of dropping the branch of one sample.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask / keep


def make_divisible(value: float, divisor: int = 8) -> int:
    """`value` rounded to the nearest multiple of `divisor` (halves up), never more than 10 % below it.

    The channel rounding of the MobileNets (Sandler et al. 2018, whose released code rounds every width to a
    multiple of 8) that torchvision and timm use too, so widths computed with it match their published files.
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def make_pool(
    kind: str,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
    ceil_mode: bool = False,
) -> nn.Module:
    """A spatial pooling layer of the chosen kind, so families can offer ``pool="max" | "avg" | "stochastic"``.

    Args:
        kind: one of ``POOL_KINDS``.
        kernel_size: pooling window.
        stride: defaults to `kernel_size`.
        padding: implicit padding on each side (average pooling counts it, like ``nn.AvgPool2d``).
        ceil_mode: keep a last partial window.

    Raises:
        UserError: `kind` is not one of ``POOL_KINDS``.
    """
    if kind == "max":
        return nn.MaxPool2d(kernel_size, stride, padding, ceil_mode=ceil_mode)
    if kind == "avg":
        return nn.AvgPool2d(kernel_size, stride, padding, ceil_mode=ceil_mode)
    if kind == "stochastic":
        return StochasticPool2d(kernel_size, stride, padding, ceil_mode=ceil_mode)
    raise UserError(f"pool must be one of {', '.join(POOL_KINDS)}, got {kind!r} (check pool)")


def init_weights(model: nn.Module, linear_std: float = 0.01) -> None:
    """Initialise a classic CNN: He-normal convolutions, N(0, `linear_std`) linears, unit/zero norms, zero biases.

    He et al. 2015 (arXiv:1502.01852), Eq. 10, with n = k²·C_in (fan-in): it keeps the forward signal at a
    constant scale through ReLU layers, so plain nets without batch norm (VGG's 11-19 layers, NiN, GoogLeNet)
    train from scratch without the papers' staged or hand-tuned initialisation. The fan-out form would blow
    up Inception's narrow 1×1 reductions (C_out ≪ C_in) and shrink stems like AlexNet's 11×11/4 (C_in ≪ C_out).
    Linear layers follow Krizhevsky et al. 2012, Section 5 (N(0, 0.01)).
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def fc_head(in_features: int, num_classes: int, drop_rate: float) -> nn.Sequential:
    """AlexNet's and VGG's classifier: fc6 and fc7 (4096, ReLU, dropout) then fc8.

    Indices 0, 3 and 6 hold the linear layers, as in torchvision's ``classifier`` keys, so published weights load.
    """
    return nn.Sequential(
        nn.Linear(in_features, 4096),  # fc6
        nn.ReLU(inplace=True),
        nn.Dropout(drop_rate),
        nn.Linear(4096, 4096),  # fc7
        nn.ReLU(inplace=True),
        nn.Dropout(drop_rate),
        nn.Linear(4096, num_classes),  # fc8
    )


class FcHeadMixin:
    """Head methods of a model with ``self.avgpool`` and an :func:`fc_head` as ``self.classifier``."""

    avgpool: nn.Module
    classifier: nn.Sequential
    num_classes: int

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.avgpool(x).flatten(1)  # (N, C, h, w) -> (N, C·h·w)
        x = self.classifier[:-1](x)
        return x if pre_logits else self.classifier[-1](x)

    def get_classifier(self) -> nn.Module:
        return self.classifier[-1]

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.classifier[-1] = nn.Linear(self.classifier[-1].in_features, num_classes)
        init_weights(self.classifier[-1])
