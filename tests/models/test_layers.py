"""Shared layers: stochastic pooling against hand-computed values, LRN against the paper's formula, make_pool."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from imgcls.errors import UserError
from imgcls.models.layers import ConvBNAct, GlobalPool2d, LocalResponseNorm, StochasticPool2d, make_pool


def test_stochastic_pool_eval_is_probability_weighted_average():
    # One 4×4 map, 2×2/2 regions; the expected values are computed by hand: sum(a²) / sum(a).
    x = torch.tensor(
        [
            [1.0, 3.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],
            [2.0, 2.0, 4.0, 0.0],
            [2.0, 2.0, 1.0, 1.0],
        ]
    ).view(1, 1, 4, 4)
    pool = StochasticPool2d(2).eval()
    expected = torch.tensor(
        [
            [(1 + 9) / 4, 0.0],  # p = (1/4, 3/4) -> 1·1/4 + 3·3/4 = 2.5; an all-zero region gives 0
            [2.0, (16 + 1 + 1) / 6],  # equal values give that value; (4²+1+1)/(4+1+1) = 3
        ]
    ).view(1, 1, 2, 2)
    torch.testing.assert_close(pool(x), expected)


def test_stochastic_pool_train_samples_values_of_the_region_with_the_right_frequencies():
    torch.manual_seed(0)
    region = torch.tensor([1.0, 3.0, 0.0, 4.0])
    x = region.view(1, 1, 2, 2).expand(4000, 1, 2, 2).contiguous()
    pool = StochasticPool2d(2).train()
    y = pool(x).flatten()
    # Every output is an element of its region, and never a zero-probability element.
    assert set(y.unique().tolist()) <= {1.0, 3.0, 4.0}
    freq = torch.stack([(y == v).float().mean() for v in (1.0, 3.0, 4.0)])
    torch.testing.assert_close(freq, torch.tensor([1 / 8, 3 / 8, 4 / 8]), atol=0.03, rtol=0)


def test_stochastic_pool_train_outputs_come_from_their_own_window():
    torch.manual_seed(1)
    x = torch.rand(2, 3, 9, 9)
    pool = StochasticPool2d(3, stride=2).train()
    y = pool(x)
    windows = x.unfold(2, 3, 2).unfold(3, 3, 2).reshape(2, 3, 4, 4, 9)
    assert y.shape == (2, 3, 4, 4)
    assert ((windows == y.unsqueeze(-1)).any(-1)).all()


def test_stochastic_pool_seeded_draws_repeat_and_gradients_reach_the_sampled_element():
    x = torch.rand(1, 2, 6, 6, requires_grad=True)
    pool = StochasticPool2d(2).train()
    torch.manual_seed(3)
    a = pool(x)
    torch.manual_seed(3)
    b = pool(x)
    assert torch.equal(a, b)
    a.sum().backward()
    # One element per 2×2 region receives gradient 1, like max pooling.
    grad_windows = x.grad.unfold(2, 2, 2).unfold(3, 2, 2).reshape(1, 2, 3, 3, 4)
    assert torch.equal(grad_windows.sum(-1), torch.ones(1, 2, 3, 3))


def test_stochastic_pool_all_zero_and_negative_regions():
    x = torch.tensor([[0.0, 0.0], [0.0, 0.0]]).view(1, 1, 2, 2)
    neg = torch.tensor([[-1.0, -3.0], [-2.0, -2.0]]).view(1, 1, 2, 2)
    pool = StochasticPool2d(2)
    assert pool.train()(x).item() == 0.0
    assert pool.eval()(x).item() == 0.0
    # No positive activation: uniform over the region, so eval gives the plain mean and train one of its values.
    assert pool.eval()(neg).item() == pytest.approx(-2.0)
    assert pool.train()(neg).item() in {-1.0, -3.0, -2.0}


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "padding", "ceil_mode"),
    [c for c in itertools.product([6, 7, 13, 14], [2, 3], [1, 2], [0, 1], [False, True]) if c[3] <= c[1] // 2],
)
def test_stochastic_pool_output_size_matches_max_pool(size, kernel, stride, padding, ceil_mode):
    x = torch.rand(1, 2, size, size) + 0.1
    ref = F.max_pool2d(x, kernel, stride, padding, ceil_mode=ceil_mode)
    pool = StochasticPool2d(kernel, stride, padding, ceil_mode)
    # Padded positions are never drawn, so the result stays between the region's min and max.
    assert pool.eval()(x).shape == ref.shape
    y = pool.train()(x)
    assert y.shape == ref.shape
    assert (y <= ref).all() and (y >= 0.1).all()


def test_local_response_norm_uses_the_papers_alpha():
    # Krizhevsky et al. 2012, Section 3.3, written out: b = a / (k + alpha * sum of a² over 5 channels) ** beta.
    torch.manual_seed(0)
    x = torch.randn(1, 8, 3, 3) * 50
    sq = x**2
    expected = torch.empty_like(x)
    for c in range(8):
        lo, hi = max(0, c - 2), min(7, c + 2)
        expected[:, c] = x[:, c] / (2.0 + 1e-4 * sq[:, lo : hi + 1].sum(1)) ** 0.75
    torch.testing.assert_close(LocalResponseNorm()(x), expected, rtol=1e-5, atol=1e-5)


def test_global_pool_avg_and_max():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    torch.testing.assert_close(GlobalPool2d("avg")(x), x.mean((2, 3)))
    torch.testing.assert_close(GlobalPool2d("max")(x), x.amax((2, 3)))
    assert GlobalPool2d("avg", flatten=False)(x).shape == (2, 3, 1, 1)
    with pytest.raises(UserError, match="global_pool"):
        GlobalPool2d("median")


def test_make_pool_kinds_and_error():
    assert isinstance(make_pool("max", 3, 2), nn.MaxPool2d)
    assert isinstance(make_pool("avg", 3, 2), nn.AvgPool2d)
    assert isinstance(make_pool("stochastic", 3, 2), StochasticPool2d)
    with pytest.raises(UserError, match="pool must be one of"):
        make_pool("min", 2)


def test_conv_bn_act_keys_and_bias():
    with_bn = ConvBNAct(3, 8, 3)
    without = ConvBNAct(3, 8, 3, bn=False)
    assert with_bn.conv.bias is None and without.conv.bias is not None
    assert {"conv.weight", "bn.weight", "bn.bias", "bn.running_mean"} <= set(with_bn.state_dict())
    y = with_bn(torch.randn(2, 3, 10, 10))
    assert y.shape == (2, 8, 10, 10) and (y >= 0).all()
