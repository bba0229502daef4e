"""AutoAugment / RandAugment / TrivialAugment: the ops against PIL's, the policy tables, the batched policies."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from imgcls.data import autoaugment as aa


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n=6, size=24, seed=0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), generator=gen(seed), dtype=torch.uint8)


def pil_apply(x: torch.Tensor, fn) -> torch.Tensor:
    """Apply a PIL op to each image of a uint8 batch; back as float [0, 1]."""
    out = [np.asarray(fn(Image.fromarray(img.permute(1, 2, 0).numpy()))) for img in x]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255


def test_equalize_matches_pil_exactly():
    x = images()
    x[0] = x[0] // 4 + 100  # low contrast: equalisation must spread it
    ours = aa.equalize(x.float() / 255)
    assert torch.allclose(ours, pil_apply(x, ImageOps.equalize), atol=1e-6)
    assert ours[0].max() - ours[0].min() > 0.9


def test_solarize_posterize_invert_autocontrast_match_pil():
    x = images()
    f = x.float() / 255
    t = torch.full((6,), 128.0)
    assert torch.allclose(aa.solarize(f, t), pil_apply(x, lambda im: ImageOps.solarize(im, 128)), atol=1e-6)
    assert torch.allclose(aa.posterize(f, torch.full((6,), 3.0)), pil_apply(x, lambda im: ImageOps.posterize(im, 3)))
    assert torch.allclose(aa.invert(f), pil_apply(x, ImageOps.invert), atol=1e-6)
    narrow = x // 2 + 40
    ours = aa.auto_contrast(narrow.float() / 255)
    assert torch.allclose(ours, pil_apply(narrow, ImageOps.autocontrast), atol=1.01 / 255)


@pytest.mark.parametrize(
    "op,enhancer",
    [("Brightness", ImageEnhance.Brightness), ("Color", ImageEnhance.Color), ("Sharpness", ImageEnhance.Sharpness)],
)
def test_enhance_ops_match_pil(op, enhancer):
    x = images()
    factor = torch.tensor([0.1, 0.5, 1.0, 1.3, 1.6, 1.9])
    ours = aa._COLOR_OPS[op](x.float() / 255, factor)
    theirs = torch.stack(
        [pil_apply(x[i : i + 1], lambda im, f=float(factor[i]): enhancer(im).enhance(f))[0] for i in range(6)]
    )
    # PIL rounds to 8 bits (and the greyscale conversions differ in the last bit)
    assert (ours - theirs).abs().max() <= 3 / 255


def test_translate_shifts_by_whole_pixels_and_rotate_90_turns():
    x = images(n=2).float() / 255
    choice = torch.tensor([0, 0])
    out = aa.apply_ops(x, ("TranslateX",), choice, torch.tensor([3.0, -2.0]))
    assert torch.allclose(out[0, :, :, 3:], x[0, :, :, :-3], atol=1e-5)
    assert torch.allclose(out[0, :, :, :3], torch.full_like(out[0, :, :, :3], 0.5), atol=1e-5)  # grey fill
    assert torch.allclose(out[1, :, :, :-2], x[1, :, :, 2:], atol=1e-5)
    same = x[:1].repeat(2, 1, 1, 1)
    turned = aa.apply_ops(same, ("Rotate",), choice, torch.tensor([90.0, -90.0]))
    assert torch.allclose(turned[0], x[0].rot90(1, (1, 2)), atol=1e-4) or torch.allclose(
        turned[0], x[0].rot90(-1, (1, 2)), atol=1e-4
    ), "a 90-degree rotation is a quarter turn"
    assert torch.allclose(turned[0], turned[1].rot90(2, (1, 2)), atol=1e-4)


def test_negative_choice_leaves_images_untouched():
    x = images(n=3).float() / 255
    out = aa.apply_ops(x, ("Equalize", "Rotate"), torch.tensor([-1, 0, -1]), torch.tensor([0.0, 0.0, 30.0]))
    assert torch.equal(out[0], x[0]) and torch.equal(out[2], x[2]) and not torch.equal(out[1], x[1])


@pytest.mark.parametrize("name", list(aa.POLICIES))
def test_policy_tables_have_25_valid_subpolicies(name):
    table = aa.POLICIES[name]
    assert len(table) == 25
    for sub in table:
        assert len(sub) == 2
        for op, prob, level in sub:
            assert op in aa.AUTOAUGMENT_SPACE
            assert 0.0 <= prob <= 1.0
            assert level is None or 0 <= level <= 9
            assert (level is None) == (op in ("AutoContrast", "Equalize", "Invert"))


def test_magnitude_spaces_follow_the_papers_ranges():
    one = torch.tensor([1.0], dtype=torch.float64)
    assert aa.AUTOAUGMENT_SPACE["Rotate"][0](one, 32).item() == pytest.approx(30)
    assert aa.AUTOAUGMENT_SPACE["ShearX"][0](one, 32).item() == pytest.approx(0.3)
    assert aa.AUTOAUGMENT_SPACE["TranslateX"][0](one, 331).item() == pytest.approx(150)
    assert aa.AUTOAUGMENT_SPACE["Color"][0](one * 0, 32).item() == pytest.approx(0.1)
    assert aa.AUTOAUGMENT_SPACE["Posterize"][0](one, 32).item() == 4
    assert aa.AUTOAUGMENT_SPACE["Solarize"][0](one * 0, 32).item() == 256  # magnitude 0 inverts nothing
    assert aa.TRIVIALAUGMENT_SPACE["Rotate"][0](one, 32).item() == pytest.approx(135)
    assert aa.TRIVIALAUGMENT_SPACE["Posterize"][0](one, 32).item() == 2


@pytest.mark.parametrize(
    "policy",
    [
        aa.AutoAugment("imagenet"),
        aa.AutoAugment("cifar10"),
        aa.AutoAugment("svhn"),
        aa.RandAugment(2, 9),
        aa.TrivialAugment(),
    ],
)
def test_policies_are_seeded_per_image_and_stay_in_range(policy):
    x = images(n=24, size=32).float() / 255
    a, b, c = policy(x, gen(0)), policy(x, gen(0)), policy(x, gen(1))
    assert a.shape == x.shape and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    changed = (a - x).abs().flatten(1).amax(1) > 1e-6
    assert changed.sum() >= 6, "most images are changed"
    # ops are drawn per image: the changes differ from image to image
    deltas = (a - x).flatten(1).mean(1)
    assert deltas.unique().numel() > 6


def test_grey_images_go_through_every_op():
    x = torch.rand(len(aa.RANDOM_OPS), 1, 16, 16, generator=gen(0))
    out = aa.apply_ops(x, aa.RANDOM_OPS, torch.arange(len(aa.RANDOM_OPS)), torch.full((14,), 0.5))
    assert out.shape == x.shape and torch.isfinite(out).all()
