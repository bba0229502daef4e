"""Verbs `predict`, `export` and `serve`: parse, call the inference or serve layer, print."""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys

from imgcls.errors import UserError
from imgcls.run_folder import RunFolder, refuse_output


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's verbs to the `imgcls` parser."""
    p = sub.add_parser(
        "predict",
        help="top-k labels for image files, folders and globs",
        description="Classify images with a run folder or a weights file. Every input gets an answer; the exit "
        "status is 1 when any input could not be read.",
    )
    p.add_argument("--run", help="run folder (model.safetensors + model.json)")
    p.add_argument("--model", help="registered model name, with --weights")
    p.add_argument("--weights", help="weights file for --model (ours, torchvision or timm), or an exported .onnx")
    p.add_argument("--topk", type=int, default=5, help="labels per image (default 5)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch", help="inference engine (default torch)")
    _engine_arguments(p)
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print one JSON array, one object per input")
    out.add_argument("--csv", metavar="FILE", help="write one CSV row per input to FILE (for large folders)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders or glob patterns")
    p.set_defaults(func=predict)

    p = sub.add_parser(
        "export",
        help="write ONNX or TorchScript and check it against PyTorch",
        description="Export a run's weights; the written file is run on a few inputs and refused when its outputs "
        "differ from PyTorch by more than the tolerance.",
    )
    p.add_argument("--run", required=True, help="run folder")
    p.add_argument("--format", required=True, choices=("onnx", "torchscript", "onnx-int8"), dest="fmt")
    p.add_argument("--out", required=True, help="file to write")
    p.add_argument("--tolerance", type=float, default=1e-3, help="largest logit difference, relative (default 1e-3)")
    p.add_argument(
        "--max-int8-drop",
        type=float,
        default=1.0,
        help="onnx-int8: refuse when top-1 on the run's validation images drops more (points; default 1)",
    )
    p.set_defaults(func=export)

    p = sub.add_parser("serve", help="HTTP service and web page for a run")
    p.add_argument("--run", required=True, help="run folder")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch", help="inference engine (default torch)")
    _engine_arguments(p)
    p.add_argument("--max-bytes", type=int, default=10 << 20, help="largest request body in bytes (default 10 MiB)")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="largest image, width × height (default 40 M)")
    p.add_argument("--max-batch", type=int, default=32, help="most requests per forward pass (default 32)")
    p.add_argument("--batch-wait-ms", type=float, default=5.0, help="how long a batch waits for more (default 5)")
    p.set_defaults(func=serve)


def _engine_arguments(p: argparse.ArgumentParser) -> None:
    from imgcls.inference.catalog import ENGINES

    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "int8"),
        default="auto",
        help="torch backend: auto = bf16 where the CPU has native bfloat16, else fp32; int8 = quantized, "
        "calibrated and checked on the run's validation images",
    )
    p.add_argument(
        "--engine",
        choices=ENGINES,
        help="force one engine instead of the fastest measured here (torch backend)",
    )
    p.add_argument(
        "--max-int8-drop",
        type=float,
        default=1.0,
        help="--precision int8: refuse when top-1 on the run's validation images drops more (points; default 1)",
    )


def _say_engine(predictor) -> None:
    if getattr(predictor, "selection", None) is not None:
        print(f"imgcls: {predictor.selection.describe()}", file=sys.stderr)


def predict(args: argparse.Namespace) -> int:
    from imgcls.inference.results import expand_inputs

    if args.run and (args.model or args.weights):
        raise UserError("give either --run RUN or --model NAME --weights FILE, not both")
    if not args.run and not args.weights:
        raise UserError("give --run RUN, or --model NAME --weights FILE")
    if args.weights and not args.model and not args.weights.endswith(".onnx"):
        raise UserError(f"--weights {args.weights}: needs --model NAME (only an exported .onnx file stands alone)")
    paths = expand_inputs(args.paths)
    if args.csv:  # before anything is loaded or written: an output that is an input would be truncated
        protected = [RunFolder(args.run)] if args.run else []
        refuse_output(args.csv, "--csv", inputs=[*paths, *([args.weights] if args.weights else [])], runs=protected)
    predictor = _predictor(args, inputs=len(paths))
    results = predictor.iter_predict(paths, topk=args.topk)
    if args.json:
        failed = _write_json(results, sys.stdout)
    elif args.csv:
        failed = _write_csv(results, args.csv, args.topk, multilabel=predictor.task == "multilabel")
    else:
        failed = _write_text(results, sys.stdout)
    _say_engine(predictor)
    if failed:
        print(f"imgcls: {failed} of {len(paths)} inputs could not be read", file=sys.stderr)
    return 1 if failed else 0


