"""The engines that can run a network for the Predictor, and the measured choice between them.

Each engine takes the uint8 ``(N, C, H, W)`` batch the decoder makes and returns float32 logits:

===============  ===========  ==========================================================================
name             precision    what runs
===============  ===========  ==========================================================================
``eager``        fp32         the PyTorch module, weights and activations channels-last
``graph``        fp32         a frozen TorchScript graph of it (batch norms folded, weights pre-packed)
``eager-bf16``   bf16         the module under bf16 autocast, channels-last
``graph-bf16``   bf16         a frozen TorchScript graph of its bfloat16 copy, channels-last
``onnx``         fp32         ONNX Runtime on the fp32 export
``onnx-int8``    int8         ONNX Runtime on its QDQ quantization, u8 activations (``imgcls.inference.int8``)
``torch-int8``   int8         PyTorch FX x86 quantization, frozen to TorchScript
===============  ===========  ==========================================================================

Which is fastest depends on the CPU, the model, the batch size and the threads (issue 16 measured the frozen
bf16 graph both slower and faster than eager bf16 on the same host), so nothing is assumed: :func:`select`
builds the candidates the requested precision allows, times them alternately on a dummy batch
(:func:`measure`: each engine's fastest call, clear losers dropped after a round), and keeps the fastest
(:func:`choose`). The choice is remembered per architecture (per weights for int8), precision, batch, threads,
CPU and library versions in a small JSON file in :func:`cache_dir`, next to the ONNX files and int8 models built
on the way, so later loads build only the chosen engine. ``engine=NAME`` forces one and skips the measurement.

A choice made while other processes took the cores would be remembered wrongly for good (seen: ONNX Runtime is
~20 % faster than the frozen graph for ResNet-50 on an AVX2 host measured quietly, yet a measurement whose run
overlapped test runs chose the graph, and every later predict ran 0.74x a plain ONNX Runtime script). So each
timed call also reads how long this process's threads waited, runnable, for a core held by something else (the
kernel's run-queue wait, ``/proc/self/task/*/schedstat``): a call whose threads waited over ``WAIT_SHARE`` of
their time was disturbed. Disturbed calls do not count while an undisturbed one exists, and a choice with any
disturbed call is used but not remembered: the next load measures again. (The process's CPU share is not that
signal: with ``OMP_WAIT_POLICY=PASSIVE`` PyTorch's threads sleep between kernels and a quiet 2-core host measures
0.80-0.91 of the threads' time, where the run-queue wait stays at 0.00-0.07 quiet and 0.31-0.48 beside one busy
process. Where the kernel does not give it, the CPU share under ``BUSY_SHARE`` is the test.)

The bf16 engines are candidates only where the CPU computes bfloat16 natively (``precision="auto"``), or when
bf16 is asked for; int8 engines only when int8 is asked for, since they change answers (calibration and the
accuracy check are in ``imgcls.inference.int8``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import tempfile
import time
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from imgcls.errors import UserError
from imgcls.inference import int8 as q
from imgcls.inference.catalog import ENGINE_PRECISION, ENGINES, ORT_ENGINES, PRECISIONS, cache_dir, measure_batch

MEASURE_ROUNDS = 3
# An engine this many times slower than the fastest, in its fastest call, is dropped from the later rounds.
DROP_OVER = 1.25
# A call whose threads waited for a core over this share of wall time x threads ran while something else held the
# cores (module docstring: 0.00-0.07 quiet, 0.31-0.48 with one core taken by another process, on a 2-core host).
WAIT_SHARE = 0.15
# Without the run-queue figures: a call whose CPU time is under this share of wall time x threads (spinning
# threads, the OpenMP default, measure 0.98-1.00 quiet, 0.61-0.66 with one core taken).
BUSY_SHARE = 0.8
BUSY_MIN_SECONDS = 0.02  # shorter calls are not judged: thread wake-ups dominate their share
SETTLE_STEP = 0.005  # settle(): how often it looks whether the threads still use the CPU...
SETTLE_LIMIT = 0.25  # ...and for how long at most

log = logging.getLogger("imgcls.inference")


def native_bf16() -> bool:
    """True on CPUs whose matrix units compute in bfloat16 (AVX512-BF16 or AMX), where bf16 is a speed-up."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


