"""Scenario 8: fuzz the image reader with mutated JPEG, PNG, WebP and GIF bytes (hypothesis, derandomised).

Each example takes a valid seed file and applies a few mutations (bit flips, byte overwrites, truncation, a
deleted or duplicated span, an inserted run of junk). `read_image` and `load_for_eval` must either return a
well-formed image or raise `ImageError` (one line, naming the source); any other exception is a reader bug,
and a decode that runs past the per-file limit (a hang) fails the example through an interval timer.
"""

from __future__ import annotations

import io
import signal
import sys
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from imgcls.data.reader import ImageError, load_for_eval, read_image

pytestmark = [
    pytest.mark.faults,
    pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="the per-file time limit uses SIGALRM"),
]

PER_FILE_SECONDS = 10.0  # a hang guard, far above any honest decode of these small files
MAX_PIXELS = 4_000_000  # the service's kind of limit: a mutated header may declare a huge image


def _seeds() -> list[bytes]:
    rng = np.random.default_rng(0)
    coarse = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((48, 40), Image.BICUBIC)
    exif = Image.Exif()
    exif[0x0112] = 6
    out = []
    for fmt, kw in (
        ("JPEG", {"quality": 85, "exif": exif.tobytes()}),
        ("JPEG", {"quality": 70, "progressive": True}),
        ("PNG", {}),
        ("WEBP", {"quality": 80}),
        ("GIF", {"save_all": True, "append_images": [coarse.rotate(90)], "duration": 40}),
    ):
        buf = io.BytesIO()
        (coarse.convert("P") if fmt == "GIF" else coarse).save(buf, format=fmt, **kw)
        out.append(buf.getvalue())
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 65535, (12, 10), dtype=np.uint16)).save(buf, format="PNG")
    out.append(buf.getvalue())
    return out


SEEDS = _seeds()


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "byte", "truncate", "delete", "duplicate", "insert"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte":
            data[pos] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, draw(st.integers(0, 255))]))
        elif op == "truncate":
            del data[pos:]
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 64))]
        elif op == "duplicate":
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 64))]
        else:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=32))
        if not data:
            break
    return bytes(data)


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang(f"a decode ran past {PER_FILE_SECONDS} s")


def _check(data: bytes, stats: dict) -> None:
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, PER_FILE_SECONDS)
    t0 = time.perf_counter()
    try:
        try:
            im = read_image(data, max_pixels=MAX_PIXELS)
            assert im.mode in ("RGB", "L") and im.width >= 1 and im.height >= 1
            assert im.width * im.height <= MAX_PIXELS
            x = load_for_eval(data, 32, 36, 3, max_pixels=MAX_PIXELS)
            assert tuple(x.shape) == (3, 32, 32)
            stats["decoded"] += 1
        except ImageError as exc:
            assert exc.reason and "\n" not in str(exc) and str(exc).startswith("<bytes>: ")
            stats["refused"] += 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        stats["slowest"] = max(stats["slowest"], time.perf_counter() - t0)


def _fuzz(examples: int) -> dict:
    stats = {"decoded": 0, "refused": 0, "slowest": 0.0}

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,  # the same examples on every run: CI never flakes, a failure reproduces
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(mutated())
    def fuzz(data: bytes) -> None:
        _check(data, stats)

    fuzz()
    return stats


def test_seed_files_decode():
    for data in SEEDS:
        assert read_image(data).size in ((48, 40), (40, 48), (10, 12))


@pytest.mark.skipif(sys.platform == "win32", reason="SIGALRM")
def test_fuzz_reader_quick():
    stats = _fuzz(150)
    assert stats["decoded"] + stats["refused"] >= 150
    assert stats["refused"] > 0 and stats["decoded"] > 0  # the mutations reach both outcomes


@pytest.mark.slow
def test_fuzz_reader_long(figure):
    t0 = time.perf_counter()
    stats = _fuzz(10000)
    assert stats["refused"] > 0 and stats["decoded"] > 0
    figure(
        "fuzz",
        {
            "examples": stats["decoded"] + stats["refused"],
            "decoded": stats["decoded"],
            "clean_errors": stats["refused"],
            "slowest_s": round(stats["slowest"], 3),
            "seconds": round(time.perf_counter() - t0, 1),
        },
    )
