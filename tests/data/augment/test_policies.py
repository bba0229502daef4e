"""AutoAugment / RandAugment / TrivialAugment: the ops against PIL's, the policy tables, the batched policies."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from imgcls.data.augment import policies as aa

ENHANCE = ("Brightness", "Color", "Contrast", "Sharpness")
GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")
# Each space with its number of magnitude levels: AutoAugment levels 0–9 (its tables; 10 is the scale's top),
# RandAugment M in 0–10, TrivialAugment levels 0–30.
SPACES = {"autoaugment": (aa.AUTOAUGMENT_SPACE, 10), "randaugment": (aa.RANDAUGMENT_SPACE, 10)}
SPACES["trivialaugment"] = (aa.TRIVIALAUGMENT_SPACE, 30)
CIFAR_JPG = Path(__file__).resolve().parents[3].parent / "shared" / "datasets" / "cifar10-jpg.tar.gz"


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def natural_images(n=16, size=32, seed=0) -> torch.Tensor:
    """Float ``(N, 3, size, size)`` images with the statistics of photos: smooth regions at several scales, edges,
    correlated channels, mid-range levels with a spread, quantised to 8 bits. Nothing constant, nothing black."""
    g = gen(seed)
    field = torch.zeros(n, 3, size, size)
    for scale in (4, 8, 16):
        coarse = torch.rand(n, 1, scale, scale, generator=g).expand(n, 3, scale, scale) * 0.6
        coarse = coarse + torch.rand(n, 3, scale, scale, generator=g) * 0.4  # correlated channels
        field += torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    field /= 3
    y0, x0 = torch.randint(0, size // 2, (2, n), generator=g)
    for i in range(n):  # one bright-or-dark rectangle per image: a hard edge
        field[i, :, y0[i] : y0[i] + size // 3, x0[i] : x0[i] + size // 2] *= 0.4 + 1.2 * (i % 2)
    return (field.clamp(0, 1) * 0.85 + 0.08).mul(255).round().div(255)


def cifar_images(n=256) -> torch.Tensor:
    """The first ``n`` CIFAR-10 training photos of the shared JPEG archive, float ``(N, 3, 32, 32)``, or a skip."""
    if not CIFAR_JPG.is_file():
        pytest.skip(f"CIFAR-10 JPEG archive not found at {CIFAR_JPG}")
    out = []
    with tarfile.open(CIFAR_JPG, "r|gz") as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".jpg"):
                out.append(np.asarray(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")))
                if len(out) == n:
                    break
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous().float() / 255


def one_op(x: torch.Tensor, op: str, value: float) -> torch.Tensor:
    """``op`` with parameter ``value`` on every image of ``x``."""
    n = x.shape[0]
    return aa.apply_ops(x, (op,), torch.zeros(n, dtype=torch.long), torch.full((n,), float(value), dtype=torch.float64))


def at_level(x: torch.Tensor, space, op: str, frac: float, sign: float) -> torch.Tensor:
    """``op`` at magnitude fraction ``frac`` with ``sign``, through the space's mapping, on every image."""
    n, _, h, w = x.shape
    value = aa._values(
        (op,),
        torch.zeros(n, dtype=torch.long),
        torch.full((n,), float(frac), dtype=torch.float64),
        torch.full((n,), float(sign), dtype=torch.float64),
        space,
        h,
        w,
    )
    return aa.apply_ops(x, (op,), torch.zeros(n, dtype=torch.long), value)


def span(x: torch.Tensor) -> torch.Tensor:
    """Per image: brightest minus darkest value."""
    flat = x.flatten(1)
    return flat.amax(1) - flat.amin(1)


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


def _param(space, op, frac, sign=1.0, side=32):
    f = torch.tensor([float(frac)], dtype=torch.float64)
    return space[op].value(f, torch.tensor([float(sign)], dtype=torch.float64), side).item()


