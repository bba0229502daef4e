"""Scenario 5: torchrun with 2 CPU ranks (gloo on 127.0.0.1), one rank killed, ``--max-restarts 1``.

The killed run must complete with weights identical, bit for bit, to an uninterrupted 2-rank run; the figure is
the restart latency: from the SIGKILL of one worker to the restarted group announcing its resume, and to its
first new checkpoint.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from imgcls.engine.checkpoint import load_checkpoint

pytestmark = [
    pytest.mark.faults,
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the worker processes through /proc"),
]


def _train_args(run: Path) -> list[str]:
    return [
        "train", "--recipe", "digits", "--epochs", "2", "--batch-size", "16", "--precision", "fp32", "--seed", "5",
        "--out", str(run), "--set", "augment.crop_padding=0", "--set", "schedule.warmup_epochs=0",
        "--set", "train.save=last", "--set", "train.progress=none", "--set", "train.report=false",
        "--set", "train.checkpoint_every_steps=2",
    ]  # fmt: skip


def _launcher(kit, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(kit.free_port()), *extra, "-m", "imgcls",
    ]  # fmt: skip


def _workers(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def test_killed_rank_restarts_and_matches_an_uninterrupted_run(tmp_path, kit, figure):
    reference = tmp_path / "reference"
    done = kit.run_to_end(_launcher(kit) + _train_args(reference))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    run = tmp_path / "restarted"
    ckpt = run / "checkpoints" / "last.pt"
    proc = subprocess.Popen(
        _launcher(kit, "--max-restarts", "1") + _train_args(run),
        env=kit.subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(target=lambda: lines.extend((time.monotonic(), ln) for ln in proc.stdout), daemon=True)
    reader.start()
    target = random.Random(5).randrange(6, 40)
    deadline = time.monotonic() + 300
    while (kit.read_checkpoint(ckpt) or {"step": -1})["step"] < target:
        assert proc.poll() is None and time.monotonic() < deadline, "no mid-run checkpoint before the end"
        time.sleep(0.02)
    killed_state = load_checkpoint(ckpt)
    workers = _workers(proc.pid)
    assert len(workers) == 2
    killed_at = time.monotonic()
    victim = random.Random(6).choice(workers)
    os.kill(victim, signal.SIGKILL)
    resumed_ckpt = None
    while proc.poll() is None and time.monotonic() < deadline:
        state = kit.read_checkpoint(ckpt)
        if resumed_ckpt is None and state is not None and state["step"] > killed_state["step"] + 2:
            resumed_ckpt = time.monotonic() - killed_at
        time.sleep(0.02)
    proc.wait(timeout=60)
    reader.join(timeout=30)
    out = "".join(ln for _, ln in lines)
    assert proc.returncode == 0, out[-3000:]
    announced = next((t for t, ln in lines if "resuming at epoch" in ln and t > killed_at), None)
    assert announced is not None, out[-3000:]
    kit.assert_same_weights(load_checkpoint(ckpt), load_checkpoint(reference / "checkpoints" / "last.pt"))
    assert (run / "model.safetensors").read_bytes() == (reference / "model.safetensors").read_bytes()
    figure(
        "torchrun_restart",
        {
            "killed_rank_pid_index": workers.index(victim),
            "killed_after_step": killed_state["step"],
            "resume_announced_s": round(announced - killed_at, 2),
            "first_new_checkpoint_s": round(resumed_ckpt, 2) if resumed_ckpt is not None else None,
            "identical": True,
        },
    )
