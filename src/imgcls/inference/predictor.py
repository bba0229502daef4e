"""Predictor: a trained model together with exactly the preprocessing it was evaluated with.

A run folder's ``model.json`` fixes the preprocessing (shorter side to ``resize``, center crop to ``input_size``,
``mean``/``std``), so ``Predictor.from_run(run).predict(paths)`` answers as ``imgcls eval`` measured. Images are
decoded by the data layer's reader (same conversions, same refusals) on a small thread pool while the model
works on the previous batch; Pillow releases the GIL while it decodes, so the two overlap on a CPU.

Two backends run the network:

- ``"torch"`` (the default): the fastest engine of the requested precision as measured on this machine at load
  (``imgcls.inference.engines``: eager fp32 channels-last, a frozen TorchScript graph, ONNX Runtime fp32; bf16
  ones where the CPU has bf16 units; int8 ones with ``precision="int8"``), remembered for the next load;
  ``engine=`` forces one. ``Predictor.selection`` says what was measured and chosen. (`TorchRunner` is the
  fixed torch runner of before, kept for callers that build one themselves.)
- ``"onnx"``: ONNX Runtime (fp32) on a file written by :func:`imgcls.inference.export.export_onnx`; the file's
  metadata carries the classes and preprocessing, so it needs nothing else.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Iterable, Sequence
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imgcls._files import sha256_file
from imgcls.engine.metrics import probabilities
from imgcls.engine.precision import cpu_has_bf16
from imgcls.errors import UserError
from imgcls.inference.results import ArrayNormaliser, BatchedPredictor, Prediction, Result, check_input, expand_inputs
from imgcls.run_folder import RunFolder

BACKENDS = ("torch", "onnx")
PRECISIONS = ("auto", "fp32", "bf16", "int8")

PathOrImage = str | os.PathLike | bytes | Image.Image

log = logging.getLogger("imgcls.inference")


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the network's input: resize the shorter side, center crop, normalise.

    Attributes:
        input_size: ``(C, H, W)`` the network takes.
        resize: shorter side before the center crop (equal to ``H`` for no crop).
        mean: per-channel mean in [0, 1] units.
        std: per-channel standard deviation in [0, 1] units.
    """

    input_size: tuple[int, int, int]
    resize: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def in_chans(self) -> int:
        return self.input_size[0]

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 ``(N, C, H, W)`` -> float32 normalised, the tensor the network was trained on."""
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        inv_std = 1.0 / (torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0)
        return (x.to(torch.float32) - mean) * inv_std

    def array_normaliser(self) -> ArrayNormaliser:
        """The same normalisation in NumPy, for ONNX Runtime engines (`ArrayNormaliser`)."""
        return ArrayNormaliser(self.mean, self.std)


def resolve_precision(precision: str) -> str:
    """``"auto"`` -> ``"bf16"`` where the CPU has bf16 units, else ``"fp32"`` (the probe training uses)."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision: {precision} (choose from {', '.join(PRECISIONS)})")
    if precision == "auto":
        return "bf16" if cpu_has_bf16() else "fp32"
    return precision


class TorchRunner:
    """PyTorch: uint8 batch in, float32 logits out.

    In bf16 the network runs as a frozen TorchScript graph of its bfloat16, channels-last copy: freezing folds the
    batch norms into the convolutions and lets oneDNN keep its weights pre-packed in its own blocked layout, which
    eager autocast re-converts on every call. Building it takes about a second (a trace at batch 1); where a model
    cannot be traced, it runs eagerly under bf16 autocast instead. fp32 runs eagerly.

    Args:
        model: the network (put in eval mode here).
        preprocess: normalisation constants.
        precision: ``"fp32"`` or ``"bf16"`` (``"auto"``: bf16 where the CPU computes it natively).
    """

    backend = "torch"

    def __init__(self, model: torch.nn.Module, preprocess: Preprocess, precision: str = "fp32"):
        self.precision = resolve_precision(precision)
        self.preprocess = preprocess
        self.model = model.eval()
        self.graph: torch.jit.ScriptModule | None = None
        if self.precision == "bf16":
            # oneDNN's bf16 convolutions want NHWC; converting the weights once avoids a reorder per call.
            self.model = self.model.to(memory_format=torch.channels_last)
            self.graph = frozen_bf16(self.model, preprocess.input_size)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            x = self.preprocess.normalise(x)
            if self.precision == "bf16":
                x = x.contiguous(memory_format=torch.channels_last)
                if self.graph is not None:
                    return self.graph(x.to(torch.bfloat16)).float()
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return self.model(x).float()
            return self.model(x).float()


