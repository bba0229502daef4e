"""Data-parallel training and the collectives of `imgcls.engine.distributed`.

The collectives run in two real gloo processes on 127.0.0.1 (tests/engine/collectives_worker.py). The training
test runs 2 processes under torchrun against a single-process run; both see the same global batches: 2 ranks x 16
images interleave the same epoch permutation that one process takes 32 at a time (the data layer shards
``perm[rank::world_size]``), augmentation is off and the precision is fp32, so the weights agree up to the order
of floating-point sums in the gradient all-reduce.
"""

from __future__ import annotations

import ast
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tests.engine.collectives_worker import run_ranks
from tests.support import free_port

from imgcls.engine import distributed as D
from imgcls.engine.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[2]


def test_collectives_on_two_gloo_ranks():
    answers = run_ranks("cpu")
    for rank, got in enumerate(answers):
        cpu = got["cpu"]
        assert cpu["counts"] == [3, 30] and cpu["counts_device"] == "cpu"
        assert cpu["sums"] == [1.5]
        assert cpu["gathered"] == [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]  # rank order, uneven shards unpadded
        assert cpu["flags"] == [True, False, False] and cpu["flags_dtype"] == "torch.bool"
        assert got["raw_cpu_all_reduce"] == "ok"
        assert got["agree"] == [True, False, True]  # raised by rank 1 only: every rank hears it
        assert got["broadcast"] == {"from": 0, "list": [0]}
        assert got["objects"] == ["rank0", "rank1"]
        assert got["on_main"] == "made by rank 0"
        assert got["on_main_error"] == "--out: refused on rank 0"  # rank 0's error, raised on every rank
        assert got["check_same"].startswith("ranks disagree on the class map (rank 0 vs rank 1)")
        assert (got["rank"], got["world_size"]) == (rank, 2)


def test_collectives_are_identity_without_a_process_group():
    t = torch.arange(6).reshape(3, 2)
    assert torch.equal(D.all_gather_cat(t), t)
    assert torch.equal(D.all_reduce_sum(t), t) and D.all_reduce_sum(t) is not t
    assert D.agree_flags(True, False) == [True, False]
    assert D.all_gather_object("x") == ["x"] and D.broadcast_object(3) == 3
    assert D.on_main(lambda: 7) == 7
    assert (D.rank(), D.world_size()) == (0, 1)


def test_one_group_carries_cpu_and_cuda_tensors():
    # NCCL moves CUDA tensors only: a GPU run's group has gloo for the loop's CPU scalars beside NCCL.
    cuda_backend = "nccl" if torch.distributed.is_nccl_available() else "gloo"
    assert D.backend_for("cuda") == D.backend_for("cuda:1") == f"cpu:gloo,cuda:{cuda_backend}"
    assert D.backend_for("cpu") == "gloo"
    assert D.backend_devices("cpu:gloo,cuda:nccl") == {"cpu": "gloo", "cuda": "nccl"}
    # A group made elsewhere with one backend: NCCL serves CUDA alone, gloo is used for the CPU.
    assert D.backend_devices("nccl") == {"cuda": "nccl"}
    assert D.backend_devices("gloo") == {"cpu": "gloo"}
    cpu = torch.zeros(1)
    assert D.comm_device(cpu, "cpu:gloo,cuda:nccl") == torch.device("cpu")
    assert D.comm_device(cpu, "gloo") == torch.device("cpu")
    assert D.comm_device(torch.zeros(1, device="meta"), "gloo") == torch.device("cpu")


# Calls that talk to other ranks or manage the group; any of them outside engine/distributed.py would bypass the
# device rules of that module (a CPU scalar sent to NCCL cannot even start).
COLLECTIVES = {
    "all_reduce", "all_gather", "all_gather_object", "all_gather_into_tensor", "all_to_all", "all_to_all_single",
    "broadcast", "broadcast_object_list", "barrier", "monitored_barrier", "reduce", "reduce_scatter",
    "reduce_scatter_tensor", "gather", "gather_object", "scatter", "scatter_object_list", "send", "recv", "isend",
    "irecv", "init_process_group", "destroy_process_group", "new_group",
}  # fmt: skip


def _distributed_uses(tree: ast.AST) -> list[tuple[int, str]]:
    """Lines of ``tree`` that import ``torch.distributed``, use anything of it, or reach a collective through it."""
    aliases, found = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "torch.distributed" or a.name.startswith("torch.distributed."):
                    aliases.add(a.asname or "torch")
                    found.append((node.lineno, f"import {a.name}"))
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "torch" and any(a.name == "distributed" for a in node.names):
                found.append((node.lineno, "from torch import distributed"))
            elif node.module.startswith("torch.distributed"):
                found.append((node.lineno, f"from {node.module} import ..."))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        owner = ast.unparse(node.value)
        if owner == "torch.distributed" or (
            node.attr in COLLECTIVES and ("distributed" in owner.split(".") or owner in aliases - {"torch"})
        ):
            found.append((node.lineno, ast.unparse(node)))
    return found


