"""Decode one image file into a well-defined PIL image, or say precisely why it cannot be used.

What `read_image` does, in order, and why:

1. Refuses empty files and files over ``max_file_bytes`` before opening them.
2. Opens lazily (header only) and checks width × height against ``max_pixels`` *before* decoding: Pillow's own
   decompression-bomb guard only warns below about 179 MP, and a 48 KB PNG can declare 400 MP. The ratio of the
   sides is bounded too (``max_aspect``), and so is the size *after* the resize of the shorter side to the
   caller's ``min_side``: a 4 KB 1×1,000,000 PNG is 1 MP, but 256 × 256,000,000 once resized. A file that fails
   to open but starts with an image signature is reported as truncated, not as "not an image".
3. Animated images (GIF, WebP, APNG, multi-page TIFF) use their first frame.
4. For JPEG, when the caller will downscale anyway, asks the decoder for a 1/2, 1/4 or 1/8 scale (draft mode):
   the DCT is simply not computed at full size, which is several times faster on photos.
5. Applies the EXIF orientation (`ImageOps.exif_transpose`); Pillow does not rotate by itself, and phone
   pictures are often stored sideways.
6. Converts every mode deliberately to ``"RGB"`` or ``"L"``:

   * 16-bit and 32-bit integer grayscale (``I;16*``, ``I``) is *scaled* to 8 bit (value / 257, rounded): a plain
     ``convert("RGB")`` clips almost every pixel of a 16-bit PNG to 255. Float (``F``) images are taken as
     [0, 1] when their maximum is at most 1, else as [0, 255].
   * Transparency (``RGBA``, ``LA``, ``PA``, palette with a transparent index) is composited on a **white**
     background, the way a viewer shows it and the way documents and product photos are made.
   * ``CMYK``, ``YCbCr``, ``LAB``, ``HSV`` and palette images become ``RGB``; 1-bit images become ``L``.
7. A truncated or otherwise undecodable file raises `ImageError` with the reason; nothing here calls
   ``ImageFile.LOAD_TRUNCATED_IMAGES`` (a global that would silently train on grey half-images).

`load_for_eval` is the single preprocessing of predict, serve and the validation split.
"""

from __future__ import annotations

import io
import math
import os
import struct
import warnings
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
from PIL import Image, ImageOps

from imgcls.errors import UserError

if TYPE_CHECKING:  # predict's PyTorch-free path (imgcls.inference.fastpath) reads images through this module
    import torch

BACKGROUND = 255  # white, for compositing transparent pixels
DEFAULT_MAX_PIXELS = 100_000_000
DEFAULT_MAX_FILE_BYTES = 200 << 20
# Longest side over shortest side. Panoramas reach about 10:1; beyond this a picture is a strip whose resize to the
# short side would multiply it (a 4 KB 1x1,000,000 PNG would become 256 x 256,000,000 pixels).
DEFAULT_MAX_ASPECT = 50.0
_ORIENTATION = 0x0112  # the EXIF orientation tag

Source = str | os.PathLike | bytes | BinaryIO


class ImageError(UserError):
    """A file that cannot be used as an image: ``path`` and a short ``reason`` (listed in data_issues.csv)."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


# Pillow formats that it can identify but not decode into pixels here (stubs needing an outside handler, or
# vector/document formats needing Ghostscript or Windows): files of these are not taken for images.
_NOT_DECODED = frozenset({"BUFR", "GRIB", "HDF5", "MPEG", "WMF", "EPS", "IPTC"})


def _decodable_extensions() -> frozenset[str]:
    Image.init()
    registered = Image.registered_extensions().items()
    return frozenset(e for e, fmt in registered if fmt in Image.OPEN and fmt not in _NOT_DECODED)


# Every extension of a format this Pillow decodes (JPEG, PNG, GIF, BMP, WebP, TIFF, AVIF, JPEG 2000, ...): a
# folder accepts what `predict` accepts for a file.
IMAGE_EXTENSIONS = _decodable_extensions()

# Leading bytes of the common formats: a file that starts like an image but cannot be parsed is damaged, not
# "not an image" (a JPEG cut after its first 3 KB often ends inside its EXIF block, before the frame header).
_SIGNATURES = (
    (0, b"\xff\xd8\xff", "JPEG"),
    (0, b"\x89PNG\r\n\x1a\n", "PNG"),
    (0, b"GIF87a", "GIF"),
    (0, b"GIF89a", "GIF"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (8, b"WEBP", "WebP"),
    (4, b"ftypavi", "AVIF"),
    (0, b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (0, b"\xff\x4f\xff\x51", "JPEG 2000"),
    (0, b"BM", "BMP"),
)


def is_hidden(name: str) -> bool:
    """A dot file or dot folder (``.DS_Store``, ``.git``); a name made only of dots (``...``) is an ordinary name."""
    return name.startswith(".") and bool(name.strip("."))


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether `path` has the extension of a format Pillow decodes (case-insensitive) and is not hidden."""
    name = os.path.basename(path)
    return not is_hidden(name) and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def sniff_format(head: bytes) -> str | None:
    """The format whose signature `head` (the first 16 bytes or more) starts with, or None."""
    for offset, magic, name in _SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            return name
    return None