def candidates(precision: str, bf16_native: bool | None = None) -> tuple[str, ...]:
    """The engines measured for ``precision``: fp32 ones always (except for bf16 and int8 asked for), bf16 ones
    where native (``auto``) or asked for, int8 ones only when asked for."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision: {precision} (choose from {', '.join(PRECISIONS)})")
    fp32 = ("eager", "graph", "onnx")
    if precision == "fp32":
        return fp32
    if precision == "bf16":
        return ("eager-bf16", "graph-bf16")
    if precision == "int8":
        return ("onnx-int8", "torch-int8")
    native = native_bf16() if bf16_native is None else bf16_native
    return ("eager-bf16", "graph-bf16", *fp32) if native else fp32


def check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise UserError(f"unknown engine: {engine} (choose from {', '.join(ENGINES)})")


def cpu_description() -> str:
    """The CPU as the benchmarks print it: model name, torch's vector capability, core count."""
    name = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{name or 'unknown CPU'} ({torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores)"


# --- engines -------------------------------------------------------------------------------------------------------


@dataclass
class Engine:
    """One way of running the network: uint8 batch in (as the decoder makes it), float32 logits out.

    Attributes:
        name: one of :data:`ENGINES`.
        forward: normalised float ``(N, C, H, W)`` -> logits.
        normalise: uint8 -> normalised float (the run's mean/std).
        channels_last: the input is handed over channels-last.
        check: for int8 engines, how they compared with fp32 on the validation images.
        file: for ONNX Runtime engines, the ONNX file they run (predict's PyTorch-free path reopens it).
        open_seconds: what making it took, as a later load pays it: tracing and freezing for the graphs, opening
            the session for ONNX Runtime, loading the cached model for int8 (an export or a calibration done once
            for the cache is not counted). Set by :meth:`EngineSource.build`.
    """

    name: str
    forward: Callable[[Tensor], Tensor]
    normalise: Callable[[Tensor], Tensor]
    channels_last: bool = False
    check: q.Int8Check | None = None
    file: Path | None = None
    open_seconds: float | None = None

    @property
    def precision(self) -> str:
        return ENGINE_PRECISION[self.name]

    @property
    def backend(self) -> str:
        return "onnx" if self.name.startswith("onnx") else "torch"

    def __call__(self, x: Tensor) -> Tensor:
        with torch.inference_mode():
            x = self.normalise(x)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            return self.forward(x).float()


def _check_file(model: Path) -> Path:
    """Where the accuracy check of a cached int8 model is kept: beside it, named after the whole file name (both
    int8 models are ``model.int8.*``, so a name from the stem alone would be one file for both checks)."""
    return model.with_name(f"{model.name}.check.json")


def _on_arrays(normalise_array: Callable[[np.ndarray], np.ndarray]) -> Callable[[Tensor], Tensor]:
    """A NumPy normalisation as an engine's ``normalise``: the tensors share the arrays' memory, no copy."""
    return lambda x: torch.from_numpy(normalise_array(x.numpy()))


class EngineSource:
    """Builds the engines of one model: the fp32 module and what it takes to export and quantize it.

    Args:
        model: the network (its fp32 weights).
        input_size: ``(C, H, W)``.
        normalise: uint8 -> normalised float.
        normalise_array: the same normalisation on NumPy arrays (`imgcls.inference.results.ArrayNormaliser`);
            when given, the ONNX Runtime engines use it, so PyTorch's thread pool is not woken before each of
            their runs (its spinning threads compete with ONNX Runtime's).
        key: identifies the weights (their SHA-256) for the cache; ``""`` disables the cache.
        run: the run folder, whose validation images calibrate int8 (int8 is unavailable without one).
        max_int8_drop: largest top-1 drop accepted from an int8 engine, percentage points.
        onnx_file: an existing fp32 ONNX export of these weights, used instead of exporting again.
        meta: the run's ``ModelMeta`` (written into exported ONNX files).
    """

    def __init__(
        self,
        model: nn.Module,
        input_size: Sequence[int],
        normalise: Callable[[Tensor], Tensor],
        key: str = "",
        normalise_array: Callable[[np.ndarray], np.ndarray] | None = None,
        run: str | os.PathLike | None = None,
        max_int8_drop: float = q.DEFAULT_MAX_DROP,
        onnx_file: str | os.PathLike | None = None,
        meta=None,
    ):
        self.model = model.float().eval()
        self.input_size = tuple(int(s) for s in input_size)
        self.normalise = normalise
        self.ort_normalise = normalise if normalise_array is None else _on_arrays(normalise_array)
        self.key = key
        self.run = Path(run) if run is not None else None
        self.max_int8_drop = max_int8_drop
        self.onnx_file = Path(onnx_file) if onnx_file is not None else None
        self.meta = meta
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._validation: list | None = None

    # where built files go: the cache for known weights, a temporary folder otherwise
    def folder(self) -> Path:
        if self.key:
            import onnxruntime

            # Files built by other library versions or quantizer settings are not reused.
            versions = f"{torch.__version__}|{onnxruntime.__version__}|{q.QUANTIZER_VERSION}|{self.input_size}"
            folder = cache_dir() / f"{self.key[:24]}-{hashlib.sha256(versions.encode()).hexdigest()[:8]}"
            try:
                folder.mkdir(parents=True, exist_ok=True)
                return folder
            except OSError:
                pass
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="imgcls-engines-")
        return Path(self._tmp.name)

    def build(self, name: str) -> Engine:
        """Build engine ``name``.

        Raises:
            UserError: int8 without a run, or an int8 model whose accuracy drop exceeds the threshold.
            RuntimeError: the engine cannot be built for this model (tracing or export failed).
        """
        check_engine(name)
        make = {
            "eager": self._eager,
            "graph": self._graph,
            "eager-bf16": self._eager_bf16,
            "graph-bf16": self._graph_bf16,
            "onnx": self._onnx,
            "onnx-int8": self._onnx_int8,
            "torch-int8": self._torch_int8,
        }[name]
        t0 = time.perf_counter()
        engine = make()
        if engine.open_seconds is None:  # the builders with one-time work (export, calibration) set their own
            engine.open_seconds = time.perf_counter() - t0
        return engine

    def _eager(self) -> Engine:
        model = deepcopy(self.model).to(memory_format=torch.channels_last)
        return Engine("eager", model, self.normalise, channels_last=True)

    def _eager_bf16(self) -> Engine:
        model = deepcopy(self.model).to(memory_format=torch.channels_last)

        def forward(x: Tensor) -> Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model(x)

        return Engine("eager-bf16", forward, self.normalise, channels_last=True)

    def _frozen(self, dtype: torch.dtype) -> torch.jit.ScriptModule:
        twin = deepcopy(self.model).to(dtype=dtype, memory_format=torch.channels_last).eval()
        example = torch.zeros(1, *self.input_size, dtype=dtype).contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), warnings.catch_warnings():
            # torch.jit is in maintenance mode and says so; torch.compile would take minutes to build this graph.
            warnings.simplefilter("ignore")
            try:
                return torch.jit.freeze(torch.jit.trace(twin, example, check_trace=False))
            except Exception as exc:  # tracing fails in as many ways as Python code can
                raise RuntimeError(f"not traceable ({type(exc).__name__}: {q._one_line(exc)})") from exc

    def _graph(self) -> Engine:
        return Engine("graph", self._frozen(torch.float32), self.normalise, channels_last=True)

    def _graph_bf16(self) -> Engine:
        graph = self._frozen(torch.bfloat16)
        return Engine("graph-bf16", lambda x: graph(x.to(torch.bfloat16)), self.normalise, channels_last=True)

    def fp32_onnx(self) -> Path:
        """The fp32 ONNX export of the weights (exported once, checked against PyTorch by the exporter)."""
        if self.onnx_file is not None and self.onnx_file.is_file():
            return self.onnx_file
        path = self.folder() / "model.onnx"
        if not path.is_file():
            from imgcls.inference.export import export_onnx

            export_onnx(self.model, self._meta(), path)
        self.onnx_file = path
        return path

    def cached(self, name: str) -> tuple[Path | None, q.Int8Check | None]:
        """The file ONNX Runtime engine ``name`` would run for these weights, when the cache already holds it (with
        its int8 check), else ``(None, None)``; nothing is built."""
        if not self.key:
            return None, None
        if name == "onnx":
            path = self.onnx_file if self.onnx_file is not None else self.folder() / "model.onnx"
            return (path, None) if path.is_file() else (None, None)
        path = self.folder() / "model.int8.onnx"
        check = self._cached_check(path)
        return (path, check) if check is not None else (None, None)

    def _cached_check(self, path: Path) -> q.Int8Check | None:
        """The accuracy check recorded beside a cached int8 model, ``None`` when either is missing or unreadable."""
        report = _check_file(path)
        if not (path.is_file() and report.is_file()):
            return None
        try:
            return q.Int8Check(**{k: v for k, v in json.loads(report.read_text()).items() if k != "drop"})
        except (ValueError, TypeError):
            return None

    def _meta(self):
        if self.meta is not None:
            return self.meta
        from imgcls.engine.bundle import ModelMeta

        num_classes = int(self.model(torch.zeros(1, *self.input_size)).shape[1])
        return ModelMeta(
            name=type(self.model).__name__,
            num_classes=num_classes,
            classes=[str(i) for i in range(num_classes)],
            input_size=list(self.input_size),
            mean=[0.0] * self.input_size[0],
            std=[1.0] * self.input_size[0],
            in_chans=self.input_size[0],
        )

    def _onnx(self) -> Engine:
        path = self.fp32_onnx()
        t0 = time.perf_counter()
        session = q.onnx_session(path)
        opened = time.perf_counter() - t0
        return Engine("onnx", q.onnx_function(session), self.ort_normalise, file=path, open_seconds=opened)

    def validation(self) -> list:
        if self.run is None:
            raise UserError("int8 needs a run folder (--run): it calibrates on the run's validation images")
        if self._validation is None:
            self._validation = q.validation_batches(self.run)
        return self._validation

    def _int8(self, name: str, path: Path, build: Callable[[list], None], load: Callable[[], Callable]) -> Engine:
        """Build (or load from the cache) an int8 model, check its accuracy drop, and wrap it."""
        report = _check_file(path)
        check = self._cached_check(path)
        if check is None:
            batches = self.validation()
            calibration = q.calibration_slice(batches)
            build(calibration)
            t0 = time.perf_counter()
            forward = load()
            opened = time.perf_counter() - t0
            check = q.compare(self.model, forward, batches, name, sum(len(x) for x in calibration))
            report.write_text(json.dumps(check.to_dict(), indent=1) + "\n")
        else:
            t0 = time.perf_counter()
            forward = load()
            opened = time.perf_counter() - t0
        log.debug("%s", check.summary())
        q.check_drop(check, self.max_int8_drop, str(self.run or "the model"))
        normalise = self.ort_normalise if name in ORT_ENGINES else self.normalise
        return Engine(name, forward, normalise, check=check, file=path, open_seconds=opened)

    def _onnx_int8(self) -> Engine:
        path = self.folder() / "model.int8.onnx"
        return self._int8(
            "onnx-int8",
            path,
            lambda calibration: q.quantize_onnx(self.fp32_onnx(), calibration, path),
            lambda: q.onnx_function(q.onnx_session(path)),
        )

    def _torch_int8(self) -> Engine:
        path = self.folder() / "model.int8.pt"

        def build(calibration: list) -> None:
            module = q.quantize_torch(self.model, calibration)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TorchScript is in maintenance mode and says so on every call
                torch.jit.save(module, str(path))

        def load() -> Callable:
            torch.backends.quantized.engine = "x86"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return torch.jit.load(str(path), map_location="cpu")

        return self._int8("torch-int8", path, build, load)


