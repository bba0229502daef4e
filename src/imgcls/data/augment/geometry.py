"""Geometric augmentation and the evaluation geometry.

- RandomResizedCrop boxes (Szegedy et al. 2015, "Going deeper with convolutions", §6; torchvision's algorithm):
  `sample_resized_crops` for a batch, `sample_resized_crop` for one streamed image (the same draws);
  `resized_crop_flip` resizes each box with torch's antialiased bilinear kernel, in uint8 on the CPU.
- Random crop of the input size from a padded and/or larger image (Krizhevsky et al. 2012, §4.1; the CIFAR "pad 4
  and crop", He et al. 2016, §4.2) with zero/reflect/edge padding, translation and flips: `crop_flip`, one index
  computation and one ``gather`` on the uint8 batch (flips are the index order reversed). With zero padding and
  horizontal flips only (the CIFAR recipe) it is one pick of whole windows from a padded buffer holding the batch
  and mirrors of the images to flip (`window_select`); per-sample crops or kornia's float warps do 4–30× more
  memory traffic on this hot path (`benchmarks/bench_data.py` measures it against a per-sample PIL pipeline).
- Rotation and scale/aspect distortion as one affine warp (`affine_warp`, zero fill).
- The evaluation geometry: shorter side resized, centre crop (`resize_center_crop`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from kornia.geometry.transform import get_rotation_matrix2d, warp_affine

from imgcls.data.augment._common import Scratch, uniform


def sample_resized_crops(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
    attempts: int = 10,
) -> torch.Tensor:
    """RandomResizedCrop boxes for ``n`` images of one size (Szegedy et al. 2015, §6; torchvision's algorithm).

    Each image tries ``attempts`` (area fraction, log-aspect) pairs and keeps the first box that fits; when none
    does, it falls back to the largest centred box whose aspect ratio lies within ``ratio``.

    Returns:
        LongTensor ``(n, 4)`` of ``(top, left, h, w)``.
    """
    area = height * width
    target = uniform(generator, (n, attempts), scale[0], scale[1]) * area
    aspect = torch.exp(uniform(generator, (n, attempts), math.log(ratio[0]), math.log(ratio[1])))
    w = torch.sqrt(target * aspect).round()
    h = torch.sqrt(target / aspect).round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(dim=1)  # first fitting attempt (0 when none fits)
    h = h.gather(1, first[:, None]).squeeze(1)
    w = w.gather(1, first[:, None]).squeeze(1)
    found = fits.any(dim=1)
    # Fallback: the whole image, cut to the nearest allowed aspect ratio.
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fh, fw = height, round(height * max(ratio))
    else:
        fw, fh = width, height
    h = torch.where(found, h, torch.full_like(h, fh))
    w = torch.where(found, w, torch.full_like(w, fw))
    pos = uniform(generator, (n, 2))
    top = torch.floor(pos[:, 0] * (height - h + 1))
    left = torch.floor(pos[:, 1] * (width - w + 1))
    top = torch.where(found, top, torch.full_like(top, (height - fh) // 2))
    left = torch.where(found, left, torch.full_like(left, (width - fw) // 2))
    return torch.stack([top, left, h, w], dim=1).long()


def sample_resized_crop(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], generator: torch.Generator
) -> tuple[int, int, int, int]:
    """One RandomResizedCrop box ``(top, left, h, w)`` for an image of ``height`` × ``width`` (streaming path).

    `sample_resized_crops` for one image: the same three draws from ``generator`` and the same float64 arithmetic,
    done on Python floats because a dozen tensor operations on ten numbers cost more than decoding a small JPEG.
    """
    attempts = 10
    area = height * width
    u_area = torch.rand((1, attempts), generator=generator, dtype=torch.float64)[0].tolist()
    u_aspect = torch.rand((1, attempts), generator=generator, dtype=torch.float64)[0].tolist()
    u_pos = torch.rand((1, 2), generator=generator, dtype=torch.float64)[0].tolist()
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for ua, ur in zip(u_area, u_aspect):
        target = (ua * (scale[1] - scale[0]) + scale[0]) * area
        aspect = math.exp(ur * (log_hi - log_lo) + log_lo)
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return math.floor(u_pos[0] * (height - h + 1)), math.floor(u_pos[1] * (width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resize_short_side(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize so the shorter side is ``size`` (bilinear, antialiased when shrinking); keeps uint8 as uint8."""
    h, w = x.shape[-2:]
    if min(h, w) == size:
        return x
    if h <= w:
        out_hw = (size, max(size, round(w * size / h)))
    else:
        out_hw = (max(size, round(h * size / w)), size)
    y = F.interpolate(x.float(), size=out_hw, mode="bilinear", align_corners=False, antialias=min(h, w) > size)
    return y.round_().clamp_(0, 255).to(torch.uint8) if x.dtype == torch.uint8 else y


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Centre ``size`` × ``size`` crop of a ``(..., H, W)`` tensor (offset ``(H - size) // 2``)."""
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


def resize_center_crop(x: torch.Tensor, size: int, resize: int | None = None) -> torch.Tensor:
    """The evaluation geometry: shorter side to ``resize`` (or up to ``size`` when smaller), then centre crop."""
    short = min(x.shape[-2:])
    target = resize if resize is not None else max(short, size)
    if target < size:
        raise ValueError(f"resize {target} is smaller than the crop {size}")
    return center_crop(resize_short_side(x, target), size)


def crop_flip(
    x: torch.Tensor,
    top: torch.Tensor,
    left: torch.Tensor,
    size: int,
    hflip: torch.Tensor | None = None,
    vflip: torch.Tensor | None = None,
    padding_mode: str = "constant",
) -> torch.Tensor:
    """Per-image ``size`` × ``size`` crops at ``(top, left)`` (may lie outside: padded), flipped where asked.

    One gather over the flattened pixels: ``out[n, c, i, j] = x[n, c, rows[n, i], cols[n, j]]``, with flips as
    reversed index order. "constant" pads the batch with zeros once (cheaper than masking the output);
    "reflect" and "edge" fold the indices back into the image instead.

    Args:
        x: ``(N, C, H, W)`` batch, any dtype.
        top, left: ``(N,)`` integer offsets of each crop in ``x``'s pixel grid.
        size: output side.
        hflip, vflip: optional ``(N,)`` bool masks.
        padding_mode: "constant" (zeros), "reflect" or "edge".
    """
    n, c, h, w = x.shape
    if size == h == w and not top.any() and not left.any():
        # Nothing to crop (a streamed batch already at the input size): copy and mirror the flipped images only,
        # several times cheaper than the gather below on 224-pixel images. One image at a time: batched advanced
        # indexing (out[idx] = out[idx].flip(dim)) copies element by element, 4x slower on 32 such images.
        out = x.clone()
        for flips, dim in ((hflip, -1), (vflip, -2)):
            if flips is not None and bool(flips.any()):
                for i in flips.nonzero().squeeze(1).tolist():
                    out[i] = out[i].flip(dim)
        return out
    top, left = top.to(x.device), left.to(x.device)
    if padding_mode == "constant":
        lo = int(min(int(top.min()), int(left.min()), 0))
        hi = int(max(int(top.max()) + size - h, int(left.max()) + size - w, 0))
        if vflip is None:
            flips = None if hflip is None else hflip.cpu().numpy()
            return window_select(x, top.cpu().numpy(), left.cpu().numpy(), size, flips, -lo, hi)
        if lo < 0 or hi > 0:
            x = F.pad(x, (-lo, hi, -lo, hi))
            top, left = top - lo, left - lo
            h, w = x.shape[-2:]
    ar = torch.arange(size, device=x.device)
    rows = top[:, None] + ar  # (N, S)
    cols = left[:, None] + ar  # (N, S)
    if vflip is not None:
        rows = torch.where(vflip.to(x.device)[:, None], rows.flip(1), rows)
    if hflip is not None:
        cols = torch.where(hflip.to(x.device)[:, None], cols.flip(1), cols)
    if padding_mode != "constant":
        rows, cols = _fold(rows, h, padding_mode), _fold(cols, w, padding_mode)
    flat = (rows[:, :, None] * w + cols[:, None, :]).view(n, 1, size * size)  # (N, 1, S·S)
    return x.reshape(n, c, h * w).gather(2, flat.expand(n, c, size * size)).view(n, c, size, size)


def window_select(
    x: torch.Tensor,
    top: np.ndarray,
    left: np.ndarray,
    size: int,
    hflip: np.ndarray | None,
    before: int,
    after: int,
    scratch: Scratch | None = None,
) -> torch.Tensor:
    """Crops of ``x`` zero-padded by ``before`` / ``after`` pixels, at ``(top, left)`` in ``x``'s own pixel grid
    (``-before <= top, left`` and ``top + size <= H + after``, likewise for ``left``; not checked).

    The padded batch, followed by mirrored copies of the images to flip, is written into one zeroed buffer; a
    strided view whose first index is a flat start offset then holds every ``(C, size, size)`` window of it, so
    the crops are ``N`` whole-window picks (not ``N·C·S·S`` element indices as in a gather): about twice as fast
    on CPU as pad + gather. The ``(N,)`` offsets are computed in NumPy: on CPU a small torch op costs its call
    overhead, several times the arithmetic, and this runs once per batch on the CIFAR hot path. With ``scratch``
    the buffer is kept between calls: only interiors are ever written, so its zero borders stay zero.
    """
    n, c, h, w = x.shape
    hp, wp = h + before + after, w + before + after
    plane = c * hp * wp
    top, left = top + before, left + before  # in the padded grid
    # Flat start of each window: image i at i·plane, then row top and column left.
    start = np.arange(0, n * plane, plane) + top * wp + left
    flipped = np.flatnonzero(hflip) if hflip is not None else ()
    if scratch is None:
        buf = x.new_zeros((n + len(flipped), c, hp, wp))
    else:  # room for every image to be mirrored; the windows below never reach past the images in use
        buf = scratch.get("windows", (2 * n, c, hp, wp), x.dtype, x.device)
    strides = (plane, hp * wp, wp, 1)
    # The interiors as strided views (cheaper per call than slicing four dimensions).
    buf.as_strided(x.shape, strides, before * (wp + 1)).copy_(x)
    if len(flipped):
        # Image n + k is the mirror of the k-th image to flip, padded (so with its left and right padding swapped);
        # a window at column ``left`` of the original starts at column ``wp - size - left`` of the mirror.
        mirrored = x.index_select(0, _index(flipped, x.device)).flip(-1)
        buf.as_strided(mirrored.shape, strides, n * plane + before * wp + after).copy_(mirrored)
        mirrors = np.arange(n * plane, (n + len(flipped)) * plane, plane)
        start[flipped] = mirrors + top[flipped] * wp + (wp - size) - left[flipped]
    # Every flat offset at which a whole (C, size, size) window still fits in the buffer.
    count = buf.numel() - ((c - 1) * hp * wp + (size - 1) * wp + size) + 1
    windows = buf.view(-1).as_strided((count, c, size, size), (1, hp * wp, wp, 1))
    return windows.index_select(0, _index(start, x.device))


def _index(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """A NumPy index array as a tensor on ``device`` (no copy on the CPU)."""
    t = torch.from_numpy(a)
    return t if device.type == "cpu" else t.to(device)


def _fold(idx: torch.Tensor, n: int, mode: str) -> torch.Tensor:
    """Map out-of-range indices into ``[0, n)``: mirrored without repeating the edge ("reflect") or clamped."""
    if mode == "edge":
        return idx.clamp(0, n - 1)
    period = 2 * (n - 1) if n > 1 else 1
    idx = idx.remainder(period)
    return torch.where(idx >= n, period - idx, idx)


def affine_warp(
    x: torch.Tensor, rotation: float, scale_aspect: tuple[float, float], g: torch.Generator
) -> torch.Tensor:
    """Random rotation (uniform in ``[-rotation, rotation]`` degrees) and scale/aspect about the centre, one warp.

    Bilinear, zero (black) fill outside the source image.
    """
    n, _, h, w = x.shape
    angle = uniform(g, n, -rotation, rotation).float()
    s, a = scale_aspect
    scale = uniform(g, n, 1 - s, 1 + s).float()
    aspect = torch.exp(uniform(g, n, -math.log1p(a), math.log1p(a))).float()
    sx, sy = scale * aspect.sqrt(), scale / aspect.sqrt()
    center = torch.tensor([(w - 1) / 2, (h - 1) / 2]).expand(n, 2)
    m = get_rotation_matrix2d(center, angle, torch.stack([sx, sy], dim=1))  # (N, 2, 3), source -> output
    return warp_affine(x, m.to(x.device, x.dtype), (h, w), mode="bilinear", padding_mode="zeros", align_corners=True)


def resized_crop_flip(
    x: torch.Tensor,
    boxes: torch.Tensor,
    size: int,
    hflip: torch.Tensor | None = None,
    vflip: torch.Tensor | None = None,
) -> torch.Tensor:
    """RandomResizedCrop: each image's box ``(top, left, h, w)`` resized to ``size`` × ``size``, flipped where asked.

    Each box is cut out and resized on its own by torch's bilinear kernel, antialiased when it shrinks, with the
    box's pixels as areas (``align_corners=False``): what torchvision's ``RandomResizedCrop`` does to a tensor. A
    uint8 batch is resized in uint8 (torch's vectorised kernel, as torchvision on uint8 images) and then widened;
    on the CPU that is 4x faster per image than one float ``grid_sample`` warp of the whole batch, which also
    aliases when a large box shrinks.

    Returns:
        float32 ``(N, C, size, size)`` in the input's units (0–255 for a uint8 batch).
    """
    n, c = x.shape[:2]
    # The uint8 kernel is the CPU's; elsewhere the crops are resized as floats.
    narrow = x.dtype == torch.uint8 and x.device.type == "cpu"
    src = x if narrow else x.float()
    out = torch.empty((n, c, size, size), dtype=torch.float32, device=x.device)
    hf = hflip.tolist() if hflip is not None else [False] * n
    for i, (top, left, bh, bw) in enumerate(boxes.tolist()):
        crop = src[i : i + 1, :, top : top + bh, left : left + bw]
        r = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
        out[i] = r.flip(-1) if hf[i] else r
    if vflip is not None:
        out = torch.where(vflip.to(x.device)[:, None, None, None], out.flip(-2), out)
    return out
