"""Data-parallel training with ``torch.distributed`` under ``torchrun``, and the one home of every collective.

``torchrun --nproc_per_node N -m imgcls train ...`` starts N processes with ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in the environment; ``init_distributed`` joins them.
Rank 0 alone writes the run folder. Metrics are reduced across ranks, and every decision that changes control
flow (skip a non-finite step, stop, the class map) is agreed collectively: a rank that takes a different branch
waits forever in the next collective.

Backends: on CPU the group is gloo; on GPU it is ``cpu:gloo,cuda:nccl``, one group with a backend per device
type. NCCL moves CUDA tensors only, and the loop's bookkeeping (sample counts, loss sums, the agreed flags) is
made of CPU scalars; with the per-device string a CPU tensor goes through gloo and a CUDA tensor through NCCL,
each without a copy. The functions below are also device-aware for a group that somebody else created with a
single backend (``nccl`` alone, or ``gloo`` alone): a tensor whose device the group cannot move is copied to one
it can and the result copied back.

Every ``torch.distributed`` call of the package lives in this module (a test checks it), so the rules above hold
everywhere. Each function is a no-op, returning its input, when no process group is joined.

On loopback runs gloo may try to bind an interface that cannot reach the other ranks and hang for minutes
in the rendezvous; ``GLOO_SOCKET_IFNAME=lo`` is set for those when the user has not chosen an interface.
"""

from __future__ import annotations

import datetime
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from imgcls.errors import UserError

_LOOPBACK = ("127.0.0.1", "localhost", "::1", "127.0.1.1")
T = TypeVar("T")


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


def backend_for(device: str) -> str:
    """The backend string of the process group for training on ``device``.

    ``cpu`` -> ``gloo``; ``cuda[:N]`` -> ``cpu:gloo,cuda:nccl`` (``cuda:gloo`` where this PyTorch has no NCCL,
    e.g. on Windows), so CPU scalars never reach NCCL (module docstring).
    """
    if not device.startswith("cuda"):
        return "gloo"
    return "cpu:gloo,cuda:" + ("nccl" if dist.is_nccl_available() else "gloo")


def init_distributed(device: str = "cpu", timeout_s: float = 600.0) -> DistInfo:
    """Join the process group described by the environment; a no-op for a single process.

    Args:
        device: ``cpu`` or ``cuda`` (one GPU per local rank); chooses the backend (`backend_for`).
        timeout_s: how long collectives wait for a missing rank before failing.
    """
    info = env_info()
    if not info.enabled or dist.is_initialized():
        return info
    join_process_group(device, info, timeout_s)
    return info


def join_process_group(device: str, info: DistInfo, timeout_s: float = 600.0, backend: str | None = None) -> None:
    """Join the group of ``info.world_size`` processes at ``MASTER_ADDR:MASTER_PORT`` (also with one process).

    ``backend`` overrides `backend_for` (the GPU tests use it to check the device-aware paths under ``nccl``).
    """
    if os.environ.get("MASTER_ADDR", "127.0.0.1") in _LOOPBACK and "GLOO_SOCKET_IFNAME" not in os.environ:
        os.environ["GLOO_SOCKET_IFNAME"] = "lo" if sys.platform.startswith("linux") else "lo0"
    if device.startswith("cuda"):
        torch.cuda.set_device(info.local_rank)
    timeout = datetime.timedelta(seconds=timeout_s)
    dist.init_process_group(
        backend=backend or backend_for(device),
        store=_attempt_store(info, timeout),
        rank=info.rank,
        world_size=info.world_size,
        timeout=timeout,
    )