def test_magnitude_spaces_follow_the_papers_ranges():
    aas, ras, tas = aa.AUTOAUGMENT_SPACE, aa.RANDAUGMENT_SPACE, aa.TRIVIALAUGMENT_SPACE
    # AutoAugment Table 1 (RandAugment shares it): the largest magnitude, with its sign.
    for space in (aas, ras):
        assert _param(space, "Rotate", 1, -1) == pytest.approx(-30)
        assert _param(space, "ShearX", 1) == pytest.approx(0.3)
        assert _param(space, "TranslateX", 1, side=331) == 150
        assert _param(space, "TranslateY", 0.9, -1, side=32) == -13  # whole pixels, truncated: 13.05 -> 13
        assert _param(space, "Posterize", 1) == 4 and _param(space, "Posterize", 0) == 8
        assert _param(space, "Solarize", 0) == 256 and _param(space, "Solarize", 1) == 0
    # AutoAugment's enhance factors are unsigned: 0.1 + 1.8 level / 10, identity at level 5.
    for op in ENHANCE:
        assert _param(aas, op, 0, -1) == pytest.approx(0.1) and _param(aas, op, 1, -1) == pytest.approx(1.9)
        assert _param(aas, op, 0.5, -1) == pytest.approx(1.0)
        # RandAugment: 1 ± 0.9 M / 10; TrivialAugment wide: 1 ± 0.99 level / 30.
        assert _param(ras, op, 0, -1) == 1.0 and _param(ras, op, 1, -1) == pytest.approx(0.1)
        assert _param(ras, op, 1, 1) == pytest.approx(1.9)
        assert _param(tas, op, 0, -1) == 1.0 and _param(tas, op, 1, -1) == pytest.approx(0.01)
        assert _param(tas, op, 1, 1) == pytest.approx(1.99)
    # TrivialAugment Table 1, wide: shear 0.99, translate 32 px, rotate 135°, posterize 2–8 bits.
    assert _param(tas, "Rotate", 1) == pytest.approx(135)
    assert _param(tas, "ShearY", 1, -1) == pytest.approx(-0.99)
    assert _param(tas, "TranslateX", 1, side=224) == 32 and _param(tas, "TranslateX", 29 / 30) == 30
    assert _param(tas, "Posterize", 1) == 2 and _param(tas, "Posterize", 0) == 8
    assert _param(tas, "Solarize", 1) == 0 and _param(tas, "Solarize", 0) == 256


def test_random_ops_are_the_papers_fourteen():
    # RandAugment §3 lists these 14; TrivialAugment wide uses the same set.
    assert set(aa.RANDOM_OPS) == {
        "Identity", "AutoContrast", "Equalize", "Rotate", "Solarize", "Color", "Posterize", "Contrast",
        "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY",
    }  # fmt: skip
    assert len(aa.RANDOM_OPS) == 14


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


# ------------------------------------------------------------------------------------------- every op of every policy


def luma(x: torch.Tensor) -> torch.Tensor:
    return (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1)


# Per image, the statistic each enhance op's name says it raises above factor 1 and lowers below it.
STATISTIC = {
    "Brightness": lambda x: x.mean((1, 2, 3)),
    "Contrast": lambda x: luma(x).flatten(1).std(1),
    "Color": lambda x: (x - luma(x)[:, None]).abs().mean((1, 2, 3)),  # distance from grey: saturation
    "Sharpness": lambda x: (x[..., 1:-1, 1:-1] * 4 - x[..., :-2, 1:-1] - x[..., 2:, 1:-1] - x[..., 1:-1, :-2]
                            - x[..., 1:-1, 2:]).abs().mean((1, 2, 3)),  # Laplacian energy: detail
}  # fmt: skip


@pytest.mark.parametrize("space_name", ["randaugment", "trivialaugment"])
def test_every_op_at_magnitude_zero_is_the_identity(space_name):
    space, _ = SPACES[space_name]
    x = natural_images()
    for op in aa.RANDOM_OPS:
        if op in ("AutoContrast", "Equalize"):
            continue  # no magnitude: checked on known images below
        for sign in (1.0, -1.0):
            assert torch.allclose(at_level(x, space, op, 0.0, sign), x, atol=1e-5), f"{op} at magnitude 0"


def test_autoaugment_magnitude_zero_and_the_enhance_neutral_level():
    x = natural_images()
    space = aa.AUTOAUGMENT_SPACE
    for op in (*GEOMETRIC, "Posterize", "Solarize"):
        for sign in (1.0, -1.0):
            assert torch.allclose(at_level(x, space, op, 0.0, sign), x, atol=1e-5), f"{op} at level 0"
    for op in ENHANCE:
        # The paper's factor 0.1 + 1.8 · level / 10: level 5 is the identity, level 0 the factor 0.1.
        assert torch.allclose(at_level(x, space, op, 0.5, -1.0), x, atol=1e-5), f"{op} at level 5"
        assert torch.allclose(at_level(x, space, op, 0.0, 1.0), one_op(x, op, 0.1), atol=1e-6)


