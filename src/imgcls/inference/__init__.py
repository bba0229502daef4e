"""Inference you can ship: a Predictor (run folder, weights file or ONNX file), and ONNX/TorchScript export."""

from imgcls.inference.export import ExportMismatch, ExportReport, export_onnx, export_run, export_torchscript
from imgcls.inference.predictor import Prediction, Predictor, Preprocess, Result, expand_inputs

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
