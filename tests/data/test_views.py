"""Evaluation views: each view equals the crop computed by hand."""

from __future__ import annotations

import pytest
import torch

from imgcls.data.views import make_views, merge_views, num_views
from imgcls.errors import UserError


def grid(n=2, c=3, h=10, w=12) -> torch.Tensor:
    return torch.arange(n * c * h * w, dtype=torch.float32).view(n, c, h, w)


def test_ten_crop_views_equal_hand_computed_crops():
    x = grid()
    v = make_views(x, "ten-crop", 6).view(2, 10, 3, 6, 6)
    for i in range(2):
        img = x[i]
        crops = [img[:, 2:8, 3:9], img[:, :6, :6], img[:, :6, 6:], img[:, 4:, :6], img[:, 4:, 6:]]
        crops += [crop.flip(-1) for crop in crops]
        for k, crop in enumerate(crops):
            assert torch.equal(v[i, k], crop), f"image {i} view {k}"


@pytest.mark.parametrize("kind,count", [("none", 1), ("center", 1), ("flip", 2), ("five-crop", 5), ("ten-crop", 10)])
def test_view_counts_and_layout(kind, count):
    x = grid(n=3)
    out = make_views(x, kind, 8)
    assert num_views(kind) == count
    assert out.shape == (3 * count, 3, 8, 8)
    assert torch.equal(out[0], x[0, :, 1:9, 2:10]), "the first view of each image is its centre crop"
    assert torch.equal(out[count], x[1, :, 1:9, 2:10])
    if kind == "flip":
        assert torch.equal(out[1], out[0].flip(-1))


def test_merge_views_averages_each_image():
    logits = torch.arange(12, dtype=torch.float32).view(6, 2)  # 3 images × 2 views
    assert torch.equal(merge_views(logits, "flip"), torch.tensor([[1.0, 2.0], [5.0, 6.0], [9.0, 10.0]]))


def test_bad_kinds_and_sizes():
    with pytest.raises(UserError, match="--tta"):
        make_views(grid(), "twelve-crop", 4)
    with pytest.raises(ValueError):
        make_views(grid(), "center", 11)
