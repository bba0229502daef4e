"""int8 inference: post-training static quantization calibrated on the run's own validation images.

Two quantizers, both static (activation ranges fixed from calibration images, weights per output channel):

- ``"onnx-int8"``: ONNX Runtime's QDQ quantization (``onnxruntime.quantization.quantize_static``) of the fp32
  ONNX export, unsigned 8-bit activations and signed 8-bit weights (u8s8). ORT's x86 kernels multiply u8 by s8
  (``vpmaddubsw`` on AVX2, VNNI where present); with signed activations it takes a slower path (issue 16 measured
  it no faster than fp32 on an AVX-512 host).
- ``"torch-int8"``: PyTorch FX graph mode quantization with the ``x86`` backend (FBGEMM/oneDNN kernels), frozen to
  TorchScript. (PT2E with the X86InductorQuantizer left ``torch.ao`` for torchao, and its int8 kernels need an
  inductor compile of the model, minutes on two cores; FX runs the quantized kernels eagerly.) On CPUs without VNNI
  its activations use 7 bits (``reduce_range``) so that ``vpmaddubsw``'s 16-bit sums cannot saturate.

Both calibrate with min/max observers on ``CALIBRATION_IMAGES`` images of the run's validation split and are then
measured on up to ``CHECK_IMAGES`` images of the same split against the fp32 model: top-1 accuracy of each, and
how often their top-1 answers agree. A quantized model whose accuracy falls more than ``max_drop`` percentage
points below fp32 is refused (:class:`AccuracyDropTooLarge`, a one-line ``UserError``).

``benchmarks/bench_inference.py`` measures both against fp32 on the same machine; the Predictor measures the
ones it is allowed to use at load (``imgcls.inference.engines``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from imgcls.errors import UserError

if TYPE_CHECKING:  # imported where used: predict's PyTorch-free path reads Int8Check records through this module
    import torch
    from torch import Tensor, nn

INT8_ENGINES = ("onnx-int8", "torch-int8")
# Calibration images: min/max of activations settle within a few hundred images (more only costs time).
CALIBRATION_IMAGES = 512
# Images the quantized model is checked on (the whole split when smaller). 2,000 images put a 0.2-point drop
# within about one standard error of the agreement count.
CHECK_IMAGES = 2000
# Largest top-1 drop accepted by default, in percentage points of the fp32 accuracy.
DEFAULT_MAX_DROP = 1.0
CHECK_BATCH = 64
# Images per calibration run of ONNX Runtime's min/max calibrator (its memory grows with it, its result does not).
CALIBRATION_RUN = 8
# Bumped whenever the quantizers' settings change, so that cached int8 models are rebuilt.
QUANTIZER_VERSION = 1


class AccuracyDropTooLarge(UserError):
    """The quantized model's top-1 accuracy falls further below fp32 than the threshold allows."""


@dataclass(frozen=True)
class Int8Check:
    """How a quantized model compares with fp32 on the run's validation images.

    Attributes:
        engine: ``"onnx-int8"`` or ``"torch-int8"``.
        images: validation images compared.
        fp32_top1: fp32 top-1 accuracy on them, percent.
        int8_top1: quantized top-1 accuracy, percent.
        agreement: share of images whose top-1 answer is the same, percent.
        calibration_images: images the activation ranges were calibrated on.
    """

    engine: str
    images: int
    fp32_top1: float
    int8_top1: float
    agreement: float
    calibration_images: int

    @property
    def drop(self) -> float:
        """fp32 minus int8 top-1, percentage points (negative when int8 happens to be better)."""
        return self.fp32_top1 - self.int8_top1

    def summary(self) -> str:
        return (
            f"{self.engine}: top-1 {self.int8_top1:.2f}% vs fp32 {self.fp32_top1:.2f}% (drop {self.drop:+.2f} points)"
            f", same top-1 answer on {self.agreement:.2f}% of {self.images} validation images"
        )

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "drop": self.drop}


