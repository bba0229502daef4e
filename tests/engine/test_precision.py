"""Precision `auto` (the one bf16 probe), autocast, the memory format, the compile clock and `--device`."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from imgcls.engine import precision as P
from imgcls.engine.config import resolve_config
from imgcls.engine.device import cuda_missing_reason, device_settings, resolve_device
from imgcls.engine.precision import CpuFeatures, cpu_has_bf16, resolve_precision, use_channels_last
from imgcls.engine.train import train
from imgcls.errors import UserError
from imgcls.inference import predictor


def test_auto_on_cpu_follows_the_bf16_units():
    chosen = resolve_precision("auto", "cpu")
    assert chosen.name == ("bf16" if cpu_has_bf16() else "fp32")
    assert chosen.reason.startswith("CPU with bf16 units") == cpu_has_bf16()  # said in the run summary


# (machine, oneDNN bf16 kernels, AVX512-BF16, AMX) -> bf16 units?
CPUS = {
    "Zen 3 / Haswell (AVX2)": (("x86_64", False, False, False), False),
    "Skylake-SP / Cascade Lake / Ice Lake (AVX-512, no BF16)": (("x86_64", True, False, False), False),
    "Arrow Lake / Sierra Forest (AVX2-VNNI-2)": (("x86_64", True, False, False), False),
    "Cooper Lake / Zen 4 / Zen 5 (AVX512-BF16)": (("x86_64", True, True, False), True),
    "Sapphire Rapids (AMX)": (("x86_64", True, True, True), True),
    "Windows on Zen 4": (("AMD64", True, True, False), True),
    "Graviton 3 (Arm BF16)": (("aarch64", True, False, False), True),
    "Graviton 2 (Arm, no BF16)": (("aarch64", False, False, False), False),
    "a PyTorch without oneDNN": (("x86_64", False, True, True), False),
}


@pytest.mark.parametrize("cpu", CPUS)
def test_bf16_means_units_that_compute_in_bf16_not_emulation(cpu):
    features, expected = CPUS[cpu]
    assert CpuFeatures(*features).bf16_units() is expected
    assert CpuFeatures(*features).describe().startswith("CPU with bf16 units") is expected


def test_this_cpu_agrees_with_the_kernel_flags():
    # Linux lists avx512_bf16 / amx_bf16 among the flags of CPUs that have them: the probe must say the same.
    cpuinfo = Path("/proc/cpuinfo")
    if not (sys.platform.startswith("linux") and platform.machine() == "x86_64" and cpuinfo.is_file()):
        pytest.skip("reads the x86 CPU flags of /proc/cpuinfo")
    flags = set(next(ln for ln in cpuinfo.read_text().splitlines() if ln.startswith("flags")).split(":")[1].split())
    assert cpu_has_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})


def test_training_and_prediction_share_the_probe():
    # Two probes used to disagree (oneDNN's "has bf16 kernels" against "has bf16 units") on AVX-512 CPUs without
    # BF16: training in bf16 while the Predictor chose fp32. Now both ask cpu_has_bf16.
    assert predictor.cpu_has_bf16 is P.cpu_has_bf16
    assert not hasattr(predictor, "native_bf16")
    assert predictor.resolve_precision("auto") == resolve_precision("auto", "cpu").name


def test_bf16_autocast_runs_convolutions_in_bf16_and_fp32_does_not():
    conv = nn.Conv2d(3, 4, 3)
    x = torch.randn(2, 3, 8, 8)
    with resolve_precision("bf16", "cpu").autocast():
        assert conv(x).dtype == torch.bfloat16
    with resolve_precision("fp32", "cpu").autocast():
        assert conv(x).dtype == torch.float32
    assert not resolve_precision("bf16", "cpu").grad_scaler().is_enabled()  # bf16 needs no loss scaling


def test_channels_last_for_convolutional_nets_only():
    assert use_channels_last(nn.Sequential(nn.Conv2d(1, 2, 3)), None)
    assert not use_channels_last(nn.Sequential(nn.Linear(2, 2)), None)
    assert not use_channels_last(nn.Sequential(nn.Conv2d(1, 2, 3)), False)


def test_compile_clock_reports_the_first_step_against_the_next(monkeypatch):
    ticks = iter([0.0, 30.0, 30.5, 31.0, 31.5, 32.0, 32.5, 33.0])  # a 30 s first step, then 0.5 s steps
    monkeypatch.setattr(P.time, "perf_counter", lambda: next(ticks))
    clock = P.CompileClock(True, steps=5)
    notes = [clock.step() for _ in range(7)]
    assert notes[:5] == [None] * 5 and notes[6] is None  # said once, after the first step and five more
    assert notes[5] == "imgcls: torch.compile: first step 30.0 s, then 500.0 ms per step: about 29.5 s of compilation"
    assert P.CompileClock(False).step() is None


def test_bad_choices_are_user_errors():
    with pytest.raises(UserError, match="--precision"):
        resolve_precision("fp8", "cpu")
    with pytest.raises(UserError, match=r"^--device tpu: unknown device \(choose from auto, cpu, cuda or cuda:N\)$"):
        resolve_device("tpu")
    with pytest.raises(UserError, match="unknown device"):
        resolve_device("cuda:x")
    assert resolve_device("cpu") == resolve_device("CPU") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_asked_for_and_absent_is_one_line_and_no_run_folder(tmp_path):
    if torch.version.cuda is None:
        reason = (
            f"this PyTorch ({torch.__version__}) is built without CUDA; install the CUDA build "
            "(make install TORCH=cuda) or use --device cpu"
        )
    else:
        reason = (
            f"PyTorch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU (no NVIDIA driver, or "
            "CUDA_VISIBLE_DEVICES hides them); use --device cpu"
        )
    assert cuda_missing_reason() == reason
    run = tmp_path / "run"
    with pytest.raises(UserError) as caught:
        train(resolve_config("digits", {"train": {"device": "cuda", "out": str(run)}}))
    assert str(caught.value) == f"--device cuda: {reason}"
    argv = [sys.executable, "-m", "imgcls", "train", "--data", "digits", "--model", "lenet5", "--out", str(run)]
    done = subprocess.run([*argv, "--device", "cuda:1"], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stderr) == (2, f"imgcls: error: --device cuda:1: {reason}\n")
    assert not run.exists()


def test_device_settings_change_nothing_on_the_cpu():
    before = (torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled())
    with device_settings("cpu", deterministic=True):
        assert (torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled()) == before
