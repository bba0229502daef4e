"""mixup, CutMix and SamplePairing: label weights match the pixels, sum to one, follow the schedule."""

from __future__ import annotations

import pytest
import torch

from imgcls.data.augment import AugmentConfig
from imgcls.data.augment.mixing import build_mixer, cutmix_box, mixup, sample_pairing_active, soft_targets

K = 10


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def coded_batch(n=32, h=16, w=16):
    """Images whose every pixel is their class index: a mixed pixel's value is the label-weighted class."""
    y = torch.arange(n) % K
    x = y.float().view(n, 1, 1, 1).expand(n, 3, h, w).contiguous()
    return x, y


def test_no_mixing_configured_gives_none():
    assert build_mixer(AugmentConfig(hflip=0.5), K) is None


@pytest.mark.parametrize("cfg", [{"mixup": 0.2}, {"cutmix": 1.0}, {"mixup": 1.0, "cutmix": 1.0}])
def test_label_weights_sum_to_one_and_match_the_pixels(cfg):
    mixer = build_mixer(AugmentConfig(**cfg), K)
    x, y = coded_batch()
    for seed in range(6):
        xm, ys = mixer(x, y, gen(seed), 0)
        assert xm.shape == x.shape and ys.shape == (32, K) and ys.dtype == torch.float32
        assert torch.allclose(ys.sum(1), torch.ones(32), atol=1e-6)
        assert (ys >= 0).all()
        # mixup: every pixel; CutMix: the image mean (area-weighted) equals the label-weighted class index
        expected = ys @ torch.arange(K).float()
        assert torch.allclose(xm.mean((1, 2, 3)), expected, atol=1e-4)


def test_mixup_blends_with_one_lambda_per_batch():
    x, y = coded_batch()
    _, ys = build_mixer(AugmentConfig(mixup=0.4), K)(x, y, gen(3), 0)
    own = ys[torch.arange(32), y]
    lam = own[own < 1].min()  # the weight of the own class (when the partner has another class)
    assert ((own - lam).abs() < 1e-5).sum() + ((own - (1 - lam)).abs() < 1e-5).sum() + (own == 1).sum() >= 32


def test_cutmix_box_is_clipped_and_lambda_uses_the_clipped_area():
    for seed in range(50):
        y0, y1, x0, x1 = cutmix_box(16, 20, 0.3, gen(seed))
        assert 0 <= y0 <= y1 <= 16 and 0 <= x0 <= x1 <= 20
    x = torch.zeros(8, 3, 16, 16)
    x[1::2] = 1.0  # odd images are 1 (class 1), even ones 0 (class 0)
    labels = torch.arange(8) % 2
    mixer = build_mixer(AugmentConfig(cutmix=1.0), 2)
    for seed in range(20):
        xm, ys = mixer(x, labels, gen(seed), 0)
        assert torch.allclose(xm.mean((1, 2, 3)), ys[:, 1], atol=1e-5)


def test_multi_hot_targets_keep_their_row_sums():
    y = (torch.rand(16, K, generator=gen(0)) > 0.6).float()
    x = torch.rand(16, 3, 8, 8, generator=gen(1))
    _, ys = build_mixer(AugmentConfig(mixup=0.4), K)(x, y, gen(2), 0)
    # each row is a convex blend of two rows, so the total stays between the two sums
    assert ys.sum(1).min() >= y.sum(1).min() - 1e-5 and ys.sum(1).max() <= y.sum(1).max() + 1e-5
    assert torch.equal(soft_targets(y, K), y)


def test_mix_prob_zero_returns_the_batch_with_one_hot_targets():
    x, y = coded_batch()
    xm, ys = build_mixer(AugmentConfig(mixup=1.0, mix_prob=0.0), K)(x, y, gen(0), 0)
    assert torch.equal(xm, x) and torch.equal(ys, torch.nn.functional.one_hot(y, K).float())


