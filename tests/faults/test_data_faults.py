"""Data-layer faults of issue 19: a killed cache build (class 1), files that break while streaming (class 7), a
read-only or full cache folder and data with nothing to validate on (class 6). Real processes, real file systems.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests.test_files import fill, tmpfs

from imgcls.data import DataConfig, build_data
from imgcls.errors import UserError

pytestmark = pytest.mark.faults


def _folder(root: Path, per_class: int, size=(48, 40), seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


_BUILD = """
import sys
from imgcls.data import DataConfig, build_data
cfg = DataConfig(cache_dir=sys.argv[2], workers=2, batch_size=8)
data = build_data(sys.argv[1], cfg, None, image_size=64, in_chans=3, seed=0)
print("built", data.storage, data.train.num_samples, flush=True)
"""


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_kill_9_during_the_cache_build_then_the_next_run_completes(tmp_path, figure):
    """Class 1. Before the fix the decoding workers outlived the killed parent holding the cache lock, and the next
    run waited forever without a word; its partial .tmp file stayed in the cache folder."""
    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc to find the decoding workers")
    data = _folder(tmp_path / "data", per_class=400, size=(160, 120))  # 800 files: the parallel build
    cache = tmp_path / "cache"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-c", textwrap.dedent(_BUILD), str(data), str(cache)]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and first.poll() is None:
        partial = [p for p in cache.glob(".*.u8.*.tmp") if p.stat().st_size > 0] if cache.is_dir() else []
        workers = _children(first.pid)
        if partial and len(workers) >= 2:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"the build ended or never started writing: {first.stdout.read()[-2000:] if first.stdout else ''}")
    os.kill(first.pid, signal.SIGKILL)
    first.wait(30)
    survivors = []
    for _ in range(100):  # PR_SET_PDEATHSIG delivers SIGKILL at once; allow for a loaded machine
        survivors = [w for w in workers if _alive(w)]
        if not survivors:
            break
        time.sleep(0.05)
    try:
        assert survivors == [], "decoding workers outlived the killed build"
        start = time.monotonic()
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        took = time.monotonic() - start
        assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
        assert "built cache 720" in second.stdout  # 800 files less the 10 % validation split
        assert list(cache.glob("*.tmp")) == [] and list(cache.glob(".*.tmp")) == []  # partial files cleaned
        assert len(list(cache.glob("*.u8"))) == 2  # the training and the validation caches
        figure("cache_build_kill", {"workers_left": len(survivors), "second_run_seconds": round(took, 1)})
    finally:
        for w in survivors:
            with contextlib.suppress(ProcessLookupError):
                os.kill(w, signal.SIGKILL)


def test_files_that_break_while_streaming_are_listed_once_and_many_stop_the_run(tmp_path, caplog, figure):
    """Class 7. Before: warned every epoch (the DataLoader hands issues back as lists, compared with tuples), never
    written to data_issues.csv, and 16 failures in a row a multi-line DataLoader traceback."""
    root = _folder(tmp_path / "d", per_class=8)
    cfg = DataConfig(cache="never", cache_dir=str(tmp_path / "c"), workers=2, batch_size=4)
    data = build_data(root, cfg, None, image_size=32, in_chans=3, seed=0)
    issues_csv = data.write_issues(tmp_path / "run" / "data_issues.csv")
    victim = data.train.samples.paths[3]
    Path(victim).write_bytes(Path(victim).read_bytes()[:200])  # breaks after the start-up checks
    with caplog.at_level(logging.WARNING, logger="imgcls"):
        for epoch in range(3):
            data.train.set_epoch(epoch)
            assert sum(len(y) for _, y in data.train) == 12
    warned = [r for r in caplog.records if victim in r.getMessage()]
    assert len(warned) == 1
    assert victim in issues_csv.read_text() and "truncated" in issues_csv.read_text()
    for p in data.train.samples.paths:
        Path(p).write_bytes(b"gone")
    with pytest.raises(UserError) as info:
        list(data.train)
    assert "\n" not in str(info.value) and "could not be decoded while streaming" in str(info.value)
    figure("streaming_breaks", {"warnings_in_3_epochs": len(warned), "listed": True, "error_lines": 1})


def test_read_only_or_full_cache_folder_is_one_line(tmp_path, figure):
    """Class 6: the cache folder refuses writes. Before: a traceback from open() or np.memmap."""
    root = _folder(tmp_path / "d", per_class=4)
    with tmpfs(tmp_path / "mnt", "1m") as disk:
        fill(disk)
        cfg = DataConfig(cache_dir=str(disk / "cache"), batch_size=2)
        with pytest.raises(UserError, match="No space left on device") as info:
            build_data(root, cfg, None, image_size=32, in_chans=3, seed=0)
        text = str(info.value)
        assert "\n" not in text and str(disk / "cache") in text and "data.cache=never" in text
        assert [p.name for p in disk.rglob("*.tmp")] == []  # no partial file left holding the space
        (disk / "filler").unlink()
        (disk / "cache").mkdir(exist_ok=True)
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        with pytest.raises(UserError, match="Read-only file system") as info:
            build_data(root, cfg, None, image_size=32, in_chans=3, seed=0)
        assert "\n" not in str(info.value) and "data.cache=never" in str(info.value)
        streamed = build_data(root, DataConfig(cache="never", cache_dir=str(disk / "cache"), batch_size=2), None,
                              image_size=32, in_chans=3, seed=0)  # fmt: skip
        assert streamed.storage == "stream"  # streaming never needs the folder (its statistics are not kept)
        figure("cache_folder_refused", {"message": str(info.value).replace(str(disk), "<disk>")})


def test_disk_full_while_writing_data_issues_is_one_line(tmp_path):
    root = _folder(tmp_path / "d", per_class=4)
    (root / "a" / "broken.png").write_bytes(b"")
    data = build_data(root, DataConfig(cache_dir=str(tmp_path / "c")), None, image_size=32, in_chans=3, seed=0)
    with tmpfs(tmp_path / "mnt", "1m") as disk:
        (disk / "run").mkdir()
        fill(disk)
        with pytest.raises(UserError, match="No space left on device") as info:
            data.write_issues(disk / "run" / "data_issues.csv")
        assert str(disk / "run" / "data_issues.csv") in str(info.value) and "\n" not in str(info.value)
        assert list((disk / "run").iterdir()) == []


@pytest.mark.parametrize(
    ("per_class", "fraction", "message"),
    [(5, 0.0, "data.val_fraction is 0"), (1, 0.1, "every class has fewer than 2 usable images")],
)
def test_nothing_to_validate_on_is_one_line(tmp_path, per_class, fraction, message, figure):
    """Class 6: before, build_data returned ``val=None`` and training failed later with an AttributeError."""
    root = _folder(tmp_path / "d", per_class=per_class)
    cfg = DataConfig(cache_dir=str(tmp_path / "c"), val_fraction=fraction)
    with pytest.raises(UserError, match=message) as info:
        build_data(root, cfg, None, image_size=32, in_chans=3, seed=0)
    assert "\n" not in str(info.value) and str(root) in str(info.value)
    assert not (tmp_path / "c").exists()  # refused before anything was decoded
    figure(f"no_validation_{per_class}", {"message": str(info.value).replace(str(root), "<data>")})


def test_thin_image_bomb_is_refused_cheaply_everywhere(tmp_path, figure):
    """Class 2: a 1 x 1,000,000 PNG of a few KB; before, predict and serve resized it to 256 x 256,000,000."""
    import tracemalloc

    from tests.data.test_reader import _thin_png

    from imgcls.data.loader import build_eval_data
    from imgcls.data.reader import ImageError, load_for_eval

    bomb = _thin_png(1, 1_000_000)
    root = _folder(tmp_path / "d", per_class=3)
    (root / "a" / "strip.png").write_bytes(bomb)
    tracemalloc.start()
    start = time.monotonic()
    with pytest.raises(ImageError, match="too thin"):
        load_for_eval(bomb, 224, 256, 3)  # predict and serve
    cfg = DataConfig(cache_dir=str(tmp_path / "c"), val_fraction=0.34)
    data = build_data(root, cfg, None, image_size=32, in_chans=3, seed=0)  # training (cache)
    streamed = build_data(root, DataConfig(cache="never", cache_dir=str(tmp_path / "c")), None, image_size=32,
                          in_chans=3, seed=0)  # fmt: skip
    ev = build_eval_data(root, cfg, image_size=32, in_chans=3, mean=[0.5] * 3, std=[0.25] * 3)  # evaluation
    seconds = time.monotonic() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    for built in (data, streamed, ev):
        assert any(p.endswith("strip.png") and "too thin" in r for p, r in built.issues)
    assert peak < 64 << 20
    figure("thin_image", {"file_bytes": len(bomb), "peak_mib": round(peak / 2**20, 1), "seconds": round(seconds, 2)})


def test_loops_and_duplicates_do_not_leak_into_validation(tmp_path, figure):
    """Class 4: before, a link loop turned 10 files into 451 images, most of validation being training images."""
    root = _folder(tmp_path / "d", per_class=5)
    os.symlink(root / "a", root / "a" / "loop")
    os.symlink(root, root / "b" / "root")
    (tmp_path / "l.csv").write_text("".join(f"{p},{p.parent.name}\n" for p in sorted(root.glob("*/*.png")) * 2))
    from imgcls.data.sources import resolve_source

    cfg = DataConfig(cache_dir=str(tmp_path / "c"), val_fraction=0.4)
    for spec in (root, tmp_path / "l.csv"):
        source = resolve_source(spec, cfg)
        train = {os.path.realpath(p) for p in source.train.paths}
        val = {os.path.realpath(p) for p in source.val.paths}
        assert len(train) + len(val) == 10 and train.isdisjoint(val)
        built = build_data(spec, cfg, None, image_size=32, in_chans=3, seed=0)
        assert built.train.num_samples + built.val.num_samples == 10
    dropped = sum("same file as" in r for _, r in built.issues)
    assert dropped == 10
    figure("data_leakage", {"files": 10, "images_after_loop": 10, "duplicates_dropped": dropped})
