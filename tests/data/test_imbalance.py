"""Class-balanced sampling and SMOTE oversampling."""

from __future__ import annotations

import pytest
import torch

from imgcls.data.imbalance import class_balanced_indices, smote_oversample
from imgcls.errors import UserError


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_balanced_sampler_draws_every_class_equally():
    targets = torch.cat([torch.zeros(900), torch.ones(90), torch.full((10,), 2)]).long()
    idx = class_balanced_indices(targets, 30000, gen(0))
    assert idx.dtype == torch.long and idx.shape == (30000,)
    assert idx.min() >= 0 and idx.max() < 1000
    freq = torch.bincount(targets[idx], minlength=3).float() / 30000
    assert torch.allclose(freq, torch.full((3,), 1 / 3), atol=0.02)
    # within a class, every image is used: the 10 rare images all appear
    assert set(idx[targets[idx] == 2].tolist()) == set(range(990, 1000))
    assert torch.equal(idx, class_balanced_indices(targets, 30000, gen(0)))
    assert not torch.equal(idx, class_balanced_indices(targets, 30000, gen(1)))


def test_balanced_sampler_needs_single_labels():
    with pytest.raises(UserError, match="sampler"):
        class_balanced_indices(torch.zeros(4, 3), 4, gen(0))


def test_smote_balances_the_counts_and_interpolates_within_a_class():
    g = gen(0)
    dark = torch.randint(0, 60, (40, 3, 8, 8), generator=g, dtype=torch.uint8)
    light = torch.randint(190, 256, (6, 3, 8, 8), generator=g, dtype=torch.uint8)
    images = torch.cat([dark, light])
    targets = torch.cat([torch.zeros(40), torch.ones(6)]).long()
    x, y = smote_oversample(images, targets, seed=0)
    assert x.dtype == torch.uint8 and y.dtype == torch.int64 and x.shape[1:] == (3, 8, 8)
    assert torch.bincount(y).tolist() == [40, 40]
    assert torch.equal(x[:46], images) and torch.equal(y[:46], targets), "originals first, unchanged"
    synthetic = x[46:]
    assert (y[46:] == 1).all()
    assert synthetic.min() >= 190, "new samples lie between minority-class neighbours"
    x2, _ = smote_oversample(images, targets, seed=0)
    assert torch.equal(x, x2)


def test_smote_rejects_a_class_with_one_image():
    images = torch.zeros(5, 1, 4, 4, dtype=torch.uint8)
    with pytest.raises(UserError, match="smote"):
        smote_oversample(images, torch.tensor([0, 0, 0, 0, 1]), seed=0)


def test_smote_leaves_a_balanced_set_alone():
    images = torch.randint(0, 256, (6, 1, 4, 4), dtype=torch.uint8)
    x, y = smote_oversample(images, torch.tensor([0, 1, 2, 0, 1, 2]), seed=0)
    assert torch.equal(x, images) and y.tolist() == [0, 1, 2, 0, 1, 2]