@pytest.mark.parametrize("op", ENHANCE)
@pytest.mark.parametrize("space_name", ["autoaugment", "randaugment", "trivialaugment"])
def test_enhance_ops_move_their_statistic_the_way_the_name_says(space_name, op):
    space, _ = SPACES[space_name]
    x = natural_images()
    stat = STATISTIC[op]
    before = stat(x)
    for frac in (0.3, 0.6, 0.9):
        if space_name == "autoaugment":  # unsigned: above level 5 raises, below lowers
            up, down = at_level(x, space, op, 0.5 + frac / 2, 1.0), at_level(x, space, op, 0.5 - frac / 2, 1.0)
        else:
            up, down = at_level(x, space, op, frac, 1.0), at_level(x, space, op, frac, -1.0)
        assert (stat(up) > before).all(), f"{op} + raises it, for every image (f={frac})"
        assert (stat(down) < before).all(), f"{op} - lowers it, for every image (f={frac})"


def test_geometric_ops_move_content_the_stated_way():
    x = torch.zeros(1, 3, 33, 33)
    x[..., 16, 20] = 1.0  # a dot 4 px right of the centre
    # Rotate +90: counter-clockwise, the dot goes 4 px above the centre; -90: below.
    assert one_op(x, "Rotate", 90.0)[0, 0, 12, 16] == pytest.approx(1.0, abs=1e-4)
    assert one_op(x, "Rotate", -90.0)[0, 0, 20, 16] == pytest.approx(1.0, abs=1e-4)
    assert torch.allclose(one_op(natural_images(2, 32), "Rotate", 90.0), natural_images(2, 32).rot90(1, (2, 3)))
    # Rotate +30: the dot moves up (counter-clockwise) and stays 4 px from the centre.
    out = one_op(x, "Rotate", 30.0)[0, 0]
    ys, xs = torch.meshgrid(torch.arange(33.0), torch.arange(33.0), indexing="ij")
    out = torch.where((ys - 16) ** 2 + (xs - 16) ** 2 < 100, out, 0)  # inside the disc no fill reaches
    cy, cx = (out * ys).sum() / out.sum(), (out * xs).sum() / out.sum()
    assert float(cy) == pytest.approx(16 - 4 * np.sin(np.radians(30)), abs=0.05)
    assert float(cx) == pytest.approx(16 + 4 * np.cos(np.radians(30)), abs=0.05)
    # Translate +3: content moves right / down by 3 px.
    assert one_op(x, "TranslateX", 3.0)[0, 0, 16, 23] == 1.0 and one_op(x, "TranslateX", -3.0)[0, 0, 16, 17] == 1.0
    assert one_op(x, "TranslateY", 3.0)[0, 0, 19, 20] == 1.0
    # ShearX +0.5 (PIL's (1, s, 0, 0, 1, 0) about the centre): a vertical line's bottom goes left, its top right.
    line = torch.zeros(1, 3, 33, 33)
    line[..., 16] = 1.0
    sheared = one_op(line, "ShearX", 0.5)[0, 0]
    assert sheared[32, 8] == pytest.approx(1.0) and sheared[0, 24] == pytest.approx(1.0)
    assert sheared[16, 16] == pytest.approx(1.0), "the centre stays"
    # ShearY +0.5: a horizontal line's right end goes up, its left end down.
    sheared = one_op(line.transpose(2, 3), "ShearY", 0.5)[0, 0]
    assert sheared[8, 32] == pytest.approx(1.0) and sheared[24, 0] == pytest.approx(1.0)


def test_pixel_ops_on_known_images():
    ramp = torch.arange(256.0).view(1, 1, 16, 16).expand(1, 3, 16, 16) / 255  # every grey level once
    levels = torch.arange(256.0).view(16, 16)
    out = one_op(ramp, "Solarize", 128.0)[0, 0] * 255
    assert torch.allclose(out, torch.where(levels >= 128, 255 - levels, levels), atol=1e-4)
    assert torch.equal(one_op(ramp, "Solarize", 256.0), ramp), "threshold 256 inverts nothing"
    assert torch.allclose(one_op(ramp, "Solarize", 0.0), 1 - ramp), "threshold 0 inverts everything"
    out = one_op(ramp, "Posterize", 2.0)[0, 0] * 255
    assert torch.allclose(out, torch.div(levels, 64, rounding_mode="floor") * 64, atol=1e-4)
    assert torch.allclose(one_op(ramp, "Invert", 0.0), 1 - ramp)
    narrow = ramp * 0.25 + 0.5  # levels 127.5..191.25
    out = one_op(narrow, "AutoContrast", 0.0)
    assert out.min() == 0 and out.max() == 1 and torch.allclose(out, ramp, atol=1e-6)
    assert torch.allclose(one_op(ramp, "AutoContrast", 0.0), ramp), "a full-range image is left as it is"
    # Equalize spreads a low-contrast image over the whole range; a flat histogram is left as it is.
    big = torch.arange(4096.0).view(1, 1, 64, 64).expand(1, 3, 64, 64)
    narrow = torch.div(big, 128, rounding_mode="floor").add(100).div(255)  # 32 levels 100..131, 128 px each
    out = one_op(narrow, "Equalize", 0.0)
    assert out.min() == 0 and out.max() > 0.95 and out.unique().numel() >= 30
    assert torch.allclose(one_op(ramp, "Equalize", 0.0), ramp, atol=1e-6)