def frozen_bf16(model: torch.nn.Module, input_size: Sequence[int]) -> torch.jit.ScriptModule | None:
    """A frozen TorchScript graph of a bfloat16, channels-last copy of ``model`` (eval mode), or None when the
    model cannot be traced (it then runs eagerly)."""
    example = torch.zeros(1, *input_size, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    try:
        twin = deepcopy(model).to(dtype=torch.bfloat16, memory_format=torch.channels_last).eval()
        with torch.no_grad(), warnings.catch_warnings():
            # torch.jit is in maintenance mode and says so; torch.compile would take minutes to build this graph.
            warnings.simplefilter("ignore")
            return torch.jit.freeze(torch.jit.trace(twin, example, check_trace=False))
    except Exception as exc:  # tracing fails in as many ways as Python code can: fall back, never fail to predict
        log.warning("bf16 graph not built (%s: %s); running the model eagerly under autocast", type(exc).__name__, exc)
        return None


class OnnxRunner:
    """ONNX Runtime on the CPU (fp32): uint8 batch in, float32 logits out."""

    backend = "onnx"
    precision = "fp32"

    def __init__(self, path: str | os.PathLike, preprocess: Preprocess, threads: int | None = None):
        from imgcls.inference.int8 import onnx_session

        self.session = onnx_session(path, threads)
        self.input_name = self.session.get_inputs()[0].name
        self.preprocess = preprocess
        self.normalise = preprocess.array_normaliser()  # NumPy: PyTorch's thread pool stays asleep

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalise(x.numpy())
        (logits,) = self.session.run(None, {self.input_name: np.ascontiguousarray(x)})
        return torch.from_numpy(logits).float()


class Predictor(BatchedPredictor):
    """Classify images with a trained model, preprocessing them exactly as at evaluation.

    Build one with :meth:`from_run`, :meth:`from_weights` or :meth:`from_onnx`, then call :meth:`predict`.

    Args:
        runner: a :class:`TorchRunner` or :class:`OnnxRunner`.
        preprocess: resize, crop and normalisation.
        classes: label strings in index order.
        name: the architecture's registered name.
        task: ``"multiclass"``, ``"binary"`` or ``"multilabel"``.
        batch_size: images per forward pass.
        num_workers: decoding threads (default: the number of CPU cores, at most 8).
        sha256: SHA-256 of the weights the runner holds, when known.
        thresholds: multi-label only — per-class probability thresholds of the label set (the run's, tuned on
            validation; default 0.5 each).
        temperature: multi-class and binary — the runner's logits are divided by it before the softmax
            (temperature scaling, ``model.json``'s ``temperature``, `imgcls.engine.calibration`); ``None``: as
            they are. An exported ONNX file divides inside its graph, so its predictor has none here.
        model: the PyTorch network in float32 (its gradients are what ``explain`` needs), when loaded from a run
            or weights with the torch backend; the engines run their own copies of it.
    """

    def __init__(
        self,
        runner: TorchRunner | OnnxRunner,
        preprocess: Preprocess,
        classes: Sequence[str],
        name: str = "",
        task: str = "multiclass",
        batch_size: int = 32,
        num_workers: int | None = None,
        sha256: str = "",
        thresholds: Sequence[float] | None = None,
        temperature: float | None = None,
        model: torch.nn.Module | None = None,
    ):
        if batch_size < 1:
            raise UserError(f"--batch-size must be at least 1 (got {batch_size})")
        self.runner = runner
        self.preprocess = preprocess
        self.classes = list(classes)
        self.name = name
        self.task = task
        self.batch_size = batch_size
        self.num_workers = num_workers or min(8, os.cpu_count() or 1)
        self.sha256 = sha256
        self.thresholds: list[float] | None = None
        if task == "multilabel":
            self.thresholds = [float(t) for t in thresholds] if thresholds is not None else [0.5] * len(self.classes)
            if len(self.thresholds) != len(self.classes):
                raise UserError(f"{len(self.thresholds)} thresholds for {len(self.classes)} classes")
        self.temperature = None if temperature in (None, 1.0) else float(temperature)
        self.model = model
        self.selection = None  # how the engine was chosen (imgcls.inference.engines.Selection), when measured

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_run(
        cls,
        run: str | os.PathLike,
        backend: str = "torch",
        precision: str = "auto",
        batch_size: int = 32,
        num_workers: int | None = None,
        engine: str | None = None,
        max_int8_drop: float | None = None,
    ) -> Predictor:
        """Load a run folder's ``model.safetensors`` (SHA-256 checked) and ``model.json``.

        With the default ``backend="torch"`` the network runs on the fastest engine of ``precision`` measured here
        (``imgcls.inference.engines``; ``"int8"`` quantizes, calibrated and checked on the run's validation
        images, refused past ``max_int8_drop`` points); ``engine`` forces one.

        With ``backend="onnx"`` it uses ``RUN/model.onnx`` when that file was exported from these very weights
        (its metadata holds their SHA-256), and otherwise exports the weights to a temporary file first.
        """
        from imgcls.engine.bundle import load_bundle

        _check_backend(backend)
        run = RunFolder(run)
        meta = as_read = run.read_meta()  # as_read: model.json as the fast path will read it (fastpath.remember)
        from imgcls.classic import is_classic, not_applicable

        if is_classic(meta.name):  # NumPy/scikit-learn pipelines: no graph to export, no bf16 kernels
            if backend == "onnx":
                raise not_applicable("--backend onnx (export)", meta.name)
            precision = "fp32"
        preprocess = Preprocess(
            input_size=tuple(meta.input_size),
            resize=meta.resize or meta.input_size[1],
            mean=tuple(meta.mean),
            std=tuple(meta.std),
        )
        common = dict(
            name=meta.name,
            task=meta.task,
            batch_size=batch_size,
            num_workers=num_workers,
            thresholds=meta.class_thresholds(),
        )
        if backend == "onnx":
            onnx_file = run.onnx
            recorded = read_onnx_metadata(onnx_file) if onnx_file.is_file() else {}
            # The same weights, calibrated the same way (the graph divides by the temperature it was exported with).
            if recorded and (recorded.get("sha256"), recorded.get("temperature")) == (meta.sha256, meta.temperature):
                return cls.from_onnx(onnx_file, batch_size=batch_size, num_workers=num_workers)
            import tempfile

            from imgcls.inference.export import export_onnx

            model, meta = load_bundle(run)
            with tempfile.TemporaryDirectory(prefix="imgcls-onnx-") as tmp:
                exported = Path(tmp) / RunFolder.ONNX
                export_onnx(model, meta, exported)
                # The session reads the whole file at creation, so the temporary folder may go right after.
                runner = OnnxRunner(exported, preprocess)
            return cls(runner, preprocess, meta.classes, sha256=meta.sha256, **common)
        t0 = time.perf_counter()
        model, meta = load_bundle(run)
        loaded = time.perf_counter() - t0  # part of the full path's start (fastpath.plan)
        common["temperature"] = meta.temperature  # the runners answer raw logits; the Predictor divides them
        if is_classic(meta.name):  # nothing to trace or quantize: the pipeline runs as it is
            runner = TorchRunner(model, preprocess, precision)
            return cls(runner, preprocess, meta.classes, sha256=meta.sha256, **common)
        selection = _select_engine(
            model, preprocess, meta.sha256, run, meta, precision, engine, batch_size, max_int8_drop
        )
        common["model"] = model.float().eval()
        predictor = cls(selection.engine, preprocess, meta.classes, sha256=meta.sha256, **common)
        predictor.selection = selection
        if selection.settled:
            _record_for_fastpath(selection, as_read, precision, engine, batch_size, loaded)
        return predictor

    @classmethod
    def from_weights(
        cls,
        name: str,
        file: str | os.PathLike,
        classes: Sequence[str] | None = None,
        in_chans: int | None = None,
        input_size: int | None = None,
        backend: str = "torch",
        precision: str = "auto",
        batch_size: int = 32,
        num_workers: int | None = None,
        engine: str | None = None,
    ) -> Predictor:
        """A registered architecture with a weights file (ours, torchvision's or timm's format).

        A run folder's ``model.safetensors`` with its ``model.json`` beside it is that run: classes, input size,
        channels and preprocessing come from the record (``name`` must agree with it), exactly as
        :meth:`from_run`. Any other file: the number of classes is read from the file's classifier and the input
        channels from its first convolution (``in_chans`` overrides; the registry's native channels when the
        file does not say); labels default to ``"0"``, ``"1"``, ...; preprocessing is the architecture's native
        one from the registry: its input size (or ``input_size``), mean and std, and evaluation crop.

        With ``backend="onnx"``, ``file`` is an exported ``.onnx`` file and ``name`` may be empty.
        """
        _check_backend(backend)
        if backend == "onnx" or str(file).endswith(".onnx"):
            return cls.from_onnx(file, batch_size=batch_size, num_workers=num_workers)
        from imgcls.classic import is_classic
        from imgcls.models import create_model, model_entry

        if is_classic(name):
            raise UserError(f"{name}: a classical pipeline's settings live in its run's model.json: use --run RUN")
        file = Path(file)
        if not file.is_file():
            raise UserError(f"weights file not found: {file} (check --weights)")
        entry = model_entry(name)
        run = RunFolder(file.parent)
        if file.name == RunFolder.WEIGHTS and run.meta.is_file() and classes is None and input_size is None:
            recorded = run.read_meta()
            if recorded.name != name:
                raise UserError(f"--model {name}: {run.meta} says {file.name} holds {recorded.name} weights")
            if in_chans not in (None, recorded.in_chans):
                raise UserError(f"in_chans {in_chans}: {run.meta} says the weights take {recorded.in_chans}")
            return cls.from_run(
                run.root, backend=backend, precision=precision, batch_size=batch_size, num_workers=num_workers
            )
        if in_chans is None:  # the channels the file was trained with, else the architecture's native ones
            from imgcls.models.weights import stored_in_chans

            in_chans = stored_in_chans(name, file) or entry.input_size[0]
        num_classes = _stored_classes(name, file)
        if classes is not None and num_classes is not None and len(classes) != num_classes:
            raise UserError(f"{file}: has {num_classes} classes but {len(classes)} class names were given")
        num_classes = num_classes or (len(classes) if classes is not None else 1000)
        model = create_model(name, num_classes=num_classes, in_chans=in_chans, weights=str(file))
        size = input_size or entry.input_size[1]
        preprocess = Preprocess(
            input_size=(in_chans, size, size),
            resize=eval_resize(entry, size),
            mean=_per_channel(entry.mean, in_chans),
            std=_per_channel(entry.std, in_chans),
        )
        labels = list(classes) if classes is not None else [str(i) for i in range(num_classes)]
        selection = _select_engine(model, preprocess, sha256_file(file), None, None, precision, engine, batch_size)
        predictor = cls(
            selection.engine,
            preprocess,
            labels,
            name=name,
            batch_size=batch_size,
            num_workers=num_workers,
            model=model.float().eval(),
        )
        predictor.selection = selection
        return predictor

    @classmethod
    def from_onnx(cls, file: str | os.PathLike, batch_size: int = 32, num_workers: int | None = None) -> Predictor:
        """An ONNX file written by ``imgcls export``: classes and preprocessing come from its metadata."""
        meta = read_onnx_metadata(file)
        try:
            preprocess = Preprocess(
                input_size=tuple(meta["input_size"]),
                resize=int(meta["resize"]),
                mean=tuple(meta["mean"]),
                std=tuple(meta["std"]),
            )
            classes = list(meta["classes"])
        except KeyError as exc:
            raise UserError(f"{file}: lacks imgcls metadata {exc} (export it with `imgcls export`)") from None
        return cls(
            OnnxRunner(file, preprocess),
            preprocess,
            classes,
            name=meta.get("name", ""),
            task=meta.get("task", "multiclass"),
            batch_size=batch_size,
            num_workers=num_workers,
            sha256=meta.get("sha256", ""),
            thresholds=meta.get("thresholds"),
        )

    # ------------------------------------------------------------------ properties

    @property
    def backend(self) -> str:
        return self.runner.backend

    @property
    def precision(self) -> str:
        return self.runner.precision

    @property
    def input_size(self) -> tuple[int, int, int]:
        return self.preprocess.input_size

    # ------------------------------------------------------------------ prediction

    def load(self, item: PathOrImage, max_pixels: int | None = None) -> torch.Tensor:
        """Decode one image into the uint8 ``(C, H, W)`` network input, as evaluation does.

        Args:
            item: a file path, the bytes of an encoded image, or a PIL image.
            max_pixels: refuse images whose header declares more pixels (default: the reader's limit).

        Raises:
            ImageError: the file is missing, unreadable, not an image or too large.
        """
        from imgcls.data.reader import eval_view, load_for_eval, pil_to_tensor, to_standard_mode

        c, h, _ = self.preprocess.input_size
        if isinstance(item, Image.Image):
            # The reader's own mode conversion, so odd modes (alpha, 16-bit, CMYK) convert exactly as for files.
            return pil_to_tensor(eval_view(to_standard_mode(item), h, self.preprocess.resize, c))
        check_input(item)
        limits = {} if max_pixels is None else {"max_pixels": max_pixels}
        return load_for_eval(item, size=h, resize=self.preprocess.resize, in_chans=c, **limits)

    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 ``(N, C, H, W)`` -> class probabilities ``(N, num_classes)`` (of the logits divided by the
        temperature, when there is one)."""
        logits = self.runner(batch)
        return probabilities(logits if self.temperature is None else logits / self.temperature, self.task)

    def top(self, probs: torch.Tensor, topk: int = 5) -> tuple[Prediction, ...]:
        """The ``topk`` most probable classes of one image's probability vector, most probable first."""
        values, indices = torch.topk(probs, min(topk, probs.numel()))
        return tuple(
            Prediction(self.classes[i], i, round(float(v), 6))
            for v, i in zip(values.tolist(), indices.tolist(), strict=True)
        )

    def label_set(self, probs: torch.Tensor) -> tuple[str, ...] | None:
        """Multi-label: the classes whose probability is at least their threshold, most probable first (maybe
        none); ``None`` for one label per image."""
        if self.thresholds is None:
            return None
        cut = torch.as_tensor(self.thresholds, dtype=probs.dtype)
        chosen = torch.nonzero(probs >= cut).flatten().tolist()
        return tuple(self.classes[i] for i in sorted(chosen, key=lambda i: -float(probs[i])))

    def answer(self, label: str, probs: torch.Tensor, topk: int) -> Result:
        """The Result for one image's probability vector; a non-finite output is an error, never a NaN answer."""
        if not bool(torch.isfinite(probs).all()):
            return Result(label, error="the model's output is not a finite number (NaN or infinity)")
        return Result(label, self.top(probs, topk), labels=self.label_set(probs))

    def explain(self, inputs: Iterable[PathOrImage], **options) -> list:
        """Each input's prediction with its Grad-CAM, occlusion and activation maps
        (`imgcls.inference.explain.explain`; ``options`` are the fields of its ``ExplainOptions``)."""
        from imgcls.inference.explain import ExplainOptions, explain

        return list(explain(self, inputs, ExplainOptions(**options)))

    def stack(self, arrays: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(arrays)

    def answer_batch(self, labels: list[str], batch: torch.Tensor, topk: int) -> list[Result]:
        probs = self.probabilities(batch)
        return [self.answer(label, row, topk) for label, row in zip(labels, probs, strict=True)]


def read_onnx_metadata(file: str | os.PathLike) -> dict:
    """The imgcls metadata of an exported ONNX file (values JSON-decoded); ``{}`` when it has none."""
    import onnx

    if not Path(file).is_file():
        raise UserError(f"ONNX file not found: {file}")
    try:
        # The graph's weights are not needed to read the metadata.
        model = onnx.load(os.fspath(file), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends without a common base
        raise UserError(f"{file}: not a readable ONNX file ({type(exc).__name__})") from None
    meta = {}
    for prop in model.metadata_props:
        try:
            meta[prop.key] = json.loads(prop.value)
        except ValueError:
            meta[prop.key] = prop.value
    return meta


def _record_for_fastpath(selection, as_read, precision, engine, batch_size, loaded: float) -> None:
    """Record an ONNX Runtime choice, so that the next predict may skip PyTorch; or a measured PyTorch choice with
    what it and its ONNX Runtime rivals cost to start (PyTorch's import and the weights' ``loaded`` seconds count
    against it), so that a predict of a few images may (``imgcls.inference.fastpath.plan``). Keyed by model.json
    as the fast path reads it (``as_read``: load_bundle may fill in what the file leaves out)."""
    from imgcls.inference import fastpath
    from imgcls.inference.catalog import ORT_ENGINES

    chosen, threads = selection.engine.name, torch.get_num_threads()
    if chosen in ORT_ENGINES:  # (torch-int8 has a file too: its TorchScript model)
        check = selection.engine.check.to_dict() if selection.engine.check is not None else None
        fastpath.remember(as_read, precision, engine, batch_size, chosen, selection.engine.file, threads, check)
        return
    imported = fastpath.torch_import_seconds()
    cost = selection.costs.get(chosen)
    if cost is None or imported is None:  # not measured here, or PyTorch imported by the caller: cost unknown
        return
    fastpath.remember(
        as_read,
        precision,
        engine,
        batch_size,
        chosen,
        None,
        threads,
        start=imported + loaded + cost.start,
        per_image=cost.per_image,
        alternatives=selection.costs,
    )


def _select_engine(model, preprocess, key, run, meta, precision, engine, batch_size, max_int8_drop=None):
    """The measured (or forced) engine for a torch-backend Predictor (``imgcls.inference.engines.select``)."""
    from imgcls.inference import engines
    from imgcls.inference.int8 import DEFAULT_MAX_DROP

    if meta is not None and meta.temperature is not None:
        # The engines answer the network's own logits (their ONNX exports too); the Predictor divides them.
        from dataclasses import replace

        meta = replace(meta, temperature=None)
    source = engines.EngineSource(
        model,
        preprocess.input_size,
        preprocess.normalise,
        normalise_array=preprocess.array_normaliser(),
        key=key,
        run=run,
        meta=meta,
        max_int8_drop=DEFAULT_MAX_DROP if max_int8_drop is None else max_int8_drop,
    )
    selection = engines.select(source, precision, engine, batch_size)
    log.debug("%s", selection.describe())  # the CLI says it once the answers are out
    return selection


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise UserError(f"unknown backend: {backend} (choose from {', '.join(BACKENDS)})")


def eval_resize(entry, size: int) -> int:
    """Shorter side before the evaluation center crop of ``size`` pixels: ``size / crop_pct`` with the registry
    entry's ``crop_pct`` (timm's convention; 1.0, no crop, for CIFAR-size models)."""
    return max(size, round(size / entry.crop_pct))


def _per_channel(values: Sequence[float], in_chans: int) -> tuple[float, ...]:
    """The registry's statistics for ``in_chans`` channels: as they are when they match; their luma for a grey
    model with RGB statistics (as the data layer converts them); one value repeated for RGB with grey ones."""
    from imgcls.constants import to_gray_stats

    if len(values) == in_chans:
        return tuple(values)
    if in_chans == 1:
        return tuple(to_gray_stats(list(values)))
    return (float(values[0]),) * in_chans


def _stored_classes(name: str, file: str | os.PathLike) -> int | None:
    """Output size of the classifier stored in a weights file, or None when its key is not the expected one."""
    from imgcls.models import create_model, on_meta
    from imgcls.models.weights import read_state_dict

    # The meta device builds the architecture without memory or initialisation, just to learn the key name.
    with on_meta():
        probe = create_model(name, num_classes=1000)
    head = getattr(probe.get_classifier(), "weight", None)
    key = next((k for k, p in probe.named_parameters() if p is head), None)
    if key is None:
        return None
    state, _ = read_state_dict(file)
    for candidate in (key, f"module.{key}"):  # DataParallel/DDP checkpoints prefix every key
        if candidate in state:
            return int(state[candidate].shape[0])
    return None


__all__ = [
    "BACKENDS",
    "OnnxRunner",
    "Prediction",
    "Predictor",
    "Preprocess",
    "Result",
    "TorchRunner",
    "expand_inputs",
    "probabilities",
    "read_onnx_metadata",
    "resolve_precision",
]
