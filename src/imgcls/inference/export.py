"""Export a trained model to ONNX or TorchScript, and prove the file computes what PyTorch computes.

Both exporters write to a temporary name, run the written file (ONNX Runtime, or the TorchScript module loaded
back) on a few seeded inputs at two batch sizes, compare the logits with eager PyTorch fp32, and only then move
the file into place. A file whose largest difference exceeds the tolerance is not left behind.

ONNX files carry a dynamic batch axis and, in their metadata (JSON values), what it takes to use them: ``name``,
``classes``, ``num_classes``, ``input_size``, ``resize``, ``mean``, ``std``, ``task`` and the ``sha256`` of the
weights they were exported from. TorchScript files carry the same as ``model.json`` among their extra files.

A run calibrated by temperature scaling (``model.json``'s ``temperature``, `imgcls.engine.calibration`) is exported
with the division inside the graph: both files answer the logits whose softmax ``predict`` reports, and their
metadata's ``temperature`` says by what they were divided.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from imgcls._files import temp_path
from imgcls.engine.bundle import ModelMeta
from imgcls.errors import UserError
from imgcls.run_folder import RunFolder, refuse_output

FORMATS = ("onnx", "torchscript")
# Opset 17 is read by every ONNX Runtime since 1.11 and covers all the zoo's layers.
ONNX_OPSET = 17
# Batch sizes the written file is run at: 1 and a second one, which proves the batch axis is really dynamic.
CHECK_BATCHES = (1, 3)
# Largest |logit difference| allowed, relative to the largest |logit| (and at least to 1): fp32 kernels differ
# in summation order, which moves deep networks' logits by ~1e-6 relative; a real export bug moves them by O(1).
DEFAULT_TOLERANCE = 1e-3


class ExportMismatch(RuntimeError):
    """The exported file computes something else than the PyTorch model (its difference exceeds the tolerance)."""


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote and how close it came to PyTorch."""

    path: str
    format: str
    max_abs_diff: float
    logit_scale: float
    tolerance: float
    batch_sizes: tuple[int, ...]

    def summary(self) -> str:
        return (
            f"wrote {self.path} ({self.format}); largest |difference| from PyTorch over batches "
            f"{'/'.join(map(str, self.batch_sizes))}: {self.max_abs_diff:.2e} "
            f"(logits up to {self.logit_scale:.2g}; tolerance {self.tolerance:g} relative)"
        )


def export_run(
    run: str | os.PathLike, fmt: str, out: str | os.PathLike, tolerance: float = DEFAULT_TOLERANCE
) -> ExportReport:
    """Export a run folder's weights (SHA-256 checked) to ``out`` in format ``fmt`` (``onnx`` or ``torchscript``)."""
    from imgcls.engine.bundle import load_bundle

    if fmt not in FORMATS:
        raise UserError(f"unknown export format: {fmt} (choose from {', '.join(FORMATS)})")
    check_tolerance(tolerance)
    refuse_output(out, "--out", runs=[RunFolder(run)])
    model, meta = load_bundle(run)
    if getattr(model, "is_classic", False):
        from imgcls.classic import not_applicable

        raise not_applicable(f"export to {fmt}", meta.name)
    exporter = export_onnx if fmt == "onnx" else export_torchscript
    return exporter(model, meta, out, tolerance=tolerance)


def export_onnx(
    model: nn.Module, meta: ModelMeta, out: str | os.PathLike, tolerance: float = DEFAULT_TOLERANCE
) -> ExportReport:
    """Write ``model`` as ONNX (dynamic batch axis, imgcls metadata), then check it with ONNX Runtime.

    Raises:
        ExportMismatch: ONNX Runtime's logits differ from PyTorch's by more than ``tolerance``.
    """
    import onnx

    out = _writable(out)
    tolerance = check_tolerance(tolerance)
    model = _fp32_eval(model, meta)
    tmp = temp_path(out)
    example = _inputs(meta, 2)[0]
    with warnings.catch_warnings():
        # The TorchScript-based exporter is deprecated in favour of torch.export + onnxscript; it remains the one
        # that needs no extra dependency and it exports every convolutional network of the zoo.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(tmp),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=ONNX_OPSET,
            do_constant_folding=True,
        )
    graph = onnx.load(str(tmp))
    for key, value in _metadata(meta).items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    graph.producer_name = "imgcls"
    onnx.checker.check_model(graph)
    onnx.save(graph, str(tmp))
    try:
        report = _compare(model, _onnx_runner(tmp), meta, tmp, out, "onnx", tolerance)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)
    return report