@pytest.mark.parametrize("space_name", ["autoaugment", "randaugment", "trivialaugment"])
def test_no_op_at_any_magnitude_gives_a_constant_image(space_name):
    space, levels = SPACES[space_name]
    x = natural_images(n=8)
    # Every level with both signs at once: image i of copy k gets level k // 2 and sign ±1 (k even / odd).
    copies = 2 * (levels + 1)
    batch = x.repeat(copies, 1, 1, 1)
    level = torch.arange(copies).repeat_interleave(8) // 2
    sign = 1.0 - 2.0 * (torch.arange(copies).repeat_interleave(8) % 2).double()
    choice = torch.zeros(batch.shape[0], dtype=torch.long)
    for op in (*aa.RANDOM_OPS, "Invert") if space_name == "autoaugment" else aa.RANDOM_OPS:
        value = aa._values((op,), choice, level.double() / levels, sign, space, 32, 32)
        out = aa.apply_ops(batch, (op,), choice, value)
        blank = op.startswith("Translate") & (value.abs() >= 32)
        # TrivialAugment's absolute 32-px range moves a 32-px image out entirely at its top level: the grey fill.
        assert not blank.any() or space_name == "trivialaugment"
        assert torch.allclose(out[blank], torch.full_like(out[blank], 0.5), atol=1e-6)
        constant = span(out[~blank]) < 1 / 255
        assert not constant.any(), f"{op} at level {level[~blank][constant].tolist()} gives a constant image"


def _policies():
    return {
        "autoaugment-imagenet": aa.AutoAugment("imagenet"),
        "autoaugment-cifar10": aa.AutoAugment("cifar10"),
        "autoaugment-svhn": aa.AutoAugment("svhn"),
        "randaugment-2,9": aa.RandAugment(2, 9),
        "randaugment-1,10": aa.RandAugment(1, 10),
        "trivialaugment": aa.TrivialAugment(),
    }


def _black_and_constant(policy, x: torch.Tensor, seeds=range(2)) -> tuple[float, float]:
    black = constant = 0
    for seed in seeds:
        out = policy(x, gen(seed))
        black += int((out.flatten(1).amax(1) < 0.5 / 255).sum())
        constant += int((span(out) < 0.5 / 255).sum())
    total = x.shape[0] * len(seeds)
    return black / total, constant / total


def test_policies_give_no_black_images():
    x = natural_images(n=256)
    for name, policy in _policies().items():
        black, constant = _black_and_constant(policy, x)
        assert black == 0, f"{name}: {black:.1%} of the outputs are black"
        # TrivialAugment only: a 32-px translation of a 32-px image, 2 ops in 14 × 1 level in 31 = 0.46 %.
        assert constant == 0 or (name == "trivialaugment" and constant < 0.015), f"{name}: {constant:.1%} constant"


def test_policies_give_no_black_cifar_photos():
    x = cifar_images(256)
    for name, policy in _policies().items():
        black, constant = _black_and_constant(policy, x)
        assert black == 0, f"{name}: {black:.1%} of the outputs are black"
        assert constant == 0 or (name == "trivialaugment" and constant < 0.015), f"{name}: {constant:.1%} constant"


# ---------------------------------------------------------------------------------------------- against torchvision


def _torchvision():
    """torchvision's v2 functional ops and its AutoAugment class, or a skip (it is not a dependency of imgcls)."""
    try:
        from torchvision.transforms import AutoAugment, AutoAugmentPolicy, InterpolationMode
        from torchvision.transforms.v2 import functional
    except Exception as exc:  # not installed, or built for another torch (then it fails with other errors)
        pytest.skip(f"torchvision not importable: {exc!r}"[:200])
    return functional, AutoAugment, AutoAugmentPolicy, InterpolationMode


