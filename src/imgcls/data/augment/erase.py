"""Erasing on the normalised batch, so the erased value 0 is the dataset mean.

- Cutout (DeVries & Taylor 2017, arXiv:1708.04552): squares of a fixed side with uniform centres, clipped at the
  border. Each image's 0/1 multiplier is a window of one precomputed plane (`CutoutPlane`); `cutout_mask` is the
  direct construction it is tested against.
- Coarse Dropout: several holes of random size per image.
- Random Erasing (Zhong et al. 2017, arXiv:1708.04896, Alg. 1): one rectangle of random area and aspect, filled
  with random values.

Coarse Dropout and Random Erasing build their boxes from row/column ranges (one batched matrix product for the
whole batch, `box_keep`); all erase with one in-place multiply, where kornia's ``RandomErasing`` loops over boxes
and draws from the global RNG.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from imgcls.data.augment._common import Scratch, bernoulli, uniform
from imgcls.data.augment.config import AugmentConfig


def box_mask(y0: torch.Tensor, x0: torch.Tensor, y1: torch.Tensor, x1: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Union of boxes ``[y0, y1) × [x0, x1)`` given as ``(N, K)`` tensors, as a bool mask ``(N, H, W)``."""
    return box_keep(y0, x0, y1, x1, h, w)[:, 0] == 0


