"""The GPU path, on a real CUDA device (``-m gpu``; skipped without one). tools/gpu_check.sh runs these.

- The process group of a GPU run (``cpu:gloo,cuda:nccl``) carries CPU and CUDA tensors, and the collectives
  stage tensors for a group made with NCCL alone; a bare CPU all-reduce on such a group fails, which is why
  training under NCCL could not start before (the note of issue 12).
- ``auto`` precision, ``--device cuda:N``, the kernel settings of `device_settings`.
- The RNG state read back onto the GPU (``load_checkpoint(map_location="cuda")``) restores the generators.
- ``--compile`` on the GPU prints its compile time. (kill -9 + ``--resume`` on the GPU: tests/faults/test_gpu_kills.py;
  resident and pinned data: tests/data/test_placement.py.)
"""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest
import torch
import torch.utils.deterministic
from tests.engine.collectives_worker import run_ranks

from imgcls.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from imgcls.engine.device import device_settings, resolve_device
from imgcls.engine.precision import resolve_precision
from imgcls.errors import UserError

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_one_rank_nccl_group_carries_cpu_and_cuda_tensors():
    (got,) = run_ranks("cuda", world=1)
    for where in ("cuda", "cpu"):
        assert got[where]["counts"] == [1, 10] and got[where]["sums"] == [0.5]
        assert got[where]["gathered"] == [[0.0, 0.0]] and got[where]["flags"] == [True]
    assert got["cuda"]["counts_device"].startswith("cuda") and got["cpu"]["counts_device"] == "cpu"
    assert got["raw_cpu_all_reduce"] == "ok"  # gloo takes the CPU scalar
    assert got["agree"] == [False, False, True] and got["objects"] == ["rank0"]
    assert got["on_main_error"] == "--out: refused on rank 0" and got["check_same"] == "agreed"


def test_collectives_stage_cpu_tensors_for_a_group_with_nccl_alone():
    (got,) = run_ranks("cuda", world=1, backend="nccl")
    assert got["cpu"]["counts"] == [1, 10] and got["cpu"]["counts_device"] == "cpu"  # copied to the GPU and back
    assert got["cpu"]["gathered_device"] == "cpu" and got["cpu"]["flags_dtype"] == "torch.bool"
    assert got["agree"] == [False, False, True]
    assert got["raw_cpu_all_reduce"] != "ok", got["raw_cpu_all_reduce"]  # what the old loop sent NCCL


def test_auto_precision_and_device_names():
    chosen = resolve_precision("auto", "cuda")
    expected = "bf16" if torch.cuda.get_device_capability()[0] >= 8 else "fp16"
    assert chosen.name == expected
    assert chosen.grad_scaler().is_enabled() == (expected == "fp16")
    assert resolve_device("auto") == "cuda" and resolve_device("cuda:0") == "cuda:0"
    count = torch.cuda.device_count()
    with pytest.raises(UserError) as caught:
        resolve_device(f"cuda:{count}")
    visible = "cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
    assert (
        str(caught.value) == f"--device cuda:{count}: only {count} CUDA device{'s' * (count > 1)} visible ({visible})"
    )


def test_device_settings_choose_kernels_and_restore():
    before = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    with device_settings("cuda:0", deterministic=True):
        assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.utils.deterministic.fill_uninitialized_memory  # no memset of every new tensor
    with device_settings("cuda:0", deterministic=False):
        assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
        assert not torch.are_deterministic_algorithms_enabled()
    assert (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic) == before
    assert torch.utils.deterministic.fill_uninitialized_memory


def test_rng_state_read_back_onto_the_gpu_restores_every_generator(tmp_path):
    torch.cuda.init()
    torch.manual_seed(1)
    torch.cuda.manual_seed_all(2)
    save_checkpoint(tmp_path / "last.pt", {"rng": [rng_state()]})
    expected = (torch.rand(3), torch.rand(3, device="cuda").cpu(), random.random())
    state = load_checkpoint(tmp_path / "last.pt", map_location="cuda")  # as --resume reads it on a GPU
    assert state["rng"][0]["torch"].device.type == "cuda"
    set_rng_state(state["rng"][0])
    got = (torch.rand(3), torch.rand(3, device="cuda").cpu(), random.random())
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1]) and got[2] == expected[2]


# --- a training run (a subprocess, as a user runs it); kill -9 + resume on the GPU: tests/faults/test_gpu_kills.py


def test_compile_reports_its_compile_time(tmp_path):
    argv = [
        sys.executable, "-m", "imgcls", "train", "--recipe", "digits", "--model", "nin_cifar", "--device", "cuda",
        "--epochs", "1", "--batch-size", "64", "--compile", "--out", str(tmp_path / "run"),
        "--set", "train.report=false", "--set", "train.progress=none",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "compiled" in done.stdout and "imgcls: torch.compile: first step " in done.stdout, done.stdout[-2000:]
