"""airbench94: whitening init, Dirac init, frozen parameters, interface."""

import torch

from imgcls.models.airbench import AirBench


def test_whitening_makes_patch_covariance_identity():
    gen = torch.Generator().manual_seed(0)
    # Correlated channels, so whitening has real work to do.
    base = torch.randn(32, 1, 32, 32, generator=gen)
    images = torch.cat(
        [base, 0.5 * base + 0.1 * torch.randn(32, 1, 32, 32, generator=gen), torch.rand(32, 1, 32, 32, generator=gen)],
        1,
    )
    model = AirBench()
    model.init_whitening(images, eps=1e-9)  # the default eps deliberately shrinks near-null directions
    with torch.no_grad():
        z = torch.nn.functional.conv2d(images, model.whiten.weight[:12])  # (N, 12, 31, 31), no bias
    z = z.transpose(0, 1).reshape(12, -1)
    z = z - z.mean(1, keepdim=True)
    cov = z @ z.T / z.shape[1]
    assert torch.allclose(cov, torch.eye(12), atol=0.02)
    assert torch.equal(model.whiten.weight[12:], -model.whiten.weight[:12])


def test_dirac_init_and_frozen_parameters():
    model = AirBench()
    conv = model.blocks[1].conv2
    x = torch.randn(1, conv.in_channels, 5, 5)
    assert torch.allclose(conv(x)[:, : conv.in_channels], x)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "whiten.weight" in frozen
    assert all(n.endswith("weight") and ("whiten" in n or "norm" in n) for n in frozen)
    assert not any("norm" in n and n.endswith("bias") for n in frozen)


def test_interface_and_shapes():
    model = AirBench(num_classes=7)
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    assert torch.equal(model.forward_head(model.forward_features(x)), out)
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)
    out.sum().backward()


# Jordan 2024, Section 3 and Table 1: a 2×2 whitening conv of 2·3·2·2 = 24 filters (with bias), three blocks of two
# 3×3 convs at widths 64, 256, 256 with batch norm (scale and shift are parameters, the scale frozen), a bias-free
# linear classifier. Counted by hand at 10 classes.
AIRBENCH_PARAMS = (
    (24 * 3 * 2 * 2 + 24)
    + sum(w * c * 9 + 2 * w + w * w * 9 + 2 * w for c, w in ((24, 64), (64, 256), (256, 256)))
    + 256 * 10
)


def test_parameter_count_by_hand():
    assert AIRBENCH_PARAMS == 1_972_792
    assert sum(p.numel() for p in AirBench(num_classes=10).parameters()) == AIRBENCH_PARAMS
