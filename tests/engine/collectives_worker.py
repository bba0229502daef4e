"""The collectives tests' ranks (tests/engine/test_distributed.py, tests/engine/test_gpu.py).

`run_ranks` starts ``python tests/engine/collectives_worker.py DEVICE [BACKEND]`` once per rank with ``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` set. Each rank joins the group through
`imgcls.engine.distributed`, runs every collective once on tensors of ``DEVICE`` and once on CPU tensors, and
prints one JSON line of what came back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from imgcls.engine import distributed as D
from imgcls.errors import UserError

REPO = Path(__file__).resolve().parents[2]


def run_ranks(device: str, world: int = 2, backend: str | None = None, timeout: float = 120) -> list[dict]:
    """Start ``world`` ranks on ``device`` (127.0.0.1) and return each rank's JSON answer, in rank order."""
    from tests.support import free_port  # the parent's import: a rank runs this file as a script

    port = str(free_port())
    procs = []
    for rank in range(world):
        env = {
            **os.environ, "OMP_NUM_THREADS": "1", "RANK": str(rank), "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
        }  # fmt: skip
        env.pop("GLOO_SOCKET_IFNAME", None)  # the module chooses loopback itself
        argv = [sys.executable, __file__, device, *([backend] if backend else [])]
        procs.append(subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    answers = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, err.decode()[-3000:]
        answers.append(json.loads(out.decode().strip().splitlines()[-1]))
    return answers


def main() -> None:
    device = sys.argv[1]
    backend = sys.argv[2] if len(sys.argv) > 2 else None
    info = D.env_info()
    D.join_process_group(device, info, timeout_s=60, backend=backend)
    if device.startswith("cuda"):
        device = f"cuda:{info.local_rank}"
    r, out = info.rank, {}
    for where in dict.fromkeys((device, "cpu")):
        counts = D.all_reduce_sum(torch.tensor([r + 1, 10 * (r + 1)], dtype=torch.int64, device=where))
        sums = D.all_reduce_sum(torch.tensor([0.5 * (r + 1)], dtype=torch.float64, device=where))
        # Rank r holds r + 1 rows (uneven shards), bools included (gloo has no bool all_gather).
        rows = torch.full((r + 1, 2), r, dtype=torch.float32, device=where)
        gathered = D.all_gather_cat(rows)
        flags = D.all_gather_cat(torch.tensor([r % 2 == 0] * (r + 1), device=where))
        out[where.split(":")[0]] = {
            "counts": counts.tolist(),
            "counts_device": str(counts.device),
            "sums": sums.tolist(),
            "gathered": gathered.tolist(),
            "gathered_device": str(gathered.device),
            "flags": flags.tolist(),
            "flags_dtype": str(flags.dtype),
        }
    # What the loop did before the per-device group: a CPU scalar straight into the group's own collective.
    try:
        torch.distributed.all_reduce(torch.ones(1))
        out["raw_cpu_all_reduce"] = "ok"
    except (RuntimeError, ValueError) as exc:
        out["raw_cpu_all_reduce"] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    out["agree"] = D.agree_flags(r == 1, False, True)
    out["broadcast"] = D.broadcast_object({"from": r, "list": [r]})
    out["objects"] = D.all_gather_object(f"rank{r}")
    out["on_main"] = D.on_main(lambda: f"made by rank {D.rank()}")
    try:
        D.on_main(_fail)
    except UserError as exc:
        out["on_main_error"] = str(exc)
    try:
        D.check_same(f"classes of rank {r}" if r else "classes", "the class map")
        out["check_same"] = "agreed"
    except UserError as exc:
        out["check_same"] = str(exc)
    D.barrier()
    out["rank"], out["world_size"] = D.rank(), D.world_size()
    D.cleanup()
    print(json.dumps(out), flush=True)


def _fail() -> None:
    raise UserError("--out: refused on rank 0")


if __name__ == "__main__":
    main()
