"""Data-parallel training: 2 processes under torchrun (gloo on 127.0.0.1) against a single-process run.

Both runs see the same global batches: 2 ranks x 16 images interleave the same epoch permutation that one
process takes 32 at a time (the data layer shards ``perm[rank::world_size]``), augmentation is off and the
precision is fp32, so the weights agree up to the order of floating-point sums in the gradient all-reduce.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tests.support import free_port

from imgcls.engine.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow


def _train_args(run: Path, batch: int) -> list[str]:
    return [
        "train", "--recipe", "digits", "--epochs", "1", "--batch-size", str(batch), "--precision", "fp32",
        "--seed", "5", "--out", str(run), "--set", "augment.crop_padding=0", "--set", "schedule.warmup_epochs=0",
        "--set", "train.save=last", "--set", "train.progress=none",
    ]  # fmt: skip


def _rows(run: Path) -> list[dict]:
    return list(csv.DictReader((run / "metrics.csv").open()))


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("GLOO_SOCKET_IFNAME", None)  # the engine sets it for loopback runs
    return env


def _launcher(*extra: str) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()), *extra, "-m", "imgcls",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def multi_run(tmp_path_factory):
    multi = tmp_path_factory.mktemp("ddp") / "multi"
    done = subprocess.run(_launcher() + _train_args(multi, 16), env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return multi, done


def test_two_ranks_match_one_process(tmp_path, multi_run):
    single = tmp_path / "single"
    subprocess.run(
        [sys.executable, "-m", "imgcls", *_train_args(single, 32), "--set", "train.report=false"],
        env=_env(), check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    multi, done = multi_run
    assert "2 processes" in done.stdout
    assert done.stdout.count("epoch 1/1  train loss") == 1  # rank 0 alone speaks

    a, b = load_checkpoint(single / "checkpoints" / "last.pt"), load_checkpoint(multi / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 1618 // 32
    assert b["world_size"] == 2 and len(b["rng"]) == 2  # every rank's generator state, for an exact resume
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, rtol=1e-3, atol=1e-4, msg=name)
    one, two = _rows(single)[0], _rows(multi)[0]
    assert float(two["train_loss"]) == pytest.approx(float(one["train_loss"]), rel=1e-3)
    assert float(two["val_loss"]) == pytest.approx(float(one["val_loss"]), rel=1e-3)
    assert abs(float(two["val_top1"]) - float(one["val_top1"])) <= 100 / 179 + 1e-6  # at most one image apart
    # rank 0 wrote the whole run folder, including the final evaluation gathered from both ranks
    assert (multi / "eval.json").is_file() and (multi / "report" / "report.html").is_file()
    assert not list(multi.rglob("*.tmp"))