def _predictor(args: argparse.Namespace, inputs: int):
    """An ONNX Runtime engine without PyTorch where one is remembered for the run, or where one is estimated to
    answer these ``inputs`` sooner than the remembered PyTorch engine (imgcls.inference.fastpath); else the
    Predictor, which measures the engines (and records what they cost for the next time)."""
    options = dict(batch_size=args.batch_size, precision=args.precision, engine=args.engine)
    if args.run and args.backend == "torch":
        from imgcls.inference import fastpath

        fast = fastpath.open_remembered(args.run, max_int8_drop=args.max_int8_drop, inputs=inputs, **options)
        if fast is not None:
            return fast
        fastpath.import_torch()  # timed: the part of this path's start the other does not pay
    from imgcls.inference import Predictor

    if args.run:
        return Predictor.from_run(args.run, backend=args.backend, max_int8_drop=args.max_int8_drop, **options)
    return Predictor.from_weights(args.model, args.weights, backend=args.backend, **options)


def _visible(text: str) -> str:
    """``text`` with control characters written as escapes (a newline as ``\\n``): one answer, one line."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _write_text(results, stream) -> int:
    failed = 0
    for r in results:
        if r.ok:
            top = ", ".join(f"{_visible(p.label)} {p.probability:.3f}" for p in r.predictions)
            if r.labels is not None:
                chosen = ", ".join(_visible(label) for label in r.labels) or "(none)"
                top = f"labels {chosen} · scores {top}"
            print(f"{_visible(r.path)}: {top}", file=stream, flush=True)
        else:
            failed += 1
            print(f"{_visible(r.path)}: error: {_visible(r.error)}", file=stream, flush=True)
    return failed


def _write_json(results, stream) -> int:
    # Streamed element by element so that a long folder shows progress and never sits in memory twice.
    failed, first = 0, True
    stream.write("[")
    for r in results:
        failed += not r.ok
        stream.write(("\n  " if first else ",\n  ") + json.dumps(r.to_dict(), allow_nan=False))
        stream.flush()
        first = False
    stream.write("\n]\n" if not first else "]\n")
    return failed


def _write_csv(results, path: str, topk: int, multilabel: bool = False) -> int:
    try:
        f = open(path, "w", newline="")  # noqa: SIM115 (closed below, after the generator is consumed)
    except OSError as exc:
        raise UserError(f"--csv {path}: cannot write ({exc.strerror})") from None
    failed, count = 0, 0
    with f:
        writer = csv.writer(f)
        header = ["path", "error", *(["labels"] if multilabel else [])]
        for k in range(1, topk + 1):
            header += [f"label_{k}", f"index_{k}", f"probability_{k}"]
        writer.writerow(header)
        for r in results:
            row = [r.path, r.error or "", *([";".join(r.labels or ())] if multilabel else [])]
            for p in r.predictions:
                row += [p.label, p.index, f"{p.probability:.6f}"]
            writer.writerow(row)
            failed += not r.ok
            count += 1
    print(f"imgcls: wrote {count} rows to {path}", file=sys.stderr)
    return failed


def export(args: argparse.Namespace) -> int:
    from imgcls.inference import ExportMismatch, export_run

    if args.fmt == "onnx-int8":
        from imgcls.inference.int8 import export_onnx_int8

        check = export_onnx_int8(args.run, args.out, max_drop=args.max_int8_drop)
        print(f"wrote {args.out} (onnx-int8); {check.summary()}")
        return 0
    try:
        report = export_run(args.run, args.fmt, args.out, tolerance=args.tolerance)
    except ExportMismatch as exc:
        print(f"imgcls: error: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


def serve(args: argparse.Namespace) -> int:
    from imgcls.serve import ServeLimits, serve

    limits = ServeLimits(
        max_bytes=args.max_bytes,
        max_pixels=args.max_pixels,
        max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait_ms,
    )
    engine = dict(precision=args.precision, engine=args.engine, max_int8_drop=args.max_int8_drop)
    serve(args.run, host=args.host, port=args.port, limits=limits, backend=args.backend, **engine)
    return 0
