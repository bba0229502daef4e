"""CPU speed of the two torch builds `make install` chooses between, side by side on the same CPU.

- ``cpu``: ``make install TORCH=cpu`` — torch 2.13.0, the CPU wheel (constraints.txt).
- ``cuda``: ``make install TORCH=cuda`` — torch 2.14.1 + torchvision 0.29.1, the CUDA 13 build
  (constraints-cuda.txt), which also runs on the CPU.

The two differ in version as well as in build; that is the choice ``make install`` makes, so that is what is
measured. Each build runs in a worker process of its own venv, both alive for the whole run and importing this
source tree; every workload is timed in interleaved rounds (cpu, cuda, then cuda, cpu, ...), so a change of load
on the machine hits both columns alike. Both workers use the same intra-op thread count and the precision that
``--precision auto`` resolves to on this CPU (fp32 without bf16 units), channels_last for the conv nets, as
training does. A timed block runs whole steps for at least ``--min-seconds`` after two warm-up steps at the
first block; the table gives the median over rounds and the range. Each worker also reports the share of its
threads' time it got (CPU time / wall time / threads): under 100 % other work took the rest.

Workloads: training steps (forward, cross-entropy, backward, SGD with momentum) of LeNet-5 (small ops: the
framework's own overhead), ResNet-18 (CIFAR) and airbench94 (the speedrun's net) at 32 px, and inference
(``torch.inference_mode``, eval mode) of ResNet-18 (CIFAR) at 32 px and ResNet-50 at 224 px.

Command: ``.venv/bin/python -m benchmarks.bench_builds [--python-cpu P] [--python-cuda P] [--rounds N]
[--threads T]``. Without a ``--python-*`` a build runs in the project's .venv when that holds it, else in a
venv made once with the Makefile (``make install VENV=~/.cache/imgcls/bench-builds/BUILD TORCH=BUILD``; the
cuda one takes ~5.5 GB). ``make bench`` runs it
with the same defaults (``IMGCLS_BENCH_BUILDS_ROUNDS``, ``IMGCLS_BENCH_BUILDS_THREADS`` override them).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUILDS = ("cpu", "cuda")
VENV_HOME = Path.home() / ".cache" / "imgcls" / "bench-builds"
# name -> (phase, model, batch, image size)
WORKLOADS = {
    "train lenet5": ("train", "lenet5", 256, 32),
    "train resnet18_cifar": ("train", "resnet18_cifar", 32, 32),
    "train airbench94": ("train", "airbench94", 128, 32),
    "infer resnet18_cifar": ("infer", "resnet18_cifar", 128, 32),
    "infer resnet50": ("infer", "resnet50", 8, 224),
}


# --- the worker: one per build ---------------------------------------------------------------------------------


class _Workload:
    def __init__(self, phase: str, name: str, batch: int, size: int):
        import torch
        import torch.nn.functional as F

        from imgcls.engine.precision import resolve_precision, use_channels_last
        from imgcls.models import create_model, model_entry

        self.torch, self.F, self.phase, self.batch = torch, F, phase, batch
        torch.manual_seed(0)
        in_chans = model_entry(name).input_size[0]
        self.model = create_model(name, num_classes=10, in_chans=in_chans)
        self.precision = resolve_precision("auto", "cpu")
        memory = torch.channels_last if use_channels_last(self.model, None) else torch.contiguous_format
        self.model = self.model.to(memory_format=memory)
        self.x = torch.randn(batch, in_chans, size, size).contiguous(memory_format=memory)
        self.y = torch.randint(0, 10, (batch,))
        if phase == "train":
            self.model.train()
            self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=0.9)
        else:
            self.model.eval()
        self.step()
        self.step()

    def step(self) -> None:
        torch = self.torch
        if self.phase == "infer":
            with torch.inference_mode(), self.precision.autocast():
                self.model(self.x)
            return
        self.opt.zero_grad(set_to_none=True)
        with self.precision.autocast():
            out = self.model(self.x)
        out = out[0] if isinstance(out, tuple) else out
        self.F.cross_entropy(out.float(), self.y).backward()
        self.opt.step()


def worker(threads: int) -> None:
    """Answer ``NAME\\tSECONDS`` lines on stdin with one JSON line each (protocol of `_Worker`)."""
    import torch

    torch.set_num_threads(threads)
    from imgcls.engine.precision import resolve_precision

    print(
        json.dumps(
            {
                "torch": torch.__version__,
                "cuda": torch.version.cuda,
                "threads": torch.get_num_threads(),
                "capability": torch.backends.cpu.get_cpu_capability(),
                "precision": resolve_precision("auto", "cpu").name,
            }
        ),
        flush=True,
    )
    built: dict[str, _Workload] = {}
    for line in sys.stdin:
        name, seconds = line.rstrip("\n").split("\t")
        if name not in built:
            built[name] = _Workload(*WORKLOADS[name])
        job, steps = built[name], 0
        t0, c0 = time.perf_counter(), time.process_time()
        while steps < 2 or time.perf_counter() - t0 < float(seconds):
            job.step()
            steps += 1
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(json.dumps({"img_s": steps * job.batch / wall, "share": cpu / (wall * threads)}), flush=True)


# --- the parent ------------------------------------------------------------------------------------------------


class _Worker:
    def __init__(self, python: str, threads: int):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO / "src")}
        argv = [python, "-m", "benchmarks.bench_builds", "--worker", "--threads", str(threads)]
        self.proc = subprocess.Popen(argv, cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = self._answer()

    def _answer(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"bench worker {self.proc.args[0]} exited with code {self.proc.wait()}")
        return json.loads(line)

    def measure(self, name: str, seconds: float) -> dict:
        self.proc.stdin.write(f"{name}\t{seconds}\n")
        self.proc.stdin.flush()
        return self._answer()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _load() -> str:
    try:
        return " / ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def ensure_venv(build: str) -> str:
    """The python of a venv with this build: the project's own .venv when it holds it, else a benchmark venv made
    once with the Makefile."""
    if (REPO / ".venv" / f".install-stamp-{build}").is_file():
        return str(REPO / ".venv" / "bin" / "python")
    venv = VENV_HOME / build
    python = venv / "bin" / "python"
    if not (venv / f".install-stamp-{build}").is_file():
        print(f"making the {build} venv at {venv} (make install TORCH={build})", flush=True)
        subprocess.run(["make", "install", f"VENV={venv}", f"TORCH={build}"], cwd=REPO, check=True)
    return str(python)


def measure(pythons: dict[str, str], rounds: int, threads: int, min_seconds: float, names: list[str]) -> dict:
    """Interleaved rounds of every workload in every build: ``{"info", "rates", "shares", "load", "seconds"}``."""
    workers = {build: _Worker(python, threads) for build, python in pythons.items()}
    rates = {name: {b: [] for b in pythons} for name in names}
    shares = {b: [] for b in pythons}
    loads = [_load()]
    t0 = time.perf_counter()
    try:
        for r in range(rounds):
            order = list(pythons) if r % 2 == 0 else list(reversed(pythons))
            for name in names:
                for build in order:
                    got = workers[build].measure(name, min_seconds)
                    rates[name][build].append(got["img_s"])
                    shares[build].append(got["share"])
            loads.append(_load())
    finally:
        for w in workers.values():
            w.close()
    info = {b: w.info for b, w in workers.items()}
    return {"info": info, "rates": rates, "shares": shares, "load": loads, "seconds": time.perf_counter() - t0}


def section(result: dict, rounds: int, threads: int, min_seconds: float, command: str) -> str:
    info, rates = result["info"], result["rates"]
    builds = list(info)
    lines = [
        "## Builds: CPU speed of the CPU wheel and of the CUDA build",
        "",
        f"Command: `{command}`. {rounds} interleaved rounds, {threads} intra-op threads in both workers, at least "
        f"{min_seconds:g} s per timed block; {result['seconds']:.0f} s in all; load average (1/5/15 min) per round: "
        f"{', '.join(result['load'])}.",
        "",
    ]
    for b in builds:
        i = info[b]
        share = statistics.median(result["shares"][b]) * 100
        lines.append(
            f"- `{b}`: torch {i['torch']}" + (f" (CUDA {i['cuda']})" if i["cuda"] else "") + f", CPU kernels "
            f"{i['capability']}, `auto` precision {i['precision']}; median share of its threads' time {share:.0f}%"
        )
    lines += ["", "| workload | " + " | ".join(f"{b} img/s" for b in builds) + f" | {builds[-1]} / {builds[0]} |"]
    lines.append("|---|" + "---:|" * (len(builds) + 1))
    for name, per_build in rates.items():
        cells = []
        for b in builds:
            v = per_build[b]
            cells.append(f"{statistics.median(v):,.1f} ({min(v):,.1f}–{max(v):,.1f})")
        ratio = statistics.median(per_build[builds[-1]]) / statistics.median(per_build[builds[0]])
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {ratio:.2f}x |")
    lines += [
        "",
        "Median over rounds (range in brackets). The two builds differ in version (2.13.0 and 2.14.1) as well as in "
        'build; that is the choice `make install` makes (docs/GPU.md, "The build").',
    ]
    return "\n".join(lines) + "\n"


def run() -> str:
    """The section for `make bench` (venvs made once under ~/.cache/imgcls/bench-builds)."""
    rounds = int(os.environ.get("IMGCLS_BENCH_BUILDS_ROUNDS", "5"))
    threads = int(os.environ.get("IMGCLS_BENCH_BUILDS_THREADS", str(os.cpu_count() or 1)))
    pythons = {b: ensure_venv(b) for b in BUILDS}
    result = measure(pythons, rounds, threads, 1.0, list(WORKLOADS))
    return section(result, rounds, threads, 1.0, ".venv/bin/python -m benchmarks.run builds")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_builds", description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--python-cpu", help="python of a venv with the CPU build (default: made with make install)")
    parser.add_argument("--python-cuda", help="python of a venv with the CUDA build (default: made with make install)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--min-seconds", type=float, default=1.0)
    parser.add_argument("--workloads", help=f"comma-separated subset of: {', '.join(WORKLOADS)}")
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.threads)
        return 0
    names = [n.strip() for n in args.workloads.split(",")] if args.workloads else list(WORKLOADS)
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload {unknown[0]!r} (choose from {', '.join(WORKLOADS)})")
    pythons = {"cpu": args.python_cpu or ensure_venv("cpu"), "cuda": args.python_cuda or ensure_venv("cuda")}
    result = measure(pythons, args.rounds, args.threads, args.min_seconds, names)
    command = "python -m benchmarks.bench_builds " + " ".join(sys.argv[1:] if argv is None else argv)
    print(section(result, args.rounds, args.threads, args.min_seconds, command.strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
