"""A rank for tests/faults/test_torchrun.py: joins the group, sums one tensor, and on the first start rank 1 dies.

Run by ``torchrun --nproc_per_node 2 --max-restarts 1``. Every start prints one JSON line per rank (restart count,
rank, the sum over ranks). On the first start rank 1 exits with status 3 after the sum, and rank 0 waits in a
barrier that cannot complete, as a surviving rank of a real run would, until torchrun stops it and restarts both.
"""

from __future__ import annotations

import json
import os

import torch

from imgcls.engine import distributed as D


def main() -> None:
    info = D.env_info()
    D.join_process_group("cpu", info, timeout_s=120)
    total = D.all_reduce_sum(torch.tensor([info.rank + 1]))
    print(json.dumps({"restart": D.elastic_restart(), "rank": info.rank, "sum": int(total[0])}), flush=True)
    if D.elastic_restart() == 0:
        if info.rank == 1:
            os._exit(3)
        D.barrier()
    D.cleanup()


if __name__ == "__main__":
    main()
