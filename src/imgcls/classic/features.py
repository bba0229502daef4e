"""Hand-made image features, each a thin call into a well-kept library.

Global descriptors (one vector per image):

- :func:`hog` — histograms of oriented gradients (Dalal & Triggs 2005, CVPR): scikit-image's ``hog`` with the
  paper's defaults (9 unsigned orientation bins, 2×2-cell blocks, L2-Hys block normalisation); on colour images
  each pixel takes the gradient of the channel where it is largest, as in the paper (Sec. 6.2).
- :func:`lbp_histograms` — rotation-invariant uniform local binary patterns ``LBP^riu2_{P,R}`` (Ojala,
  Pietikäinen & Mäenpää 2002, TPAMI 24(7), Eq. 10): scikit-image's ``local_binary_pattern(method="uniform")``,
  whose codes are ``0..P+1`` (``P+1`` collects every non-uniform pattern); one normalised histogram per cell of a
  ``grid × grid`` partition and per ``(P, R)`` scale (the paper's multiresolution operator, Sec. 2.4), over the
  pixels whose circle of neighbours lies inside the image.

Dense local descriptors (``(M, D)`` descriptors and their ``(M, 2)`` centres as ``(x, y)`` fractions of the
image's width and height, for the spatial pyramid):

- :func:`dense_sift` — upright SIFT descriptors (Lowe 2004, IJCV) of ``patch``×``patch`` squares on a regular grid
  with ``step`` pixels between centres, the "strong features" of Lazebnik et al. 2006 (16×16 patches, 8-pixel
  grid): OpenCV's SIFT ``compute`` on given keypoints. OpenCV's descriptor spans 4 bins of
  ``1.5 × keypoint size`` pixels each (``SIFT_DESCR_SCL_FCTR = 3`` times half the size), so a ``patch``-pixel
  square is a keypoint of size ``patch / 6``. Descriptors are divided by 512, OpenCV's fixed-point scale, so
  each has an L2 norm of about 1 (0 on a flat patch).
- :func:`dense_daisy` — DAISY (Tola, Lepetit & Fua 2010, TPAMI), scikit-image's dense descriptor, as a
  SIFT-like alternative that needs no OpenCV: rings of Gaussian-smoothed orientation histograms of radius
  ``patch / 2``.

Images are uint8 ``(H, W)`` (grey) or ``(H, W, C)``; grey conversion uses ITU-R 601-2 luma with the data
layer's integer weights (`imgcls.data.loader.convert_channels`), so a colour image converts as the loader would.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence

import numpy as np

from imgcls.errors import UserError

# The pip names of the optional libraries (the ``classic`` extra of pyproject.toml).
PIP_NAMES = {"skimage": "scikit-image", "cv2": "opencv-python-headless"}
SIFT_SCALE = 512.0  # OpenCV stores SIFT descriptors as unit vectors times 512 (then clipped to 0..255)


def require(module: str, what: str):
    """Import an optional library, or raise a one-line UserError saying how to install it.

    Args:
        module: ``"skimage.feature"``, ``"cv2"``...
        what: what needs it, e.g. ``"hog_svm (HOG features)"``.
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        raise UserError(
            f"{what} needs {PIP_NAMES.get(top, top)}, which is not installed "
            "(pip install 'imgcls[classic]', or make install in a checkout)"
        ) from None


