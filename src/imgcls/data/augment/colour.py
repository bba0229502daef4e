"""Photometric augmentation on float images in [0, 1]: colour jitter, PCA lighting, channel permutation, blur, noise.

- Colour jitter (Howard 2013, "Some improvements on deep CNN based image classification", §2.1): brightness,
  contrast and saturation are torchvision's blends (with black, the mean grey, the per-pixel grey; PIL's
  ImageEnhance), applied in a random order per batch and written as in-place per-image scale-and-add steps over
  cache-sized slices of the batch; kornia's versions allocate a new full batch per step and ran 7x slower at
  224 px. Hue is a rotation about the grey axis of the RGB cube, one 3 × 3 matrix per image (`hue_matrices`, an
  approximation of the HSV shift that kornia computes through an RGB → HSV → RGB round trip, 15x slower).
- AlexNet's PCA lighting (Krizhevsky et al. 2012, §4.1), channel permutation, Gaussian blur (Chen et al. 2020,
  SimCLR, Appendix A), additive Gaussian noise.

The ``adjust_*`` blends are also the enhance ops of the policies (`imgcls.data.augment.policies`).
"""

from __future__ import annotations

import math

import torch
from kornia.filters import gaussian_blur2d

from imgcls.constants import LUMA_WEIGHTS
from imgcls.data.augment._common import bernoulli, uniform

# Krizhevsky et al. 2012 §4.1: eigen-decomposition of the RGB covariance of ImageNet pixels in [0, 1] units
# (the figures published with fb.resnet.torch, used by every later reimplementation).
IMAGENET_PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_PCA_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