# --- measuring and choosing ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timings:
    """Seconds per call of each engine on one dummy batch, measured alternately: its fastest undisturbed call
    (its fastest call when all were disturbed).

    Attributes:
        seconds: ``{engine: seconds}``.
        batch: images in the dummy batch.
        rounds: alternating rounds measured.
        disturbed: timed calls that ran while other processes held the cores (module docstring).
        calls: timed calls in all.
        first: ``{engine: seconds}`` of each engine's first (untimed warm-up) call, where oneDNN and ONNX Runtime
            build their kernels: part of what a load costs before its first answer.
    """

    seconds: dict[str, float]
    batch: int
    rounds: int = MEASURE_ROUNDS
    disturbed: int = 0
    calls: int = 0
    first: dict[str, float] = field(default_factory=dict)

    def fastest(self) -> str:
        if not self.seconds:
            raise ValueError("no engine was measured")
        return min(self.seconds, key=lambda name: (self.seconds[name], name))

    def describe(self) -> str:
        return ", ".join(f"{name} {s * 1000:.1f} ms" for name, s in sorted(self.seconds.items(), key=lambda t: t[1]))


def _run_queue_wait() -> float | None:
    """Seconds this process's threads have spent runnable but waiting for a core (``None`` where the kernel does not
    say: not Linux, or no scheduler statistics)."""
    total = 0
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return None
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                total += int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended between the listing and the read
    return total / 1e9 if tasks else None