def _head(src, fp) -> bytes:
    """The first 16 bytes of the source, leaving a file object where it was."""
    if isinstance(src, bytes):
        return src[:16]
    try:
        if isinstance(src, (str, os.PathLike)):
            with open(src, "rb") as f:
                return f.read(16)
        pos = fp.tell()
        head = fp.read(16)
        fp.seek(pos)
        return head
    except (OSError, AttributeError, ValueError):
        return b""


def _name_of(src: Source) -> str:
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    return getattr(src, "name", "<bytes>") if not isinstance(src, bytes) else "<bytes>"


def open_image(
    src: Source,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    max_aspect: float = DEFAULT_MAX_ASPECT,
):
    """Open lazily and validate size limits from the header; nothing is decoded yet.

    Args:
        src: path, bytes or binary file object.
        max_pixels: largest width × height.
        max_file_bytes: largest file.
        max_aspect: largest ratio of the longer to the shorter side.

    Returns:
        The lazily opened ``PIL.Image`` (its file stays open until loaded or closed).

    Raises:
        ImageError: empty, too large (bytes or pixels), too thin, damaged header, or not an image.
    """
    name = _name_of(src)
    if isinstance(src, bytes):
        nbytes, fp = len(src), io.BytesIO(src)
    elif isinstance(src, (str, os.PathLike)):
        try:
            nbytes = os.path.getsize(src)
        except OSError as exc:
            raise ImageError(name, f"cannot read file ({exc.strerror or exc})") from None
        fp = src
    else:
        fp, nbytes = src, None
    if nbytes == 0:
        raise ImageError(name, "empty file (0 bytes)")
    if nbytes is not None and nbytes > max_file_bytes:
        raise ImageError(name, f"file too large ({nbytes / 2**20:.1f} MiB > {max_file_bytes / 2**20:.1f} MiB limit)")
    try:
        with warnings.catch_warnings():
            # We check the pixel count ourselves just below, against our own limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(fp)
    except Image.DecompressionBombError:
        raise ImageError(name, "image too large (declares more pixels than Pillow will open)") from None
    except MemoryError:
        raise
    except Exception as exc:
        # Pillow's format plugins parse untrusted headers and raise what their parsing trips on (OSError,
        # SyntaxError, ValueError, but also IndexError, struct.error, TypeError...): all mean "not a usable image".
        kind = sniff_format(_head(src, fp))
        if kind is not None:
            reason = f"truncated or corrupt {kind} image (header unreadable: {type(exc).__name__})"
            raise ImageError(name, reason) from None
        raise ImageError(name, f"not an image or unsupported format ({type(exc).__name__})") from None
    w, h = im.size
    if w < 1 or h < 1:
        im.close()
        raise ImageError(name, f"image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        im.close()
        raise ImageError(name, f"image too large ({w}x{h} = {w * h / 1e6:.0f} MP > {max_pixels / 1e6:.0f} MP limit)")
    if max(w, h) > max_aspect * min(w, h):
        im.close()
        raise ImageError(name, f"image too thin ({w}x{h}: sides more than {max_aspect:g}:1 apart)")
    return im


def read_image(
    src: Source,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    max_aspect: float = DEFAULT_MAX_ASPECT,
    min_side: int | None = None,
) -> Image.Image:
    """Decode an image file (path, bytes or binary file object) to an ``"RGB"`` or ``"L"`` PIL image.

    Args:
        src: the image.
        max_pixels: refuse images whose header declares more pixels than this, or that would have more once
            their shorter side is resized to `min_side`.
        max_file_bytes: refuse files larger than this.
        max_aspect: refuse images whose longer side exceeds this many times the shorter one.
        min_side: the caller will resize the shorter side to this; JPEG may then be decoded at a reduced
            scale whose shorter side is still at least `min_side` (draft mode).

    Returns:
        A loaded image in mode ``"RGB"`` or ``"L"`` with the EXIF orientation applied.

    Raises:
        ImageError: the file is empty, too large (before or after the resize), too thin, not an image,
            truncated or corrupt. All size checks use the header: nothing is decoded for a refusal.
    """
    im = open_image(src, max_pixels=max_pixels, max_file_bytes=max_file_bytes, max_aspect=max_aspect)
    if min_side:
        try:
            check_resized(_name_of(src), *im.size, min_side, max_pixels)
        except ImageError:
            im.close()
            raise
    return decode_image(im, _name_of(src), min_side=min_side)


def resized_size(width: int, height: int, side: int) -> tuple[int, int]:
    """``(width, height)`` after `resize_shorter` to `side` (long side rounded, never below `side`)."""
    if width <= height:
        return side, max(side, round(height * side / width))
    return max(side, round(width * side / height)), side


def check_resized(name: str, width: int, height: int, side: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Refuse an image whose resize of the shorter side to `side` would exceed `max_pixels` (a thin image grows
    by the ratio of its sides: the limit on the source alone does not bound the work)."""
    w, h = resized_size(width, height, side)
    if w * h > max_pixels:
        raise ImageError(
            name,
            f"image too large after resizing ({width}x{height} -> {w}x{h} = {w * h / 1e6:.0f} MP > "
            f"{max_pixels / 1e6:.0f} MP limit)",
        )


def decode_image(im: Image.Image, name: str, *, min_side: int | None = None) -> Image.Image:
    """Decode an image that `open_image` returned, as `read_image` does (steps 3 to 7 of the module docstring).

    For callers that need the header (size, EXIF) before choosing `min_side`: the file is opened only once.

    Args:
        im: the lazily opened image; it is consumed (decoded and its file closed).
        name: the file's name for error messages.
        min_side: as in `read_image`.

    Returns:
        A loaded image in mode ``"RGB"`` or ``"L"`` with the EXIF orientation applied.

    Raises:
        ImageError: the file is truncated or corrupt.
    """
    try:
        # Counting frames parses the whole file (GIF, APNG): it is decoding, and fails like decoding.
        if getattr(im, "n_frames", 1) > 1:
            im.seek(0)
        if min_side and im.format == "JPEG" and min(im.size) > 2 * min_side:
            w, h = im.size
            s = min_side / min(w, h)
            # draft() keeps both sides >= the request, so the shorter side stays >= min_side.
            im.draft(im.mode if im.mode in ("RGB", "L") else None, (math.ceil(w * s), math.ceil(h * s)))
        im.load()
        if im.getexif().get(_ORIENTATION, 1) != 1:
            # Only when there is something to do: exif_transpose copies the whole image even then.
            im = ImageOps.exif_transpose(im) or im
        return to_standard_mode(im)
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise ImageError(name, "image too large (decompression bomb)") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        reason = str(exc).split("\n")[0] or type(exc).__name__
        raise ImageError(name, f"truncated or corrupt image ({reason})") from None
    except MemoryError:
        raise
    except Exception as exc:
        # A damaged file can trip any exception inside a decoder plugin (IndexError in GIF frame counting,
        # KeyError/TypeError in EXIF parsing...): that is the file's fault, reported per file like the above.
        raise ImageError(name, f"corrupt image ({type(exc).__name__} while decoding)") from None


def _composite_on_white(im: Image.Image) -> Image.Image:
    """RGBA or LA on a white background: out = alpha · colour + (1 − alpha) · 255."""
    gray = im.mode in ("LA", "La")
    im = im.convert("LA" if gray else "RGBA")
    background = Image.new(im.mode, im.size, (BACKGROUND, 255) if gray else (BACKGROUND,) * 3 + (255,))
    return Image.alpha_composite(background.convert("RGBA"), im.convert("RGBA")).convert("L" if gray else "RGB")


def to_standard_mode(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to ``"RGB"`` or ``"L"`` as the module docstring describes (step 6).

    Files go through it inside `read_image`; callers holding a decoded PIL image (predict, serve) use it directly
    so odd modes (alpha, 16-bit, CMYK, palette) convert exactly as they do for files.
    """
    mode = im.mode
    if mode in ("RGB", "L"):
        return im
    if mode == "1":
        return im.convert("L")
    if mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        return _composite_on_white(im)
    if mode == "P":
        if "transparency" in im.info:
            return _composite_on_white(im.convert("RGBA"))
        return im.convert("RGB")
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(im).astype(np.int64)
        # Integer grayscale is 16-bit in practice (PNG, TIFF); scale [0, 65535] -> [0, 255] instead of clipping.
        a = np.clip(a, 0, 65535)
        return Image.fromarray(((a + 128) // 257).astype(np.uint8), "L")
    if mode == "F":
        a = np.asarray(im, dtype=np.float64)
        scale = 255.0 if np.nanmax(a, initial=0.0) <= 1.0 else 1.0
        return Image.fromarray(np.clip(np.nan_to_num(a) * scale + 0.5, 0, 255).astype(np.uint8), "L")
    # CMYK, YCbCr, LAB, HSV, I;16-RGB variants: Pillow's conversions to RGB are exact or standard.
    return im.convert("RGB")


def to_channels(im: Image.Image, in_chans: int) -> Image.Image:
    """Grayscale ↔ RGB, deliberately: L → RGB replicates the channel; RGB → L uses ITU-R 601-2 luma."""
    if in_chans == 1:
        return im if im.mode == "L" else im.convert("L")
    if in_chans == 3:
        return im if im.mode == "RGB" else im.convert("RGB")
    raise UserError(f"in_chans: must be 1 or 3 for image data, got {in_chans}")


def resize_shorter(im: Image.Image, side: int) -> Image.Image:
    """Resize so the shorter side equals `side` (bilinear, antialiased when downscaling), keeping aspect.

    Raises:
        ImageError: the result would exceed the reader's default pixel limit (`check_resized`).
    """
    w, h = im.size
    if min(w, h) == side:
        return im
    check_resized(getattr(im, "filename", "") or "<image>", w, h, side)
    # Long side rounded, as `imgcls.data.augment.geometry` does for tensors, so both paths agree.
    return im.resize(resized_size(w, h, side), Image.BILINEAR, reducing_gap=None)


def center_crop(im: Image.Image, size: int) -> Image.Image:
    """Center `size` × `size` crop, offset ``(W - size) // 2`` (as `imgcls.data.augment.geometry.center_crop`)."""
    w, h = im.size
    if (w, h) == (size, size):
        return im
    left, top = (w - size) // 2, (h - size) // 2
    return im.crop((left, top, left + size, top + size))


def pil_to_array(im: Image.Image) -> np.ndarray:
    """``"RGB"``/``"L"`` PIL image -> uint8 array ``(C, H, W)``, contiguous and writable."""
    a = np.asarray(im, dtype=np.uint8)
    if a.ndim == 2:
        a = a[:, :, None]
    return a.transpose(2, 0, 1).copy()  # a copy: PIL's buffers are read-only


def pil_to_tensor(im: Image.Image) -> torch.Tensor:
    """``"RGB"``/``"L"`` PIL image -> uint8 tensor ``(C, H, W)``."""
    import torch

    return torch.from_numpy(pil_to_array(im))


def eval_view(im: Image.Image, size: int, resize: int, in_chans: int) -> Image.Image:
    """The evaluation view: shorter side to `resize`, center crop `size`, then `in_chans` channels."""
    return to_channels(center_crop(resize_shorter(im, resize), size), in_chans)


def storage_view(im: Image.Image, side: int, in_chans: int) -> Image.Image:
    """The training storage view: shorter side to `side`, center `side` × `side` square, `in_chans` channels."""
    return to_channels(center_crop(resize_shorter(im, side), side), in_chans)


def load_for_eval(src: Source, size: int, resize: int, in_chans: int, **limits) -> torch.Tensor:
    """Read an image as predict, serve and validation see it: `load_array_for_eval` as a uint8 tensor."""
    import torch

    return torch.from_numpy(load_array_for_eval(src, size, resize, in_chans, **limits))


def load_array_for_eval(
    src: Source,
    size: int,
    resize: int,
    in_chans: int,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    max_aspect: float = DEFAULT_MAX_ASPECT,
) -> np.ndarray:
    """Read an image as predict, serve and validation see it (predict's PyTorch-free path uses it directly).

    Args:
        src: path, bytes or binary file object.
        size: side of the center crop (the model's input size).
        resize: shorter side before the crop (``== size`` for no crop).
        in_chans: 1 (grayscale) or 3 (RGB).
        max_pixels, max_file_bytes, max_aspect: the limits of `read_image`.

    Returns:
        uint8 array ``(in_chans, size, size)``.

    Raises:
        ImageError: the file cannot be used (see `read_image`; thin images are refused from the header).
    """
    if resize < size:
        raise UserError(f"resize ({resize}) must be at least the crop size ({size})")
    limits = {"max_pixels": max_pixels, "max_file_bytes": max_file_bytes, "max_aspect": max_aspect}
    im = read_image(src, min_side=resize, **limits)
    return pil_to_array(eval_view(im, size, resize, in_chans))


def header_size(path: str | os.PathLike, **limits) -> tuple[int, int]:
    """``(width, height)`` from the header (after EXIF rotation is *not* applied), validating the limits."""
    im = open_image(path, **limits)
    try:
        return im.size
    finally:
        im.close()


__all__ = [
    "BACKGROUND",
    "DEFAULT_MAX_ASPECT",
    "IMAGE_EXTENSIONS",
    "ImageError",
    "center_crop",
    "check_resized",
    "decode_image",
    "eval_view",
    "header_size",
    "is_hidden",
    "is_image_file",
    "load_for_eval",
    "open_image",
    "pil_to_tensor",
    "read_image",
    "resize_shorter",
    "resized_size",
    "sniff_format",
    "storage_view",
    "to_channels",
    "to_standard_mode",
]