def _attempt_store(info: DistInfo, timeout: datetime.timedelta) -> dist.Store | None:
    """Under torchrun's static rendezvous, the agent's store seen through a prefix of its own for this start.

    torchrun's agent hosts the store the ranks join through and, with its default static rendezvous
    (``--master_addr``/``--master_port``), keeps it across ``--max-restarts`` restarts, while
    ``init_process_group`` writes the same keys on every start: each rank's gloo address under
    ``default_pg/0//cpu//0/<rank>``. The ranks of a restarted group then read the killed processes' addresses and
    connect to a dead port ("Gloo connectFullMesh failed ... Connection refused") or wait, past any timeout, for a
    mesh that cannot form. A prefix per start (``TORCHELASTIC_RESTART_COUNT``) keeps each group's keys apart.

    The count must be the same in every rank. It is where one agent starts them all (``GROUP_WORLD_SIZE`` 1), and
    under the static rendezvous, where the group never changes and an agent restarts only when one of its own
    workers failed (a lost peer makes every other worker fail too). The static agent's store holds its rank
    assignment (``<run id>/torchelastic/role_info/0``), written before any worker starts. Under the ``c10d``
    rendezvous across nodes, an agent restarted for another node's failure does not count it, so the group joins
    as before there. None outside torchrun: ``init_process_group`` then builds its store from the environment.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    agent_store = dist.TCPStore(host, port, info.world_size, is_master=False, timeout=timeout)
    one_agent = os.environ.get("GROUP_WORLD_SIZE", "1") == "1"
    static = agent_store.check([f"{os.environ.get('TORCHELASTIC_RUN_ID', 'none')}/torchelastic/role_info/0"])
    if not (one_agent or static):
        return None
    return dist.PrefixStore(f"imgcls/start{elastic_restart()}/", agent_store)


def cleanup() -> None:
    """Leave the process group (safe to call when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_active() -> bool:
    """True when this process is in a process group: the functions below then talk to the other ranks."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_active() else 0


def world_size() -> int:
    """The number of processes (1 without a process group)."""
    return dist.get_world_size() if is_active() else 1


# --- the device a collective runs on ---------------------------------------------------------------------------


def backend_devices(backend: str) -> dict[str, str]:
    """Device type -> backend of a process group's backend string.

    ``"cpu:gloo,cuda:nccl"`` -> ``{"cpu": "gloo", "cuda": "nccl"}``; a single backend serves the device type it
    moves: ``"nccl"`` -> ``{"cuda": "nccl"}``, ``"gloo"`` (or any other) -> ``{"cpu": ...}``. gloo can also move
    some CUDA tensors, slowly and not for every collective, so a single gloo backend is treated as CPU-only.
    """
    backend = str(backend).lower()
    if ":" in backend:
        pairs = (part.split(":", 1) for part in backend.split(",") if part.strip())
        return {dev.strip(): name.strip() for dev, name in pairs}
    return {"cuda": backend} if backend == "nccl" else {"cpu": backend}


def comm_device(t: torch.Tensor, backend: str) -> torch.device:
    """Where ``t`` must be for a collective of a group with ``backend``: its own device when the group has a
    backend for that device type, otherwise the current CUDA device (NCCL alone) or the CPU."""
    served = backend_devices(backend)
    if t.device.type in served:
        return t.device
    if "cuda" in served:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _staged(t: torch.Tensor) -> torch.Tensor:
    """A private copy of ``t`` on the device the group moves (module docstring)."""
    return t.detach().to(comm_device(t, dist.get_backend()), copy=True)


# --- collectives -----------------------------------------------------------------------------------------------


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum of a tensor over ranks, as a new tensor on the input's device (a copy without a process group)."""
    if not is_active():
        return values.detach().clone()
    out = _staged(values)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(values.device)


def agree_flags(*flags: bool) -> list[bool]:
    """For each flag, True when ANY rank raised it; one collective for all of them."""
    if not is_active():
        return [bool(f) for f in flags]
    t = _staged(torch.tensor([1.0 if f else 0.0 for f in flags], dtype=torch.float32))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v > 0) for v in t.tolist()]


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` along dim 0 over all ranks, in rank order. Ranks may hold different numbers of rows.

    ``all_gather`` needs equal shapes, so the row counts are exchanged first and each rank pads to the largest.
    Every rank must call it; the trailing dimensions must agree. The result is on ``t``'s device and dtype.
    """
    if not is_active():
        return t
    src = _staged(t)
    if src.dtype == torch.bool:  # gloo has no bool all_gather
        src = src.to(torch.uint8)
    count = torch.tensor([src.shape[0]], device=src.device, dtype=torch.int64)
    counts = [torch.zeros_like(count) for _ in range(world_size())]
    dist.all_gather(counts, count)
    sizes = [int(c.item()) for c in counts]
    longest = max(sizes)
    if src.shape[0] < longest:
        src = torch.cat([src, src.new_zeros((longest - src.shape[0], *src.shape[1:]))])
    parts = [torch.empty_like(src) for _ in range(world_size())]
    dist.all_gather(parts, src.contiguous())
    out = torch.cat([p[:n] for p, n in zip(parts, sizes)])
    return out.to(device=t.device, dtype=t.dtype)


# Object collectives pickle through the group's CPU backend when it has one (a per-device group), else through
# the current CUDA device (``join_process_group`` selects it), so they need no staging.


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s Python object on every rank."""
    if not is_active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's Python object, in rank order (``[obj]`` without a process group)."""
    if not is_active():
        return [obj]
    values: list[Any] = [None] * world_size()
    dist.all_gather_object(values, obj)
    return values


def check_same(value: str, what: str) -> None:
    """Raise a UserError on every rank when ranks disagree on ``value`` (e.g. the class map)."""
    values = all_gather_object(value)
    if any(v != values[0] for v in values):
        differing = next(i for i, v in enumerate(values) if v != values[0])
        raise UserError(f"ranks disagree on {what} (rank 0 vs rank {differing}): each rank must see the same data")


def on_main(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` on rank 0 and share its result; a UserError there is raised on every rank."""
    result, error = None, None
    if rank() == 0:
        try:
            result = fn(*args, **kwargs)
        except UserError as exc:
            error = str(exc)
    result, error = broadcast_object((result, error))
    if error is not None:
        raise UserError(error)
    return result


def barrier() -> None:
    """Wait until every rank gets here."""
    if is_active():
        dist.barrier()


__all__ = [
    "DistInfo",
    "agree_flags",
    "all_gather_cat",
    "all_gather_object",
    "all_reduce_sum",
    "backend_devices",
    "backend_for",
    "barrier",
    "broadcast_object",
    "check_same",
    "cleanup",
    "comm_device",
    "elastic_restart",
    "env_info",
    "init_distributed",
    "is_active",
    "join_process_group",
    "on_main",
    "rank",
    "world_size",
]
