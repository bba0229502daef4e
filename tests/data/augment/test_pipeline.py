"""The batch transform: evaluation geometry and every training op through it, on hand-made inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import imgcls.data.augment.colour as colour
from imgcls.data.augment import AugmentConfig, build_batch_transform, mean_image
from imgcls.data.augment.colour import adjust_brightness, adjust_contrast, adjust_hue_turns, adjust_saturation
from imgcls.data.augment.erase import cutout_keep, cutout_mask
from imgcls.data.augment.geometry import crop_flip, resized_crop_flip, sample_resized_crop, sample_resized_crops
from imgcls.errors import UserError

MEAN = (0.5, 0.4, 0.3)
STD = (0.25, 0.2, 0.3)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def normalised(x_uint8: torch.Tensor, mean=MEAN, std=STD) -> torch.Tensor:
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (x_uint8.float() / 255 - m) / s


def unnormalised(y: torch.Tensor, mean=MEAN, std=STD) -> torch.Tensor:
    return y * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)


def random_batch(n=16, c=3, h=32, w=32, seed=0) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, h, w), generator=gen(seed), dtype=torch.uint8)


def test_defaults_do_nothing_in_training():
    x = random_batch()
    train = build_batch_transform(AugmentConfig(), True, 32, MEAN, STD)(x, gen(0))
    assert train.dtype == torch.float32 and train.shape == (16, 3, 32, 32)
    assert torch.allclose(train, normalised(x), atol=1e-5)


# ---------------------------------------------------------------------------------------------- eval geometry


def test_eval_center_crops_a_larger_storage():
    x = random_batch(n=2, h=40, w=48)
    y = build_batch_transform(AugmentConfig(hflip=1.0), False, 32, MEAN, STD)(x, None)
    assert torch.allclose(y, normalised(x[:, :, 4:36, 8:40]), atol=1e-5)  # no flip in evaluation


def test_eval_upscales_small_storage_and_resize_sets_the_short_side():
    digits = random_batch(n=3, c=1, h=8, w=8)
    y = build_batch_transform(AugmentConfig(), False, 32, (0.5,), (0.5,))(digits, None)
    assert y.shape == (3, 1, 32, 32)
    big = random_batch(n=2, h=64, w=80)
    y = build_batch_transform(AugmentConfig(), False, 28, MEAN, STD, resize=32)(big, None)
    assert y.shape == (2, 3, 28, 28)
    # A constant image stays constant through resize and crop.
    flat = torch.full((1, 3, 64, 80), 200, dtype=torch.uint8)
    y = build_batch_transform(AugmentConfig(), False, 28, MEAN, STD, resize=32)(flat, None)
    assert torch.allclose(y, normalised(flat[:, :, :28, :28]), atol=1e-4)


def test_mean_image_normalisation_subtracts_the_mean_image():
    x = random_batch(n=8)
    mimg = mean_image(x)
    assert mimg.shape == (3, 32, 32)
    assert torch.allclose(mimg, x.float().mean(0) / 255, atol=1e-6)
    aug = AugmentConfig(normalize="mean_image")
    y = build_batch_transform(aug, False, 32, mimg, STD)(x, None)
    assert torch.allclose(y, (x.float() / 255 - mimg) / torch.tensor(STD).view(3, 1, 1), atol=1e-5)
    with pytest.raises(UserError, match="mean_image"):
        build_batch_transform(aug, True, 32, MEAN, STD)


# ---------------------------------------------------------------------------------------------- every op: contract

CONFIGS = {
    "pad_crop_flip_cutout": {"crop_padding": 4, "hflip": 0.5, "cutout": 16},
    "reflect_translate": {"crop_padding": 4, "padding_mode": "reflect", "translate": 0.1, "vflip": 0.5},
    "edge": {"crop_padding": 6, "padding_mode": "edge"},
    "rrc": {"random_resized_crop": True, "hflip": 0.5, "vflip": 0.5},
    "rotation_scale": {"rotation": 30, "scale_aspect": [0.2, 0.3]},
    "color_jitter": {"color_jitter": [0.4, 0.4, 0.4, 0.1]},
    "pca": {"pca_lighting": 0.5},
    "channel_permute": {"channel_permute": 1.0},
    "noise_blur": {"gaussian_noise": 0.05, "gaussian_blur": 1.0},
    "coarse_dropout": {"coarse_dropout": 4, "coarse_dropout_size": 0.25},
    "random_erasing": {"random_erasing": 1.0},
    "autoaugment": {"autoaugment": "imagenet"},
    "randaugment": {"randaugment": "2,9"},
    "trivialaugment": {"trivialaugment": True},
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_each_augmentation_contract(name):
    aug = AugmentConfig.from_dict(CONFIGS[name])
    fn = build_batch_transform(aug, True, 32, MEAN, STD)
    x = random_batch(n=12, h=40, w=40) if name == "rrc" else random_batch(n=12)
    a, b, c = fn(x, gen(1)), fn(x, gen(1)), fn(x, gen(2))
    assert a.shape == (12, 3, 32, 32) and a.dtype == torch.float32
    assert torch.isfinite(a).all()
    assert torch.equal(a, b), "same seed must give identical output"
    assert not torch.equal(a, c), "another seed must give another output"
    pixels = unnormalised(a)
    erased = name in ("pad_crop_flip_cutout", "coarse_dropout")  # erased pixels sit at the mean (0 after norm)
    lo, hi = (min(MEAN) - 1e-4, max(MEAN) + 1e-4) if erased else (0, 1)
    assert pixels.min() >= min(lo, 0) - 1e-4 and pixels.max() <= max(hi, 1) + 1e-4
    assert not torch.allclose(a, normalised(x[..., :32, :32]), atol=1e-3), "the op must change something"


# ---------------------------------------------------------------------------------------------- ops on hand-made inputs


def test_crop_flip_takes_the_stated_window_of_the_padded_image():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.uint8).view(2, 1, 6, 6)
    top, left = torch.tensor([-2, 1]), torch.tensor([3, 0])
    out = crop_flip(x, top, left, 4)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    assert torch.equal(out[0], padded[0, :, 0:4, 5:9])
    assert torch.equal(out[1], padded[1, :, 3:7, 2:6])
    flipped = crop_flip(x, top, left, 4, hflip=torch.tensor([True, False]), vflip=torch.tensor([False, True]))
    assert torch.equal(flipped[0], out[0].flip(-1)) and torch.equal(flipped[1], out[1].flip(-2))


@pytest.mark.parametrize("mode,np_mode", [("reflect", "reflect"), ("edge", "edge")])
def test_crop_padding_modes_match_numpy_pad(mode, np_mode):
    x = random_batch(n=3, c=2, h=7, w=9)
    top, left = torch.tensor([-3, 0, 2]), torch.tensor([-3, 4, -1])
    out = crop_flip(x, top, left, 7, padding_mode=mode)
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (3, 3), (3, 3)), mode=np_mode)
    for i in range(3):
        t, l_ = int(top[i]) + 3, int(left[i]) + 3
        assert np.array_equal(out[i].numpy(), padded[i, :, t : t + 7, l_ : l_ + 7])


def test_pad_crop_shifts_content_by_at_most_the_padding():
    x = random_batch(n=32, seed=3)
    y = build_batch_transform(AugmentConfig(crop_padding=4), True, 32, MEAN, STD)(x, gen(5))
    padded = torch.nn.functional.pad(normalised(x), (4, 4, 4, 4), value=0.0)
    # zero padding in pixel space is -mean/std after normalisation
    black = normalised(torch.zeros(1, 3, 1, 1, dtype=torch.uint8))
    padded = torch.where(torch.nn.functional.pad(torch.ones(32, 1, 32, 32), (4, 4, 4, 4)) > 0, padded, black)
    shifts = []
    for i in range(32):
        found = [
            (dy, dx)
            for dy in range(9)
            for dx in range(9)
            if torch.allclose(y[i], padded[i, :, dy : dy + 32, dx : dx + 32], atol=1e-5)
        ]
        assert found, f"image {i} is not a shifted window of its padded input"
        shifts.append(found[0])
    assert len(set(shifts)) > 5, "offsets must vary per image"


def test_flips_flip():
    x = random_batch(n=4)
    h = build_batch_transform(AugmentConfig(hflip=1.0), True, 32, MEAN, STD)(x, gen(0))
    v = build_batch_transform(AugmentConfig(vflip=1.0), True, 32, MEAN, STD)(x, gen(0))
    assert torch.allclose(h, normalised(x).flip(-1), atol=1e-5)
    assert torch.allclose(v, normalised(x).flip(-2), atol=1e-5)
    many = random_batch(n=64)
    half = build_batch_transform(AugmentConfig(hflip=0.5), True, 32, MEAN, STD)(many, gen(0))
    reference = normalised(many)
    flipped = sum(torch.allclose(half[i], reference[i].flip(-1), atol=1e-5) for i in range(64))
    assert 16 <= flipped <= 48


def test_cutout_zeroes_squares_of_the_stated_size():
    x = torch.full((64, 3, 32, 32), 255, dtype=torch.uint8)  # white: far from the mean, so zeros are the holes
    y = build_batch_transform(AugmentConfig(cutout=8), True, 32, MEAN, STD)(x, gen(0))
    full = 0
    for i in range(64):
        zero = (y[i] == 0).all(0)
        assert (y[i] == 0).any(0).equal(zero), "a hole spans every channel"
        rows, cols = zero.any(1).nonzero().squeeze(1), zero.any(0).nonzero().squeeze(1)
        assert 1 <= len(rows) <= 8 and 1 <= len(cols) <= 8
        assert int(zero.sum()) == len(rows) * len(cols), "the hole is one rectangle"
        assert rows.diff().eq(1).all() and cols.diff().eq(1).all()
        full += int(zero.sum()) == 64
    assert full > 20, "holes away from the border keep the full 8x8 size"
    m = cutout_mask(500, 32, 32, 16, 1, gen(1))
    assert m.float().mean() == pytest.approx(0.2, abs=0.05)  # E[area] of a clipped 16-square on 32x32


def test_random_erasing_fills_one_rectangle_with_noise():
    x = torch.full((32, 3, 32, 32), 128, dtype=torch.uint8)
    y = build_batch_transform(AugmentConfig(random_erasing=1.0), True, 32, MEAN, STD)(x, gen(0))
    changed = (~torch.isclose(y, normalised(x), atol=1e-5)).any(1)  # (N, H, W)
    area = changed.float().mean((1, 2))
    assert (area > 0.01).float().mean() > 0.9 and area.max() <= 0.45
    assert unnormalised(y).min() >= -1e-4 and unnormalised(y).max() <= 1 + 1e-4


def test_rrc_full_box_is_identity_and_flip_is_folded_in():
    x = random_batch(n=4)
    aug = AugmentConfig(random_resized_crop=True, rrc_scale=(1.0, 1.0), rrc_ratio=(1.0, 1.0))
    y = build_batch_transform(aug, True, 32, MEAN, STD)(x, gen(0))
    assert torch.allclose(y, normalised(x), atol=1e-3)
    aug = AugmentConfig(random_resized_crop=True, rrc_scale=(1.0, 1.0), rrc_ratio=(1.0, 1.0), hflip=1.0)
    y = build_batch_transform(aug, True, 32, MEAN, STD)(x, gen(0))
    assert torch.allclose(y, normalised(x).flip(-1), atol=1e-3)


def test_sample_resized_crop_boxes_fit_and_follow_the_ranges():
    boxes = sample_resized_crops(2000, 60, 80, (0.08, 1.0), (3 / 4, 4 / 3), gen(0))
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 60).all() and (left + w <= 80).all()
    area = (h * w).float() / (60 * 80)
    assert area.min() >= 0.07 and area.max() <= 1.0 and area.std() > 0.1
    ratio = w.float() / h.float()
    assert ratio.min() >= 0.7 and ratio.max() <= 1.4
    one = sample_resized_crop(60, 80, (0.08, 1.0), (3 / 4, 4 / 3), gen(3))
    assert one == sample_resized_crop(60, 80, (0.08, 1.0), (3 / 4, 4 / 3), gen(3))
    # impossible aspect ratio: falls back to the largest centred box within the ratio range
    assert sample_resized_crop(10, 100, (0.9, 1.0), (1.0, 1.0), gen(0)) == (0, 45, 10, 10)


def test_color_ops_on_hand_made_inputs():
    grey = torch.full((4, 3, 8, 8), 100, dtype=torch.uint8)
    sat = build_batch_transform(AugmentConfig(color_jitter=(0, 0, 0.9, 0.5)), True, 8, MEAN, STD)(grey, gen(0))
    assert torch.allclose(sat, normalised(grey), atol=1e-4), "saturation and hue leave grey untouched"
    bright = build_batch_transform(AugmentConfig(color_jitter=(0.5, 0, 0, 0)), True, 8, MEAN, STD)(grey, gen(0))
    factor = unnormalised(bright)[:, 0, 0, 0] / (100 / 255)
    assert ((factor >= 0.5 - 1e-4) & (factor <= 1.5 + 1e-4)).all() and factor.std() > 0.01
    assert torch.allclose(unnormalised(bright), factor.view(-1, 1, 1, 1) * 100 / 255, atol=1e-4)


def test_pca_lighting_adds_one_rgb_offset_per_image():
    x = random_batch(n=8).clamp(60, 190)  # away from the clip
    y = unnormalised(build_batch_transform(AugmentConfig(pca_lighting=0.1), True, 32, MEAN, STD)(x, gen(0)))
    delta = y - x.float() / 255
    assert torch.allclose(delta, delta[:, :, :1, :1].expand_as(delta), atol=1e-5)
    assert delta[:, :, 0, 0].abs().max() > 1e-3


def test_channel_permute_permutes_channels():
    x = random_batch(n=16)
    y = unnormalised(
        build_batch_transform(AugmentConfig(channel_permute=1.0), True, 32, (0.5,) * 3, (0.25,) * 3)(x, gen(0)),
        (0.5,) * 3,
        (0.25,) * 3,
    )
    perms = set()
    for i in range(16):
        src = x[i].float() / 255
        order = [next(c for c in range(3) if torch.allclose(y[i, k], src[c], atol=1e-5)) for k in range(3)]
        assert sorted(order) == [0, 1, 2]
        perms.add(tuple(order))
    assert len(perms) > 2


def test_blur_smooths_and_noise_has_the_stated_std():
    x = torch.full((8, 3, 32, 32), 128, dtype=torch.uint8)
    noisy = unnormalised(build_batch_transform(AugmentConfig(gaussian_noise=0.05), True, 32, MEAN, STD)(x, gen(0)))
    assert (noisy - 128 / 255).std().item() == pytest.approx(0.05, rel=0.05)
    rnd = random_batch(n=8)
    blurred = unnormalised(build_batch_transform(AugmentConfig(gaussian_blur=1.0), True, 32, MEAN, STD)(rnd, gen(0)))
    assert blurred.diff(dim=-1).abs().mean() < (rnd.float() / 255).diff(dim=-1).abs().mean() * 0.9


def test_rotation_keeps_the_centre_of_a_symmetric_image():
    x = torch.zeros(8, 3, 33, 33, dtype=torch.uint8)
    x[:, :, 12:21, 12:21] = 255
    y = unnormalised(build_batch_transform(AugmentConfig(rotation=45), True, 33, MEAN, STD)(x, gen(0)))
    assert torch.allclose(y[:, :, 16, 16], torch.ones(8, 3), atol=1e-4)
    assert not torch.allclose(y, x.float() / 255, atol=1e-2)


def test_colour_blends_follow_their_definitions():
    x = torch.rand(6, 3, 10, 10, generator=gen(0)) * 0.6 + 0.2
    f = torch.tensor([0.0, 0.5, 0.9, 1.0, 1.2, 1.4])
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    grey = (x * luma).sum(1, keepdim=True)
    ff = f.view(-1, 1, 1, 1)
    mean = grey.mean(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(adjust_contrast(x, f), (ff * x + (1 - ff) * mean).clamp(0, 1))
    torch.testing.assert_close(adjust_saturation(x, f), (ff * x + (1 - ff) * grey).clamp(0, 1))
    torch.testing.assert_close(adjust_brightness(x, f), (ff * x).clamp(0, 1))
    assert torch.equal(adjust_saturation(x[:, :1], f), x[:, :1]), "saturation is the identity on grey images"


def test_hue_turns_primaries_by_the_hue_angle_and_approximates_hsv():
    primaries = torch.eye(3).view(3, 3, 1, 1)  # red, green, blue
    # A sixth of a turn takes red to yellow, green to cyan, blue to magenta (equal parts, third channel 0).
    out = adjust_hue_turns(primaries, torch.full((3,), 1 / 6))[..., 0, 0].tolist()
    for k, (a, b) in enumerate([(0, 1), (1, 2), (2, 0)]):
        assert out[k][a] == pytest.approx(out[k][b], abs=1e-6) and out[k][a] > 0.6
        assert out[k][3 - a - b] == pytest.approx(0, abs=1e-6)
    grey = torch.full((2, 3, 4, 4), 0.4)
    assert torch.allclose(adjust_hue_turns(grey, torch.tensor([0.3, -0.5])), grey, atol=1e-6)
    # Against the HSV hue shift (kornia): the change points the same way.
    from kornia.enhance import adjust_hue

    x = torch.rand(64, 3, 8, 8, generator=gen(1))
    for shift in (0.05, -0.1, 0.3):
        s = torch.full((64,), shift)
        ours, hsv = adjust_hue_turns(x, s) - x, adjust_hue(x, s * 2 * np.pi).clamp(0, 1) - x
        assert torch.nn.functional.cosine_similarity(ours.flatten(), hsv.flatten(), dim=0) > 0.8


def test_color_jitter_is_per_image_whatever_the_slicing(monkeypatch):
    x = random_batch(n=9, h=24, w=24)
    fn = build_batch_transform(AugmentConfig(color_jitter=(0.4, 0.4, 0.4, 0.1)), True, 24, MEAN, STD)
    whole = fn(x, gen(5))
    monkeypatch.setattr(colour, "_CHUNK_BYTES", 1)  # one image per slice
    torch.testing.assert_close(fn(x, gen(5)), whole)


def test_scalar_resized_crop_is_the_batched_one_for_one_image():
    for seed in range(300):
        for h, w, scale, ratio in ((375, 500, (0.08, 1.0), (3 / 4, 4 / 3)), (30, 200, (0.5, 1.0), (0.2, 5.0))):
            one = sample_resized_crop(h, w, scale, ratio, gen(seed))
            assert one == tuple(sample_resized_crops(1, h, w, scale, ratio, gen(seed))[0].tolist())


@pytest.mark.parametrize("flips", [[True, False, True], [False, False, False], [True, True, True]])
def test_crop_flip_horizontal_only_on_non_square_images(flips):
    # The window-select path (constant padding, horizontal flips only): every crop is the stated window of the
    # zero-padded image, mirrored where asked, with different padding needs on the two sides.
    x = random_batch(n=3, c=2, h=7, w=11, seed=4)
    top, left = torch.tensor([-3, 0, 2]), torch.tensor([-2, 6, -1])
    hflip = torch.tensor(flips)
    out = crop_flip(x, top, left, 6, hflip=hflip)
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (3, 3), (2, 3)))
    for i in range(3):
        t, l_ = int(top[i]) + 3, int(left[i]) + 2
        window = padded[i, :, t : t + 6, l_ : l_ + 6]
        assert np.array_equal(out[i].numpy(), window[..., ::-1] if flips[i] else window)


@pytest.mark.parametrize(
    "h,w,size,holes", [(32, 32, 16, 1), (12, 20, 5, 3), (9, 9, 12, 1), (5, 5, 30, 1), (6, 10, 1, 2)]
)
def test_cutout_keep_is_the_cutout_mask(h, w, size, holes):
    keep = cutout_keep(40, h, w, size, holes, gen(7))
    mask = cutout_mask(40, h, w, size, holes, gen(7))
    assert keep.shape == (40, 1, h, w) and keep.dtype == torch.float32
    assert torch.equal(keep[:, 0] == 0, mask) and set(keep.unique().tolist()) <= {0.0, 1.0}
    assert mask.any() and mask.all() == (size >= 2 * max(h, w))  # a square twice the side covers any image


def test_pad_crop_flip_cutout_batch_is_the_reference_pipeline():
    # The CIFAR hot path against a slow, per-image reference with the same draws (in the same order).
    aug = AugmentConfig(crop_padding=4, hflip=0.5, cutout=16)
    x = random_batch(n=24, seed=9)
    y = build_batch_transform(aug, True, 32, MEAN, STD)(x, gen(3))
    g = gen(3)
    hflip = torch.rand(24, generator=g) < 0.5
    top = torch.randint(-4, 5, (24,), generator=g)
    left = torch.randint(-4, 5, (24,), generator=g)
    keep = ~cutout_mask(24, 32, 32, 16, 1, g)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(24):
        t, l_ = int(top[i]) + 4, int(left[i]) + 4
        crop = padded[i : i + 1, :, t : t + 32, l_ : l_ + 32]
        ref = normalised(crop.flip(-1) if hflip[i] else crop)[0] * keep[i]
        assert torch.allclose(y[i], ref, atol=1e-5)


def test_reused_transform_gives_what_a_fresh_one_gives():
    # The hot path keeps its padded buffer between calls (zero borders, interiors rewritten): batches of other
    # sizes and flip counts in between must not leak into the next result.
    aug = AugmentConfig(crop_padding=4, hflip=0.5, cutout=16, cutout_holes=2)
    fn = build_batch_transform(aug, True, 32, MEAN, STD)
    batches = [(random_batch(n=24, seed=1), 5), (random_batch(n=10, seed=2), 6), (random_batch(n=24, seed=3), 7)]
    held = [fn(x, gen(s)) for x, s in batches]
    for (x, s), y in zip(batches, held):
        assert torch.equal(y, build_batch_transform(aug, True, 32, MEAN, STD)(x, gen(s)))
    assert torch.equal(fn(*batches[0][:1], gen(5)), held[0])


# ----------------------------------------------------------------------------------------- audit: factors, axes, ranges


def test_pad_crop_and_translate_reach_exactly_their_offset_range():
    # A dot at a known place: its position in the output is the crop offset, which must cover -4..4 on both axes
    # (a halved or doubled range, or swapped axes, fails).
    x = torch.zeros(256, 1, 32, 32, dtype=torch.uint8)
    x[:, :, 10, 20] = 255
    for aug in (AugmentConfig(crop_padding=4), AugmentConfig(translate=0.125)):  # 0.125 · 32 = 4 px
        y = build_batch_transform(aug, True, 32, (0.0,), (1.0,))(x, gen(0))
        pos = (y[:, 0] > 0.5).flatten(1).float().argmax(1)
        dy, dx = pos // 32 - 10, pos % 32 - 20
        assert set(dy.tolist()) == set(range(-4, 5)) and set(dx.tolist()) == set(range(-4, 5))
        assert (dy != dx).any(), "rows and columns are drawn independently"


def test_random_resized_crop_takes_the_box_it_drew_on_a_non_square_image():
    # No flips: the boxes are the transform's first draw. A quarter-area square box resized to its own size is
    # exactly that window (a swapped top/left or height/width fails on a 32 x 48 image).
    x = random_batch(n=16, h=32, w=48, seed=2)
    aug = AugmentConfig(random_resized_crop=True, rrc_scale=(16 * 16 / (32 * 48),) * 2, rrc_ratio=(1.0, 1.0))
    y = build_batch_transform(aug, True, 16, MEAN, STD)(x, gen(4))
    boxes = sample_resized_crops(16, 32, 48, aug.rrc_scale, aug.rrc_ratio, gen(4))
    assert (boxes[:, 2:] == 16).all() and boxes[:, 1].max() > 16, "boxes are 16 x 16 and reach past column 16"
    for i, (top, left, _, _) in enumerate(boxes.tolist()):
        assert torch.allclose(y[i], normalised(x[i : i + 1, :, top : top + 16, left : left + 16])[0], atol=1e-4)


def test_resized_crop_antialiases_a_shrinking_box_and_matches_a_float_resize():
    # One-pixel stripes, 0 and 255: a 64-px box shrunk to 16 px must come out mid-grey (antialiased, as
    # torchvision's RandomResizedCrop), not a sampled subset of the stripes; and the uint8 path must agree with a
    # float resize of the same box to within the uint8 rounding.
    stripes = torch.zeros(2, 3, 64, 64, dtype=torch.uint8)
    stripes[..., ::2] = 255
    boxes = torch.tensor([[0, 0, 64, 64], [8, 4, 40, 48]])
    out = resized_crop_flip(stripes, boxes, 16, hflip=torch.tensor([False, True]))
    assert out.dtype == torch.float32 and out.shape == (2, 3, 16, 16)
    assert (out[0, :, :, 1:-1] - 127.5).abs().max() <= 1.0, "interior columns mid-grey (the edges see half a filter)"
    as_float = resized_crop_flip(stripes.float(), boxes, 16, hflip=torch.tensor([False, True]))
    assert (out - as_float).abs().max() <= 1.0
    ramp = torch.arange(64, dtype=torch.uint8).expand(1, 3, 64, 64).contiguous() * 4
    flipped = resized_crop_flip(ramp, torch.tensor([[0, 0, 64, 64]]), 32, hflip=torch.tensor([True]))
    assert flipped[0, 0, 0, 0] > flipped[0, 0, 0, -1], "the mirrored ramp falls from left to right"


def test_random_resized_crop_boxes_span_the_scale_and_ratio_bounds():
    boxes = sample_resized_crops(4000, 224, 224, (0.08, 1.0), (3 / 4, 4 / 3), gen(1))
    _, _, h, w = boxes.double().unbind(1)
    area, ratio = h * w / 224**2, w / h
    # Within the bounds up to the rounding of each side to whole pixels, and reaching both ends.
    assert area.min() >= 0.08 * (1 - 2 / 17) and area.max() <= 1.0
    assert area.min() < 0.09 and area.max() > 0.95
    assert ratio.min() >= 3 / 4 - 0.05 and ratio.max() <= 4 / 3 + 0.05
    assert ratio.min() < 0.77 and ratio.max() > 1.3
    # The aspect ratio is log-uniform: as many boxes wider than tall as taller than wide.
    assert abs(float((ratio > 1).double().mean()) - float((ratio < 1).double().mean())) < 0.05


def test_rotation_angles_span_the_range_and_the_fill_is_black():
    x = torch.zeros(200, 1, 33, 33, dtype=torch.uint8)
    x[:, :, 16, 26] = 255  # a dot 10 px right of the centre
    y = build_batch_transform(AugmentConfig(rotation=30), True, 33, (0.0,), (1.0,))(x, gen(0))[:, 0]
    ys, xs = torch.meshgrid(torch.arange(33.0), torch.arange(33.0), indexing="ij")
    mass = y.clamp(min=0)
    cy, cx = (mass * ys).sum((1, 2)) / mass.sum((1, 2)), (mass * xs).sum((1, 2)) / mass.sum((1, 2))
    angle = torch.rad2deg(torch.atan2(-(cy - 16), cx - 16))  # counter-clockwise positive
    assert angle.abs().max() <= 30.5 and angle.abs().max() > 27, "uniform in [-30, 30] degrees"
    assert (angle > 5).sum() > 50 and (angle < -5).sum() > 50, "both directions"
    white = torch.full((4, 1, 33, 33), 255, dtype=torch.uint8)
    turned = build_batch_transform(AugmentConfig(rotation=45), True, 33, (0.0,), (1.0,))(white, gen(3))
    assert turned[:, 0, 0, 0].max() < 0.6 and turned[:, 0, 16, 16].min() == pytest.approx(1.0), "black corners"


def test_scale_aspect_scales_within_its_range():
    x = torch.zeros(200, 1, 65, 65, dtype=torch.uint8)
    x[:, :, 32, 12] = x[:, :, 12, 32] = 255  # dots 20 px left of and above the centre
    aug = AugmentConfig(scale_aspect=(0.2, 0.0))
    y = build_batch_transform(aug, True, 65, (0.0,), (1.0,))(x, gen(0))[:, 0]
    xs = torch.arange(65.0)
    left = (y[:, 32, :40] * xs[:40]).sum(1) / y[:, 32, :40].sum(1)
    scale = (32 - left) / 20
    assert scale.min() >= 0.8 - 0.01 and scale.max() <= 1.2 + 0.01 and scale.min() < 0.83 and scale.max() > 1.17
    top = (y[:, :40, 32] * xs[:40]).sum(1) / y[:, :40, 32].sum(1)
    assert torch.allclose((32 - top) / 20, scale, atol=0.01), "aspect 0: the same scale on both axes"


def test_color_jitter_ranges_of_contrast_saturation_and_hue():
    g = torch.zeros(256, 3, 8, 8, dtype=torch.uint8)
    g[:, :, :, :4] = 80
    g[:, :, :, 4:] = 160  # two grey levels: contrast is their distance
    y = unnormalised(build_batch_transform(AugmentConfig(color_jitter=(0, 0.5, 0, 0)), True, 8, MEAN, STD)(g, gen(0)))
    factor = (y[:, 0, 0, 4] - y[:, 0, 0, 0]) / (80 / 255)
    assert factor.min() >= 0.5 - 1e-4 and factor.max() <= 1.5 + 1e-4 and factor.min() < 0.55 and factor.max() > 1.45
    mean = (y[:, 0, 0, 4] + y[:, 0, 0, 0]) / 2
    assert torch.allclose(mean, torch.full_like(mean, 120 / 255), atol=1e-4), "contrast keeps the mean grey"
    red = torch.zeros(256, 3, 8, 8, dtype=torch.uint8)
    red[:, 0], red[:, 1], red[:, 2] = 200, 100, 100
    y = unnormalised(build_batch_transform(AugmentConfig(color_jitter=(0, 0, 0.5, 0)), True, 8, MEAN, STD)(red, gen(0)))
    grey = (torch.tensor([200, 100, 100.0]) * torch.tensor([0.299, 0.587, 0.114])).sum() / 255
    factor = (y[:, 0, 0, 0] - grey) / (200 / 255 - grey)
    assert factor.min() >= 0.5 - 1e-4 and factor.max() <= 1.5 + 1e-4 and factor.min() < 0.55 and factor.max() > 1.45
    y = unnormalised(build_batch_transform(AugmentConfig(color_jitter=(0, 0, 0, 0.1)), True, 8, MEAN, STD)(red, gen(0)))
    # The hue angle of each output about the grey axis: within ±0.1 turn of red's, reaching nearly both ends.
    rgb = y[:, :, 0, 0] - y[:, :, 0, 0].mean(1, keepdim=True)
    u = (2 * rgb[:, 0] - rgb[:, 1] - rgb[:, 2]) / 2
    v = (rgb[:, 1] - rgb[:, 2]) * 3**0.5 / 2
    turns = torch.atan2(v, u) / (2 * np.pi)
    assert turns.abs().max() <= 0.1 + 1e-3 and turns.max() > 0.09 and turns.min() < -0.09


def test_noise_is_zero_mean_and_blur_has_the_stated_sigma():
    x = torch.full((8, 3, 32, 32), 128, dtype=torch.uint8)
    noisy = unnormalised(build_batch_transform(AugmentConfig(gaussian_noise=0.05), True, 32, MEAN, STD)(x, gen(0)))
    assert abs(float((noisy - 128 / 255).mean())) < 0.002
    impulse = torch.zeros(4, 1, 97, 97, dtype=torch.uint8)
    impulse[:, :, 48, 48] = 255
    aug = AugmentConfig(gaussian_blur=1.0, gaussian_blur_sigma=(1.0, 1.0))  # kernel 9 on 97 px: ±4 sigma
    y = build_batch_transform(aug, True, 97, (0.0,), (1.0,))(impulse, gen(0))[:, 0]
    assert torch.allclose(y.sum((1, 2)), torch.ones(4), atol=1e-4), "the kernel sums to 1"
    d2 = (torch.arange(97.0) - 48) ** 2
    var = (y.sum(1) * d2).sum(1)  # second moment along columns
    assert torch.allclose(var, torch.ones(4), atol=0.02), "variance sigma² = 1 px²"


def test_random_erasing_area_aspect_and_noise_value():
    x = torch.full((400, 3, 64, 64), 128, dtype=torch.uint8)
    y = build_batch_transform(AugmentConfig(random_erasing=1.0), True, 64, MEAN, STD)(x, gen(0))
    changed = (~torch.isclose(y, normalised(x), atol=1e-5)).any(1)
    rows, cols = changed.any(2).sum(1).double(), changed.any(1).sum(1).double()
    assert torch.equal(changed.sum((1, 2)).double(), rows * cols), "one rectangle"
    area, aspect = rows * cols / 64**2, rows / cols
    erased = area > 0
    assert erased.double().mean() > 0.95
    # Zhong et al.: area 2-40 % of the image, aspect 0.3-3.33 (up to rounding the sides to whole pixels).
    assert area[erased].min() >= 0.018 and area[erased].max() <= 0.41
    assert aspect[erased].min() >= 0.27 and aspect[erased].max() <= 3.7
    noise = unnormalised(y).permute(1, 0, 2, 3)[:, changed]  # (3, erased pixels): uniform in [0, 1]
    assert abs(float(noise.mean()) - 0.5) < 0.01 and abs(float(noise.std()) - 12**-0.5) < 0.01


def test_coarse_dropout_hole_count_and_size():
    x = torch.full((200, 3, 32, 32), 255, dtype=torch.uint8)
    y = build_batch_transform(AugmentConfig(coarse_dropout=4, coarse_dropout_size=0.25), True, 32, MEAN, STD)(x, gen(0))
    holes = (y == 0).all(1)
    area = holes.sum((1, 2))
    assert (area >= 1).all() and area.max() <= 4 * 8 * 8, "1-4 holes of side at most 0.25 · 32 = 8"
    assert area.max() > 100, "several holes in some images"
    rows_hit = holes.any(2).sum(1)
    assert rows_hit.max() <= 32 and (holes.any(1).sum(1) <= 4 * 8).all() and (rows_hit <= 4 * 8).all()


def test_pca_lighting_offsets_follow_the_eigenvectors_and_their_scale():
    x = torch.full((512, 3, 4, 4), 128, dtype=torch.uint8)
    y = unnormalised(build_batch_transform(AugmentConfig(pca_lighting=0.1), True, 4, MEAN, STD)(x, gen(0)))
    offset = (y[:, :, 0, 0] - 128 / 255).double()  # (N, 3)
    # E|offset|² = σ² Σ λ_i² (orthonormal eigenvectors); the first component dominates and is nearly grey.
    expected = 0.1**2 * (0.2175**2 + 0.0188**2 + 0.0045**2)
    assert float((offset**2).sum(1).mean()) == pytest.approx(expected, rel=0.15)
    principal = torch.linalg.svd(offset, full_matrices=False).Vh[0]
    assert float(principal.abs() @ torch.full((3,), 3**-0.5, dtype=torch.float64)) > 0.99


def test_the_transforms_module_names_the_same_objects():
    import imgcls.data.transforms as transforms
    from imgcls.data import augment

    assert transforms.AugmentConfig is augment.AugmentConfig
    assert transforms.build_batch_transform is augment.build_batch_transform
    assert all(getattr(transforms, name) is not None for name in transforms.__all__)