def box_keep(y0: torch.Tensor, x0: torch.Tensor, y1: torch.Tensor, x1: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The multiplier that erases boxes ``[y0, y1) × [x0, x1)`` (``(N, K)`` tensors): float ``(N, 1, H, W)``, 0 in
    any box and 1 elsewhere.

    A box is the outer product of its row and column indicators, so the number of boxes covering each pixel is one
    batched matrix product ``rows^T · cols`` (``(N, H, K) @ (N, K, W)``); ``1 - count`` clipped at 0 is the
    multiplier. One ``baddbmm`` and one clip: the cheapest form measured on CPU (bool masks need a broadcast AND per
    box and a conversion).
    """
    rows = torch.arange(h, device=y0.device, dtype=y0.dtype)
    # Square images share the index row: on CPU these small ops cost their call overhead, not their arithmetic.
    cols = (
        rows
        if (w, x0.dtype, x0.device) == (h, y0.dtype, y0.device)
        else torch.arange(w, device=x0.device, dtype=x0.dtype)
    )
    in_rows = ((rows >= y0[..., None]) & (rows < y1[..., None])).float()  # (N, K, H)
    in_cols = ((cols >= x0[..., None]) & (cols < x1[..., None])).float()  # (N, K, W)
    one = torch.ones((1, 1, 1), device=in_rows.device)
    return torch.baddbmm(one, in_rows.transpose(1, 2), in_cols, alpha=-1).clamp_(min=0)[:, None]


class CutoutPlane:
    """Every clipped Cutout square of side ``size`` on ``h × w`` images, as the windows of one plane.

    A ``(2h - 1) × (2w - 1)`` plane of ones with the square zeroed in its middle: the ``h × w`` window starting at
    row ``h - 1 - cy`` and column ``w - 1 - cx`` is the multiplier of a hole centred at ``(cy, cx)``, clipped at the
    image border as in the paper. A batch's multiplier is then one pick of windows from a strided view of the plane
    (no per-pixel comparison; `box_keep` does two per box and a matrix product). Built once per transform.
    """

    def __init__(self, h: int, w: int, size: int) -> None:
        half, wq = size // 2, 2 * w - 1
        plane = torch.ones((2 * h - 1, wq))
        plane[
            max(0, h - 1 - half) : max(0, h - 1 - half + size), max(0, w - 1 - half) : max(0, w - 1 - half + size)
        ] = 0
        self.h, self.w, self.wq = h, w, wq
        self.corner = (h - 1) * wq + w - 1  # flat start of the window of a hole centred at (0, 0)
        self.windows = plane.view(-1).as_strided((plane.numel() - self.corner, h, w), (1, wq, 1))

    def keep(self, n: int, holes: int, g: torch.Generator, out: torch.Tensor | None = None) -> torch.Tensor:
        """Float ``(N, 1, h, w)``: 0 in ``holes`` squares per image, 1 elsewhere; the draws of `cutout_mask`.

        ``out``: a float ``(N·holes, h, w)`` tensor to write the windows into instead of a new one.
        """
        cy = uniform(g, (n, holes)).numpy() * self.h
        cx = uniform(g, (n, holes)).numpy() * self.w
        # floor(cy), floor(cx): the centres are non-negative, so truncation is the floor.
        start = self.corner - cy.astype(np.int64) * self.wq - cx.astype(np.int64)
        index = torch.from_numpy(start.reshape(-1))
        keep = (
            self.windows.index_select(0, index) if out is None else torch.index_select(self.windows, 0, index, out=out)
        )
        if holes > 1:
            keep = keep.view(n, holes, self.h, self.w).amin(dim=1)
        return keep.view(n, 1, self.h, self.w)


def cutout_keep(n: int, h: int, w: int, size: int, holes: int, g: torch.Generator) -> torch.Tensor:
    """Cutout as the multiplier that erases it: float ``(N, 1, H, W)``, 0 in the holes and 1 elsewhere; the same
    draws and squares as `cutout_mask`, from windows of one plane (`CutoutPlane`)."""
    return CutoutPlane(h, w, size).keep(n, holes, g)


def _cutout_boxes(n: int, h: int, w: int, size: int, holes: int, g: torch.Generator) -> tuple[torch.Tensor, ...]:
    cy = torch.floor(uniform(g, (n, holes)) * h)
    cx = torch.floor(uniform(g, (n, holes)) * w)
    half = size // 2
    y0, y1 = (cy - half).clamp(0, h), (cy - half + size).clamp(0, h)
    x0, x1 = (cx - half).clamp(0, w), (cx - half + size).clamp(0, w)
    return y0, x0, y1, x1


def cutout_mask(n: int, h: int, w: int, size: int, holes: int, g: torch.Generator) -> torch.Tensor:
    """Cutout (DeVries & Taylor 2017): ``holes`` squares of side ``size`` per image, centres uniform over the
    image, clipped at the border (so a square near an edge erases less, as in the paper)."""
    return box_mask(*_cutout_boxes(n, h, w, size, holes, g), h, w)


def _coarse_dropout_boxes(
    n: int, h: int, w: int, max_holes: int, max_size: float, g: torch.Generator
) -> tuple[torch.Tensor, ...]:
    count = torch.floor(uniform(g, n) * max_holes) + 1  # (N,)
    side_max = max(1, round(max_size * min(h, w)))
    side = torch.floor(uniform(g, (n, max_holes)) * side_max) + 1
    cy = torch.floor(uniform(g, (n, max_holes)) * h)
    cx = torch.floor(uniform(g, (n, max_holes)) * w)
    active = torch.arange(max_holes)[None, :] < count[:, None]
    y0 = (cy - side // 2).clamp(0, h)
    x0 = (cx - side // 2).clamp(0, w)
    y1 = torch.where(active, (y0 + side).clamp(0, h), y0)
    x1 = torch.where(active, (x0 + side).clamp(0, w), x0)
    return y0, x0, y1, x1


def random_erasing_mask(
    n: int,
    h: int,
    w: int,
    p: float,
    g: torch.Generator,
    area: tuple[float, float] = (0.02, 0.4),
    ratio: float = 0.3,
    attempts: int = 10,
) -> torch.Tensor:
    """Random Erasing (Zhong et al. 2017, Alg. 1): with probability ``p`` one rectangle of area fraction in
    ``area`` (0.02–0.4) and aspect in ``[ratio, 1 / ratio]`` (0.3), retried until it fits (here: ``attempts``)."""
    chosen = bernoulli(g, n, p)
    target = uniform(g, (n, attempts), area[0], area[1]) * h * w
    aspect = torch.exp(uniform(g, (n, attempts), math.log(ratio), -math.log(ratio)))
    eh = torch.sqrt(target * aspect).round()
    ew = torch.sqrt(target / aspect).round()
    fits = (eh >= 1) & (ew >= 1) & (eh < h) & (ew < w)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)
    eh, ew = eh.gather(1, first).squeeze(1), ew.gather(1, first).squeeze(1)
    ok = chosen & fits.any(dim=1)
    pos = uniform(g, (n, 2))
    y0 = torch.floor(pos[:, 0] * (h - eh + 1))
    x0 = torch.floor(pos[:, 1] * (w - ew + 1))
    y1 = torch.where(ok, y0 + eh, y0)
    x1 = torch.where(ok, x0 + ew, x0)
    return box_mask(y0[:, None], x0[:, None], y1[:, None], x1[:, None], h, w)


def erase(
    x: torch.Tensor,
    aug: AugmentConfig,
    g: torch.Generator,
    normalize: Callable[..., torch.Tensor],
    cutout: CutoutPlane | None,
    scratch: Scratch,
) -> torch.Tensor:
    """The erasing stage of the training transform: Cutout and Coarse Dropout as one multiplier, then Random Erasing.

    Args:
        x: the normalised float batch, changed in place.
        aug: which erasings, with their settings.
        g: the generator of every draw.
        normalize: the transform's normaliser (``normalize(noise, unit=True)``), for Random Erasing's fill.
        cutout: the transform's Cutout plane for the input size (rebuilt here if the batch has another size).
        scratch: the transform's reusable buffers.
    """
    n, _, h, w = x.shape
    keep = None
    if aug.cutout > 0:
        if cutout is None or (cutout.h, cutout.w) != (h, w):
            cutout = CutoutPlane(h, w, aug.cutout)
        out = scratch.get("cutout", (n * aug.cutout_holes, h, w), torch.float32, torch.device("cpu"))
        keep = cutout.keep(n, aug.cutout_holes, g, out=out)
    if aug.coarse_dropout > 0:
        y0, x0, y1, x1 = (
            b.to(x.device) for b in _coarse_dropout_boxes(n, h, w, aug.coarse_dropout, aug.coarse_dropout_size, g)
        )
        dropout = box_keep(y0, x0, y1, x1, h, w)
        keep = dropout if keep is None else dropout.mul_(keep.to(x.device))
    if keep is not None:
        # In place, by a stride-0 expanded keep multiplier: one pass over the batch (masked_fill_ is slower on CPU).
        x = x.mul_(keep.to(x.device, x.dtype).expand_as(x))
    if aug.random_erasing > 0:
        mask = random_erasing_mask(n, h, w, aug.random_erasing, g).to(x.device)
        if bool(mask.any()):
            # Zhong et al. fill with random pixel values in [0, 255]: uniform noise, normalised like the image.
            noise = normalize(torch.rand(x.shape, generator=g).to(x.device), unit=True)
            x = torch.where(mask[:, None], noise, x)
    return x
