"""read_image / load_for_eval on odd and broken files, all generated here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from tests.support import png_declaring

from imgcls.data.reader import ImageError, load_for_eval, read_image


def _halves(w: int, h: int) -> Image.Image:
    """Left half red, right half blue."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2, 0] = 255
    a[:, w // 2 :, 2] = 255
    return Image.fromarray(a)


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "rotated.png"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    _halves(4, 2).save(path, exif=exif.tobytes())
    im = read_image(path)
    assert im.size == (2, 4)
    a = np.asarray(im)
    assert (a[:2, :, 0] == 255).all() and (a[2:, :, 2] == 255).all()  # the left half went to the top


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 1000, 30000, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    im = read_image(path)
    assert im.mode == "L"
    assert np.asarray(im).tolist() == [[0, 4, 117, 255]]


def test_cmyk_becomes_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=95)
    im = read_image(path)
    assert im.mode == "RGB"
    r, g, b = np.asarray(im).reshape(-1, 3).mean(0)
    assert r > 240 and g < 15 and b < 15


def test_transparency_is_composited_on_white(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (0, 0, 0, 255)  # opaque black
    rgba[0, 1] = (0, 0, 0, 0)  # transparent
    rgba[1, :] = (0, 0, 0, 128)  # half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    a = np.asarray(read_image(tmp_path / "a.png"))
    assert a[0, 0].tolist() == [0, 0, 0] and a[0, 1].tolist() == [255, 255, 255]
    assert 120 <= a[1, 0, 0] <= 135

    la = Image.fromarray(np.array([[[50, 255], [50, 0]]], np.uint8), "LA")
    la.save(tmp_path / "la.png")
    im = read_image(tmp_path / "la.png")
    assert im.mode == "L" and np.asarray(im).tolist() == [[50, 255]]

    pal = Image.new("P", (2, 1))
    pal.putpalette([10, 20, 30, 200, 200, 200] + [0] * 762)
    pal.putdata([0, 1])
    pal.save(tmp_path / "p.png", transparency=1)
    a = np.asarray(read_image(tmp_path / "p.png"))
    assert a[0, 0].tolist() == [10, 20, 30] and a[0, 1].tolist() == [255, 255, 255]


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    r, _, b = np.asarray(read_image(tmp_path / "anim.gif")).reshape(-1, 3).mean(0)
    assert r > 200 and b < 50


def test_pixel_bomb_refused_from_header(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_declaring(20000, 20000))  # 400 MP declared in a file of a few dozen bytes
    assert path.stat().st_size < 200
    with pytest.raises(ImageError, match="too large") as info:
        read_image(path)
    assert info.value.path == str(path)


def test_pixel_limit_is_configurable(tmp_path):
    Image.new("RGB", (10, 10)).save(tmp_path / "x.png")
    with pytest.raises(ImageError, match="image too large"):
        read_image(tmp_path / "x.png", max_pixels=99)
    assert read_image(tmp_path / "x.png", max_pixels=100).size == (10, 10)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_text("hello, not a picture"), "not an image"),
        (lambda p: p.write_bytes(b"\xff" * 5000), "file too large"),
    ],
)
def test_broken_files_raise_with_reason(tmp_path, make, reason):
    path = tmp_path / "bad.jpg"
    make(path)
    with pytest.raises(ImageError, match=reason):
        read_image(path, max_file_bytes=4096)


def test_truncated_jpeg(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "cut.jpg"
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path, quality=90)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ImageError, match="truncated or corrupt"):
        read_image(path)


def test_load_for_eval_geometry_and_channels(tmp_path):
    _halves(40, 20).save(tmp_path / "wide.png")
    x = load_for_eval(tmp_path / "wide.png", size=8, resize=10, in_chans=3)
    assert x.shape == (3, 8, 8) and x.dtype == torch.uint8
    # shorter side 20 -> 10, long side 40 -> 20; center crop 8 keeps columns 6..13: red then blue
    assert x[0, :, 0].min() > 200 and x[2, :, -1].min() > 200
    gray = load_for_eval(tmp_path / "wide.png", size=8, resize=8, in_chans=1)
    assert gray.shape == (1, 8, 8)
    assert abs(int(gray[0, 0, 0]) - round(0.299 * 255)) <= 1  # ITU-R 601-2 luma of pure red

    Image.new("L", (12, 12), 77).save(tmp_path / "g.png")
    rgb = load_for_eval((tmp_path / "g.png").read_bytes(), size=12, resize=12, in_chans=3)
    assert rgb.shape == (3, 12, 12) and (rgb == 77).all()