def _per_sample(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


# ITU-R BT.601 luma: the grey of PIL's convert("L"), torchvision and kornia.
LUMA = LUMA_WEIGHTS
# Colour ops work on slices of about this many bytes, so that their several passes stay in the CPU's cache.
_CHUNK_BYTES = 1 << 20


def _luma(x: torch.Tensor) -> torch.Tensor:
    """Grey ``(N, 1, H, W)`` of an RGB batch: one matrix product over the channels."""
    n, c, h, w = x.shape
    weights = torch.tensor(LUMA, device=x.device, dtype=x.dtype).view(1, 1, 3).expand(n, 1, 3)
    return torch.bmm(weights, x.reshape(n, c, h * w)).view(n, 1, h, w)


def _brightness_(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return x.mul_(f).clamp_(0, 1)


def _contrast_(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    # The mean grey level is the luma of the per-channel means (linear), one reduction pass.
    means = x.mean(dim=(2, 3))  # (N, C)
    if x.shape[1] == 3:
        grey = means @ torch.tensor(LUMA, device=x.device, dtype=x.dtype)
    else:
        grey = means.mean(dim=1)
    return x.mul_(f).add_(grey.view(-1, 1, 1, 1) * (1 - f)).clamp_(0, 1)


def _saturation_(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    if x.shape[1] != 3:
        return x
    grey = _luma(x).mul_(1 - f)  # before x changes in place
    return x.mul_(f).add_(grey).clamp_(0, 1)


def _mix_channels_(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``x <- clip(M x)`` per pixel, with one 3 × 3 matrix ``M`` per image (``m``: ``(N, 3, 3)``)."""
    n, c, h, w = x.shape
    return x.copy_(torch.bmm(m, x.reshape(n, c, h * w)).view(n, c, h, w)).clamp_(0, 1)


def hue_matrices(shift: torch.Tensor) -> torch.Tensor:
    """RGB → RGB matrices ``(N, 3, 3)`` that turn the hue by ``shift`` turns: rotations of the RGB cube about its
    grey diagonal (Rodrigues' formula about the unit axis ``(1, 1, 1) / √3``).

    HSV's hexcone (Smith 1978, "Color gamut transform pairs") is the RGB cube seen along that diagonal, and its hue
    is the angle around it; rotating about the diagonal (Haeberli 1993, "Matrix operations for image processing",
    hue rotation) therefore moves the primaries and secondaries by exactly the hue angle, fixes every grey and keeps
    ``(R + G + B) / 3``. It approximates torchvision's HSV hue shift: HSV keeps max(R, G, B) and the saturation
    instead, so colours come out somewhat darker or leave the cube and are clipped. On uniform random colours the
    change it makes points the same way as the HSV one (cosine similarity 0.8 at 0.02 turn, 0.98 at 0.25), twice
    as close as a rotation of YIQ's chroma plane. The gain: one 3 × 3 matrix per image instead of an
    RGB → HSV → RGB round trip per pixel. A positive shift turns red towards yellow, as torchvision's does.
    """
    theta = shift.to(torch.float64) * (2 * math.pi)
    cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    k = torch.full((3,), 1 / math.sqrt(3), dtype=torch.float64)
    cross = torch.tensor([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]], dtype=torch.float64)
    return (cos * torch.eye(3, dtype=torch.float64) + sin * cross + (1 - cos) * torch.outer(k, k)).float()


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with black: ``x · factor`` (PIL's ImageEnhance.Brightness)."""
    return _brightness_(x.clone(), _per_sample(factor, x))


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the image's mean grey level (PIL's ImageEnhance.Contrast); grey images included."""
    return _contrast_(x.clone(), _per_sample(factor, x))


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the grey image (PIL's ImageEnhance.Color); identity for one-channel images."""
    return _saturation_(x.clone(), _per_sample(factor, x))


def adjust_hue_turns(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Turn the hue by ``shift`` turns (in [-0.5, 0.5]) about the grey axis (`hue_matrices`); identity for grey."""
    if x.shape[1] != 3:
        return x
    return _mix_channels_(x.clone(), hue_matrices(shift).to(x.device, x.dtype))


def color_jitter(x: torch.Tensor, jitter: tuple[float, float, float, float], g: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation and hue in a random order per batch, each clipped to [0, 1] as
    torchvision's ColorJitter does. ``x`` is a batch the caller owns: it is changed in place."""
    n = x.shape[0]
    b, c, s, h = jitter
    ops = []
    if b > 0:
        ops.append((_brightness_, uniform(g, n, max(0.0, 1 - b), 1 + b)))
    if c > 0:
        ops.append((_contrast_, uniform(g, n, max(0.0, 1 - c), 1 + c)))
    if s > 0:
        ops.append((_saturation_, uniform(g, n, max(0.0, 1 - s), 1 + s)))
    if h > 0:
        ops.append((_mix_channels_, uniform(g, n, -h, h)))
    # A random order per batch, as torchvision's ColorJitter draws one per image: the four do not commute.
    order = torch.randperm(len(ops), generator=g).tolist()
    if x.shape[1] != 3:  # saturation and hue leave grey images as they are
        order = [k for k in order if ops[k][0] in (_brightness_, _contrast_)]
    params = []
    for fn, v in ops:
        v = hue_matrices(v) if fn is _mix_channels_ else v.float().view(-1, 1, 1, 1)
        params.append(v.to(x.device, x.dtype))
    x = x.contiguous()
    # Image by image slices of about _CHUNK_BYTES: each op makes two or three passes, which then hit the cache
    # instead of memory (a 32 × 3 × 224 × 224 float batch is 19 MB); the ops are per image, so slicing is exact.
    step = max(1, _CHUNK_BYTES // max(1, x[0].numel() * x.element_size()))
    for i in range(0, n, step):
        part = x[i : i + step]
        for k in order:
            ops[k][0](part, params[k][i : i + step])
    return x


def pca_lighting(x: torch.Tensor, alpha_std: float, g: torch.Generator) -> torch.Tensor:
    """AlexNet's lighting noise (Krizhevsky et al. 2012, §4.1): add ``Σ_i α_i λ_i p_i`` to every RGB pixel.

    ``α_i ~ N(0, alpha_std)`` per image; ``λ_i, p_i`` are ImageNet's RGB eigenvalues and eigenvectors.
    Identity for images that are not RGB (the eigenvectors are colour axes).
    """
    if x.shape[1] != 3:
        return x
    alpha = torch.randn(x.shape[0], 3, generator=g) * alpha_std  # (N, 3)
    eigvec = torch.tensor(IMAGENET_PCA_EIGVEC)  # rows: R, G, B; columns: components
    rgb = (alpha * torch.tensor(IMAGENET_PCA_EIGVAL)) @ eigvec.T  # (N, 3)
    return (x + rgb.to(x.device, x.dtype)[:, :, None, None]).clamp_(0, 1)


def channel_permute(x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    """Shuffle the channels of each image with probability ``p`` (a random permutation per image)."""
    n, c = x.shape[:2]
    perm = torch.rand(n, c, generator=g).argsort(dim=1)
    keep = ~bernoulli(g, n, p)
    perm[keep] = torch.arange(c)
    idx = perm.to(x.device)[:, :, None, None].expand_as(x)
    return x.gather(1, idx)


def gaussian_blur(x: torch.Tensor, p: float, sigma: tuple[float, float], g: torch.Generator) -> torch.Tensor:
    """Blur each image with probability ``p``, sigma uniform in ``sigma`` pixels (SimCLR, Chen et al. 2020).

    The kernel spans about 10 % of the image side (odd, at least 3), as SimCLR's.
    """
    n, _, h, w = x.shape
    chosen = bernoulli(g, n, p)
    s = uniform(g, n, sigma[0], sigma[1]).float()
    idx = chosen.nonzero().squeeze(1)
    if idx.numel() == 0:
        return x
    k = max(3, int(0.1 * min(h, w)) // 2 * 2 + 1)
    sig = s[idx].to(x.device, x.dtype)[:, None].expand(-1, 2).contiguous()
    out = x.clone()
    out[idx.to(x.device)] = gaussian_blur2d(x[idx.to(x.device)], (k, k), sig, border_type="reflect")
    return out


def gaussian_noise(x: torch.Tensor, std: float, g: torch.Generator) -> torch.Tensor:
    """Add independent N(0, std²) noise to every pixel (std in [0, 1] pixel units), then clip to [0, 1]."""
    noise = torch.randn(x.shape, generator=g) * std
    return (x + noise.to(x.device, x.dtype)).clamp_(0, 1)
