"""Predict without importing PyTorch, when the engine measured fastest for a run on this machine is ONNX Runtime's.

Importing PyTorch is most of what ``imgcls predict`` spends before its first answer (1.8 s of 2.7 s measured on a
2-core host), and a plain ONNX Runtime script starts in about half a second. When the Predictor's measured
choice (`imgcls.inference.engines.select`) for a run is an ONNX Runtime engine (``onnx`` fp32, or ``onnx-int8``),
PyTorch takes no part in the answers: the images are decoded by Pillow, normalised by NumPy and run by ONNX
Runtime. So the full path records that choice here (:func:`remember`): which engine, which ONNX file, how many
threads, and for int8 its accuracy check. A later ``predict`` that asks for the same thing on the same machine
(:func:`open_remembered`) opens that file directly and answers exactly as the full path would, without PyTorch.

"The same thing on the same machine" is a key over the weights' SHA-256, the whole ``model.json`` (a record
edited by hand takes the full path, which checks it against the weights), the requested precision and engine,
the batch the candidates were timed on, and what decides which engine is fastest: the CPU (its model name and
flags), the cores this process may use, the thread settings in the environment, and the versions of PyTorch,
ONNX Runtime and imgcls. Anything that does not match — no record, a different request, a changed ONNX
file, weights whose SHA-256 is not the one ``model.json`` records, an int8 drop over ``--max-int8-drop`` — falls
back to the full path, which measures (or refuses) as before and records again.

The measured choice is the engine fastest per image, which is not always the one that answers a given request
soonest: the full path first imports PyTorch (about 1.7 s on a 2-core host), loads the weights and builds its
engine, where this path opens an ONNX file. So when the fastest engine is a PyTorch one, the full path also
records what each ONNX Runtime candidate it measured costs (seconds before its first answer, seconds per image:
`imgcls.inference.engines.Cost`) beside the same figures for its choice, and a predict that knows how many inputs
it has (:func:`open_remembered`'s ``inputs``) takes whichever :func:`plan` estimates answers them all soonest. A
handful of images then skips PyTorch; a folder of hundreds keeps the faster engine. What both paths pay alike
(Python, imgcls, ONNX Runtime and Pillow imports, decoding) is left out of both estimates.

The answers are the full path's: the same decoder (`imgcls.data.reader.load_array_for_eval`), the same float32
normalisation, the same ONNX file with the same session options and threads, the same temperature; softmax and
sigmoid are NumPy's (probabilities agree with PyTorch's to about 1e-7).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

import numpy as np

from imgcls.errors import UserError
from imgcls.inference.catalog import ORT_ENGINES, cache_dir, measure_batch
from imgcls.inference.results import ArrayNormaliser, BatchedPredictor, Prediction, Result, check_input
from imgcls.run_folder import ModelMeta, RunFolder, verify_weights

RECORDS = "fastpath.json"
# The thread settings of the environment that change what PyTorch and ONNX Runtime run with.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_PROC_BIND", "GOMP_CPU_AFFINITY", "KMP_AFFINITY")

log = logging.getLogger("imgcls.inference")

_torch_import_seconds: float | None = None  # what importing PyTorch took this process, when import_torch timed it


# --- the key -------------------------------------------------------------------------------------------------------


def _cpu() -> str:
    """The CPU's model name and the digest of its flags, from ``/proc/cpuinfo`` (what decides its kernels)."""
    name, flags = "", ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not name:
                    name = value.strip()
                elif key == "flags" and not flags:
                    flags = hashlib.sha256(value.strip().encode()).hexdigest()[:16]
                if name and flags:
                    break
    except OSError:
        pass
    return f"{name or os.uname().machine}|{flags}"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "-"


def environment() -> list[str]:
    """What decides which engine is fastest here, as strings (module docstring)."""
    import imgcls

    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    return [
        _cpu(),
        f"{os.cpu_count()}/{usable}",
        ",".join(f"{v}={os.environ.get(v, '')}" for v in THREAD_VARIABLES),
        _version("torch"),
        _version("onnxruntime"),
        imgcls.__version__,
    ]