def test_jpeg_draft_mode_matches_full_decode(tmp_path):
    yy, xx = np.mgrid[0:600, 0:800]
    smooth = np.stack([xx * 255 // 800, yy * 255 // 600, (xx + yy) * 255 // 1400], -1).astype(np.uint8)
    path = tmp_path / "big.jpg"
    Image.fromarray(smooth).save(path, quality=90)
    drafted = read_image(path, min_side=64)
    assert min(drafted.size) >= 64 and drafted.size[0] < 800  # decoded at a reduced scale
    fast = load_for_eval(path, size=64, resize=73, in_chans=3).float()
    from imgcls.data.reader import eval_view, pil_to_tensor

    full = pil_to_tensor(eval_view(read_image(path), 64, 73, 3)).float()
    assert (fast - full).abs().mean() < 3.0


def _thin_png(width: int, height: int) -> bytes:
    """A real, fully decodable grey PNG of `width` x `height` (zlib squeezes a constant image to a few KB)."""
    import struct
    import zlib

    row = b"\x00" + b"\x80" * width
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    out = b"\x89PNG\r\n\x1a\n"
    for kind, data in ((b"IHDR", ihdr), (b"IDAT", zlib.compress(row * height, 9)), (b"IEND", b"")):
        out += struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return out


def test_thin_image_is_refused_from_its_header(tmp_path):
    # Issue 19 class 2: 1 MP is under the pixel limit, but the resize of its short side to 256 makes it
    # 256 x 256,000,000. Refused before decoding, by the sides' ratio and by the size after the resize.
    path = tmp_path / "strip.png"
    path.write_bytes(_thin_png(1, 1_000_000))
    assert path.stat().st_size < 8192
    import tracemalloc

    tracemalloc.start()
    with pytest.raises(ImageError, match="too thin") as info:
        load_for_eval(path, size=224, resize=256, in_chans=3)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert info.value.path == str(path) and peak < 1 << 20  # nothing decoded, let alone resized
    with pytest.raises(ImageError, match="too large after resizing"):
        read_image(path, max_aspect=10**7, min_side=256)  # the second bound on its own
    path.write_bytes(_thin_png(10, 300))  # 30:1 is within the default 50:1 and decodes normally
    assert load_for_eval(path, size=8, resize=8, in_chans=1).shape == (1, 8, 8)
    from imgcls.data.reader import resize_shorter

    with pytest.raises(ImageError, match="too large after resizing"):  # a PIL image given directly (predict)
        resize_shorter(Image.new("L", (1, 1_000_000)), 256)


def test_jpeg_cut_inside_its_header_is_truncated_not_foreign(tmp_path):
    # Issue 11 item 12: a photo cut after 3 KB ends inside its EXIF block; it was "not an image".
    rng = np.random.default_rng(0)
    exif = Image.Exif()
    exif[0x010E] = "x" * 6000  # ImageDescription: a long EXIF block, as phones write (maker notes, thumbnails)
    path = tmp_path / "cut.jpg"
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path, quality=90, exif=exif.tobytes())
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(ImageError, match="truncated or corrupt JPEG image") as info:
        read_image(path)
    assert "not an image" not in info.value.reason
    (tmp_path / "text.jpg").write_text("plain text saved as .jpg")
    with pytest.raises(ImageError, match="not an image"):
        read_image(tmp_path / "text.jpg")


def test_hidden_means_a_leading_dot_with_a_name():
    from imgcls.data.reader import is_hidden, is_image_file

    assert is_hidden(".DS_Store") and is_hidden(".git") and not is_hidden("...") and not is_hidden("a.b")
    assert is_image_file("x.AVIF") and is_image_file("y.jp2") and is_image_file("z.JPG")
    assert not is_image_file(".x.png") and not is_image_file("notes.txt") and not is_image_file("d.h5")