def export_torchscript(
    model: nn.Module, meta: ModelMeta, out: str | os.PathLike, tolerance: float = DEFAULT_TOLERANCE
) -> ExportReport:
    """Trace ``model`` to TorchScript (``model.json`` as an extra file), load it back and check it.

    Raises:
        ExportMismatch: the loaded module's logits differ from PyTorch's by more than ``tolerance``.
    """
    out = _writable(out)
    tolerance = check_tolerance(tolerance)
    model = _fp32_eval(model, meta)
    tmp = temp_path(out)
    example = _inputs(meta, 2)[0]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript is in maintenance mode and says so on every call
        # check_trace re-traces and compares at the same batch size (6x the time of the trace); the check below
        # runs the saved file at other batch sizes, which also catches shape-specialised traces.
        traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, str(tmp), _extra_files={"model.json": json.dumps(_metadata(meta))})
        loaded = torch.jit.load(str(tmp), map_location="cpu")

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return loaded(x)

    try:
        report = _compare(model, run, meta, tmp, out, "torchscript", tolerance)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)
    return report


def _compare(model, run, meta: ModelMeta, tmp: Path, out: Path, fmt: str, tolerance: float) -> ExportReport:
    worst, scale = 0.0, 1.0
    for x in _inputs(meta, *CHECK_BATCHES):
        with torch.no_grad():
            expected = model(x).float()
        got = torch.as_tensor(run(x)).float()
        if got.shape != expected.shape:
            raise ExportMismatch(f"{out}: {fmt} output has shape {tuple(got.shape)}, PyTorch {tuple(expected.shape)}")
        worst = max(worst, float((got - expected).abs().max()))
        scale = max(scale, float(expected.abs().max()))
    report = ExportReport(str(out), fmt, worst, scale, tolerance, CHECK_BATCHES)
    if not worst <= tolerance * scale:  # a NaN difference fails too
        raise ExportMismatch(
            f"{out}: {fmt} differs from PyTorch by {worst:.3g} (> {tolerance:g} x {scale:.3g}); file not written"
        )
    return report


def _onnx_runner(path: Path):
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> np.ndarray:
        return session.run(None, {"input": x.numpy()})[0]

    return run


def _inputs(meta: ModelMeta, *batch_sizes: int) -> list[torch.Tensor]:
    """Seeded standard-normal inputs: the distribution of normalised images, and the same on every run."""
    g = torch.Generator().manual_seed(0)
    return [torch.randn(n, *meta.input_size, generator=g) for n in batch_sizes]


class TemperatureScaled(nn.Module):
    """``model(x) / temperature``: the calibrated logits, as one graph to export."""

    def __init__(self, model: nn.Module, temperature: float):
        super().__init__()
        self.model = model
        self.temperature = float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) / self.temperature


def _fp32_eval(model: nn.Module, meta: ModelMeta) -> nn.Module:
    model = model.float().to(memory_format=torch.contiguous_format).eval()
    return TemperatureScaled(model, meta.temperature).eval() if meta.temperature not in (None, 1.0) else model


def _metadata(meta: ModelMeta) -> dict:
    from imgcls import __version__

    info = asdict(meta)
    info["resize"] = meta.resize or meta.input_size[1]
    info["imgcls_version"] = __version__
    return info


def check_tolerance(tolerance: float) -> float:
    """A parity tolerance is a finite number >= 0: NaN would compare false and silently pass every export."""
    if not isinstance(tolerance, (int, float)) or not math.isfinite(tolerance) or tolerance < 0:
        raise UserError(f"--tolerance {tolerance}: must be a finite number >= 0 (default {DEFAULT_TOLERANCE:g})")
    return float(tolerance)


def _writable(out: str | os.PathLike) -> Path:
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder; give a file name")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: folder {out.parent} does not exist")
    return out


__all__ = [
    "DEFAULT_TOLERANCE",
    "FORMATS",
    "ExportMismatch",
    "ExportReport",
    "TemperatureScaled",
    "export_onnx",
    "export_run",
    "export_torchscript",
]