def request_key(meta: ModelMeta, precision: str, engine: str | None, batch: int) -> str:
    """The key of a request (module docstring); ``batch`` is the Predictor's batch size. The whole ``model.json``
    is in it, so a record edited by hand (another architecture, other classes) takes the full path, which checks
    it against the weights."""
    record = json.dumps(meta.to_dict(), sort_keys=True, default=str)
    parts = [
        meta.sha256,
        hashlib.sha256(record.encode()).hexdigest(),
        precision,
        engine or "",
        str(measure_batch(batch)),
        *environment(),
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


# --- the records ---------------------------------------------------------------------------------------------------


def _records_path() -> Path:
    return cache_dir() / RECORDS


def _read_records() -> dict:
    try:
        records = json.loads(_records_path().read_text())
    except (OSError, ValueError):
        return {}
    return records if isinstance(records, dict) else {}


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def import_torch() -> None:
    """Import PyTorch, and when this call is what imports it, note how long that took: the part of the full path's
    start that this path does not pay (:func:`torch_import_seconds`)."""
    global _torch_import_seconds
    if "torch" in sys.modules:
        return
    t0 = time.perf_counter()
    import torch  # noqa: F401

    _torch_import_seconds = time.perf_counter() - t0


def torch_import_seconds() -> float | None:
    """Seconds this process took to import PyTorch, or ``None`` when it was not imported by :func:`import_torch`."""
    return _torch_import_seconds


def _file_entry(file: str | os.PathLike) -> dict:
    file = Path(file).resolve()
    return {"file": str(file), "stamp": _stamp(file)}


def remember(
    meta: ModelMeta,
    precision: str,
    engine: str | None,
    batch_size: int,
    chosen: str,
    file: str | os.PathLike | None,
    threads: int,
    check: dict | None = None,
    start: float | None = None,
    per_image: float | None = None,
    alternatives: Mapping | None = None,
) -> None:
    """Record what the full path chose for this request.

    An ONNX Runtime choice (``chosen`` in ``ORT_ENGINES``, run from ``file`` with ``threads`` threads; ``check``:
    the int8 engine's accuracy check) answers every later matching request without PyTorch. A PyTorch choice is
    recorded with its ``start`` (seconds before its first answer, PyTorch's import included) and ``per_image``
    seconds, and ``alternatives``: ``{name: imgcls.inference.engines.Cost}`` of the ONNX Runtime candidates it was
    measured against, so that a request with few inputs can take one of them (:func:`plan`). Best effort: a cache
    that cannot be written only means the next predict takes the full path again."""
    if not meta.sha256:
        return
    if chosen in ORT_ENGINES:
        if file is None:
            return
        entry = {"engine": chosen, **_file_entry(file), "threads": int(threads), "check": check}
    else:
        others = {
            name: {
                **_file_entry(cost.file),
                "check": cost.check.to_dict() if cost.check is not None else None,
                "start": float(cost.start),
                "per_image": float(cost.per_image),
            }
            for name, cost in (alternatives or {}).items()
            if name in ORT_ENGINES and cost.file is not None and Path(cost.file).is_file()
        }
        if start is None or per_image is None or not others:
            return
        entry = {
            "engine": chosen,
            "threads": int(threads),
            "start": float(start),
            "per_image": float(per_image),
            "alternatives": others,
        }
    key = request_key(meta, precision, engine, batch_size)
    path = _records_path()
    try:
        records = _read_records()
        if records.get(key) == entry:
            return
        records[key] = entry
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(records, indent=1) + "\n")
        os.replace(tmp, path)
    except OSError:
        pass


