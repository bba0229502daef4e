"""Data-parallel training with ``torch.distributed`` under ``torchrun``.

``torchrun --nproc_per_node N -m imgcls train ...`` starts N processes with ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in the environment; ``init_distributed`` joins them
(gloo on CPU, NCCL on GPU). Rank 0 alone writes the run folder. Metrics are reduced across ranks, and every
decision that changes control flow (skip a non-finite step, stop, the class map) is agreed collectively:
a rank that takes a different branch waits forever in the next collective.

On loopback runs gloo may try to bind an interface that cannot reach the other ranks and hang for minutes
in the rendezvous; ``GLOO_SOCKET_IFNAME=lo`` is set for those when the user has not chosen an interface.
"""

from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from imgcls.errors import UserError

_LOOPBACK = ("127.0.0.1", "localhost", "::1", "127.0.1.1")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """The ranks torchrun put in the environment (a single process when absent)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def elastic_restart() -> int:
    """How many times torchrun has restarted this worker group (``--max-restarts``); 0 on the first start."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0) or 0)


def init_distributed(device: str = "cpu", timeout_s: float = 600.0) -> DistInfo:
    """Join the process group described by the environment; a no-op for a single process.

    Args:
        device: ``cpu`` (gloo) or ``cuda`` (NCCL, one GPU per local rank).
        timeout_s: how long collectives wait for a missing rank before failing.
    """
    info = env_info()
    if not info.enabled:
        return info
    if dist.is_initialized():
        return info
    if os.environ.get("MASTER_ADDR", "127.0.0.1") in _LOOPBACK and "GLOO_SOCKET_IFNAME" not in os.environ:
        os.environ["GLOO_SOCKET_IFNAME"] = "lo" if sys.platform.startswith("linux") else "lo0"
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return info


def cleanup() -> None:
    """Leave the process group (safe to call when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (returns a new tensor; unchanged for a single process)."""
    out = values.detach().clone()
    if is_active():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_reduce_mean(value: float) -> float:
    """Mean of a Python number over ranks."""
    if not is_active():
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / dist.get_world_size()


def agree_flags(*flags: bool) -> list[bool]:
    """For each flag, True when ANY rank raised it; one collective for all of them."""
    if not is_active():
        return [bool(f) for f in flags]
    t = torch.tensor([1.0 if f else 0.0 for f in flags], dtype=torch.float32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v > 0) for v in t.tolist()]


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s Python object on every rank."""
    if not is_active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def check_same(value: str, what: str) -> None:
    """Raise a UserError on every rank when ranks disagree on ``value`` (e.g. the class map)."""
    if not is_active():
        return
    values: list = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    if any(v != values[0] for v in values):
        differing = next(i for i, v in enumerate(values) if v != values[0])
        raise UserError(f"ranks disagree on {what} (rank 0 vs rank {differing}): each rank must see the same data")


def on_main(fn, *args, **kwargs):
    """Run ``fn`` on rank 0 and share its result; a UserError there is raised on every rank."""
    result, error = None, None
    if not is_active() or dist.get_rank() == 0:
        try:
            result = fn(*args, **kwargs)
        except UserError as exc:
            error = str(exc)
    result, error = broadcast_object((result, error))
    if error is not None:
        raise UserError(error)
    return result


def barrier() -> None:
    if is_active():
        dist.barrier()


__all__ = [
    "DistInfo",
    "agree_flags",
    "all_reduce_mean",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "check_same",
    "cleanup",
    "elastic_restart",
    "env_info",
    "init_distributed",
    "is_active",
    "on_main",
]
