"""Numeric precision, memory format and compilation: what runs fast on the machine at hand.

``auto`` picks, in order:

- ``bf16`` autocast on CPUs with bf16 arithmetic units (`cpu_has_bf16`) and on GPUs that support bfloat16
  (Ampere and later). bf16 keeps fp32's exponent range, so no loss scaling is needed.
- ``fp16`` autocast with a ``GradScaler`` (dynamic loss scaling, Micikevicius et al. 2018, arXiv:1710.03740)
  on GPUs with fast fp16 but no bf16 (Volta, Turing).
- ``fp32`` otherwise: on a CPU without bf16 units autocast would only add casts.

`cpu_has_bf16` is the one probe of the package: training (here) and prediction (`imgcls.inference`) resolve
``auto`` through it, so a run never trains in one precision and predicts in another on the same CPU. It asks for
units that compute in bf16 — AVX512-BF16 or AMX on x86, the BF16 extension on Arm — not for oneDNN's bf16
kernels alone: oneDNN also offers those on AVX-512 CPUs without bf16 units (Skylake-SP to Ice Lake) and on
AVX2-VNNI-2 ones by converting to fp32 and back, which is slower than fp32 itself.

Convolutional networks run in ``channels_last`` (NHWC), the layout oneDNN and cuDNN's tensor-core kernels
prefer. Results in bf16 are deterministic for a fixed thread count, so exact resume still holds.
``torch.compile`` is optional (``model.compile``); its compilation happens during the first step, whose time
`CompileClock` reports against the steps after it.
"""

from __future__ import annotations

import contextlib
import platform
import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn

from imgcls.engine.config import PRECISIONS
from imgcls.engine.device import resolve_device
from imgcls.errors import UserError

_X86 = ("x86_64", "amd64", "i386", "i686", "x86")


@dataclass(frozen=True)
class CpuFeatures:
    """What decides bf16 on a CPU: the architecture and what PyTorch's probes report."""

    machine: str  # platform.machine(): x86_64, AMD64, aarch64, arm64...
    onednn_bf16: bool  # oneDNN has bf16 kernels here (on x86 also where it only emulates them)
    avx512_bf16: bool  # AVX512-BF16 dot products (Cooper Lake, Sapphire Rapids and later, Zen 4 and later)
    amx: bool  # AMX tiles (Sapphire Rapids and later: AMX-BF16)

    @classmethod
    def probe(cls) -> CpuFeatures:
        """This machine's features (all False where this PyTorch lacks a probe)."""

        def ask(fn) -> bool:
            try:
                return bool(fn())
            except (AttributeError, RuntimeError):
                return False

        return cls(
            machine=platform.machine(),
            onednn_bf16=ask(
                lambda: torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
            ),
            avx512_bf16=ask(torch.cpu._is_avx512_bf16_supported),
            amx=ask(torch.cpu._is_amx_tile_supported),
        )

    def bf16_units(self) -> bool:
        """True where bf16 arithmetic is native, so bf16 autocast is faster than fp32."""
        if not self.onednn_bf16:
            return False  # no bf16 kernels at all (or no oneDNN)
        if self.machine.lower() in _X86:
            return self.avx512_bf16 or self.amx
        return True  # Arm: oneDNN reports bf16 only with the BF16 extension (BFDOT, BFMMLA)

    def describe(self) -> str:
        """The features in words, for the run summary."""
        units = [name for name, on in (("AVX512-BF16", self.avx512_bf16), ("AMX", self.amx)) if on]
        if self.bf16_units():
            return "CPU with bf16 units (" + (", ".join(units) or self.machine) + ")"
        if self.onednn_bf16:
            return "CPU without bf16 units (oneDNN would emulate bf16, slower than fp32)"
        return "CPU without bf16 units"


def cpu_has_bf16() -> bool:
    """True on CPUs that compute in bfloat16 natively (module docstring): where ``auto`` means bf16."""
    return CpuFeatures.probe().bf16_units()


@dataclass(frozen=True)
class Precision:
    """The resolved choice: ``name`` is ``fp32``, ``bf16`` or ``fp16``; ``reason`` says why, for the summary."""

    name: str
    device: str
    reason: str

    @property
    def dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context for forward passes (a no-op for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.split(":")[0], dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling for fp16; a disabled scaler (a pass-through) otherwise."""
        return torch.amp.GradScaler(self.device.split(":")[0], enabled=self.name == "fp16")


def resolve_precision(requested: str, device: str) -> Precision:
    """Turn ``--precision`` into a concrete choice for ``device``."""
    if requested not in PRECISIONS:
        raise UserError(f"--precision: unknown precision {requested} (choose from {', '.join(PRECISIONS)})")
    kind = device.split(":")[0]
    if requested != "auto":
        if requested == "bf16" and kind == "cuda" and not torch.cuda.is_bf16_supported():
            raise UserError("--precision bf16: this GPU does not support bfloat16 (use fp16 or fp32)")
        return Precision(requested, device, "requested")
    if kind == "cuda":
        index = torch.device(device).index
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return Precision("bf16", device, "GPU with bfloat16 support")
        major, _ = torch.cuda.get_device_capability(index)
        if major >= 7:
            return Precision("fp16", device, "GPU with fast fp16 and no bfloat16; loss scaling on")
        return Precision("fp32", device, "GPU without fast half precision")
    features = CpuFeatures.probe()
    return Precision("bf16" if features.bf16_units() else "fp32", device, features.describe())


def is_convolutional(model: nn.Module) -> bool:
    """True when the model has 2-D convolutions (channels_last then pays off)."""
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def use_channels_last(model: nn.Module, requested: bool | None) -> bool:
    """``requested`` when given, otherwise on for convolutional networks."""
    return is_convolutional(model) if requested is None else bool(requested)


def maybe_compile(model: nn.Module, enabled: bool) -> nn.Module:
    """``torch.compile(model)`` when asked; the eager model otherwise."""
    if not enabled:
        return model
    if not hasattr(torch, "compile"):
        raise UserError("--compile: this PyTorch has no torch.compile")
    return torch.compile(model)


class CompileClock:
    """How long ``torch.compile`` took: the first optimiser steps timed against the ones after them.

    ``torch.compile`` compiles lazily, in the first forward and backward; the first step's wall time minus the
    median of the next ``steps`` is the compilation (the loop synchronises with the device every step, when it
    reads the loss, so step boundaries are real). ``step()`` after every optimiser step returns the one line to
    print once that is known, else None. A no-op for an eager model.
    """

    def __init__(self, enabled: bool, steps: int = 5):
        self.enabled, self.steps = enabled, steps
        self.times: list[float] = []
        self.last = time.perf_counter()

    def step(self) -> str | None:
        if not self.enabled or len(self.times) > self.steps:
            return None
        now = time.perf_counter()
        self.times.append(now - self.last)
        self.last = now
        if len(self.times) <= self.steps:
            return None
        first, typical = self.times[0], statistics.median(self.times[1:])
        return (
            f"imgcls: torch.compile: first step {first:.1f} s, then {1000 * typical:.1f} ms per step: "
            f"about {max(first - typical, 0.0):.1f} s of compilation"
        )


__all__ = [
    "PRECISIONS",
    "CompileClock",
    "CpuFeatures",
    "Precision",
    "cpu_has_bf16",
    "is_convolutional",
    "maybe_compile",
    "resolve_device",
    "resolve_precision",
    "use_channels_last",
]
