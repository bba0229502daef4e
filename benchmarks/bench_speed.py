"""The measured speed table: the machine's fp32/bf16 peaks and the zoo's training and inference images/s.

Two parts, both in one process:

- ``measure_peaks()``: the best FLOP/s of a large matrix product (4096×4096 by 4096×4096) and of a large
  convolution (256 → 256 channels, 3×3, batch 64 at 56×56, the shape of ResNet's widest early stage), in fp32
  (NCHW) and in bf16 (bf16 tensors, channels_last for the convolution). These are the ceilings the table's
  achieved figures are read against; the speedrun imports this function for the same purpose.
- ``speed_table()``: for each model at its native input size, one training step (forward, backward with the
  auxiliary heads the model returns in training mode, SGD with momentum) and one inference pass (eval mode,
  ``torch.inference_mode``), in fp32 NCHW and in bf16 autocast + channels_last. The two precisions are
  measured in interleaved repetitions (fp32, bf16, fp32, bf16, ...) after one warm-up each, and the median is
  kept, so a change of load on the shared machine hits both columns alike.

FLOP accounting: a forward pass costs 2 FLOPs per multiply-accumulate (MACs from ``imgcls.profile``: convs,
linear layers, matrix products; the papers' convention). A training step is counted as 3× the forward pass
(the backward pass computes gradients with respect to both activations and weights, each about as costly as
the forward; Kaplan et al. 2020, arXiv:2001.08361, Section 2.1). Auxiliary heads, pooling, normalisation and
activations are left out, so the achieved fractions are slight underestimates.

Command: ``.venv/bin/python -m benchmarks.run speed`` (``IMGCLS_BENCH_SPEED_REPEATS`` sets the repetitions,
default 3; ``IMGCLS_BENCH_SPEED_MODELS`` a comma-separated list of models).
"""

from __future__ import annotations

import copy
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# The representative set: one model per family at ImageNet size, and the CIFAR-10 table's models.
MODELS = (
    "lenet5",
    "alexnet",
    "vgg16",
    "googlenet",
    "inception_v3",
    "resnet18",
    "resnet50",
    "resnext50_32x4d",
    "densenet121",
    "dpn92",
    "inception_v4",
    # The small CPU-friendly models (issue 14): what to fine-tune on a folder of photos without a GPU.
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "mobilenet_v2",
    "efficientnet_b0",
    "regnet_x_400mf",
    "regnet_y_400mf",
    "regnet_x_800mf",
    "regnet_y_800mf",
    "resnet10t",
    "resnet18_cifar",
    "vgg16_cifar",
    "airbench94",
    "densenet121_cifar",
)
PRECISIONS = ("fp32", "bf16")
# The second column of each pair: bf16 autocast + channels_last where the CPU computes bf16 natively; elsewhere
# (emulated bf16 steps take minutes) fp32 in channels_last, what the Predictor's eager engine runs.
FAST = {"bf16": "bf16", "fp32cl": "fp32 CL"}
MAX_ITERATIONS = 50  # per timed repetition, for the smallest models (see ``min_seconds``)
MIN_SECONDS = 0.3  # per timed repetition in the benchmark
CONTENDED_SHARE = 80  # % of the threads' time below which the section warns that the figures are disturbed


def columns(fast: str = "bf16") -> tuple[str, ...]:
    """The table's columns with ``fast`` (a key of ``FAST``) as the second precision."""
    f = FAST[fast]
    return (
        "model",
        "input",
        "batch",
        "GMACs/img",
        "train fp32 img/s",
        f"train {f} img/s",
        f"train {f}/fp32",
        "infer fp32 img/s",
        f"infer {f} img/s",
        f"infer {f}/fp32",
        f"train {f} % peak",
        f"infer {f} % peak",
    )


COLUMNS = columns("bf16")