def was_disturbed(wall: float, cpu: float, waited: float | None, threads: int) -> bool:
    """Whether a call of ``wall`` seconds that used ``cpu`` seconds of CPU and whose threads ``waited`` seconds
    for a core (``None``: unknown) ran while other processes held the cores (module docstring)."""
    if wall < BUSY_MIN_SECONDS:
        return False
    if waited is not None:
        return waited > WAIT_SHARE * threads * wall
    return cpu < BUSY_SHARE * threads * wall


def settle(limit: float = SETTLE_LIMIT) -> None:
    """Wait until this process's threads stop using the CPU (at most ``limit`` seconds): after an ONNX Runtime call
    its pool's threads spin for a while, holding the cores the next engine's call needs (a frozen bf16 graph's
    ResNet-50 call at batch 1 measured 62-89 ms right after one, 33 ms after a 50 ms pause)."""
    deadline = time.perf_counter() + limit
    while time.perf_counter() < deadline:
        c0 = time.process_time()
        time.sleep(SETTLE_STEP)
        if time.process_time() - c0 < 0.1 * SETTLE_STEP:
            return


def measure(
    engines: Mapping[str, Callable[[Tensor], Tensor]],
    batch: Tensor,
    rounds: int = MEASURE_ROUNDS,
    warmup: int = 1,
    drop_over: float | None = DROP_OVER,
    spinning: Collection[str] = (),
) -> Timings:
    """Time each engine on ``batch``: ``warmup`` untimed calls each (oneDNN and ORT build kernels on the first),
    then ``rounds`` rounds in which every engine runs once, in turn (A, B, C, A, B, C, ...); each engine's time is
    its fastest undisturbed call (module docstring), the one least slowed by anything else on the machine.

    Alternating puts the load of other processes on a shared machine on every engine alike. After each round, an
    engine whose fastest call so far is over ``drop_over`` times the fastest call of any engine is measured no
    more (``None`` keeps all): a clear loser costs one round, not all of them, on the start-up path. After each
    call of an engine in ``spinning`` (ONNX Runtime's, whose threads spin-wait after a run), the next call waits
    for them to stop (:func:`settle`), so that it is not timed against them.
    """
    threads = torch.get_num_threads()
    first: dict[str, float] = {}
    for name, fn in engines.items():
        for i in range(warmup):
            t0 = time.perf_counter()
            fn(batch)
            if i == 0:
                first[name] = time.perf_counter() - t0
            if name in spinning:
                settle()
    times: dict[str, list[tuple[float, bool]]] = {name: [] for name in engines}
    running = list(engines)
    for _ in range(rounds):
        for name in running:
            q0 = _run_queue_wait()
            t0, c0 = time.perf_counter(), time.process_time()
            engines[name](batch)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            q1 = _run_queue_wait()
            waited = q1 - q0 if q0 is not None and q1 is not None else None
            times[name].append((wall, was_disturbed(wall, cpu, waited, threads)))
            if name in spinning:
                settle()
        if drop_over is not None:
            best = min(min(w for w, _ in times[name]) for name in running)
            running = [name for name in running if min(w for w, _ in times[name]) <= drop_over * best]

    def fastest(calls: list[tuple[float, bool]]) -> float:
        return min([w for w, busy in calls if not busy] or [w for w, _ in calls])

    disturbed = sum(busy for calls in times.values() for _, busy in calls)
    calls = sum(len(c) for c in times.values())
    seconds = {name: fastest(c) for name, c in times.items()}
    return Timings(seconds, int(batch.shape[0]), rounds, disturbed, calls, first)


