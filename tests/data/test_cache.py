"""The decoded uint8 cache: built once, memory-mapped, invalidated by any file change, bad files listed."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from imgcls.data.cache import FileView, build_or_load, channel_stats

VIEW = FileView("storage", 8, 8, 3, max_pixels=10_000, max_file_bytes=1 << 20)


def _folder(tmp_path, n=6):
    tmp_path.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (12, 10), (i * 40, 10, 200)).save(p)
        paths.append(str(p))
    return paths


def test_build_then_memory_map(tmp_path):
    paths = _folder(tmp_path / "img")
    first = build_or_load(paths, VIEW, tmp_path / "cache")
    assert first.images.shape == (6, 3, 8, 8) and first.images.dtype == np.uint8
    assert first.images[:, 0, 0, 0].tolist() == [0, 40, 80, 120, 160, 200]
    mtime = first.path.stat().st_mtime_ns
    second = build_or_load(paths, VIEW, tmp_path / "cache")
    assert isinstance(second.images, np.memmap)
    assert second.path == first.path and second.path.stat().st_mtime_ns == mtime  # not rebuilt
    assert np.array_equal(np.asarray(second.images), np.asarray(first.images))
    m, s = channel_stats(np.asarray(second.images))
    ref = np.asarray(second.images, dtype=np.float64) / 255
    assert np.allclose(m, ref.mean(axis=(0, 2, 3))) and np.allclose(s, ref.std(axis=(0, 2, 3)), atol=1e-5)


def test_changed_file_invalidates(tmp_path):
    paths = _folder(tmp_path / "img")
    old = build_or_load(paths, VIEW, tmp_path / "cache")
    Image.new("RGB", (12, 10), (7, 7, 7)).save(paths[2])
    st = os.stat(paths[2])
    os.utime(paths[2], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a later mtime, whatever the clock
    new = build_or_load(paths, VIEW, tmp_path / "cache")
    assert new.path != old.path
    assert new.images[2, 0, 0, 0] == 7
    # settings are part of the key too
    other = build_or_load(paths, FileView("storage", 4, 4, 1, 10_000, 1 << 20), tmp_path / "cache")
    assert other.images.shape == (6, 1, 4, 4) and other.path not in (old.path, new.path)


def test_bad_files_are_skipped_and_listed(tmp_path):
    paths = _folder(tmp_path / "img", n=3)
    empty = tmp_path / "img" / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "img" / "text.jpg"
    text.write_text("nope")
    huge = tmp_path / "img" / "huge.png"
    Image.new("RGB", (200, 100)).save(huge)
    cached = build_or_load([paths[0], str(empty), paths[1], str(text), str(huge), paths[2]], VIEW, tmp_path / "c")
    assert cached.kept.tolist() == [0, 2, 5]
    assert cached.images.shape[0] == 3
    reasons = dict(cached.issues)
    assert "empty" in reasons[str(empty)] and "not an image" in reasons[str(text)]
    assert "too large" in reasons[str(huge)]
    again = build_or_load([paths[0], str(empty), paths[1], str(text), str(huge), paths[2]], VIEW, tmp_path / "c")
    assert again.issues == cached.issues  # reported again on the next run, from the cache's record
