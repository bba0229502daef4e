"""imgcls._memory: with freed memory kept, allocating and freeing the same large block again costs no new page
faults; with malloc's defaults every round faults the whole block in again."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import json, resource, sys
import torch
from imgcls._memory import keep_freed_memory
applied = keep_freed_memory()
for _ in range(10):  # the heap grows until the small allocations between blocks have their places
    block = torch.ones(16 << 20)
    del block
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    block = torch.ones(16 << 20)  # 64 MiB, above glibc's largest mmap threshold (32 MiB)
    del block
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"applied": applied, "faults": faults}))
"""


def _probe(keep: str) -> dict:
    env = dict(os.environ, IMGCLS_KEEP_FREED_MEMORY=keep)
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_kept_memory_is_reused_without_new_page_faults():
    kept, default = _probe("1"), _probe("0")
    assert kept["applied"] is True and default["applied"] is False
    pages = 10 * (64 << 20) // 4096
    assert default["faults"] > pages // 2, "malloc's defaults map every 64 MiB block afresh"
    assert kept["faults"] < pages // 20, "a kept heap serves the block again from the same pages"
