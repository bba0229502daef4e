"""Scenario 7: an image folder with broken files, generated here → the skipped count equals the broken count,
and the odd-but-valid files are decoded to the expected pixels.

Broken by construction (all must be skipped): an empty file, a JPEG and a PNG each truncated at 5 offsets
(10 truncations), text renamed ``.jpg``, HTML saved as ``.png``, two decompression bombs (a 70-byte PNG whose
header declares 400 MP, and a real 2-MP PNG of a few KB over ``data.max_pixels`` of 1 MP).

Bit flips: what counts as broken is decided by the decoder itself. A flipped bit in entropy-coded JPEG data
often still decodes (to wrong pixels; no reader can tell), so a bit-flipped file counts as broken exactly when
Pillow cannot fully decode it in strict mode (``LOAD_TRUNCATED_IMAGES`` off, the reader's setting). The test
computes that oracle per file and requires the reader to skip exactly those.

Readable odd files (none may be skipped): 16-bit grey PNG (grey levels kept: value / 257), CMYK JPEG,
palette PNG with a transparent index (composited on white), and EXIF orientations 1-8, whose stored pixels are
built from the EXIF specification's definition of each orientation so that the displayed picture is known.
"""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image
from tests.support import png_declaring

from imgcls.data import DataConfig, build_data
from imgcls.data.reader import read_image

pytestmark = pytest.mark.faults

MAX_PIXELS = 1_000_000


def _photo(rng: np.random.Generator, w: int = 40, h: int = 32) -> Image.Image:
    coarse = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    return coarse.resize((w, h), Image.BICUBIC)


