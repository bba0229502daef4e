"""Each hand-made feature on inputs whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("skimage")

from imgcls.classic import features as F
from imgcls.errors import UserError


def _edge(size: int = 32, vertical: bool = True) -> np.ndarray:
    """Dark left (or top) half, bright right (or bottom) half: one straight edge through the middle."""
    img = np.zeros((size, size), np.uint8)
    if vertical:
        img[:, size // 2 :] = 200
    else:
        img[size // 2 :, :] = 200
    return img


def test_hog_of_a_vertical_edge_peaks_in_the_horizontal_gradient_bin():
    from skimage.feature import hog as sk_hog

    for vertical, expected_bin in ((True, 0), (False, 4)):  # 9 bins of 20°: 0° is bin 0, 90° is bin 4
        img = _edge(vertical=vertical)
        cells = sk_hog(img, orientations=9, pixels_per_cell=(4, 4), cells_per_block=(1, 1), feature_vector=False)
        # cells: (rows, cols, 1, 1, 9); the edge runs through the cells next to the middle
        strongest = cells.reshape(-1, 9).sum(axis=0)
        assert int(strongest.argmax()) == expected_bin
        # and our wrapper gives the same numbers as scikit-image's block-normalised HOG
        ours = F.hog(img, orientations=9, cell=4, block=2)
        ref = sk_hog(img, orientations=9, pixels_per_cell=(4, 4), cells_per_block=(2, 2), block_norm="L2-Hys")
        np.testing.assert_allclose(ours, ref.astype(np.float32))


def test_hog_of_colour_uses_the_strongest_channel():
    # An edge in the red channel only: grey HOG of the red channel equals colour HOG (the other channels are flat).
    red = _edge()
    rgb = np.stack([red, np.full_like(red, 7), np.full_like(red, 7)], axis=2)
    np.testing.assert_allclose(F.hog(rgb, cell=4), F.hog(red, cell=4))
    assert F.hog(rgb, cell=4).shape == (7 * 7 * 2 * 2 * 9,)  # 8x8 cells → 7x7 blocks of 2x2 cells


def test_hog_refuses_images_smaller_than_a_block():
    with pytest.raises(UserError, match="smaller than one block"):
        F.hog(np.zeros((6, 6), np.uint8), cell=4, block=2)


def test_lbp_of_a_constant_image_is_one_bin():
    flat = np.full((20, 20), 90, np.uint8)
    codes = F.lbp_codes(flat, 8, 1.0)
    # every neighbour equals the centre: all eight bits set, a uniform pattern with P = 8 ones (inside the border,
    # where the circle of neighbours lies in the image; the histograms leave the border out)
    assert set(np.unique(codes[1:-1, 1:-1]).tolist()) == {8}
    hist = F.lbp_histograms(flat, scales=((8, 1.0),), grid=1)
    assert hist.shape == (10,)  # P + 2 bins of LBP^riu2
    np.testing.assert_array_equal(hist, np.eye(10, dtype=np.float32)[8])


def test_lbp_histograms_sum_to_one_per_cell_and_scale():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    hist = F.lbp_histograms(img, scales=((8, 1.0), (16, 2.0)), grid=4)
    per_cell = hist.reshape(16, 10 + 18)
    np.testing.assert_allclose(per_cell[:, :10].sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(per_cell[:, 10:].sum(axis=1), 1.0, rtol=1e-6)
    # noise has non-uniform patterns: the "everything else" bin P + 1 is used
    assert per_cell[:, 9].min() > 0


def test_lbp_of_a_bright_spot_on_a_dark_background():
    img = np.zeros((9, 9), np.uint8)
    img[4, 4] = 255
    codes = F.lbp_codes(img, 8, 1.0)
    assert codes[4, 4] == 0  # every neighbour darker than the centre: no bit set
    assert codes[1, 1] == 8  # away from the spot (and the border) the image is flat


def test_to_gray_matches_the_data_layers_conversion():
    from imgcls.data.loader import convert_channels

    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    ours = F.to_gray(rgb)
    theirs = convert_channels(torch.from_numpy(rgb.transpose(2, 0, 1))[None], 1)[0, 0].numpy()
    np.testing.assert_array_equal(ours, theirs)


def test_grid_centres_cover_the_image_in_steps():
    centres = F.grid_centres(64, 48, patch=16, step=8)
    xs, ys = np.unique(centres[:, 0]), np.unique(centres[:, 1])
    np.testing.assert_array_equal(xs, [8, 16, 24, 32, 40])  # 48 wide: centres 8 .. 40
    np.testing.assert_array_equal(ys, [8, 16, 24, 32, 40, 48, 56])
    assert len(centres) == 5 * 7


def test_dense_sift_counts_positions_and_sees_only_its_patch():
    pytest.importorskip("cv2")
    flat = np.full((64, 64), 120, np.uint8)
    desc, pos = F.dense_sift(flat, patch=16, step=8)
    assert desc.shape == (49, 128) and pos.shape == (49, 2)
    assert np.abs(desc).max() == 0  # no gradient, no descriptor
    assert pos.min() > 0 and pos.max() < 1

    img = _edge(64)  # an edge at x = 32
    desc, pos = F.dense_sift(img, patch=16, step=8)
    norms = np.linalg.norm(desc, axis=1)
    at_edge = np.abs(pos[:, 0] * 64 - 32) < 1
    far = np.abs(pos[:, 0] * 64 - 32) > 16  # more than a patch away (the Gaussian blur reaches ~a bin further)
    assert norms[at_edge].min() == pytest.approx(1.0, abs=0.05)  # unit descriptors (OpenCV's 512 scale undone)
    assert norms[far].max() == 0


def test_dense_daisy_counts_and_positions():
    desc, pos = F.dense_daisy(np.zeros((40, 40), np.uint8), patch=16, step=4)
    # centres at 8, 12, ..., 28 on each axis (scikit-image stops before size - radius): 6 x 6;
    # (2 rings x 6 histograms + 1) x 8 orientations
    assert desc.shape == (36, 104)
    np.testing.assert_allclose(np.unique(pos[:, 0]) * 40, np.arange(8, 32, 4))
    with pytest.raises(UserError, match="DAISY"):
        F.dense_daisy(np.zeros((10, 10), np.uint8), patch=16)


def test_a_missing_library_is_a_one_line_error():
    with pytest.raises(UserError, match=r"needs no_such_lib.*pip install 'imgcls\[classic\]'") as info:
        F.require("no_such_lib.sub", "test features")
    assert "\n" not in str(info.value)
