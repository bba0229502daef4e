"""GPU speed: ResNet-50 at 224 px, training and inference images/s, ours beside timm's on the same GPU.

Both networks are ResNet-50 v1.5 (stride in the 3×3 convolution of each bottleneck, torchvision's and timm's
default; the parameter counts in the table show they are the same size). Both run the same loop: bf16 autocast,
channels_last weights and inputs, ``torch.backends.cudnn.benchmark`` on (fixed shapes), a training step of
forward, cross-entropy, backward and SGD with momentum, and inference in eval mode under
``torch.inference_mode``. Inputs are random tensors already on the GPU, so the figures are the network's and
the framework's, not the data pipeline's (the speedrun in tools/gpu_check.sh times that). Each figure is
``steps`` steps after ``warmup`` steps, between two ``torch.cuda.synchronize()``; with ``torch.compile`` the
first warm-up step holds the compilation, reported as its time minus a timed step's.

Command: ``python -m benchmarks.bench_gpu`` (``--batch``, ``--steps``, ``--no-compile``, ``--device``);
tools/gpu_check.sh runs it and keeps the section. Without a GPU, ``make bench`` keeps the section measured last
(``benchmarks/results/gpu.md``) as it is.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

KEPT = Path(__file__).resolve().parent / "results" / "gpu.md"


@dataclass
class Row:
    impl: str
    compiled: bool
    params: int
    train_img_s: float
    infer_img_s: float
    compile_train_s: float | None
    compile_infer_s: float | None
    peak_gib: float


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, warmup: int, steps: int) -> tuple[float, float]:
    """(seconds of the first call, seconds per step over ``steps`` steps after ``warmup``)."""
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    first = time.perf_counter() - t0
    for _ in range(max(warmup - 1, 0)):
        fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return first, (time.perf_counter() - t0) / steps


def _build(impl: str) -> nn.Module:
    if impl == "imgcls":
        from imgcls.models import create_model

        return create_model("resnet50", num_classes=1000)
    import timm

    return timm.create_model("resnet50", num_classes=1000)


def measure(impl: str, compiled: bool, device: torch.device, batch: int, warmup: int, steps: int) -> Row:
    """Training and inference images/s of one ResNet-50 (see the module docstring)."""
    torch.manual_seed(0)
    net = _build(impl).to(device=device, memory_format=torch.channels_last)
    params = sum(p.numel() for p in net.parameters())
    dtype = torch.bfloat16
    x = torch.randn(batch, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=device)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train_model = torch.compile(net) if compiled else net

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype):
            out = train_model(x)
        F.cross_entropy(out.float(), y).backward()
        opt.step()

    net.train()
    first_train, train_s = _timed(train_step, device, warmup, steps)
    net.eval()
    infer_model = torch.compile(net) if compiled else net

    def infer_step() -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype):
            infer_model(x)

    first_infer, infer_s = _timed(infer_step, device, warmup, steps)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    return Row(
        impl=impl,
        compiled=compiled,
        params=params,
        train_img_s=batch / train_s,
        infer_img_s=batch / infer_s,
        compile_train_s=first_train - train_s if compiled else None,
        compile_infer_s=first_infer - infer_s if compiled else None,
        peak_gib=peak,
    )


def section(rows: list[Row], device: torch.device, batch: int, warmup: int, steps: int, command: str) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    versions = f"torch {torch.__version__}"
    if device.type == "cuda":
        versions += f", CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
    try:
        import timm

        versions += f", timm {timm.__version__}"
    except ImportError:
        pass
    lines = [
        "## GPU: ResNet-50 at 224 px, ours beside timm's",
        "",
        f"Command: `{command}`. {name}; {versions}. Batch {batch}, bf16 autocast, channels_last, "
        f"cudnn.benchmark; {steps} timed steps after {warmup} warm-up steps; random inputs on the device.",
        "",
        "| network | mode | params | train img/s | inference img/s | compile s (train / inference) | peak GiB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        compile_s = f"{r.compile_train_s:.1f} / {r.compile_infer_s:.1f}" if r.compiled else "—"
        lines.append(
            f"| {'imgcls' if r.impl == 'imgcls' else 'timm'} resnet50 | {'compiled' if r.compiled else 'eager'} | "
            f"{r.params / 1e6:.2f}M | {r.train_img_s:,.0f} | {r.infer_img_s:,.0f} | {compile_s} | {r.peak_gib:.1f} |"
        )
    return "\n".join(lines) + "\n"


def run() -> str:
    """`make bench`: measure on a GPU; without one, the kept section (from the last GPU run) unchanged."""
    if not torch.cuda.is_available():
        if KEPT.is_file():
            return KEPT.read_text()
        return "## GPU: ResNet-50 at 224 px, ours beside timm's\n\nNot measured yet: no GPU on this machine.\n"
    return main_section(torch.device("cuda"), 256, 10, 30, (False, True), command="python -m benchmarks.run gpu")


def main_section(
    device: torch.device,
    batch: int,
    warmup: int,
    steps: int,
    modes: tuple[bool, ...],
    command: str,
    out: Path | None = None,
) -> str:
    """Measure each network in each mode (``False``: eager, ``True``: compiled) and return the section; with
    ``out``, the section so far is written there after every row (a run stopped at its time limit keeps them)."""
    torch.backends.cudnn.benchmark = True
    impls = ["imgcls"]
    try:
        import timm  # noqa: F401

        impls.append("timm")
    except ImportError:
        print("timm is not installed: measuring ours alone", file=sys.stderr)
    rows = []
    for compiled in modes:
        for impl in impls:
            rows.append(measure(impl, compiled, device, batch, warmup, steps))
            r = rows[-1]
            print(
                f"{impl} {'compiled' if compiled else 'eager'}: train {r.train_img_s:,.0f} img/s, "
                f"inference {r.infer_img_s:,.0f} img/s",
                file=sys.stderr,
                flush=True,
            )
            if out is not None:
                out.write_text(section(rows, device, batch, warmup, steps, command))
    return section(rows, device, batch, warmup, steps, command)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=30)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--no-compile", action="store_true", help="eager only")
    mode.add_argument("--compiled-only", action="store_true", help="torch.compile only")
    parser.add_argument("--out", help="also write the section to this file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    command = "python -m benchmarks.bench_gpu " + " ".join(sys.argv[1:] if argv is None else argv)
    modes = (False,) if args.no_compile else (True,) if args.compiled_only else (False, True)
    out = Path(args.out) if args.out else None
    print(main_section(device, args.batch, args.warmup, args.steps, modes, command.strip(), out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