def _best_rate(fn: Callable[[], object], flops: float, repeats: int) -> float:
    """FLOP/s of the fastest of `repeats` calls of `fn`, after one warm-up call (oneDNN builds kernels then)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return flops / best


def measure_peaks(
    matmul_size: int = 4096,
    conv_shape: tuple[int, int, int, int] = (64, 256, 56, 56),
    repeats: int = 5,
    precisions: Sequence[str] = PRECISIONS,
) -> dict:
    """The machine's measured fp32 and bf16 peak FLOP/s on a large matmul and a large 3×3 convolution.

    Args:
        matmul_size: ``n`` of the ``(n, n) @ (n, n)`` product (``2·n³`` FLOPs).
        conv_shape: ``(N, C, H, W)`` input of a ``C → C`` 3×3 convolution with padding 1
            (``2·N·H·W·C²·9`` FLOPs).
        repeats: timed calls per case after one warm-up; the fastest counts.
        precisions: ``fp32`` and/or ``bf16`` (leave bf16 out on CPUs that emulate it: minutes per call).

    Returns:
        ``{"threads", "matmul_size", "conv_shape", "matmul_fp32", "matmul_bf16", "conv_fp32", "conv_bf16",
        "fp32", "bf16"}``: rates in FLOP/s; ``fp32``/``bf16`` are the better of matmul and conv.
    """
    n = matmul_size
    batch, chans, h, w = conv_shape
    matmul_flops = 2.0 * n**3
    conv_flops = 2.0 * batch * h * w * chans * chans * 9
    gen = torch.Generator().manual_seed(0)
    peaks: dict = {"threads": torch.get_num_threads(), "matmul_size": n, "conv_shape": tuple(conv_shape)}
    with torch.inference_mode():
        kernels = (("fp32", torch.float32, torch.contiguous_format), ("bf16", torch.bfloat16, torch.channels_last))
        for name, dtype, layout in (k for k in kernels if k[0] in precisions):
            a = torch.randn(n, n, generator=gen).to(dtype)
            b = torch.randn(n, n, generator=gen).to(dtype)
            peaks[f"matmul_{name}"] = _best_rate(lambda a=a, b=b: torch.mm(a, b), matmul_flops, repeats)
            del a, b
            conv = nn.Conv2d(chans, chans, 3, padding=1, bias=False).to(dtype=dtype, memory_format=layout)
            x = torch.randn(conv_shape, generator=gen).to(dtype).contiguous(memory_format=layout)
            peaks[f"conv_{name}"] = _best_rate(lambda conv=conv, x=x: conv(x), conv_flops, repeats)
            peaks[name] = max(peaks[f"matmul_{name}"], peaks[f"conv_{name}"])
    return peaks


@dataclass(frozen=True)
class SpeedRow:
    """One model's figures: images/s keyed by ``(phase, precision)``, e.g. ``rates["train", "bf16"]``; the second
    precision is ``fast`` (``bf16``, or ``fp32cl`` on CPUs without bf16 units)."""

    model: str
    input_size: tuple[int, int, int]
    batch_size: int
    macs: int  # forward multiply-accumulates per image
    rates: dict[tuple[str, str], float]
    fast: str = "bf16"

    def ratio(self, phase: str) -> float:
        return self.rates[phase, self.fast] / self.rates[phase, "fp32"]

    def flops_per_image(self, phase: str) -> float:
        """2 FLOPs per MAC forward; a training step is 3 forward passes' worth (see the module docstring)."""
        return 2.0 * self.macs * (3 if phase == "train" else 1)


def default_batch_size(input_size: Sequence[int]) -> int:
    """Small batches that keep the whole table within minutes: 8 at ImageNet sizes, 128 at 32×32."""
    return 8 if min(input_size[1:]) >= 96 else 128


def _loss(out, target: torch.Tensor, aux_weights: Sequence[float]) -> torch.Tensor:
    """Cross-entropy of the main logits plus the auxiliary heads' weighted losses (as the engine trains)."""
    if isinstance(out, tuple):
        logits, *aux = out
        loss = F.cross_entropy(logits, target)
        for weight, extra in zip(aux_weights, aux, strict=False):
            loss = loss + weight * F.cross_entropy(extra, target)
        return loss
    return F.cross_entropy(out, target)


class _Runner:
    """One precision's copy of the model, its optimiser and input batch, with a train step and an inference pass."""

    def __init__(self, model: nn.Module, precision: str, x: torch.Tensor, y: torch.Tensor):
        bf16 = precision == "bf16"
        layout = torch.channels_last if precision in FAST else torch.contiguous_format
        self.model = model.to(memory_format=layout)
        self.x = x.contiguous(memory_format=layout)
        self.y = y
        self.dtype = torch.bfloat16 if bf16 else None
        self.aux_weights = tuple(getattr(model, "aux_weights", ()))
        self.optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def _autocast(self):
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.dtype is not None)

    def train_step(self) -> None:
        self.model.train()
        with self._autocast():
            loss = _loss(self.model(self.x), self.y, self.aux_weights)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def infer(self) -> None:
        self.model.eval()
        with torch.inference_mode(), self._autocast():
            self.model(self.x)


def _seconds(fn: Callable[[], None], iterations: int) -> float:
    t0 = time.perf_counter()
    for _ in range(iterations):
        fn()
    return (time.perf_counter() - t0) / iterations


