"""Scenario 10: the disk fills up while a run folder is written → one clear line, the previous checkpoint intact.

The test mounts a small tmpfs (Linux, root: ``mount -t tmpfs -o size=4m``), trains one epoch into it, fills the
rest of the file system, and resumes for another epoch: every write of the second epoch hits ENOSPC. The run
must stop with ``imgcls: error: ...`` naming the file and "No space left on device", exit status 2, leave the
first epoch's checkpoint and weights loadable and unchanged, and leave no temporary files behind (they would
hold on to the space the user needs to free). Where no tmpfs can be mounted (not root, no Linux, a container
without CAP_SYS_ADMIN) the tests skip and say so; running the suite as root on a Linux machine runs them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from imgcls._files import sha256_file
from imgcls.engine.bundle import ModelMeta, load_bundle, save_bundle
from imgcls.engine.checkpoint import load_checkpoint, save_checkpoint
from imgcls.errors import UserError
from imgcls.models import create_model

pytestmark = pytest.mark.faults


@contextlib.contextmanager
def small_filesystem(folder: Path, size: str):
    """A tmpfs of `size` mounted on `folder` for the duration; skips the test where that is not allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    if not sys.platform.startswith("linux") or not shutil.which("mount"):
        pytest.skip("disk-full tests mount a tmpfs: Linux with mount(8) needed")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if done.returncode != 0:
        reason = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["mount failed"]
        pytest.skip(f"cannot mount a {size} tmpfs here ({reason[0]}); run as root on Linux to exercise a full disk")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill(folder: Path) -> int:
    """Write a filler file until the file system is full; returns the bytes written."""
    written = 0
    with open(folder / "filler.bin", "wb", buffering=0) as f:
        block = b"\0" * 65536
        while True:
            try:
                written += f.write(block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
        for size in (4096, 512, 1):  # the last partial page
            while True:
                try:
                    written += f.write(b"\0" * size)
                except OSError:
                    break
    return written


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_checkpoint_and_bundle_writes_on_a_full_disk(tmp_path):
    model = create_model("lenet5", num_classes=10, in_chans=1)
    meta = ModelMeta("lenet5", 10, [str(i) for i in range(10)], [1, 32, 32], [0.5], [0.25], in_chans=1)
    with small_filesystem(tmp_path / "mnt", "2m") as disk:
        run = disk / "run"
        save_checkpoint(run / "checkpoints" / "last.pt", {"model": model.state_dict(), "step": 1})
        save_bundle(run, model, meta)
        before = _snapshot(run)
        fill(disk)
        bigger = {"model": model.state_dict(), "step": 2, "pad": torch.zeros(256, 1024)}
        with pytest.raises(UserError, match="No space left on device") as info:
            save_checkpoint(run / "checkpoints" / "last.pt", bigger)
        assert "\n" not in str(info.value) and "last.pt" in str(info.value)
        with torch.no_grad():
            model.fc.weight.add_(1.0)
        with pytest.raises(UserError, match="No space left on device") as info:
            save_bundle(run, model, meta)
        assert "\n" not in str(info.value) and "model.safetensors" in str(info.value)
        assert _snapshot(run) == before  # nothing replaced, no temporary left holding the space
        assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 1
        load_bundle(run)  # the SHA-256 in model.json still matches the weights on disk


@pytest.mark.slow
def test_training_on_a_full_disk_stops_with_one_line(tmp_path, kit, figure):
    with small_filesystem(tmp_path / "mnt", "4m") as disk:
        run = disk / "run"
        first = kit.run_to_end(kit.imgcls(*kit.train_argv(run, epochs=1)))
        assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
        ckpt = run / "checkpoints" / "last.pt"
        before = _snapshot(run)
        fill(disk)
        done = kit.run_to_end(kit.imgcls(*kit.train_argv(run, "--resume", epochs=2)))
        assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
        err = done.stderr.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("imgcls: error: ") and "No space left on device" in err[0], err
        assert str(run) in err[0]
        after = _snapshot(run)
        assert after.keys() == before.keys()  # no temporary file left behind
        assert after["checkpoints/last.pt"] == before["checkpoints/last.pt"]
        state = load_checkpoint(ckpt)
        assert (state["epoch"], state["batch"]) == (1, 0)
        assert sha256_file(run / "model.safetensors") == load_bundle(run)[1].sha256
        figure("disk_full", {"message": err[0].replace(str(disk), "<disk>"), "checkpoint_intact": True})
    assert not os.path.ismount(tmp_path / "mnt")
