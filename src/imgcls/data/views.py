"""Evaluation views for test-time augmentation: center crop, flip, five-crop and ten-crop on batches.

Ten-crop is AlexNet's test protocol (Krizhevsky et al. 2012, §4.1: "the four corner patches and the center
patch as well as their horizontal reflections", predictions averaged over the ten); five-crop is the same without
the reflections. The views of one image are contiguous in the output (image-major): row ``i·V + v`` is view ``v``
of image ``i``, so per-view outputs reshape to ``(N, V, ...)``. `merge_views` takes the plain mean of whatever it is
given; `imgcls.engine.evaluate` averages class probabilities over views, not logits. Plain slicing of the batch:
nothing here needs kornia.
"""

from __future__ import annotations

import torch

from imgcls.errors import UserError

VIEWS = {"none": 1, "center": 1, "flip": 2, "five-crop": 5, "ten-crop": 10}


def num_views(kind: str) -> int:
    """How many views per image `make_views` returns for ``kind``."""
    if kind not in VIEWS:
        raise UserError(f"--tta: unknown view {kind!r} (known: {', '.join(VIEWS)})")
    return VIEWS[kind]


def make_views(x: torch.Tensor, kind: str, size: int) -> torch.Tensor:
    """Cut evaluation views from a batch.

    Args:
        x: ``(N, C, H, W)`` with ``H, W >= size`` (any dtype).
        kind: "none"/"center" (the centre crop), "flip" (centre, then its mirror), "five-crop" (centre,
            top-left, top-right, bottom-left, bottom-right) or "ten-crop" (those five, then their mirrors).
        size: side of each square view. The centre crop starts at ``((H - size) // 2, (W - size) // 2)``.

    Returns:
        ``(N·V, C, size, size)``, the ``V`` views of image ``i`` at rows ``i·V … i·V + V - 1``.
    """
    v = num_views(kind)
    n, c, h, w = x.shape
    if h < size or w < size:
        raise ValueError(f"views of {size}px need images at least that large, got {h}x{w}")
    top, left = (h - size) // 2, (w - size) // 2
    center = x[..., top : top + size, left : left + size]
    if kind in ("none", "center"):
        crops = [center]
    elif kind == "flip":
        crops = [center, center.flip(-1)]
    else:
        corners = [
            x[..., :size, :size],
            x[..., :size, w - size :],
            x[..., h - size :, :size],
            x[..., h - size :, w - size :],
        ]
        crops = [center, *corners]
        if kind == "ten-crop":
            crops += [crop.flip(-1) for crop in crops]
    out = torch.stack(crops, dim=1)  # (N, V, C, size, size)
    return out.reshape(n * v, c, size, size)


def merge_views(outputs: torch.Tensor, kind: str) -> torch.Tensor:
    """Average per-view outputs ``(N·V, ...)`` back to one row per image ``(N, ...)``."""
    v = num_views(kind)
    return outputs.view(outputs.shape[0] // v, v, *outputs.shape[1:]).mean(dim=1)