def _encoded(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _strictly_decodable(data: bytes) -> bool:
    """The bit-flip oracle: Pillow opens and fully decodes the bytes, truncated images not tolerated."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
        return True
    except Exception:
        return False


# The displayed picture, a 4-colour 2x3 block pattern with no symmetry, at 8 px per block.
QUADRANTS = np.array(
    [[(230, 30, 30), (30, 200, 30), (30, 30, 230)], [(240, 240, 40), (40, 230, 230), (20, 20, 20)]], np.uint8
)
DISPLAYED = QUADRANTS.repeat(8, axis=0).repeat(8, axis=1)  # (16, 24, 3)

# EXIF 2.32, tag 0x0112: how the stored rows/columns relate to the displayed picture; `stored` undoes nothing,
# it is what a camera writes when it shows `DISPLAYED` with that tag.
EXIF_STORED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored horizontally
    3: lambda a: np.rot90(a, 2),  # rotated 180°
    4: lambda a: a[::-1],  # mirrored vertically
    5: lambda a: a.swapaxes(0, 1),  # mirrored about the main diagonal
    6: lambda a: np.rot90(a, 1),  # the viewer rotates 90° clockwise to display
    7: lambda a: np.rot90(a, 2).swapaxes(0, 1),  # mirrored about the anti-diagonal
    8: lambda a: np.rot90(a, -1),  # the viewer rotates 90° counter-clockwise to display
}


def _exif_jpeg(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = np.ascontiguousarray(EXIF_STORED[orientation](DISPLAYED))
    # 4:4:4 at quality 100 with colour blocks on the 8-px DCT grid: a few grey levels of error at most.
    return _encoded(Image.fromarray(stored), "JPEG", quality=100, subsampling=0, exif=exif.tobytes())


def _odd_files() -> dict[str, tuple[bytes, np.ndarray, int]]:
    """name -> (bytes, expected decoded pixels, tolerance in grey levels)."""
    odd = {}
    deep = (np.arange(16 * 16, dtype=np.uint32).reshape(16, 16) * 257).astype(np.uint16)  # 0, 257, ... 65535
    odd["deep16.png"] = (_encoded(Image.fromarray(deep), "PNG"), (deep // 257).astype(np.uint8), 0)
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in ink: no cyan, full magenta and yellow
    odd["cmyk.jpg"] = (_encoded(cmyk, "JPEG", quality=95), np.full((16, 16, 3), (255, 0, 0), np.uint8), 12)
    pal = Image.new("P", (4, 2))
    pal.putpalette([200, 10, 10, 10, 10, 200, 0, 0, 0] + [0] * 759)
    pal.putdata([0, 1, 2, 0, 2, 1, 0, 0])
    expected_pal = np.array(
        [[(200, 10, 10), (10, 10, 200), (255, 255, 255), (200, 10, 10)],
         [(255, 255, 255), (10, 10, 200), (200, 10, 10), (200, 10, 10)]], np.uint8,
    )  # fmt: skip
    odd["palette_alpha.png"] = (_encoded(pal, "PNG", transparency=2), expected_pal, 0)
    for k in range(1, 9):
        odd[f"exif{k}.jpg"] = (_exif_jpeg(k), DISPLAYED, 12)
    return odd


def _broken_files(rng: np.random.Generator, seed: int) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """(broken by construction, bit-flipped) files, name -> bytes."""
    jpeg = _encoded(_photo(rng, 96, 80), "JPEG", quality=90)
    png = _encoded(_photo(rng, 96, 80), "PNG")
    broken = {
        "empty.jpg": b"",
        "notes.jpg": b"shopping list: milk, eggs\n" * 8,
        "page.png": b"<!DOCTYPE html><html><body><img src='cat.png'></body></html>\n",
        "bomb_header.png": png_declaring(20000, 20000),
        "bomb_real.png": _encoded(Image.new("L", (2000, 1000)), "PNG"),
    }
    for i, frac in enumerate((0.1, 0.3, 0.5, 0.7, 0.9)):
        broken[f"cut{i}.jpg"] = jpeg[: int(len(jpeg) * frac)]
        broken[f"cut{i}.png"] = png[: int(len(png) * frac)]
    flips = random.Random(seed)
    flipped = {}
    for i in range(12):
        source = jpeg if i % 2 == 0 else png
        data = bytearray(source)
        for _ in range(1 + i % 3):
            pos = flips.randrange(20, len(data))  # past the signature: the file still says what it is
            data[pos] ^= 1 << flips.randrange(8)
        flipped[f"flip{i}.{'jpg' if i % 2 == 0 else 'png'}"] = bytes(data)
    return broken, flipped


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("broken") / "data"
    rng = np.random.default_rng(0)
    good = 0
    for split, count in (("train", 12), ("val", 4)):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                _photo(rng).save(root / split / cls / f"good{i}.jpg", quality=90)
                good += split == "train"
    broken, flipped = _broken_files(rng, seed=5)
    odd = _odd_files()
    for name, data in {**broken, **flipped}.items():
        (root / "train" / "cat" / name).write_bytes(data)
    for name, (data, _, _) in odd.items():
        (root / "train" / "dog" / name).write_bytes(data)
    undecodable = {name for name, data in flipped.items() if not _strictly_decodable(data)}
    expected = {str(root / "train" / "cat" / n) for n in [*broken, *undecodable]}
    return root, expected, good + len(odd) + len(flipped) - len(undecodable), odd


@pytest.mark.parametrize("cache", ["always", "never"])
def test_skipped_files_are_exactly_the_broken_ones(folder, tmp_path, cache, figure):
    root, expected, usable, _ = folder
    # Batches of one when streaming: an epoch then visits every file (a training epoch drops its last partial batch).
    batch = 8 if cache == "always" else 1
    cfg = DataConfig(batch, cache=cache, cache_dir=str(tmp_path / "cache"), max_pixels=MAX_PIXELS, workers=0)
    data = build_data(root, cfg, image_size=24, in_chans=3, seed=0)
    if cache == "never":  # streaming checks headers up front; truncation and corrupt data show while decoding
        data.train.set_epoch(0)
        seen = sum(len(y) for _, y in data.train.iterate())
        assert seen == len(data.train)
    skipped = {path for path, _ in data.issues}
    assert skipped == expected
    assert all(reason and "\n" not in reason for _, reason in data.issues)
    if cache == "always":
        assert data.train.num_samples == usable
    written = data.write_issues(tmp_path / "data_issues.csv").read_text().splitlines()
    assert written[0] == "path,reason" and len(written) == 1 + len(expected)
    figure(f"broken_files_{cache}", {"injected": len(expected), "skipped": len(skipped)})


def test_odd_formats_decode_to_the_expected_pixels(folder):
    root, _, _, odd = folder
    for name, (_, expected, tolerance) in odd.items():
        im = read_image(root / "train" / "dog" / name)
        got = np.asarray(im)
        assert got.shape == expected.shape, name
        diff = np.abs(got.astype(np.int16) - expected.astype(np.int16)).max()
        assert diff <= tolerance, (name, int(diff))