def _full_coverage(op: str, value: float, size: int) -> torch.Tensor:
    """Pixels whose 3 × 3 neighbourhood the warp fills from inside the source (no fill blends in)."""
    from kornia.geometry.transform import warp_affine

    m = aa._affine_matrices([op], torch.tensor([value]), size, size).float()
    ones = warp_affine(torch.ones(1, 1, size, size), m, (size, size), padding_mode="zeros", align_corners=True)
    return (-torch.nn.functional.max_pool2d(-ones, 3, 1, 1) > 0.999)[0, 0]


def test_ops_match_torchvision_on_the_same_parameters():
    import math

    tv, *_, mode = _torchvision()
    x = natural_images(n=32)
    u8 = (x * 255).round().to(torch.uint8)
    bilinear = mode.BILINEAR
    pixel = {  # op -> [(our parameter, torchvision's result)], on 8-bit images: exact
        "Posterize": [(b, tv.posterize(u8, b)) for b in (2, 4, 6)],
        "Solarize": [(t, tv.solarize(u8, t)) for t in (26, 128, 230)],
        "Equalize": [(0, tv.equalize(u8))],
        "Invert": [(0, tv.invert(u8))],
        "AutoContrast": [(0, tv.autocontrast(u8))],  # torchvision rounds its result to 8 bits
    }
    worst = {}
    for op, cases in pixel.items():
        for value, theirs in cases:
            diff = (one_op(x, op, value) - theirs.float() / 255).abs().max().item() * 255
            worst[op] = max(worst.get(op, 0.0), diff)
    enhance = {"Brightness": tv.adjust_brightness, "Color": tv.adjust_saturation}
    enhance |= {"Contrast": tv.adjust_contrast, "Sharpness": tv.adjust_sharpness}
    for op, fn in enhance.items():
        for factor in (0.01, 0.19, 0.6, 1.4, 1.81, 1.99):
            diff = (one_op(x, op, factor) - fn(x, factor)).abs().max().item() * 255
            worst[op] = max(worst.get(op, 0.0), diff)
    geometric = {
        "Rotate": lambda v: tv.rotate(x, v, interpolation=bilinear, fill=[0.5]),
        "TranslateX": lambda v: tv.affine(x, 0.0, [int(v), 0], 1.0, [0.0, 0.0], bilinear, fill=[0.5]),
        "TranslateY": lambda v: tv.affine(x, 0.0, [0, int(v)], 1.0, [0.0, 0.0], bilinear, fill=[0.5]),
        # About the image centre (torchvision's default centre; its policies shear about the corner).
        "ShearX": lambda v: tv.affine(x, 0.0, [0, 0], 1.0, [math.degrees(math.atan(v)), 0.0], bilinear, fill=[0.5]),
        "ShearY": lambda v: tv.affine(x, 0.0, [0, 0], 1.0, [0.0, math.degrees(math.atan(v))], bilinear, fill=[0.5]),
    }
    values = {"Rotate": (30.0, -12.0, 135.0), "ShearX": (0.3, -0.99), "ShearY": (-0.3, 0.99)}
    values |= {"TranslateX": (5.0, -13.0), "TranslateY": (-5.0, 13.0)}
    for op, fn in geometric.items():
        for value in values[op]:
            ours, inside = one_op(x, op, value), _full_coverage(op, value, 32)
            diff = (ours - fn(value)).abs()[..., inside].max().item() * 255
            worst[op] = max(worst.get(op, 0.0), diff)
            # The sign means the same: the opposite sign is far from ours.
            assert (ours - fn(-value)).abs()[..., inside].mean() * 255 > 5, f"{op} {value}: sign"
    print("max abs difference from torchvision, in grey levels:", {k: round(v, 4) for k, v in worst.items()})
    for op, diff in worst.items():
        limit = 1.0 + 1e-3 if op == "AutoContrast" else 0.05  # luma 0.2989 vs 0.299: 0.02 levels at most
        assert diff <= limit, f"{op}: {diff:.3f} grey levels from torchvision"


def test_autoaugment_tables_are_torchvisions():
    _, tv_autoaugment, policy, _ = _torchvision()
    for name, tv_name in (("imagenet", "IMAGENET"), ("cifar10", "CIFAR10"), ("svhn", "SVHN")):
        theirs = tv_autoaugment(getattr(policy, tv_name))._get_policies(getattr(policy, tv_name))
        assert [tuple(tuple(op) for op in sub) for sub in theirs] == [tuple(sub) for sub in aa.POLICIES[name]]
