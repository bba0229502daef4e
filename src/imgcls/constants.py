"""Numbers every layer shares, each with where it comes from. Import them; never retype them.

Channel statistics are per channel over every pixel of the named split, in [0, 1] units (value / 255), the
standard deviation being that of the pixel population (not the mean of per-image deviations, which gives the
smaller CIFAR-10 figures 0.2023, 0.1994, 0.2010 found in some repositories).
"""

from __future__ import annotations

# ImageNet (ILSVRC-2012) training set: the values torchvision's and timm's pretrained weights were trained with
# (torchvision's model documentation, "all pre-trained models expect input images normalized in the same way").
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# CIFAR-10, the 50,000 training images. Recomputed for this module from the original images (exact integer
# histograms of all pixels): mean 0.49140, 0.48216, 0.44653; std 0.24703, 0.24349, 0.26159.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

# CIFAR-100, the 50,000 training images (the same for fine and coarse labels). Not recomputed here (the set cannot
# be downloaded on the build machine): the widely quoted figures, in 0-255 units mean 129.30, 124.07, 112.43.
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

# MNIST, the 60,000 training images: the figures of PyTorch's own MNIST example (examples/mnist/main.py).
# Not recomputed here.
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)

# Fashion-MNIST (Xiao et al. 2017, arXiv:1708.07747), the 60,000 training images. Not recomputed here.
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)

# Statistics of the built-in sets by their `--data` name.
DATASET_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": (CIFAR100_MEAN, CIFAR100_STD),
    "cifar100:coarse": (CIFAR100_MEAN, CIFAR100_STD),
    "mnist": (MNIST_MEAN, MNIST_STD),
    "fashion-mnist": (FASHION_MNIST_MEAN, FASHION_MNIST_STD),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
}

# Share of the resized image the evaluation center crop keeps: 224 of 256 (AlexNet's 256-pixel rescale and
# 224-pixel crop, Krizhevsky et al. 2012, Sec. 2 and 4.1; the torchvision/timm ImageNet default since).
DEFAULT_CROP_PCT = 0.875

# ITU-R BT.601 luma, Y = 0.299 R + 0.587 G + 0.114 B: what Pillow's ``convert("L")`` computes (in integers,
# ``(R·299 + G·587 + B·114) / 1000``; Pillow's Image.convert documentation), so tensor and file paths agree.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
LUMA_WEIGHTS_PER_MILLE = (299, 587, 114)


def to_gray_stats(values: tuple[float, ...] | list[float]) -> list[float]:
    """Three per-channel values as the one value of their luma (weights `LUMA_WEIGHTS`); one value unchanged.

    Exact for means; for standard deviations the usual approximation (it ignores the channels' correlation).
    """
    if len(values) == 1:
        return [float(values[0])]
    if len(values) != 3:
        raise ValueError(f"to_gray_stats: expected 1 or 3 values, got {len(values)}")
    return [sum(w * float(v) for w, v in zip(LUMA_WEIGHTS, values))]


__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "DATASET_STATS",
    "DEFAULT_CROP_PCT",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LUMA_WEIGHTS",
    "LUMA_WEIGHTS_PER_MILLE",
    "MNIST_MEAN",
    "MNIST_STD",
    "to_gray_stats",
]
