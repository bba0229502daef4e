"""Inference you can ship: a Predictor (run folder, weights file or ONNX file), and ONNX/TorchScript export."""

from __future__ import annotations

from typing import TYPE_CHECKING

from imgcls._lazy import lazy_attributes

if TYPE_CHECKING:
    from imgcls.inference.export import ExportMismatch, ExportReport, export_onnx, export_run, export_torchscript
    from imgcls.inference.predictor import Predictor, Preprocess
    from imgcls.inference.results import Prediction, Result, expand_inputs

# Imported on first use (PEP 562): `imgcls predict` answers from a remembered ONNX Runtime engine without
# importing PyTorch (imgcls.inference.fastpath), and importing it is most of a command's start-up.
_HOME = {
    "ExportMismatch": "export",
    "ExportReport": "export",
    "export_onnx": "export",
    "export_run": "export",
    "export_torchscript": "export",
    "Predictor": "predictor",
    "Preprocess": "predictor",
    "Prediction": "results",
    "Result": "results",
    "expand_inputs": "results",
}


__getattr__ = lazy_attributes(__name__, _HOME)


__all__ = [
    "ExportMismatch",
    "ExportReport",
    "Prediction",
    "Predictor",
    "Preprocess",
    "Result",
    "expand_inputs",
    "export_onnx",
    "export_run",
    "export_torchscript",
]
