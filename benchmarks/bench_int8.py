"""int8 inference on trained models: the top-1 accuracy it costs and the speed it buys, per run folder.

For every run folder given (``IMGCLS_BENCH_INT8_RUNS``, comma-separated; or every CNN run folder kept under
``IMGCLS_BENCH_CLASSIC_KEEP`` by ``bench_classic``), the two int8 engines the Predictor can run are built the way
``--precision int8`` builds them: post-training static quantization calibrated on the run's own validation images
(ONNX Runtime QDQ with unsigned activations; PyTorch FX with the x86 backend), then compared with fp32 on the
validation split (up to ``imgcls.inference.int8.CHECK_IMAGES`` images: top-1 of both, their agreement). The
model-only speed of each engine against ONNX Runtime fp32 is timed alternately on a batch of 32 at the run's
input size with the benchmark's threads (medians).

Random weights say nothing about int8 accuracy (their logits are near ties), hence trained runs only.

Command: ``IMGCLS_BENCH_INT8_RUNS=RUN,RUN .venv/bin/python -m benchmarks.run int8``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

ROUNDS = 5
BATCH = 32


def _runs() -> list[Path]:
    given = [Path(p).expanduser() for p in os.environ.get("IMGCLS_BENCH_INT8_RUNS", "").split(",") if p]
    keep = os.environ.get("IMGCLS_BENCH_CLASSIC_KEEP")
    if not given and keep:
        given = sorted(p.parent for p in Path(keep).expanduser().glob("*/*/model.json"))
    from imgcls.classic import is_classic

    return [p for p in given if not is_classic(json.loads((p / "model.json").read_text()).get("name"))]


def _measure_run(run: Path) -> dict:
    from imgcls.engine.bundle import load_bundle
    from imgcls.inference import engines as E
    from imgcls.inference.predictor import Preprocess

    model, meta = load_bundle(run)
    pre = Preprocess(tuple(meta.input_size), meta.resize or meta.input_size[1], tuple(meta.mean), tuple(meta.std))
    source = E.EngineSource(model, meta.input_size, pre.normalise, key="", run=run, max_int8_drop=100.0, meta=meta)
    built, failed = {}, {}
    for name in ("onnx", "onnx-int8", "torch-int8"):
        try:
            built[name] = source.build(name)
        except RuntimeError as exc:  # a network FX cannot trace (data-dependent control flow), an export failure
            failed[name] = str(exc).splitlines()[0][:160]
    dummy = torch.randint(
        0, 256, (BATCH, *meta.input_size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    timings = E.measure(built, dummy, rounds=ROUNDS, drop_over=None)
    row = {"run": run.name, "model": meta.name, "input": "x".join(map(str, meta.input_size[1:])), "failed": failed}
    for name in ("onnx-int8", "torch-int8"):
        if name not in built:
            continue
        check = built[name].check
        row[name] = {**check.to_dict(), "speed_vs_onnx_fp32": timings.seconds["onnx"] / timings.seconds[name]}
    row["onnx_fp32_images_s"] = BATCH / timings.seconds["onnx"]
    return row


def run() -> str:
    from imgcls.inference.int8 import has_vnni

    load_start = os.getloadavg()
    runs = _runs()
    rows = [_measure_run(r) for r in runs]
    lines = [
        "## int8 inference on trained models (`--precision int8`)",
        "",
        f"Calibrated on each run's validation images and checked on them; {torch.get_num_threads()} threads, "
        f"batch {BATCH}, medians of {ROUNDS} alternating rounds; CPU with AVX-512 VNNI: {has_vnni()}. "
        f"Load average at the start: {load_start[0]:.1f}, at the end: {os.getloadavg()[0]:.1f}.",
        "Command: `IMGCLS_BENCH_INT8_RUNS=RUN,RUN .venv/bin/python -m benchmarks.run int8`.",
        "",
    ]
    if not rows:
        return "\n".join([*lines, "*No trained run folder given (`IMGCLS_BENCH_INT8_RUNS`): nothing measured.*", ""])
    lines += [
        "| run | model | input | engine | images | fp32 top-1 % | int8 top-1 % | drop (points) | same answer % "
        "| model-only speed vs ORT fp32 |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        for name in ("onnx-int8", "torch-int8"):
            if name not in row:
                why = row["failed"].get(name, "not built")
                lines.append(
                    f"| {row['run']} | `{row['model']}` | {row['input']} | {name} | not available: {why} | | | | | |"
                )
                continue
            c = row[name]
            lines.append(
                f"| {row['run']} | `{row['model']}` | {row['input']} | {name} | {c['images']} | {c['fp32_top1']:.2f} "
                f"| {c['int8_top1']:.2f} | {c['drop']:+.2f} | {c['agreement']:.2f} | {c['speed_vs_onnx_fp32']:.2f}× |"
            )
    lines += [
        "",
        "ORT fp32 model-only rate: " + ", ".join(f"{r['run']} {r['onnx_fp32_images_s']:.0f} img/s" for r in rows),
        "",
    ]
    return "\n".join(lines)
