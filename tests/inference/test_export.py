"""Export: ONNX and TorchScript files that compute what PyTorch computes, with a dynamic batch axis and metadata."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from imgcls.engine.bundle import ModelMeta, load_bundle
from imgcls.errors import UserError
from imgcls.inference import ExportMismatch, export_onnx, export_run, export_torchscript
from imgcls.inference.predictor import read_onnx_metadata


# A CIFAR-size model and an ImageNet-size architecture (at a reduced input, to stay fast: the layers are the same).
@pytest.mark.parametrize(
    ("name", "size"), [("resnet18_cifar", 32), pytest.param("resnet18", 64, marks=pytest.mark.slow)]
)
def test_onnx_parity_dynamic_batch_and_metadata(kit, tmp_path, name, size):
    run = kit.write_run(tmp_path / "run", name=name, num_classes=10, size=size)
    report = export_run(run, "onnx", tmp_path / "model.onnx")
    assert report.max_abs_diff <= 1e-3 * report.logit_scale and report.batch_sizes == (1, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "run"]  # no temporary left

    model, meta = load_bundle(run)
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    (batch_dim, *rest) = session.get_inputs()[0].shape
    assert isinstance(batch_dim, str) and rest == [3, size, size]  # a named, i.e. dynamic, batch axis
    x = torch.randn(5, 3, size, size, generator=torch.Generator().manual_seed(1))
    (got,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4 * max(1.0, np.abs(expected).max()), rtol=0)

    info = read_onnx_metadata(tmp_path / "model.onnx")
    assert info["classes"] == meta.classes and info["input_size"] == [3, size, size]
    assert info["mean"] == meta.mean and info["std"] == meta.std and info["sha256"] == meta.sha256
    assert info["resize"] == size and info["name"] == name


def test_torchscript_parity_and_extra_files(kit, tmp_path):
    run = kit.write_run(tmp_path / "run", num_classes=10)
    report = export_run(run, "torchscript", tmp_path / "model.pt")
    assert report.format == "torchscript" and report.max_abs_diff <= 1e-3 * report.logit_scale
    extra = {"model.json": ""}
    loaded = torch.jit.load(str(tmp_path / "model.pt"), _extra_files=extra)
    meta = json.loads(extra["model.json"])
    model, bundle_meta = load_bundle(run)
    assert meta["classes"] == bundle_meta.classes and meta["sha256"] == bundle_meta.sha256
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=1e-5, rtol=1e-5)


class _BatchDependent(nn.Module):
    """A module whose Python control flow depends on the batch size: tracing freezes the branch it saw."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 4)

    def forward(self, x):
        out = self.fc(x.flatten(1))
        return out * 3.0 if x.shape[0] == 2 else out


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_file_that_disagrees_is_refused_and_not_written(tmp_path, fmt):
    # The exporters trace at batch 2 and check at batches 1 and 3, where eager PyTorch takes the other branch.
    meta = ModelMeta(
        name="probe", num_classes=4, classes=list("abcd"), input_size=[3, 8, 8], mean=[0.5] * 3, std=[0.5] * 3
    )
    exporter = export_onnx if fmt == "onnx" else export_torchscript
    out = tmp_path / f"model.{fmt}"
    with pytest.raises(ExportMismatch, match="differs from PyTorch"):
        exporter(_BatchDependent().eval(), meta, out)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_export_mistakes_are_user_errors(run_folder, tmp_path):
    with pytest.raises(UserError, match="unknown export format"):
        export_run(run_folder, "tflite", tmp_path / "m.tflite")
    with pytest.raises(UserError, match="is a folder"):
        export_run(run_folder, "onnx", tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        export_run(run_folder, "onnx", tmp_path / "no" / "m.onnx")
    # A file that is not ONNX is refused by name when read back.
    (tmp_path / "fake.onnx").write_bytes(b"\x00garbage")
    with pytest.raises(UserError, match="not a readable ONNX file"):
        read_onnx_metadata(tmp_path / "fake.onnx")


def test_onnx_file_passes_the_checker(run_folder, tmp_path):
    export_run(run_folder, "onnx", tmp_path / "m.onnx")
    model = onnx.load(str(tmp_path / "m.onnx"))
    onnx.checker.check_model(model)
    assert model.producer_name == "imgcls"
    assert [o.name for o in model.graph.output] == ["logits"]


def test_onnx_metadata_carries_the_multilabel_thresholds(kit, tmp_path):
    """An exported multi-label model answers the same label sets as the run: task and thresholds travel along."""
    from imgcls.inference import Predictor

    run = kit.write_run(tmp_path / "run", num_classes=3, task="multilabel")
    record = json.loads((run / "model.json").read_text())
    record["thresholds"] = [0.0, 1.0, 0.5]
    (run / "model.json").write_text(json.dumps(record))
    export_run(run, "onnx", tmp_path / "m.onnx")
    info = read_onnx_metadata(tmp_path / "m.onnx")
    assert info["task"] == "multilabel" and info["thresholds"] == [0.0, 1.0, 0.5] and info["num_classes"] == 3
    images = kit.write_images(tmp_path / "images", 3)
    by_onnx = Predictor.from_onnx(tmp_path / "m.onnx").predict(images)
    by_run = Predictor.from_run(run, precision="fp32").predict(images)
    assert [r.labels for r in by_onnx] == [r.labels for r in by_run]
    assert all("class_0" in r.labels and "class_1" not in r.labels for r in by_onnx)