def choose(timings: Timings) -> str:
    """The engine to run: the one with the smallest measured time (ties broken by name, so the choice is stable)."""
    return timings.fastest()


@dataclass(frozen=True)
class Cost:
    """What a measured candidate costs a later load of the same model: ``start`` seconds before its first answer
    (making it, :attr:`Engine.open_seconds`, plus its first call) and ``per_image`` seconds for each image after
    that (its timed call over the dummy batch). ``file`` and ``check`` as in :class:`Engine`."""

    start: float
    per_image: float
    file: Path | None = None
    check: q.Int8Check | None = None


@dataclass
class Selection:
    """What :func:`select` did: the engine it returns, how it came to it, and what it measured or skipped.

    ``costs`` holds every measured candidate's :class:`Cost`, from this measurement or remembered with the choice
    (an ONNX Runtime one only where these weights' file is in the cache; empty for a forced engine): predict uses
    them to run a handful of images on an engine that starts sooner (``imgcls.inference.fastpath``).
    """

    engine: Engine
    how: str  # "forced", "measured", "remembered" or "only candidate"
    timings: Timings | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    costs: dict[str, Cost] = field(default_factory=dict)

    @property
    def settled(self) -> bool:
        """False for a measurement that other processes disturbed: used now, not remembered."""
        return self.timings is None or not self.timings.disturbed

    def describe(self) -> str:
        text = f"engine {self.engine.name} ({self.how}"
        if self.timings is not None:
            text += f" at batch {self.timings.batch}: {self.timings.describe()}"
            if self.timings.disturbed:
                text += (
                    f"; {self.timings.disturbed} of {self.timings.calls} timed calls ran while other processes "
                    "or threads held the cores: not remembered, measured again next time"
                )
        text += ")"
        if self.skipped:
            text += "; not available: " + "; ".join(f"{k} ({v})" for k, v in self.skipped.items())
        if self.engine.check is not None:
            text += "; " + self.engine.check.summary()
        return text