def check_drop(check: Int8Check, max_drop: float, where: str) -> None:
    """Refuse a quantized model whose top-1 drop exceeds ``max_drop`` points.

    Raises:
        AccuracyDropTooLarge: with the figures and the setting that allows it.
    """
    if check.drop > max_drop:
        raise AccuracyDropTooLarge(
            f"{where}: int8 ({check.engine}) top-1 is {check.int8_top1:.2f}% against fp32 {check.fp32_top1:.2f}% on "
            f"{check.images} validation images, a drop of {check.drop:.2f} points > --max-int8-drop {max_drop:g}; "
            "use fp32 or raise --max-int8-drop"
        )


# --- the run's validation images ---------------------------------------------------------------------------------


def validation_batches(
    run: str | os.PathLike, max_images: int = CHECK_IMAGES, batch_size: int = CHECK_BATCH
) -> list[tuple[Tensor, Tensor]]:
    """The first ``max_images`` images of a run's validation split, normalised as evaluation feeds them.

    The data are rebuilt from the spec and settings saved in the run's ``config.json`` with the run's own
    resize/crop and normalisation, as ``imgcls eval`` does, so the split is the one training validated on.

    Returns:
        ``(x, y)`` batches: ``x`` float32 ``(N, C, H, W)`` normalised, ``y`` the targets.

    Raises:
        UserError: the run saved no data spec, or the data have no validation images.
    """
    from imgcls.data import DataConfig, build_data
    from imgcls.data.transforms import AugmentConfig
    from imgcls.engine.bundle import read_meta

    run = Path(run)
    meta = read_meta(run)
    config = _read_json(run / "config.json")
    saved = config.get("data") if isinstance(config.get("data"), dict) else {}
    spec = saved.get("spec")
    if not spec:
        raise UserError(f"{run / 'config.json'}: no data.spec saved in the run; int8 needs its validation images")
    train_cfg = config.get("train") if isinstance(config.get("train"), dict) else {}
    crop = int(meta.input_size[-1])
    resize = int(meta.resize or crop)
    names = {f.name for f in dataclasses.fields(DataConfig)}
    data_cfg = DataConfig.from_dict({k: v for k, v in saved.items() if k in names})
    data_cfg = dataclasses.replace(data_cfg, crop_pct=crop / resize, eval_batch_size=batch_size)
    aug_names = {f.name for f in dataclasses.fields(AugmentConfig)}
    aug = AugmentConfig.from_dict({k: v for k, v in (config.get("augment") or {}).items() if k in aug_names})
    built = build_data(
        spec,
        data_cfg,
        aug,
        image_size=crop,
        in_chans=meta.in_chans,
        seed=int(train_cfg.get("seed", config.get("seed", 0)) or 0),
        task=meta.task,
        mean=list(meta.mean),
        std=list(meta.std),
    )
    if built.val is None or not len(built.val):
        raise UserError(f"{spec}: no validation images to calibrate int8 on (needs val/ or test/, or a split)")
    batches, count = [], 0
    for x, y in built.val.iterate():
        take = min(len(x), max_images - count)
        batches.append((x[:take].float().contiguous(), y[:take]))
        count += take
        if count >= max_images:
            break
    return batches


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text())
    except ValueError as exc:
        raise UserError(f"{path}: malformed JSON ({exc})") from None
    return value if isinstance(value, dict) else {}


def calibration_slice(batches: Sequence[tuple[Tensor, Tensor]], images: int = CALIBRATION_IMAGES) -> list[Tensor]:
    """The inputs of the first ``images`` images of ``batches`` (the calibration set)."""
    out, count = [], 0
    for x, _ in batches:
        if count >= images:
            break
        out.append(x[: images - count])
        count += len(out[-1])
    return out


# --- the two quantizers ------------------------------------------------------------------------------------------


def has_vnni() -> bool:
    """True where the CPU has 8-bit dot-product instructions (AVX512-VNNI or AVX-VNNI), so 8-bit activations
    cannot saturate FBGEMM's 16-bit intermediate sums."""
    import torch

    try:
        return bool(torch.cpu._is_avx512_vnni_supported() or torch.cpu._is_avx_vnni_supported())
    except AttributeError:
        return False


