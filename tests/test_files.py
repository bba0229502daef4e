"""`imgcls._files` on real files, real processes and a real (read-only, full) file system."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import pytest

from imgcls._files import (
    FileLock,
    atomic_open,
    atomic_write_bytes,
    atomic_write_text,
    digest_matches,
    pid_alive,
    remove_stale_temps,
    sha256_file,
    temp_path,
)
from imgcls.errors import UserError


@contextlib.contextmanager
def tmpfs(folder: Path, size: str = "1m"):
    """A small tmpfs on `folder` (Linux as root); skips where mounting is not allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    if not sys.platform.startswith("linux") or not shutil.which("mount"):
        pytest.skip("needs Linux with mount(8)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (run as root on Linux)")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill(folder: Path) -> None:
    with open(folder / "filler", "wb", buffering=0) as f:
        for size in (65536, 4096, 512, 1):
            while True:
                try:
                    f.write(b"\0" * size)
                except OSError:
                    break


def test_atomic_write_replaces_and_keeps_ordinary_permissions(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    atomic_write_text(target, "one\n")
    atomic_write_text(target, "two\n")
    assert target.read_text() == "two\n"
    old = os.umask(0o022)
    os.umask(old)
    assert target.stat().st_mode & 0o777 == 0o666 & ~old  # not mkstemp's 0600
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.txt", "b.bin", "sub"]  # no temporary left


def test_atomic_open_keeps_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "a.csv"
    target.write_text("old")
    with pytest.raises(ZeroDivisionError), atomic_open(target, "w") as f:
        f.write("half of a new file")
        raise ZeroDivisionError
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.csv"]


def test_full_disk_and_read_only_folder_are_one_line_errors(tmp_path):
    with tmpfs(tmp_path / "mnt") as disk:
        target = disk / "issues.csv"
        atomic_write_text(target, "path,reason\n")
        fill(disk)
        with pytest.raises(UserError, match="No space left on device") as info:
            atomic_write_text(target, "x" * 100_000)
        assert str(target) in str(info.value) and "\n" not in str(info.value)
        assert target.read_text() == "path,reason\n"
        assert sorted(p.name for p in disk.iterdir()) == ["filler", "issues.csv"]
        (disk / "filler").unlink()
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        with pytest.raises(UserError, match="Read-only file system") as info:
            atomic_write_text(target, "new")
        assert str(target) in str(info.value)
        with pytest.raises(UserError, match=r"cannot create the lock file.*Read-only"):
            FileLock(disk / "x.lock").acquire()


def test_sha256_is_chunked(tmp_path):
    data = os.urandom(1000) * 16_000  # 16 MB
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    del data
    tracemalloc.start()
    got = sha256_file(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert got == expected
    assert peak < 4 << 20  # one 1 MiB block at a time, never the 16 MB file
    assert sha256_file(path, chunk=7) == expected
    assert digest_matches(expected, expected[:8].upper()) and not digest_matches(expected, expected[:7])
    assert not digest_matches(expected, "0" * 64)


# The scripts load `imgcls._files` without the package's __init__ (which imports torch: seconds per process).
_BARE = f"""
import sys, types
pkg = types.ModuleType("imgcls")
pkg.__path__ = [{str(Path(__file__).resolve().parents[1] / "src" / "imgcls")!r}]
sys.modules["imgcls"] = pkg
"""

_HOLD = """
import sys, time
from imgcls._files import FileLock
lock = FileLock(sys.argv[1], "holding it for the test")
lock.acquire()
print("locked", flush=True)
sys.stdin.read()
"""

_ORPHAN = """
import os, sys, time
from imgcls._files import FileLock
lock = FileLock(sys.argv[1], "a build that gets killed")
lock.acquire()
if os.fork() == 0:  # a worker that inherits the descriptor and outlives its parent
    time.sleep(120)
    os._exit(0)
print("locked", flush=True)
os._exit(0)  # the recorded owner is gone; the child still holds the flock
"""


def _python(code: str, *args: str, stdin=None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _BARE + textwrap.dedent(code), *args], stdin=stdin, stdout=subprocess.PIPE, text=True
    )


def test_lock_waits_for_a_live_owner_and_says_for_whom(tmp_path, caplog):
    path = tmp_path / "a.lock"
    holder = _python(_HOLD, str(path), stdin=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with caplog.at_level(logging.WARNING, logger="imgcls"), pytest.raises(UserError) as info:
            FileLock(path, timeout=0.5).acquire()
        assert f"process {holder.pid}" in str(info.value) and "holding it for the test" in str(info.value)
        waits = [r.getMessage() for r in caplog.records if "waiting for" in r.getMessage()]
        assert len(waits) == 1 and str(path) in waits[0] and f"process {holder.pid}" in waits[0]
    finally:
        holder.stdin.close()
        holder.wait(30)
    with FileLock(path, timeout=5):  # free once the owner is gone
        assert path.is_file()
    assert not path.exists()  # removed on release


def test_stale_lock_held_by_an_orphan_is_broken(tmp_path, caplog):
    path = tmp_path / "cache.lock"
    owner = _python(_ORPHAN, str(path))
    assert owner.stdout.readline().strip() == "locked"
    owner.wait(30)
    orphan_pids = [int(p) for p in os.listdir("/proc") if p.isdigit() and _holds(int(p), path)]
    assert orphan_pids  # the forked child still holds the lock file open
    try:
        start = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="imgcls"), FileLock(path, timeout=30):
            took = time.monotonic() - start
        assert took < 30
        assert any("breaking a stale lock" in r.getMessage() for r in caplog.records)
    finally:
        for pid in orphan_pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)


def _holds(pid: int, path: Path) -> bool:
    with contextlib.suppress(OSError):
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == str(path) for fd in os.listdir(f"/proc/{pid}/fd"))
    return False


def test_remove_stale_temps_keeps_live_ones(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert not pid_alive(gone.pid) and pid_alive(os.getpid())
    mine = temp_path(tmp_path / "a.u8")
    dead = Path(str(mine).replace(f".{os.getpid()}.", f".{gone.pid}."))
    other_host = tmp_path / f".a.u8.{gone.pid}.otherhost.tmp"
    for p in (mine, dead, other_host):
        p.write_bytes(b"partial")
    assert remove_stale_temps(tmp_path) == [dead]
    assert mine.exists() and other_host.exists() and not dead.exists()