def _choice_key(source: EngineSource, names: Sequence[str], batch: int) -> str | None:
    """The cache key of a choice. Which fp32 or bf16 engine is fastest depends on the architecture, not on the
    values of its weights, so a new run of a known architecture reuses the choice; int8 candidates are checked for
    accuracy on the run's own images, so a choice among them belongs to those weights."""
    if not source.key:
        return None
    import onnxruntime

    model = source.key
    if source.meta is not None and not any(ENGINE_PRECISION[name] == "int8" for name in names):
        m = source.meta
        model = json.dumps([m.name, m.num_classes, m.in_chans, m.model_kwargs], sort_keys=True, default=str)
    parts = [
        model,
        "x".join(map(str, source.input_size)),
        ",".join(names),
        str(batch),
        str(torch.get_num_threads()),
        cpu_description(),
        torch.__version__,
        onnxruntime.__version__,
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def _remembered(key: str | None) -> tuple[str | None, dict[str, dict]]:
    """The remembered choice for ``key`` and the costs measured with it (``{name: {"start", "per_image"}}``; empty
    for a choice recorded without them)."""
    if key is None:
        return None, {}
    try:
        choices = json.loads((cache_dir() / "choices.json").read_text())
    except (OSError, ValueError):
        return None, {}
    entry = choices.get(key) if isinstance(choices, dict) else None
    if isinstance(entry, str):  # recorded before the costs were
        entry = {"engine": entry}
    if not isinstance(entry, dict) or entry.get("engine") not in ENGINES:
        return None, {}
    costs = entry.get("costs")
    return entry["engine"], costs if isinstance(costs, dict) else {}


def _remember(key: str | None, name: str, costs: Mapping[str, Cost]) -> None:
    if key is None:
        return
    path = cache_dir() / "choices.json"
    try:
        choices = json.loads(path.read_text()) if path.is_file() else {}
        choices = choices if isinstance(choices, dict) else {}
        # Files and int8 checks are not kept: the choice of an fp32 or bf16 engine serves other weights of the
        # same architecture, whose own files (if any) the source finds in its cache (_remembered_costs).
        figures = {n: {"start": c.start, "per_image": c.per_image} for n, c in costs.items()}
        choices[key] = {"engine": name, "costs": figures}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(choices, indent=1) + "\n")
        os.replace(tmp, path)
    except (OSError, ValueError):
        pass  # the choice is measured again next time