def measure_model(
    name: str,
    batch_size: int | None = None,
    iterations: int = 1,
    repeats: int = 3,
    min_seconds: float = 0.0,
    fast: str = "bf16",
) -> SpeedRow:
    """Training and inference images/s of one registered model at its native input size, fp32 vs ``fast``.

    Args:
        name: registered model name.
        batch_size: images per step; ``default_batch_size`` of the native input size when ``None``.
        iterations: steps per timed repetition, at least.
        repeats: interleaved repetitions (fp32 then ``fast``, each training then inference); the median counts.
        min_seconds: raise the steps of each (phase, precision) until one repetition lasts about this long, judged
            from a second warm-up step; small models otherwise time little more than thread wake-ups.
        fast: the second precision, a key of ``FAST``.
    """
    from imgcls.models import create_model, model_entry, profile

    input_size = tuple(model_entry(name).input_size)
    batch_size = batch_size or default_batch_size(input_size)
    num_classes = 1000 if min(input_size[1:]) >= 96 else 10
    with torch.device("meta"):
        macs = profile(create_model(name, num_classes=num_classes, in_chans=input_size[0]), input_size).macs

    torch.manual_seed(0)
    model = create_model(name, num_classes=num_classes, in_chans=input_size[0])
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((batch_size, *input_size), generator=gen)
    y = torch.randint(0, num_classes, (batch_size,), generator=gen)
    runners = {p: _Runner(model if p == "fp32" else copy.deepcopy(model), p, x, y) for p in ("fp32", fast)}
    steps = {}
    for precision, runner in runners.items():
        for phase, fn in (("train", runner.train_step), ("infer", runner.infer)):
            # Warm-up: oneDNN creates its kernels, the optimiser its momentum buffers. Only a model whose
            # first step is already short gets a second, timed one to size its repetitions.
            once = _seconds(fn, 1)
            if once < min_seconds:
                once = _seconds(fn, 1)
            steps[phase, precision] = max(iterations, min(MAX_ITERATIONS, round(min_seconds / once)))
    times: dict[tuple[str, str], list[float]] = {key: [] for key in steps}
    for _ in range(repeats):
        for precision, runner in runners.items():
            times["train", precision].append(_seconds(runner.train_step, steps["train", precision]))
            times["infer", precision].append(_seconds(runner.infer, steps["infer", precision]))
    rates = {key: batch_size / statistics.median(values) for key, values in times.items()}
    return SpeedRow(name, input_size, batch_size, macs, rates, fast)


