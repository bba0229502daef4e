"""What every augmentation op shares: random draws from the caller's generator and reusable per-thread buffers.

Every draw is made on the CPU from the `torch.Generator` the loader passes in (then moved to the batch's device),
never from the global RNG, so the same seed gives the same batch on any device and a resumed run replays the
same augmentation.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import torch


def uniform(g: torch.Generator, shape: Sequence[int] | int, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """``shape`` float64 numbers uniform in ``[lo, hi)``."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    u = torch.rand(shape, generator=g, dtype=torch.float64)
    # The unit range needs no scaling (the same numbers; two small ops fewer on the per-batch path).
    return u if (lo, hi) == (0.0, 1.0) else u.mul_(hi - lo).add_(lo)


def bernoulli(g: torch.Generator, n: int, p: float) -> torch.Tensor:
    """``n`` booleans, each true with probability ``p``."""
    return torch.rand(n, generator=g) < p


class Scratch(threading.local):
    """Reusable buffers for one transform's large temporaries, one set per thread.

    Freeing them after every batch lets the C allocator hand the memory back to the kernel and take it again next
    batch, one page fault per 4 KiB (about 2 µs each on a virtual machine: as much as the CIFAR transform itself).
    A buffer is zeroed when made; callers that write only part of it rely on the rest staying as they left it.
    """

    def __init__(self) -> None:
        self.buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        t = self.buffers.get(name)
        if t is None or t.shape != shape or t.dtype != dtype or t.device != device:
            t = self.buffers[name] = torch.zeros(shape, dtype=dtype, device=device)
        return t
