"""Exact resume: kill -9 mid-epoch, SIGTERM, resume twice; the final weights equal an uninterrupted run's, bit for bit.

Every run is a real `python -m imgcls train` subprocess with the same seed and thread count.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from imgcls.engine.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

EPOCHS = 2


def _argv(run: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "imgcls", "train", "--recipe", "digits", "--epochs", str(EPOCHS),
        "--batch-size", "64", "--seed", "3", "--out", str(run),
        "--set", "train.checkpoint_every_steps=2", "--set", "train.save=last",
        "--set", "train.report=false", "--set", "train.progress=none", *extra,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    # bf16 and fp32 CPU kernels are deterministic for a fixed thread count.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _wait_for_checkpoint(proc: subprocess.Popen, path: Path, done, timeout: float = 300) -> dict:
    """Poll the checkpoint until ``done(state)``; fail if the process exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"training ended (code {proc.returncode}) before the checkpoint we wait for:\n{out}")
        if path.is_file():
            try:
                state = load_checkpoint(path)
            except Exception:
                state = None
            if state is not None and done(state):
                return state
        time.sleep(0.02)
    proc.kill()
    pytest.fail("timed out waiting for a checkpoint")


def _rows(run: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader((run / "metrics.csv").open())]


def test_kill_and_sigterm_then_resume_is_bit_identical(tmp_path):
    steps_per_epoch = 1618 // 64
    reference = tmp_path / "reference"
    subprocess.run(_argv(reference), env=_env(), check=True, capture_output=True, timeout=600)

    run = tmp_path / "interrupted"
    ckpt = run / "checkpoints" / "last.pt"
    # 1. kill -9 in the middle of the first epoch.
    proc = subprocess.Popen(_argv(run), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed_at = _wait_for_checkpoint(proc, ckpt, lambda s: s["epoch"] == 0 and s["batch"] >= 6)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert killed_at["step"] < steps_per_epoch

    # 2. resume, then SIGTERM in the middle of the second epoch: it checkpoints and exits with 130.
    proc = subprocess.Popen(
        _argv(run, "--resume"), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    _wait_for_checkpoint(proc, ckpt, lambda s: s["epoch"] == 1 and s["batch"] >= 4)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "SIGTERM: checkpoint saved" in out
    stopped = load_checkpoint(ckpt)
    assert stopped["epoch"] == 1 and 0 < stopped["batch"] < steps_per_epoch

    # 3. resume to the end.
    finished = subprocess.run(_argv(run, "--resume"), env=_env(), capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert f"resuming at epoch 2, batch {stopped['batch']}" in finished.stdout

    ours, theirs = load_checkpoint(ckpt), load_checkpoint(reference / "checkpoints" / "last.pt")
    assert ours["step"] == theirs["step"] == EPOCHS * steps_per_epoch
    for name, tensor in theirs["model"].items():
        assert torch.equal(ours["model"][name], tensor), name
    for key, value in theirs["optimizer"]["state"].items():
        assert torch.equal(ours["optimizer"]["state"][key]["momentum_buffer"], value["momentum_buffer"])
    assert (run / "model.safetensors").read_bytes() == (reference / "model.safetensors").read_bytes()
    assert _rows(run) == _rows(reference)


def test_resume_with_lookahead_and_staged_freezing_is_bit_identical(tmp_path):
    # The speedrun's engine parts: Lookahead with airbench's ramp (slow weights in the checkpoint), a parameter
    # frozen after epoch 1 (re-frozen on resume), validation only at the end. Killed in epoch 2, after the freeze.
    extra = (
        "--set", "train.lookahead_k=3", "--set", "train.lookahead_alpha=0.2", "--set", "train.lookahead_ramp_power=3",
        "--set", "train.freeze_after={c1: 1}", "--set", "train.val_every=0",
    )  # fmt: skip
    reference = tmp_path / "reference"
    subprocess.run(_argv(reference, *extra), env=_env(), check=True, capture_output=True, timeout=600)

    run = tmp_path / "interrupted"
    ckpt = run / "checkpoints" / "last.pt"
    proc = subprocess.Popen(_argv(run, *extra), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_checkpoint(proc, ckpt, lambda s: s["epoch"] == 1 and s["batch"] >= 6)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    finished = subprocess.run(_argv(run, *extra, "--resume"), env=_env(), capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stdout + finished.stderr

    ours, theirs = load_checkpoint(ckpt), load_checkpoint(reference / "checkpoints" / "last.pt")
    for name, tensor in theirs["model"].items():
        assert torch.equal(ours["model"][name], tensor), name
    for name, tensor in theirs["lookahead"]["slow"].items():
        assert torch.equal(ours["lookahead"]["slow"][name], tensor), name
    assert ours["lookahead"]["steps"] == theirs["lookahead"]["steps"] > 0
    assert (run / "model.safetensors").read_bytes() == (reference / "model.safetensors").read_bytes()
    rows = _rows(run)
    assert rows == _rows(reference) and [r["val_top1"] != "" for r in rows] == [False, True]