def test_mixers_are_seeded():
    x = torch.rand(16, 3, 8, 8, generator=gen(0))
    y = torch.arange(16) % K
    mixer = build_mixer(AugmentConfig(mixup=1.0, cutmix=1.0), K)
    a, b, c = mixer(x, y, gen(5), 0), mixer(x, y, gen(5), 0), mixer(x, y, gen(6), 0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_sample_pairing_schedule_off_then_intermittent_then_off():
    on = [e for e in range(320) if sample_pairing_active(e, start=100, on=8, off=2, stop=300)]
    assert min(on) == 100 and max(on) == 297
    assert [sample_pairing_active(e, 100, 8, 2, 300) for e in range(100, 112)] == [True] * 8 + [False] * 2 + [True] * 2
    assert len(on) == 20 * 8  # 20 cycles of 8 on / 2 off between epochs 100 and 300
    assert all(sample_pairing_active(e, 0, 8, 2, None) for e in (0, 7, 10, 1000))


def test_sample_pairing_averages_and_keeps_the_first_label():
    aug = AugmentConfig(sample_pairing=True, sample_pairing_start=2, sample_pairing_on=1, sample_pairing_off=1)
    mixer = build_mixer(aug, K)
    x, y = coded_batch()
    off_x, _ = mixer(x, y, gen(0), 1)  # before the start: untouched
    assert torch.equal(off_x, x)
    xm, ys = mixer(x, y, gen(0), 2)
    assert torch.equal(ys, torch.nn.functional.one_hot(y, K).float()), "the label is the first image's alone"
    partner = 2 * xm[:, 0, 0, 0] - x[:, 0, 0, 0]
    assert sorted(partner.round().long().tolist()) == sorted(y.tolist()), "each image is averaged with another"
    assert not torch.equal(xm, x)
    assert torch.equal(mixer(x, y, gen(0), 3)[0], x), "off epoch of the on/off cycle"


def test_mixup_lambda_is_beta_alpha_alpha():
    # Beta(α, α): mean 1/2, variance 1 / (4 (2α + 1)); a Beta(α, 1) or a Beta(1/α, ...) mix-up fails.
    x, y = torch.zeros(4, 1, 2, 2), torch.nn.functional.one_hot(torch.arange(4), 4).float()
    for alpha in (0.4, 2.0):
        lam = torch.tensor([mixup(x, y, alpha, gen(s))[2] for s in range(2000)])
        assert float(lam.mean()) == pytest.approx(0.5, abs=0.02)
        assert float(lam.var()) == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.1)


def test_cutmix_box_sides_follow_lambda():
    for lam in (0.5, 0.75, 0.9):
        side = 2 * (int(64 * (1 - lam) ** 0.5) // 2)  # the reference's cx ± cut_w // 2
        whole = 0
        for seed in range(100):
            y0, y1, x0, x1 = cutmix_box(64, 64, lam, gen(seed))
            if y0 > 0 and y1 < 64 and x0 > 0 and x1 < 64:  # not clipped: the full box
                assert (y1 - y0, x1 - x0) == (side, side)
                whole += 1
        assert whole >= 5


def test_mix_prob_and_the_mixup_cutmix_choice_are_fair():
    x, y = coded_batch(n=8, h=8, w=8)
    mixer = build_mixer(AugmentConfig(mixup=1.0, cutmix=1.0, mix_prob=0.4), K)
    kinds = []
    for seed in range(400):
        xm, _ = mixer(x, y, gen(seed), 0)
        if torch.equal(xm, x):
            kinds.append("none")
        else:  # CutMix leaves every pixel a pure class index; mixup blends every pixel
            kinds.append("cutmix" if torch.equal(xm, xm.round()) else "mixup")
    mixed = [k for k in kinds if k != "none"]
    assert len(mixed) / len(kinds) == pytest.approx(0.4, abs=0.07)
    assert mixed.count("cutmix") / len(mixed) == pytest.approx(0.5, abs=0.1)