def plan(entry: Mapping, inputs: int | None) -> tuple[str, dict[str, float]]:
    """Which recorded engine answers ``inputs`` images soonest: ``(name, {name: estimated seconds})``.

    Each estimate is the engine's recorded start plus ``inputs`` times its seconds per image. The full path's
    choice keeps ties and is the answer whenever the count is unknown or a figure is missing (then the estimates
    are empty); an alternative whose int8 check is over the allowed drop is left out by the caller."""
    chosen = str(entry.get("engine"))
    others = entry.get("alternatives")
    if chosen in ORT_ENGINES or inputs is None or not isinstance(others, Mapping):
        return chosen, {}
    try:
        estimates = {chosen: float(entry["start"]) + inputs * float(entry["per_image"])}
        for name, other in others.items():
            if name in ORT_ENGINES and isinstance(other, Mapping):
                estimates[name] = float(other["start"]) + inputs * float(other["per_image"])
    except (KeyError, TypeError, ValueError):
        return chosen, {}
    best = min(estimates, key=lambda name: (estimates[name], name != chosen, name))
    return best, estimates


def _check(entry: Mapping, max_int8_drop: float):
    """The int8 check recorded with ``entry`` (``None`` for fp32); ``False`` when it is unreadable or over the
    allowed drop (the full path refuses it, with the figures)."""
    if entry.get("check") is None:
        return None
    from imgcls.inference.int8 import Int8Check

    try:
        check = Int8Check(**{k: v for k, v in entry["check"].items() if k != "drop"})
    except (TypeError, AttributeError):
        return False
    return check if check.drop <= max_int8_drop else False


def open_remembered(
    run: str | os.PathLike,
    precision: str = "auto",
    engine: str | None = None,
    batch_size: int = 32,
    max_int8_drop: float = 1.0,
    num_workers: int | None = None,
    inputs: int | None = None,
) -> FastPredictor | None:
    """A :class:`FastPredictor` for ``run`` when this request was recorded by the full path on this machine and
    everything still matches (module docstring), else ``None`` (take the full path). With ``inputs``, the number of
    images to answer, a recorded PyTorch choice gives way to an ONNX Runtime candidate :func:`plan` estimates to
    answer them sooner."""
    if precision not in ("auto", "fp32", "int8") or engine not in (None, *ORT_ENGINES) or batch_size < 1:
        return None
    folder = RunFolder(run)
    try:
        meta = folder.read_meta()
    except UserError:
        return None  # the full path says what is wrong with it
    entry = _read_records().get(request_key(meta, precision, engine, batch_size))
    if not isinstance(entry, dict):
        return None
    if entry.get("engine") in ORT_ENGINES:
        name, use, reason = entry["engine"], entry, None
    else:
        others = {
            k: v
            for k, v in (entry.get("alternatives") or {}).items()
            if isinstance(v, dict) and _check(v, max_int8_drop) is not False
        }
        name, estimates = plan({**entry, "alternatives": others}, inputs)
        if name not in others:
            return None
        use = others[name]
        count = f"{inputs} input{'s' if inputs != 1 else ''}"
        reason = (
            f"for {count}: about {estimates[name]:.2f} s here without PyTorch against "
            f"{estimates[entry['engine']]:.2f} s for {entry['engine']}, the fastest per image, with it"
        )
    file = Path(str(use.get("file", "")))
    try:
        if not file.is_file() or _stamp(file) != use.get("stamp"):
            return None
        verify_weights(folder.weights, meta.sha256, folder.meta)
    except (OSError, UserError):
        return None
    check = _check(use, max_int8_drop)
    if check is False:
        return None
    from imgcls.inference.int8 import onnx_session  # the full path's session options (int8 imports no torch)

    try:
        session = onnx_session(file, threads=int(entry["threads"]))
    except Exception as exc:  # a damaged file: ONNX Runtime raises its own types
        log.debug("fast path: %s not opened (%s); taking the full path", file, exc)
        return None
    return FastPredictor(session, meta, name, check, batch_size=batch_size, num_workers=num_workers, reason=reason)


# --- the predictor -------------------------------------------------------------------------------------------------


class FastSelection:
    """What the fast path ran, in the words of `imgcls.inference.engines.Selection.describe` (``reason``: why a
    recorded PyTorch choice gave way to this engine)."""

    def __init__(self, engine: str, check=None, reason: str | None = None):
        self.engine_name = engine
        self.check = check
        self.reason = reason

    def describe(self) -> str:
        how = "remembered" if self.reason is None else f"chosen {self.reason}"
        text = f"engine {self.engine_name} ({how}; PyTorch not imported)"
        return text + (f"; {self.check.summary()}" if self.check is not None else "")


