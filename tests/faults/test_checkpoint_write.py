"""Scenario 1: kill -9 while `engine.checkpoint.save_checkpoint` writes → the checkpoint on disk still loads.

A child process saves checkpoints of a 32 MiB state in a loop (version 1, 2, ... ; every tensor holds its
version number). The test kills it with SIGKILL at a seeded random moment of the write cycle (the size the
temporary file had reached is the "offset"), then loads ``last.pt``: it must be a whole checkpoint, either the
one before or the one being written, never a mix. Stale temporaries of killed writers must not pile up.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from imgcls.engine.checkpoint import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.faults

STATE_MIB = 32

WRITER = """
import sys, torch
from imgcls.engine.checkpoint import save_checkpoint

path, version, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
print("ready", flush=True)
while True:
    version += 1
    save_checkpoint(path, {"version": version, "model": {"w": torch.full((n,), float(version))},
                           "optimizer": {"m": torch.full((n // 4,), -float(version))}})
    print(version, flush=True)
"""


def _state(version: int, n: int) -> dict:
    return {
        "version": version,
        "model": {"w": torch.full((n,), float(version))},
        "optimizer": {"m": torch.full((n // 4,), -float(version))},
    }


def _check_whole(state: dict) -> int:
    """A loadable checkpoint whose every tensor belongs to the version it says: returns that version."""
    v = state["version"]
    assert torch.equal(state["model"]["w"], torch.full_like(state["model"]["w"], float(v)))
    assert torch.equal(state["optimizer"]["m"], torch.full_like(state["optimizer"]["m"], -float(v)))
    return v


def _kill_during_writes(folder: Path, kills: int, seed: int, kit) -> dict:
    n = STATE_MIB * 2**20 // 4 * 4 // 5  # w + m = STATE_MIB MiB of float32
    path = folder / "last.pt"
    save_checkpoint(path, _state(0, n))
    size = path.stat().st_size
    rng = random.Random(seed)
    version, offsets, cycle = 0, [], None
    for _ in range(kills):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(version), str(n)],
            env=kit.subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert proc.stdout.readline().strip() == "ready"
        if cycle is None:  # the duration of one save on this machine, so kill moments cover the whole cycle
            t0 = time.monotonic()
            first = proc.stdout.readline()
            assert first.strip().isdigit(), first
            cycle = time.monotonic() - t0
        time.sleep(rng.uniform(0.0, 2 * cycle))
        tmp = path.with_name(f".{path.name}.{proc.pid}.tmp")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        offsets.append(tmp.stat().st_size if tmp.exists() else size)
        loaded = _check_whole(load_checkpoint(path))
        assert loaded >= version  # never older than what was on disk before this writer started
        version = loaded
    stale = list(folder.glob(".last.pt.*.tmp"))
    return {"kills": kills, "loadable": kills, "offsets": offsets, "size": size, "version": version, "stale": stale}


def test_kill_during_checkpoint_write_quick(tmp_path, kit):
    result = _kill_during_writes(tmp_path, kills=3, seed=7, kit=kit)
    assert result["version"] > 0  # at least one write finished between kills: the loop really ran
    assert len(result["stale"]) <= 1  # at most the last killed writer's temporary, removed by the next save


@pytest.mark.slow
def test_kill_during_checkpoint_write_20_times(tmp_path, kit, figure):
    result = _kill_during_writes(tmp_path, kills=20, seed=2024, kit=kit)
    assert len(result["stale"]) <= 1
    partial = sum(0 < o < result["size"] for o in result["offsets"])
    figure("checkpoint_kill", {**{k: v for k, v in result.items() if k != "stale"}, "mid_write": partial})
