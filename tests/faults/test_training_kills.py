"""Scenarios 2 and 3: kill -9 at random steps of a real training run, then ``--resume``; SIGTERM timing.

Every run is a real ``python -m imgcls train`` process (LeNet-5 on the bundled digits, one intra-op thread,
a checkpoint every 3 optimiser steps, so a kill loses up to 3 steps that the resume must replay exactly).
Each trial kills one run at a seeded random step (mid-epoch or at an epoch end), resumes it to the end and
compares the final checkpoint with an uninterrupted run's: model and optimiser tensors bit for bit.
Two trials use the streaming path (a folder of PNG files, ``data.cache=never``) and resume with another
DataLoader worker count than the killed run had (0 → 2 and 2 → 0): order and augmentation depend on
``(seed, epoch, batch)`` only, never on the workers.
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgcls.engine.checkpoint import load_checkpoint

pytestmark = pytest.mark.faults

EPOCHS = 4
STEPS_PER_EPOCH = 1618 // 64  # the digits recipe holds out 179 of 1,797 images
EVERY = ["--set", "train.checkpoint_every_steps=3"]


def _digits_folder(root: Path) -> Path:
    """scikit-learn's 1,797 digits as 8x8 grey PNG files in class folders (the streaming path reads files)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images, digits.target)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 15).astype(np.uint8), "L").save(folder / f"{i:04d}.png")
    return root


def _streaming(folder: Path, workers: int) -> list[str]:
    return ["--data", str(folder), "--set", "data.cache=never", "--workers", str(workers)]


def _kill_and_resume(kit, run: Path, target: int, kill_args: list[str], resume_args: list[str]) -> dict:
    """Kill the run once its checkpoint reaches optimiser step `target`; resume it to the end."""
    ckpt = run / "checkpoints" / "last.pt"
    proc = kit.start(kit.imgcls(*kit.train_argv(run, *EVERY, *kill_args, epochs=EPOCHS)))
    kit.wait_for_checkpoint(proc, ckpt, lambda s: s["step"] >= target)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    killed = load_checkpoint(ckpt)
    done = kit.run_to_end(kit.imgcls(*kit.train_argv(run, *EVERY, *resume_args, "--resume", epochs=EPOCHS)))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"resuming at epoch {killed['epoch'] + 1}, batch {killed['batch']}" in done.stdout
    return killed


@pytest.fixture(scope="module")
def reference(tmp_path_factory, kit):
    """Uninterrupted runs: in memory, and streaming from files with no worker process."""
    root = tmp_path_factory.mktemp("kills")
    folder = _digits_folder(root / "digits")
    runs = {}
    for name, extra in (("memory", []), ("stream", _streaming(folder, 0))):
        runs[name] = root / f"reference-{name}"
        done = kit.run_to_end(kit.imgcls(*kit.train_argv(runs[name], *EVERY, *extra, epochs=EPOCHS)))
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return runs, folder


def test_sigterm_checkpoints_and_exits(tmp_path, kit, figure):
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "last.pt"
    proc = kit.start(kit.imgcls(*kit.train_argv(run, *EVERY, epochs=EPOCHS)))
    before = kit.wait_for_checkpoint(proc, ckpt, lambda s: s["step"] >= 4)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    saved = None
    while proc.poll() is None and time.monotonic() - sent < 120:
        if saved is None and (kit.read_checkpoint(ckpt) or before)["step"] != before["step"]:
            saved = time.monotonic() - sent
        time.sleep(0.005)
    exited = time.monotonic() - sent
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "SIGTERM: checkpoint saved" in out
    state = load_checkpoint(ckpt)
    # The safe checkpoint is the one written after the signal: at least one step further than the last one seen.
    assert state["step"] > before["step"] and (state["epoch"], state["batch"]) != (before["epoch"], before["batch"])
    assert state["step"] == state["epoch"] * STEPS_PER_EPOCH + state["batch"]
    assert not list(run.rglob("*.tmp"))
    figure("sigterm", {"checkpoint_s": round(saved if saved is not None else exited, 3), "exit_s": round(exited, 3)})


@pytest.mark.slow
def test_kill_at_ten_random_steps_then_resume_is_bit_identical(tmp_path, kit, reference, figure):
    runs, folder = reference
    final = {name: load_checkpoint(path / "checkpoints" / "last.pt") for name, path in runs.items()}
    total = EPOCHS * STEPS_PER_EPOCH
    rng = random.Random(11)
    targets = sorted(rng.sample(range(1, total - 6), 8))
    trials = [("memory", t, [], []) for t in targets]
    trials += [
        ("stream", rng.randrange(4, total - 6), _streaming(folder, 0), _streaming(folder, 2)),
        ("stream", rng.randrange(4, total - 6), _streaming(folder, 2), _streaming(folder, 0)),
    ]
    identical, mid_epoch, killed_at = 0, 0, []
    for i, (kind, target, kill_args, resume_args) in enumerate(trials):
        run = tmp_path / f"trial-{i}"
        killed = _kill_and_resume(kit, run, target, kill_args, resume_args)
        killed_at.append([killed["epoch"], killed["batch"], killed["step"]])
        mid_epoch += killed["batch"] != 0
        kit.assert_same_weights(load_checkpoint(run / "checkpoints" / "last.pt"), final[kind])
        assert (run / "model.safetensors").read_bytes() == (runs[kind] / "model.safetensors").read_bytes()
        identical += 1
    assert identical == len(trials) == 10
    assert mid_epoch >= 5
    figure("resume_kills", {"trials": len(trials), "identical": identical, "mid_epoch": mid_epoch, "at": killed_at})
