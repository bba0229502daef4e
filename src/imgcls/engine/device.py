"""Where a run computes (``--device``) and the CUDA settings that make a GPU run either reproducible or fast.

``--device`` takes ``auto`` (the GPU when one is visible, else the CPU), ``cpu``, ``cuda`` (the current GPU) or
``cuda:N``. Asking for CUDA where there is none is a one-line `UserError` that says which of the two causes it
is: a PyTorch built without CUDA (the CPU wheel: ``make install TORCH=cuda`` brings the CUDA build), or a CUDA
build that sees no GPU (no driver, or ``CUDA_VISIBLE_DEVICES`` hides them). Under ``torchrun`` each process
takes the GPU of its local rank whatever the index given.

`device_settings` sets, for the time of a run, how cuDNN and PyTorch choose GPU kernels (``train.deterministic``):

- ``True`` (the default): cuDNN's deterministic algorithms, chosen by heuristics (no benchmark search), PyTorch's
  deterministic implementations where an op has one (warning about those that have none), and a fixed cuBLAS
  workspace. The same run gives the same bits, so a resumed run ends with the weights of an uninterrupted one, as
  on the CPU (whose kernels are deterministic for a fixed thread count: the setting changes nothing there).
- ``False``: ``torch.backends.cudnn.benchmark``: cuDNN times its algorithms once per input shape and keeps the
  fastest. Training batches all have one shape (the last incomplete batch is dropped), so the search runs once
  per shape (and once more for the last validation batch). Faster, but the chosen algorithm may differ between
  two processes, so a resume continues the same run without repeating it bit for bit.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator

import torch
import torch.utils.deterministic

from imgcls.engine.config import DEVICES
from imgcls.errors import UserError

CUBLAS_WORKSPACE = ":4096:8"  # cuBLAS's documented setting for reproducible results (one 4 MiB workspace x 8)


def cuda_missing_reason() -> str | None:
    """Why CUDA cannot be used here, in words for an error message; None when a GPU is visible."""
    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None:
        return (
            f"this PyTorch ({torch.__version__}) is built without CUDA; install the CUDA build "
            "(make install TORCH=cuda) or use --device cpu"
        )
    return (
        f"PyTorch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU (no NVIDIA driver, or "
        "CUDA_VISIBLE_DEVICES hides them); use --device cpu"
    )


def resolve_device(requested: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; ``cpu``, ``cuda`` and ``cuda:N`` are checked.

    Raises:
        UserError: an unknown device, CUDA asked for where it is missing (`cuda_missing_reason`), or a GPU index
            beyond those visible.
    """
    requested = str(requested).strip().lower()
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cpu":
        return "cpu"
    match = re.fullmatch(r"cuda(?::(\d+))?", requested)
    if match is None:
        raise UserError(f"--device {requested}: unknown device (choose from {', '.join(DEVICES)} or cuda:N)")
    reason = cuda_missing_reason()
    if reason is not None:
        raise UserError(f"--device {requested}: {reason}")
    count = torch.cuda.device_count()
    if match.group(1) is not None and int(match.group(1)) >= count:
        visible = "cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
        raise UserError(f"--device {requested}: only {count} CUDA device{'s' * (count > 1)} visible ({visible})")
    return requested


@contextlib.contextmanager
def device_settings(device: str, deterministic: bool = True) -> Iterator[None]:
    """Select ``device`` and set the kernel choice of the module docstring; everything is restored on exit."""
    if not device.startswith("cuda"):
        yield
        return
    previous = (
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.cuda.current_device(),
    )
    if torch.device(device).index is not None:
        torch.cuda.set_device(torch.device(device))
    if deterministic:
        # Read by PyTorch when it first sets up cuBLAS: a process that ran CUDA matrix products before keeps its
        # workspace (then set it in the environment before starting Python).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    # Deterministic mode would also fill every new tensor's memory (NaN) before use, a cost on each allocation
    # that only matters to code reading memory it never wrote; none of ours does.
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = previous[0], previous[1]
        torch.use_deterministic_algorithms(previous[2], warn_only=previous[3])
        torch.utils.deterministic.fill_uninitialized_memory = fill
        torch.cuda.set_device(previous[4])


def describe(device: str) -> str:
    """``cpu`` or the GPU's name and index, for the run summary (``cuda:0 NVIDIA H200``)."""
    if not device.startswith("cuda"):
        return device
    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index
    return f"cuda:{index} {torch.cuda.get_device_name(index)}"


__all__ = ["cuda_missing_reason", "describe", "device_settings", "resolve_device"]
