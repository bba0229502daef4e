"""Scenario 2 on a GPU: kill -9 at a seeded step of a real CUDA training run, then ``--resume``, bit-identical.

NiN (dropout after its mlpconv blocks, so the CUDA generator matters) on the bundled digits with
``--device cuda``, a checkpoint every 3 optimiser steps, killed at a seeded step, resumed to the end: the final
checkpoint's model and optimiser tensors and the shipped ``model.safetensors`` must equal an uninterrupted run's
bit for bit. ``train.deterministic`` is on (the default): cuDNN's deterministic kernels, no benchmark search.
Needs a CUDA device (``-m gpu``; tools/gpu_check.sh runs it).
"""

from __future__ import annotations

import random
import signal

import pytest
import torch

from imgcls.engine.checkpoint import load_checkpoint

pytestmark = [
    pytest.mark.faults,
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

EPOCHS = 3  # 1618 // 64 = 25 steps per epoch
ON_GPU = ["--model", "nin_cifar", "--device", "cuda", "--set", "train.checkpoint_every_steps=3"]


def test_kill_9_then_resume_on_the_gpu_is_bit_identical(tmp_path, kit):
    reference = tmp_path / "reference"
    done = kit.run_to_end(kit.imgcls(*kit.train_argv(reference, *ON_GPU, epochs=EPOCHS)))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    start = next(line for line in done.stdout.splitlines() if line.startswith("imgcls: nin_cifar"))
    assert " · cuda" in start and (", bf16 (" in start or ", fp16 (" in start), start

    run = tmp_path / "killed"
    ckpt = run / "checkpoints" / "last.pt"
    target = random.Random(12).randrange(10, 60)  # mid-epoch 1 to mid-epoch 3
    proc = kit.start(kit.imgcls(*kit.train_argv(run, *ON_GPU, epochs=EPOCHS)))
    kit.wait_for_checkpoint(proc, ckpt, lambda s: s["step"] >= target)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    killed = load_checkpoint(ckpt)
    resumed = kit.run_to_end(kit.imgcls(*kit.train_argv(run, *ON_GPU, "--resume", epochs=EPOCHS)))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resuming at epoch {killed['epoch'] + 1}, batch {killed['batch']}" in resumed.stdout
    kit.assert_same_weights(load_checkpoint(ckpt), load_checkpoint(reference / "checkpoints" / "last.pt"))
    assert (run / "model.safetensors").read_bytes() == (reference / "model.safetensors").read_bytes()
