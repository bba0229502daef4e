"""Scenario 6: files that must not be trusted.

* A checkpoint or weights file carrying a pickle payload (an object whose ``__reduce__`` creates a marker file
  when unpickled) is refused on every path that reads one — ``load_checkpoint``, ``train --resume``,
  ``train --weights``, ``predict --model --weights`` — and the marker never appears: nothing ran.
* A ``model.safetensors`` whose SHA-256 differs from ``model.json`` (one byte of a tensor changed, the file still
  well-formed) is refused with one clear line by ``eval``, ``predict``, ``export`` and ``serve``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgcls.cli import main
from imgcls.engine.bundle import ModelMeta, save_bundle
from imgcls.engine.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from imgcls.errors import UserError
from imgcls.models import create_model
from imgcls.run_folder import RunFolder

pytestmark = pytest.mark.faults


class Payload:
    """Unpickling this calls ``open(marker, "w")``: harmless, but visible if it ever runs."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def run(tmp_path) -> Path:
    """A run folder as the engine leaves it: LeNet-5 weights + model.json, and a checkpoint of those weights."""
    run = tmp_path / "run"
    model = create_model("lenet5", num_classes=10, in_chans=1)
    meta = ModelMeta("lenet5", 10, [str(i) for i in range(10)], [1, 32, 32], [0.5], [0.25], in_chans=1)
    save_bundle(run, model, meta)
    save_checkpoint(run / "checkpoints" / "last.pt", {"model": model.state_dict(), "epoch": 0, "batch": 3})
    return run


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "seven.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8), "L").save(path)
    return path


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("imgcls: error: ") and err.count("\n") == 1, err
    return err.strip()


def _poison(path: Path, marker: Path, wrap_checkpoint: bool) -> None:
    """Overwrite `path` with a real-looking state (real tensors) that also carries the payload."""
    state = load_checkpoint(path) if wrap_checkpoint else {"fc.weight": torch.zeros(10, 84)}
    state["extra"] = Payload(marker)
    torch.save(state, path)


def test_pickle_payload_in_a_checkpoint_is_refused_and_never_runs(run, tmp_path, kit, capsys, figure):
    marker = tmp_path / "PWNED"
    ckpt = run / "checkpoints" / "last.pt"
    _poison(ckpt, marker, wrap_checkpoint=True)
    with pytest.raises(UserError, match="unreadable checkpoint"):
        load_checkpoint(ckpt)
    assert main(kit.train_argv(run, "--resume", epochs=2)) == 2
    assert str(ckpt) in _error_line(capsys)
    assert not marker.exists()
    assert torch.load(ckpt, weights_only=False)["format_version"] == FORMAT_VERSION  # the file was a real one...
    assert marker.exists()  # ...and the payload is live: only weights_only=True stood between it and us
    figure("untrusted_checkpoint", {"refused": ["load_checkpoint", "train --resume"], "payload_ran": False})


def test_pickle_payload_in_a_weights_file_is_refused_and_never_runs(run, tmp_path, image, kit, capsys, figure):
    marker = tmp_path / "PWNED"
    weights = tmp_path / "weights.pt"
    _poison(weights, marker, wrap_checkpoint=False)
    fresh = tmp_path / "fresh"
    assert main([*kit.train_argv(fresh, epochs=1), "--weights", str(weights)]) == 2
    assert str(weights) in _error_line(capsys)
    assert main(["predict", "--model", "lenet5", "--weights", str(weights), str(image)]) == 2
    assert str(weights) in _error_line(capsys)
    assert not marker.exists()
    assert not (fresh / "checkpoints").exists()
    figure("untrusted_weights", {"refused": ["train --weights", "predict --weights"], "payload_ran": False})


def _tamper(run: Path) -> None:
    """Change one byte of tensor data at the end of the weights file: still valid safetensors, other weights."""
    path = RunFolder(run).weights
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))


def test_weights_that_differ_from_model_json_are_refused(run, tmp_path, image, kit, capsys, figure):
    _tamper(run)
    assert main(["eval", "--run", str(run)]) == 2
    assert "SHA-256" in _error_line(capsys)
    assert main(["predict", "--run", str(run), str(image)]) == 2
    assert "SHA-256" in _error_line(capsys)
    assert main(["export", "--run", str(run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    assert "SHA-256" in _error_line(capsys)
    assert not (tmp_path / "m.onnx").exists()
    # serve refuses before it listens: the real command, which would otherwise run until stopped.
    port = str(kit.free_port())
    done = kit.run_to_end(kit.imgcls("serve", "--run", str(run), "--port", port), timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imgcls: error: ") and "SHA-256" in lines[0], done.stderr
    assert "refusing" in lines[0] and str(RunFolder(run).weights) in lines[0]
    figure("untrusted_sha", {"refused": ["eval", "predict", "export", "serve"]})