def to_gray(image: np.ndarray) -> np.ndarray:
    """uint8 ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` → uint8 ``(H, W)``: ITU-R 601-2 luma, rounded."""
    if image.ndim == 2:
        return image
    if image.shape[2] == 1:
        return image[:, :, 0]
    if image.shape[2] != 3:
        raise ValueError(f"expected 1 or 3 channels, got {image.shape[2]}")
    weighted = image.astype(np.int32) @ np.array([299, 587, 114], dtype=np.int32)
    return ((weighted + 500) // 1000).astype(np.uint8)


# --- global descriptors ------------------------------------------------------------------------------------------


def hog(image: np.ndarray, orientations: int = 9, cell: int = 8, block: int = 2) -> np.ndarray:
    """HOG of one image as a flat float32 vector (module docstring).

    Args:
        image: uint8 ``(H, W)`` or ``(H, W, C)``.
        orientations: unsigned orientation bins over 0–180°.
        cell: cell side in pixels.
        block: block side in cells.

    Returns:
        ``(blocks_y · blocks_x · block² · orientations,)`` float32.
    """
    feature = require("skimage.feature", "HOG features")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    channel_axis = -1 if image.ndim == 3 else None
    if min(image.shape[:2]) < cell * block:
        raise UserError(
            f"HOG: images of {image.shape[1]}x{image.shape[0]} are smaller than one block ({cell * block}px)"
        )
    out = feature.hog(
        image,
        orientations=orientations,
        pixels_per_cell=(cell, cell),
        cells_per_block=(block, block),
        block_norm="L2-Hys",
        feature_vector=True,
        channel_axis=channel_axis,
    )
    return out.astype(np.float32)


def lbp_codes(gray: np.ndarray, points: int, radius: float) -> np.ndarray:
    """``LBP^riu2_{P,R}`` code of every pixel, integers ``0..P+1`` as ``(H, W)`` int64."""
    feature = require("skimage.feature", "LBP features")
    return feature.local_binary_pattern(gray, points, radius, method="uniform").astype(np.int64)


def lbp_histograms(image: np.ndarray, scales: Sequence[tuple[int, float]] = ((8, 1.0),), grid: int = 1) -> np.ndarray:
    """Concatenated per-cell histograms of ``LBP^riu2`` codes (module docstring).

    Args:
        image: uint8, grey or colour (converted to grey).
        scales: ``(P, R)`` pairs: ``P`` neighbours on a circle of radius ``R`` pixels.
        grid: the image is cut into ``grid × grid`` cells, one histogram each.

    Returns:
        float32 ``(grid² · Σ(P + 2),)``; each cell's histogram for each scale sums to 1.
    """
    gray = to_gray(image)
    parts = []
    for points, radius in scales:
        bins = int(points) + 2
        # Only pixels whose whole circle lies inside the image (Ojala et al. 2002, Sec. 3: the border is left out).
        m = math.ceil(radius)
        codes = lbp_codes(gray, int(points), float(radius))[m : gray.shape[0] - m, m : gray.shape[1] - m]
        h, w = codes.shape
        if h < grid or w < grid:
            raise UserError(f"LBP: images of {gray.shape[1]}x{gray.shape[0]} are too small for radius {radius}")
        rows = np.minimum(np.arange(h) * grid // h, grid - 1)
        cols = np.minimum(np.arange(w) * grid // w, grid - 1)
        cell = (rows[:, None] * grid + cols[None, :]).ravel()  # (h·w,) cell index of each pixel
        counts = np.bincount(cell * bins + codes.ravel(), minlength=grid * grid * bins).reshape(grid * grid, bins)
        parts.append(counts / np.maximum(counts.sum(axis=1, keepdims=True), 1))
    return np.concatenate(parts, axis=1).ravel().astype(np.float32)


# --- dense local descriptors -------------------------------------------------------------------------------------


def grid_centres(height: int, width: int, patch: int, step: int) -> np.ndarray:
    """Centres ``(x, y)`` of ``patch``-pixel squares on a ``step``-pixel grid inside the image, ``(M, 2)`` float.

    The first square touches the top-left corner; an image smaller than one patch gets its centre only.
    """

    def axis(n: int) -> np.ndarray:
        if n <= patch:
            return np.array([n / 2.0])
        return np.arange(patch / 2.0, n - patch / 2.0 + 1e-9, step)

    ys, xs = np.meshgrid(axis(height), axis(width), indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def dense_sift(image: np.ndarray, patch: int = 16, step: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Upright SIFT descriptors on a dense grid (module docstring).

    Returns:
        ``(descriptors, positions)``: float32 ``(M, 128)`` and float32 ``(M, 2)`` ``(x, y)`` in ``[0, 1)``.
    """
    cv2 = require("cv2", "dense SIFT features")
    gray = np.ascontiguousarray(to_gray(image))
    h, w = gray.shape
    centres = grid_centres(h, w, patch, step)
    keypoints = [cv2.KeyPoint(float(x), float(y), patch / 6.0, 0.0) for x, y in centres]
    found, desc = cv2.SIFT_create().compute(gray, keypoints)
    if desc is None or len(found) != len(keypoints):
        raise RuntimeError(f"OpenCV SIFT returned {0 if desc is None else len(found)} of {len(keypoints)} descriptors")
    positions = np.array([kp.pt for kp in found], dtype=np.float32) / np.array([w, h], dtype=np.float32)
    return desc.astype(np.float32) / SIFT_SCALE, positions


def dense_daisy(
    image: np.ndarray, patch: int = 16, step: int = 8, rings: int = 2, histograms: int = 6, orientations: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """DAISY descriptors on scikit-image's dense grid (module docstring).

    Returns:
        ``(descriptors, positions)``: float32 ``(M, (rings · histograms + 1) · orientations)`` and ``(M, 2)``.
    """
    feature = require("skimage.feature", "DAISY features")
    gray = to_gray(image)
    h, w = gray.shape
    radius = max(1, patch // 2)
    if min(h, w) <= 2 * radius:
        raise UserError(f"DAISY: images of {w}x{h} are not larger than one {2 * radius}px descriptor")
    desc = feature.daisy(gray, step=step, radius=radius, rings=rings, histograms=histograms, orientations=orientations)
    ny, nx, dim = desc.shape
    # scikit-image samples rows radius, radius + step, ... (and the same for columns).
    ys, xs = np.meshgrid(radius + step * np.arange(ny), radius + step * np.arange(nx), indexing="ij")
    positions = np.stack([xs.ravel() / w, ys.ravel() / h], axis=1).astype(np.float32)
    return desc.reshape(ny * nx, dim).astype(np.float32), positions


__all__ = [
    "PIP_NAMES",
    "dense_daisy",
    "dense_sift",
    "grid_centres",
    "hog",
    "lbp_codes",
    "lbp_histograms",
    "require",
    "to_gray",
]