class FastPredictor(BatchedPredictor):
    """A run's network on an ONNX Runtime session, with its preprocessing and answers in NumPy (module docstring).

    Args:
        session: the ONNX Runtime session of the recorded file.
        meta: the run's ``model.json``.
        engine: the engine name the full path chose (``onnx`` or ``onnx-int8``).
        check: the int8 engine's accuracy check, when it is one.
        batch_size: images per forward pass.
        num_workers: decoding threads (default: the number of CPU cores, at most 8).
        reason: why this engine and not the full path's choice (:class:`FastSelection`).
    """

    backend = "onnx"

    def __init__(
        self, session, meta: ModelMeta, engine: str, check=None, batch_size: int = 32, num_workers=None, reason=None
    ):
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.meta = meta
        self.classes = list(meta.classes)
        self.task = meta.task
        thresholds = meta.class_thresholds() if meta.task == "multilabel" else None
        # float32, as the full path compares them (Predictor.label_set)
        self.thresholds = None if thresholds is None else np.asarray(thresholds, dtype=np.float32)
        self.temperature = None if meta.temperature in (None, 1.0) else np.float32(meta.temperature)
        self.batch_size = batch_size
        self.num_workers = num_workers or min(8, os.cpu_count() or 1)
        self.precision = "int8" if engine == "onnx-int8" else "fp32"
        self.selection = FastSelection(engine, check, reason)
        self.normalise = ArrayNormaliser(meta.mean, meta.std)  # Preprocess.normalise's float32 operations

    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(self.meta.input_size)

    def load(self, item) -> np.ndarray:
        from PIL import Image

        from imgcls.data.reader import eval_view, load_array_for_eval, pil_to_array, to_standard_mode

        c, h, _ = self.meta.input_size
        resize = self.meta.resize or h
        if isinstance(item, Image.Image):
            return pil_to_array(eval_view(to_standard_mode(item), h, resize, c))
        check_input(item)
        return load_array_for_eval(item, size=h, resize=resize, in_chans=c)

    def stack(self, arrays: list[np.ndarray]) -> np.ndarray:
        return np.stack(arrays)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """uint8 ``(N, C, H, W)`` -> float32 logits (divided by the run's temperature, when it has one)."""
        (out,) = self.session.run(None, {self.input_name: np.ascontiguousarray(self.normalise(batch))})
        out = np.asarray(out, dtype=np.float32)
        return out if self.temperature is None else out / self.temperature

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """uint8 batch -> probabilities ``(N, K)``: sigmoid per label for multi-label, softmax otherwise (a single
        binary logit ``z`` counts as the pair ``(0, z)``, as in `imgcls.engine.metrics`)."""
        z = self.logits(batch)
        if self.task == "multilabel":
            return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)
        if z.ndim == 1:
            z = z[:, None]
        if z.shape[1] == 1:
            z = np.concatenate([np.zeros_like(z), z], axis=1)
        with np.errstate(invalid="ignore", over="ignore"):
            e = np.exp(z - z.max(axis=1, keepdims=True))
            return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    def answer_batch(self, labels: list[str], batch: np.ndarray, topk: int) -> list[Result]:
        return [self.answer(label, row, topk) for label, row in zip(labels, self.probabilities(batch), strict=True)]

    def answer(self, label: str, probs: np.ndarray, topk: int) -> Result:
        if not np.isfinite(probs).all():
            return Result(label, error="the model's output is not a finite number (NaN or infinity)")
        order = np.argsort(-probs, kind="stable")
        top = tuple(Prediction(self.classes[i], int(i), round(float(probs[i]), 6)) for i in order[:topk])
        labels = None
        if self.thresholds is not None:
            labels = tuple(self.classes[i] for i in order if probs[i] >= self.thresholds[i])
        return Result(label, top, labels=labels)


__all__ = [
    "FastPredictor",
    "environment",
    "import_torch",
    "open_remembered",
    "plan",
    "remember",
    "request_key",
    "torch_import_seconds",
]
