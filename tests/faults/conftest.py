"""Shared pieces of the fault-injection suite (issue 7): real subprocesses, real files, real servers.

Every scenario records the figure the issue asks for with the ``figure`` fixture. When ``IMGCLS_FAULT_FIGURES``
names a JSON file, the figures are merged into it at the end of the session; `benchmarks/bench_reliability.py`
runs the suite that way and turns the file into the "Reliability" section of BENCHMARKS.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from tests.support import free_port

from imgcls.engine.checkpoint import load_checkpoint

FIGURES_ENV = "IMGCLS_FAULT_FIGURES"
_FIGURES: dict[str, object] = {}


def pytest_sessionfinish(session, exitstatus):
    target = os.environ.get(FIGURES_ENV)
    if not target or not _FIGURES:
        return
    path = Path(target)
    merged = json.loads(path.read_text()) if path.is_file() else {}
    merged.update(_FIGURES)
    path.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")


@pytest.fixture(scope="session")
def kit():
    """This module: the helpers below, for tests (``--import-mode=importlib`` cannot import a conftest)."""
    return sys.modules[__name__]


@pytest.fixture
def figure() -> Callable[[str, object], None]:
    """``figure(key, value)``: keep one measured figure for the Reliability section."""

    def record(key: str, value: object) -> None:
        _FIGURES[key] = value

    return record


def subprocess_env(**extra: str) -> dict[str, str]:
    """One intra-op thread (bit-identical CPU kernels across runs), unbuffered output, no inherited interface."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}
    env.pop("GLOO_SOCKET_IFNAME", None)  # the engine chooses loopback itself
    return env


def train_argv(run: Path, *extra: str, epochs: int = 2, batch: int = 64, seed: int = 3) -> list[str]:
    """`imgcls train` on the bundled digits with LeNet-5: a few seconds per epoch on one core."""
    return [
        "train", "--recipe", "digits", "--epochs", str(epochs), "--batch-size", str(batch), "--seed", str(seed),
        "--out", str(run), "--set", "train.save=last", "--set", "train.report=false",
        "--set", "train.progress=none", *extra,
    ]  # fmt: skip


def imgcls(*argv: str) -> list[str]:
    return [sys.executable, "-m", "imgcls", *argv]


def start(argv: list[str], **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        argv, env=subprocess_env(**env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def run_to_end(argv: list[str], timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=subprocess_env(**env), capture_output=True, text=True, timeout=timeout)


def start_group(argv: list[str], **env: str) -> subprocess.Popen:
    """`start` in a process group of its own (a launcher and its workers): `kill_group` ends all of them."""
    return subprocess.Popen(
        argv,
        env=subprocess_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL every process left in `proc`'s group (it may have ended already; its workers may not have)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def group_members(proc: subprocess.Popen) -> list[int]:
    """The processes still alive in `proc`'s process group (Linux: /proc)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == proc.pid and fields[0] != "Z":  # fields: state, ppid, pgrp, ...
                members.append(int(stat.parent.name))
    return members


def read_checkpoint(path: Path) -> dict | None:
    """The checkpoint at `path`, or None while none is there (a reader never sees half a file: rename)."""
    try:
        return load_checkpoint(path) if path.is_file() else None
    except Exception:
        return None


def wait_for_checkpoint(proc: subprocess.Popen, path: Path, done: Callable[[dict], bool], timeout: float = 300) -> dict:
    """Poll `path` until ``done(state)``; fail when the process ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"the run ended (code {proc.returncode}) before the checkpoint waited for:\n{out[-3000:]}")
        state = read_checkpoint(path)
        if state is not None and done(state):
            return state
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"timed out waiting for a checkpoint at {path}")


def assert_same_weights(ours: dict, reference: dict) -> None:
    """Model tensors and optimiser buffers equal bit for bit (``torch.equal``), at the same optimiser step."""
    assert ours["step"] == reference["step"]
    assert ours["model"].keys() == reference["model"].keys()
    for name, tensor in reference["model"].items():
        assert torch.equal(ours["model"][name], tensor), name
    for key, value in reference["optimizer"]["state"].items():
        for buf, tensor in value.items():
            if isinstance(tensor, torch.Tensor):
                assert torch.equal(ours["optimizer"]["state"][key][buf], tensor), (key, buf)


def vm_rss_kib(pid: int) -> int:
    """Resident memory of process `pid` in KiB (``VmRSS`` of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


SERVE_MAX_BYTES = 256 * 1024  # --max-bytes of `served_lenet5`
SERVE_CLASSES = 6


class ServeProcess:
    """``python -m imgcls serve`` on a free port of 127.0.0.1, stopped (SIGTERM, then SIGKILL) at the end.

    Its output goes to ``serve.log`` beside the run folder, never to a pipe: nobody reads a pipe while the tests
    run, and a server whose pipe fills (a warning per malformed request) would block on its next write.
    """

    def __init__(self, run: Path, max_bytes: int = SERVE_MAX_BYTES, max_pixels: int = 4_000_000):
        import httpx

        self.port, self.max_bytes = free_port(), max_bytes
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = run.parent / "serve.log"
        argv = imgcls("serve", "--run", str(run), "--port", str(self.port), "--max-bytes", str(max_bytes))
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [*argv, "--max-pixels", str(max_pixels)], env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 120
        while True:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the server did not start:\n" + self.log.read_text()[-3000:]
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=20)


@contextlib.contextmanager
def served_lenet5(folder: Path, max_bytes: int = SERVE_MAX_BYTES) -> Iterator[ServeProcess]:
    """An untrained LeNet-5 run of `SERVE_CLASSES` classes (3x32x32) saved in ``folder/run`` and served by
    `ServeProcess` while the block runs."""
    from imgcls.engine.bundle import ModelMeta, save_bundle
    from imgcls.models import create_model

    run = folder / "run"
    model = create_model("lenet5", num_classes=SERVE_CLASSES, in_chans=3)
    names = [f"c{i}" for i in range(SERVE_CLASSES)]
    save_bundle(run, model, ModelMeta("lenet5", SERVE_CLASSES, names, [3, 32, 32], [0.5] * 3, [0.25] * 3))
    served = ServeProcess(run, max_bytes)
    try:
        yield served
    finally:
        served.stop()
