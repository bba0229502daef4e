"""Scenario 4: NaN/Inf injected into a batch, a loss or a gradient → the step is skipped; a run whose loss stays
non-finite stops after ``train.max_bad_steps`` with its last good checkpoint intact; two ranks decide alike.

The injection is a model, not a patch of the engine: a small launcher script registers ``faulty_lenet5``
(LeNet-5 that, on chosen training forward calls, multiplies its input batch by NaN, sets a logit to +Inf so the
loss is non-finite, or passes a NaN gradient backwards from finite logits), then runs the real command line —
in one process, or under ``torchrun`` with 2 gloo ranks on 127.0.0.1, where only rank 1 is hit.
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import pytest
import torch

from imgcls.engine.checkpoint import load_checkpoint

pytestmark = pytest.mark.faults

STEPS_PER_EPOCH = 1618 // 64

LAUNCHER = '''
"""imgcls with one extra model, faulty_lenet5, that injects NaN/Inf on chosen training forward calls."""
import os
import sys

import torch

from imgcls.cli import main
from imgcls.models import register_model
from imgcls.models.lenet import LeNet5


class NaNGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("nan"))


class FaultyLeNet5(LeNet5):
    def __init__(self, faults=(), from_call=None, rank=None, **kw):
        super().__init__(**kw)
        self.faults = {int(call): kind for call, kind in faults}
        self.from_call, self.rank, self.calls = from_call, rank, 0

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        self.calls += 1
        kind = self.faults.get(self.calls)
        if self.from_call is not None and self.calls >= self.from_call:
            kind = "batch"
        if self.rank is not None and int(os.environ.get("RANK", 0)) != self.rank:
            kind = None
        if kind == "batch":
            x = x * float("nan")
        out = super().forward(x)
        if kind == "loss":
            out = out.clone()
            out[:, 0] = float("inf")
        if kind == "grad":
            out = NaNGradient.apply(out)
        return out


@register_model(input_size=(1, 32, 32))
def faulty_lenet5(**kw):
    return FaultyLeNet5(**kw)


sys.exit(main(sys.argv[1:]))
'''


@pytest.fixture
def launcher(tmp_path) -> Path:
    path = tmp_path / "faulty_imgcls.py"
    path.write_text(LAUNCHER)
    return path


def _argv(kit, run: Path, kwargs: str, epochs: int, batch: int = 64, *extra: str) -> list[str]:
    return [
        *kit.train_argv(run, epochs=epochs, batch=batch),
        "--model", "faulty_lenet5", "--set", f"model.kwargs={kwargs}", "--set", "train.max_bad_steps=3", *extra,
    ]  # fmt: skip


def _finite(state: dict) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in state["model"].values() if t.is_floating_point())


def _rows(run: Path) -> list[dict]:
    return list(csv.DictReader((run / "metrics.csv").open()))


def _skips_and_learns(kit, launcher: Path, run: Path, faults: list[tuple[int, str]]) -> int:
    """Train 2 epochs with `faults` injected; check they were skipped without harm. Returns the skipped count."""
    spec = "{faults: [" + ", ".join(f"[{call}, {kind}]" for call, kind in faults) + "]}"
    done = kit.run_to_end([sys.executable, str(launcher), *_argv(kit, run, spec, epochs=2)])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    # The injected steps did not happen, and none of the NaNs reached the weights or the momentum.
    assert state["step"] == 2 * STEPS_PER_EPOCH - len(faults)
    assert _finite(state)
    assert all(bool(torch.isfinite(s["momentum_buffer"]).all()) for s in state["optimizer"]["state"].values())
    rows = _rows(run)
    assert all(math.isfinite(float(r["train_loss"])) and math.isfinite(float(r["val_loss"])) for r in rows)
    assert float(rows[-1]["val_top1"]) > 80  # the run still learned
    return 2 * STEPS_PER_EPOCH - state["step"]


def test_nan_batch_infinite_loss_and_nan_gradient_are_skipped(tmp_path, kit, launcher, figure):
    # No gradient clipping configured: a NaN gradient from a finite loss must be caught all the same.
    batch_loss = [(3, "batch"), (9, "loss"), (30, "batch"), (31, "loss")]
    gradient = [(15, "grad"), (40, "grad")]
    skipped = _skips_and_learns(kit, launcher, tmp_path / "run", batch_loss + gradient)
    assert skipped == len(batch_loss) + len(gradient)
    figure("nonfinite_batch_loss", {"injected": len(batch_loss), "skipped": len(batch_loss)})
    figure("nonfinite_gradient", {"injected": len(gradient), "skipped": len(gradient)})


@pytest.mark.slow
def test_persistent_nan_stops_after_the_limit_with_the_last_good_checkpoint(tmp_path, kit, launcher, figure):
    run = tmp_path / "run"
    start = STEPS_PER_EPOCH + 5  # the second epoch turns bad for good
    done = kit.run_to_end([sys.executable, str(launcher), *_argv(kit, run, f"{{from_call: {start}}}", epochs=3)])
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    err = done.stderr.strip().splitlines()
    assert err[-1].startswith("imgcls: error:") and "NaN or infinite for 3 steps in a row" in err[-1]
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert (state["epoch"], state["batch"], state["step"]) == (1, 0, STEPS_PER_EPOCH)
    assert _finite(state)
    assert len(_rows(run)) == 1
    figure("nonfinite_persistent", {"max_bad_steps": 3, "exit_status": 2, "checkpoint_step": state["step"]})


def _torchrun(kit, launcher: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(kit.free_port()), *extra, str(launcher),
    ]  # fmt: skip


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="gloo on loopback is exercised on Linux")
def test_two_ranks_take_the_same_decision(tmp_path, kit, launcher, figure):
    # Only rank 1 sees the faults; rank 0 must skip the same steps (else DDP hangs or the ranks diverge).
    run = tmp_path / "skip"
    faults = "{rank: 1, faults: [[3, batch], [9, loss], [15, grad]]}"
    argv = _torchrun(kit, launcher) + _argv(kit, run, faults, 1, 32, "--precision", "fp32")
    done = kit.run_to_end(argv, GLOO_SOCKET_IFNAME="lo")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["world_size"] == 2 and state["step"] == 1618 // 2 // 32 - 3
    assert _finite(state)

    stop = tmp_path / "stop"
    argv = _torchrun(kit, launcher) + _argv(kit, stop, "{rank: 1, from_call: 10}", 1, 32, "--precision", "fp32")
    done = kit.run_to_end(argv, GLOO_SOCKET_IFNAME="lo")
    assert done.returncode != 0
    out = done.stdout + done.stderr
    # Both ranks stop with the same one-line reason: rank 0 decided from rank 1's non-finite loss.
    assert out.count("imgcls: error: the loss or its gradient was NaN or infinite for 3 steps in a row") == 2, out[
        -3000:
    ]
    assert not (stop / "checkpoints" / "last.pt").exists() or _finite(load_checkpoint(stop / "checkpoints" / "last.pt"))
    figure("nonfinite_two_ranks", {"skipped_same_steps": True, "both_stopped": True})