def _remembered_costs(source: EngineSource, figures: Mapping[str, dict]) -> dict[str, Cost]:
    """The remembered figures as :class:`Cost`, each ONNX Runtime one with this source's own file (and int8 check)
    where its cache holds one; an ONNX Runtime engine without a file here is left out."""
    costs: dict[str, Cost] = {}
    for name, figure in figures.items():
        try:
            start, per_image = float(figure["start"]), float(figure["per_image"])
        except (KeyError, TypeError, ValueError):
            continue
        file, check = None, None
        if name in ORT_ENGINES:
            file, check = source.cached(name)
            if file is None:
                continue
        costs[name] = Cost(start, per_image, file, check)
    return costs


def select(
    source: EngineSource,
    precision: str = "auto",
    engine: str | None = None,
    batch_size: int = 32,
    remember: bool = True,
) -> Selection:
    """Build the engine to run ``source``'s model: ``engine`` when given, else the fastest candidate of
    ``precision`` as measured here (or as remembered from an earlier measurement with the same key).

    A candidate that cannot be built for this model (a model that does not trace, an export that fails) is left
    out and named in the selection; an int8 candidate whose accuracy drop exceeds the threshold too, unless it
    was the only one (then the refusal is raised).

    Raises:
        UserError: unknown engine or precision; a forced engine that cannot run; no candidate could be built.
    """
    if engine is not None:
        check_engine(engine)
        try:
            return Selection(source.build(engine), "forced")
        except RuntimeError as exc:
            raise UserError(f"--engine {engine}: cannot run this model ({q._one_line(exc)})") from None
    names = candidates(precision)
    batch = measure_batch(batch_size)
    key = _choice_key(source, names, batch) if remember else None
    remembered, figures = _remembered(key)
    if remembered is not None:
        try:
            engine = source.build(remembered)
            return Selection(engine, "remembered", costs=_remembered_costs(source, figures))
        except (RuntimeError, UserError) as exc:
            log.debug("remembered engine %s not built (%s); measuring again", remembered, exc)
    built: dict[str, Engine] = {}
    skipped: dict[str, str] = {}
    refusals: list[UserError] = []
    for name in names:
        try:
            built[name] = source.build(name)
        except q.AccuracyDropTooLarge as exc:
            refusals.append(exc)
            skipped[name] = "accuracy drop over the threshold"
        except RuntimeError as exc:
            skipped[name] = q._one_line(exc)
    if not built:
        if refusals:
            raise refusals[0]
        raise UserError(f"no engine could run this model: {'; '.join(f'{k}: {v}' for k, v in skipped.items())}")
    if len(built) == 1:
        (only,) = built.values()
        return Selection(only, "only candidate", skipped=skipped)
    dummy = torch.randint(
        0, 256, (batch, *source.input_size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    timings = measure(built, dummy, spinning=ORT_ENGINES)
    chosen = choose(timings)
    costs = {
        name: Cost(
            (built[name].open_seconds or 0.0) + timings.first.get(name, 0.0),
            seconds / timings.batch,
            built[name].file,
            built[name].check,
        )
        for name, seconds in timings.seconds.items()
    }
    selection = Selection(built[chosen], "measured", timings, skipped, costs)
    if selection.settled:
        _remember(key, chosen, costs)
    return selection


__all__ = [
    "ENGINES",
    "ENGINE_PRECISION",
    "PRECISIONS",
    "Cost",
    "Engine",
    "EngineSource",
    "Selection",
    "Timings",
    "cache_dir",
    "candidates",
    "check_engine",
    "choose",
    "cpu_description",
    "measure",
    "native_bf16",
    "select",
]