def speed_table(
    names: Sequence[str] = MODELS,
    iterations: int = 1,
    repeats: int = 3,
    min_seconds: float = MIN_SECONDS,
    fast: str = "bf16",
) -> list[SpeedRow]:
    """``measure_model`` for each registered name in `names` (unregistered ones are skipped)."""
    from imgcls.models import list_models

    known = set(list_models())
    rows = []
    for name in names:
        if name in known:
            t0 = time.perf_counter()
            rows.append(measure_model(name, None, iterations, repeats, min_seconds, fast))
            print(f"  speed: {name} measured in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return rows


def format_table(rows: Sequence[SpeedRow], peaks: dict) -> list[str]:
    """The Markdown table (header, rule, one line per row); ``% peak`` is the second precision's achieved FLOP/s
    over its peak (``peaks["bf16"]``, or ``peaks["fp32"]`` for fp32 channels-last)."""
    fast = rows[0].fast if rows else "bf16"
    names = columns(fast)
    peak = peaks["bf16" if fast == "bf16" else "fp32"]
    lines = ["| " + " | ".join(names) + " |", "|---|---|" + "---:|" * (len(names) - 2)]
    for r in rows:
        pct = {ph: 100 * r.rates[ph, fast] * r.flops_per_image(ph) / peak for ph in ("train", "infer")}
        cells = [
            r.model,
            "×".join(map(str, r.input_size)),
            str(r.batch_size),
            f"{r.macs / 1e9:.3g}",
            _rate(r.rates["train", "fp32"]),
            _rate(r.rates["train", fast]),
            f"{r.ratio('train'):.2f}x",
            _rate(r.rates["infer", "fp32"]),
            _rate(r.rates["infer", fast]),
            f"{r.ratio('infer'):.2f}x",
            f"{pct['train']:.3g}",
            f"{pct['infer']:.3g}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _rate(images_per_second: float) -> str:
    """Three significant figures, so the slow rows of a loaded machine (0.243 img/s) keep their precision."""
    return f"{images_per_second:.1f}" if images_per_second >= 100 else f"{images_per_second:.3g}"


def _load() -> str:
    return " / ".join(f"{v:.2f}" for v in os.getloadavg())


def run() -> str:
    from imgcls.inference.engines import native_bf16

    repeats = int(os.environ.get("IMGCLS_BENCH_SPEED_REPEATS", "3"))
    names = [n for n in os.environ.get("IMGCLS_BENCH_SPEED_MODELS", "").split(",") if n] or list(MODELS)
    fast = "bf16" if native_bf16() else "fp32cl"
    kernels = PRECISIONS if fast == "bf16" else ("fp32",)
    load_before = _load()
    t0, cpu0 = time.perf_counter(), time.process_time()
    first = measure_peaks(precisions=kernels)
    rows = speed_table(names, repeats=repeats, fast=fast)
    # Peaks are best-of figures: measured again after the table, the better of the two runs counts.
    last = measure_peaks(precisions=kernels)
    peaks = {k: max(v, last[k]) if isinstance(v, float) else v for k, v in first.items()}
    elapsed = time.perf_counter() - t0
    # CPU time over wall time per thread: 100% means the other processes on the machine took nothing from us.
    share = 100 * (time.process_time() - cpu0) / (elapsed * peaks["threads"])
    load_after = _load()

    from imgcls.models import list_models

    missing = [n for n in names if n not in set(list_models())]
    g = 1e9
    m, c = peaks["matmul_size"], "conv 3×3 {1}→{1} on {0}×{1}×{2}×{3}".format(*peaks["conv_shape"])
    if fast == "bf16":
        peak_rows = [
            "| kernel | fp32 GFLOP/s | bf16 GFLOP/s | bf16/fp32 |",
            "|---|---:|---:|---:|",
            f"| matmul {m}×{m} @ {m}×{m} | {peaks['matmul_fp32'] / g:.0f} | {peaks['matmul_bf16'] / g:.0f} | "
            f"{peaks['matmul_bf16'] / peaks['matmul_fp32']:.2f}x |",
            f"| {c} | {peaks['conv_fp32'] / g:.0f} | {peaks['conv_bf16'] / g:.0f} | "
            f"{peaks['conv_bf16'] / peaks['conv_fp32']:.2f}x |",
        ]
        second = (
            "bf16 runs autocast with model and input in channels_last. `% peak` is the bf16 column's achieved "
            f"FLOP/s (2 FLOPs per MAC, training counted as 3 forward passes) over the measured bf16 peak "
            f"({peaks['bf16'] / g:.0f} GFLOP/s)."
        )
    else:
        peak_rows = [
            "| kernel | fp32 GFLOP/s |",
            "|---|---:|",
            f"| matmul {m}×{m} @ {m}×{m} | {peaks['matmul_fp32'] / g:.0f} |",
            f"| {c} | {peaks['conv_fp32'] / g:.0f} |",
        ]
        second = (
            "this CPU has no bf16 units (bf16 would be emulated, minutes a step), so the second column is fp32 with "
            "model and input in channels_last (`fp32 CL`, what the Predictor's eager engine runs). `% peak` is "
            "its achieved FLOP/s (2 FLOPs per MAC, training counted as 3 forward passes) over the measured fp32 "
            f"peak ({peaks['fp32'] / g:.0f} GFLOP/s)."
        )
    lines = [
        "## Speed: machine peaks and the zoo's training and inference images/s",
        "",
        f"Command: `.venv/bin/python -m benchmarks.run speed` (`IMGCLS_BENCH_SPEED_REPEATS={repeats}`"
        + (f", `IMGCLS_BENCH_SPEED_MODELS={','.join(names)}`" if names != list(MODELS) else "")
        + f"). torch {torch.__version__}, {peaks['threads']} intra-op threads, {os.cpu_count()} logical CPUs; "
        f"load average (1/5/15 min) {load_before} at the start, {load_after} at the end; {elapsed:.0f} s in all, "
        f"during which this process got {share:.0f}% of its threads' time (CPU time / wall time / threads; the "
        "rest went to other work on the machine).",
        "",
        "Measured peaks (best of 5 after a warm-up, before and after the model table; fp32 NCHW"
        + (", bf16 tensors with channels_last for the conv):" if fast == "bf16" else "):"),
        "",
        *peak_rows,
        "",
        "Models at native resolution, seeded random weights. Each repetition runs one step, or as many as fill "
        f"about {MIN_SECONDS} s for small models (at most {MAX_ITERATIONS}); the median of {repeats} "
        "interleaved repetitions after warm-up counts. Training = forward, backward (auxiliary heads included) and an "
        "SGD-momentum step; inference = eval mode under `torch.inference_mode`. fp32 runs NCHW; " + second,
        "",
        *format_table(rows, peaks),
        "",
    ]
    if share < CONTENDED_SHARE:
        lines += [
            f"Caution: other work held {100 - share:.0f}% of this run's CPU time, and not evenly between the "
            "interleaved repetitions, so single rows (a ratio below 1) can be artefacts of the load. "
            "Re-run on a quiet machine before quoting a row.",
            "",
        ]
    if missing:
        lines += [f"Not registered when this ran, so not measured: {', '.join(missing)}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