def test_no_collective_outside_the_distributed_module():
    home = REPO / "src" / "imgcls" / "engine" / "distributed.py"
    offenders = []
    for path in sorted((REPO / "src" / "imgcls").rglob("*.py")):
        if path != home:
            offenders += [
                f"{path.relative_to(REPO)}:{line}: {what}"
                for line, what in _distributed_uses(ast.parse(path.read_text()))
            ]
    assert not offenders, "torch.distributed used outside imgcls.engine.distributed:\n" + "\n".join(offenders)


def test_the_scan_sees_each_spelling():
    code = (
        "import torch.distributed as dist\nimport torch\nfrom torch import distributed\n"
        "dist.all_reduce(t)\ntorch.distributed.all_gather_object(a, b)\ndistributed.barrier()\n"
        "from torch.distributed import broadcast\nr = torch.distributed.get_rank()\n"
    )
    lines = sorted({line for line, _ in _distributed_uses(ast.parse(code))})
    assert lines == [1, 3, 4, 5, 6, 7, 8]
    assert _distributed_uses(ast.parse("import torch\nx = torch.nn.parallel.DistributedDataParallel(m)\n")) == []


def _train_args(run: Path, batch: int) -> list[str]:
    return [
        "train", "--recipe", "digits", "--epochs", "1", "--batch-size", str(batch), "--precision", "fp32",
        "--seed", "5", "--out", str(run), "--set", "augment.crop_padding=0", "--set", "schedule.warmup_epochs=0",
        "--set", "train.save=last", "--set", "train.progress=none",
    ]  # fmt: skip


def _rows(run: Path) -> list[dict]:
    return list(csv.DictReader((run / "metrics.csv").open()))


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("GLOO_SOCKET_IFNAME", None)  # the engine sets it for loopback runs
    return env


def _launcher(*extra: str) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()), *extra, "-m", "imgcls",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def multi_run(tmp_path_factory):
    multi = tmp_path_factory.mktemp("ddp") / "multi"
    done = subprocess.run(_launcher() + _train_args(multi, 16), env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return multi, done


@pytest.mark.slow
def test_two_ranks_match_one_process(tmp_path, multi_run):
    single = tmp_path / "single"
    subprocess.run(
        [sys.executable, "-m", "imgcls", *_train_args(single, 32), "--set", "train.report=false"],
        env=_env(), check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    multi, done = multi_run
    assert "2 processes" in done.stdout
    assert done.stdout.count("epoch 1/1  train loss") == 1  # rank 0 alone speaks

    a, b = load_checkpoint(single / "checkpoints" / "last.pt"), load_checkpoint(multi / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 1618 // 32
    assert b["world_size"] == 2 and len(b["rng"]) == 2  # every rank's generator state, for an exact resume
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, rtol=1e-3, atol=1e-4, msg=name)
    one, two = _rows(single)[0], _rows(multi)[0]
    assert float(two["train_loss"]) == pytest.approx(float(one["train_loss"]), rel=1e-3)
    assert float(two["val_loss"]) == pytest.approx(float(one["val_loss"]), rel=1e-3)
    assert abs(float(two["val_top1"]) - float(one["val_top1"])) <= 100 / 179 + 1e-6  # at most one image apart
    # rank 0 wrote the whole run folder, including the final evaluation gathered from both ranks
    assert (multi / "eval.json").is_file() and (multi / "report" / "report.html").is_file()
    assert not list(multi.rglob("*.tmp"))


@pytest.mark.slow
def test_compiled_model_under_two_ranks_trains_like_the_eager_one(tmp_path, multi_run):
    """`model.compile` compiles the DDP-wrapped model (PyTorch's documented order); same result as eager DDP."""
    compiled = tmp_path / "compiled"
    args = _launcher() + _train_args(compiled, 16) + ["--set", "model.compile=true", "--set", "train.report=false"]
    done = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "torch.compile: first step" in done.stdout + done.stderr
    eager, _ = multi_run
    one, two = _rows(eager)[0], _rows(compiled)[0]
    assert float(two["train_loss"]) == pytest.approx(float(one["train_loss"]), rel=1e-3)
    assert abs(float(two["val_top1"]) - float(one["val_top1"])) <= 100 / 179 + 1e-6