def quantize_torch(model: nn.Module, calibration: Sequence[Tensor]) -> torch.jit.ScriptModule:
    """FX static quantization (x86 backend) of ``model``, calibrated on ``calibration`` (normalised float inputs),
    returned as a frozen TorchScript module that takes and returns float tensors.

    Raises:
        RuntimeError: the model cannot be traced symbolically or quantized (the caller skips this engine).
    """
    import torch
    from torch.ao.quantization import MinMaxObserver, PerChannelMinMaxObserver, QConfig, QConfigMapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    qconfig = QConfig(
        activation=MinMaxObserver.with_args(dtype=torch.quint8, reduce_range=not has_vnni()),
        weight=PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric),
    )
    mapping = QConfigMapping().set_global(qconfig)
    float_model = copy.deepcopy(model).float().to(memory_format=torch.contiguous_format).eval()
    example = calibration[0][:1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao on every call
        try:
            prepared = prepare_fx(float_model, mapping, (example,))
            with torch.no_grad():
                for x in calibration:
                    prepared(x)
            quantized = convert_fx(prepared)
            with torch.no_grad():
                return torch.jit.freeze(torch.jit.trace(quantized.eval(), example, check_trace=False))
        except Exception as exc:  # symbolic tracing fails on data-dependent Python control flow, among others
            raise RuntimeError(f"FX quantization failed ({type(exc).__name__}: {_one_line(exc)})") from exc


def quantize_onnx(
    fp32_onnx: str | os.PathLike,
    calibration: Sequence[Tensor],
    out: str | os.PathLike,
    reduce_range: bool | None = None,
) -> Path:
    """ONNX Runtime QDQ static quantization of an fp32 ONNX file: u8 activations, s8 per-channel weights,
    min/max calibration on ``calibration`` (normalised float inputs). Writes ``out`` and returns its path.

    ``reduce_range`` (default: on CPUs without VNNI) quantizes the weights to 7 bits, so that ``vpmaddubsw``'s
    16-bit sums of u8 x s8 products cannot saturate: on a LeNet-5 trained on the digits, AVX2 without it changed
    3 of 179 top-1 answers, with it none.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        # Small runs: the calibrator's model outputs only each tensor's min and max, but every activation of a
        # run is alive at once (the first int8 predict of ResNet-50 at 224 was seen at 9.4 GB resident with runs
        # of 64; not yet re-measured with 8); ranges do not depend on how the images are grouped.
        def __init__(self) -> None:
            self.batches = (part for x in calibration for part in x.split(CALIBRATION_RUN))

        def get_next(self) -> dict | None:
            x = next(self.batches, None)
            return None if x is None else {"input": np.ascontiguousarray(x.numpy())}

    out = Path(out)
    root = logging.getLogger()  # the quantizer logs its advice on the root logger, which a CLI user would see
    with tempfile.TemporaryDirectory(prefix="imgcls-int8-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root.addFilter(_quantizer_advice)
        try:
            quantize_static(
                os.fspath(fp32_onnx),
                os.fspath(Path(tmp) / "model.onnx"),
                Reader(),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                reduce_range=(not has_vnni()) if reduce_range is None else reduce_range,
                calibrate_method=CalibrationMethod.MinMax,
            )
        finally:
            root.removeFilter(_quantizer_advice)
        os.replace(Path(tmp) / "model.onnx", out)
    return out


def _quantizer_advice(record: logging.LogRecord) -> bool:
    """False for ONNX Runtime's own warnings below ERROR (its "pre-processing" advice), which go to the root
    logger; every other record, other threads' included, passes."""
    return record.levelno >= logging.ERROR or f"{os.sep}onnxruntime{os.sep}" not in record.pathname


def onnx_session(path: str | os.PathLike, threads: int | None = None):
    """An ONNX Runtime CPU session with all graph optimisations and ``threads`` intra-op threads (default: torch's)."""
    import onnxruntime as ort

    if not threads:
        import torch

        threads = torch.get_num_threads()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(os.fspath(path), sess_options=opts, providers=["CPUExecutionProvider"])


def onnx_function(session) -> Callable[[Tensor], Tensor]:
    """Normalised float ``(N, C, H, W)`` -> float32 logits through an ONNX Runtime session."""
    import torch

    name = session.get_inputs()[0].name

    def run(x: Tensor) -> Tensor:
        (logits,) = session.run(None, {name: np.ascontiguousarray(x.numpy(), dtype=np.float32)})
        return torch.from_numpy(logits)

    return run


# --- checking ------------------------------------------------------------------------------------------------------


def compare(
    fp32: Callable[[Tensor], Tensor],
    int8: Callable[[Tensor], Tensor],
    batches: Sequence[tuple[Tensor, Tensor]],
    engine: str,
    calibration_images: int,
) -> Int8Check:
    """Top-1 of ``fp32`` and ``int8`` (normalised float in, logits out) on ``batches``, and their agreement.

    Multi-label and soft targets count the argmax target as the label (top-1 of the strongest label).
    """
    import torch

    n = hits32 = hits8 = same = 0
    with torch.inference_mode():
        for x, y in batches:
            a, b = fp32(x).float().argmax(1), int8(x).float().argmax(1)
            label = y.argmax(1) if y.ndim == 2 else y
            n += len(x)
            hits32 += int((a == label).sum())
            hits8 += int((b == label).sum())
            same += int((a == b).sum())
    if n == 0:
        raise UserError("int8: no validation images to check the quantized model on")
    return Int8Check(engine, n, 100.0 * hits32 / n, 100.0 * hits8 / n, 100.0 * same / n, calibration_images)


# --- export --------------------------------------------------------------------------------------------------------


def export_onnx_int8(run: str | os.PathLike, out: str | os.PathLike, max_drop: float = DEFAULT_MAX_DROP) -> Int8Check:
    """``imgcls export --format onnx-int8``: the run's QDQ int8 ONNX model (u8 activations), calibrated and checked
    on its validation images, with the imgcls metadata of an fp32 export plus the check's figures (``int8``).

    Raises:
        AccuracyDropTooLarge: its top-1 drop exceeds ``max_drop`` points; nothing is written.
    """
    import onnx

    from imgcls.engine.bundle import load_bundle
    from imgcls.inference.engines import EngineSource
    from imgcls.inference.export import _metadata, _writable
    from imgcls.inference.predictor import Preprocess

    out = _writable(out)
    model, meta = load_bundle(run)
    preprocess = Preprocess(
        tuple(meta.input_size), meta.resize or meta.input_size[1], tuple(meta.mean), tuple(meta.std)
    )
    source = EngineSource(
        model,
        meta.input_size,
        preprocess.normalise,
        normalise_array=preprocess.array_normaliser(),
        key=meta.sha256,
        run=run,
        max_int8_drop=max_drop,
        meta=meta,
    )
    engine = source.build("onnx-int8")
    graph = onnx.load(os.fspath(source.folder() / "model.int8.onnx"))
    del graph.metadata_props[:]
    values = {**_metadata(meta), "precision": "int8", "int8": engine.check.to_dict()}
    for key, value in values.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    tmp = out.with_name(out.name + ".tmp")
    onnx.save(graph, os.fspath(tmp))
    os.replace(tmp, out)
    return engine.check


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


__all__ = [
    "CALIBRATION_IMAGES",
    "CHECK_IMAGES",
    "DEFAULT_MAX_DROP",
    "INT8_ENGINES",
    "AccuracyDropTooLarge",
    "Int8Check",
    "calibration_slice",
    "check_drop",
    "compare",
    "export_onnx_int8",
    "has_vnni",
    "onnx_function",
    "onnx_session",
    "quantize_onnx",
    "quantize_torch",
    "validation_batches",
]
