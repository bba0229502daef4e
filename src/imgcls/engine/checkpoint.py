"""``checkpoints/last.pt``: everything a resume needs, written atomically, read without unpickling code.

A checkpoint holds the model, optimiser, schedule, loss scaler and EMA states, the epoch, the optimiser step,
the batch index inside the epoch (the sampler position: the data layer's order and augmentation depend only
on ``(seed, epoch, batch index)``), the history of finished epochs, and every random number generator the
loop touches (torch CPU and CUDA, NumPy, Python's ``random``): dropout draws from the global torch
generator, so a mid-epoch resume is exact only when that state comes back too.

Everything is stored as tensors or plain Python types, so ``torch.load(weights_only=True)`` can read it and
a tampered file cannot run code. Writes go to a temporary file in the same folder, are fsync'ed and renamed
over the old file, so a crash at any moment leaves either the old or the new checkpoint, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
from glob import escape as glob_escape
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgcls.errors import UserError

FORMAT_VERSION = 1


def rng_state() -> dict[str, Any]:
    """Every RNG state as tensors and plain types."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(np_state[0]),
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": _python_state_plain(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _python_state_plain(state: tuple) -> list:
    version, internal, gauss = state
    return [int(version), [int(v) for v in internal], gauss]


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` returned (also after ``load_checkpoint(map_location="cuda")``, which puts its
    tensors on the GPU: generator states are CPU byte tensors)."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.cpu() for t in state["cuda"]])


def _fsync_dir(folder: Path) -> None:
    # The rename is durable only once the directory entry is on disk (POSIX); Windows cannot open folders.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale_temporaries(path: Path, keep: Path) -> None:
    """Delete what writers killed mid-save left behind (``.last.pt.<pid>.tmp``, each as large as a checkpoint).

    One process (rank 0) writes a run's checkpoint, so any other temporary of the same file is an orphan;
    without this, every kill -9 during a save would leave a checkpoint-sized file in the run folder forever.
    """
    for stale in path.parent.glob(f".{glob_escape(path.name)}.*.tmp"):
        if stale != keep and stale.name.removeprefix(f".{path.name}.").removesuffix(".tmp").isdigit():
            with contextlib.suppress(OSError):
                stale.unlink()


def io_failure_reason(exc: BaseException) -> str | None:
    """The operating system's reason when `exc` is (or was caused by) a failed write, e.g. a full disk.

    torch.save reports a short write as a RuntimeError raised while handling the OSError, and safetensors as
    its own error type with the OS message inside, so the chain and the text are both searched. None means the
    failure is not about the file system and must not be disguised as a user error.
    """
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError):
            return seen.strerror or str(seen)
        seen = seen.__cause__ or seen.__context__
    for message in ("No space left on device", "Disk quota exceeded", "Read-only file system"):
        if message in str(exc):
            return message
    return None


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename, fsync of the folder).

    Raises:
        UserError: the file system refused the write (full disk, quota, read-only); the previous checkpoint is
            left as it was and the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    _remove_stale_temporaries(path, keep=tmp)
    try:
        with open(tmp, "wb") as f:
            torch.save({"format_version": FORMAT_VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        reason = io_failure_reason(exc)
        if reason is None:
            raise
        raise UserError(f"{path}: cannot write the checkpoint ({reason}); the previous one is unchanged") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; a missing, damaged or foreign file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no checkpoint to resume from")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path}: unreadable checkpoint ({reason[:160]})") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path}: not an imgcls checkpoint (format version {FORMAT_VERSION} expected)")
    return state


__all__ = ["FORMAT_VERSION", "io_failure_reason", "load_checkpoint", "rng_state", "save_checkpoint", "set_rng_state"]
