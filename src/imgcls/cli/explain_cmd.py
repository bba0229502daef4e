"""Verb `explain`: parse, call `imgcls.inference.explain`, print."""

from __future__ import annotations

import argparse
import itertools
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    """Add `explain` to the `imgcls` parser."""
    p = sub.add_parser(
        "explain",
        help="the prediction of each image with its Grad-CAM, occlusion and activation maps",
        description="For each image: its top predictions and, overlaid on the network's input, Grad-CAM (the "
        "registry's layer for the model) and occlusion sensitivity for the top class (or --class), and the "
        "strongest channels of a layer. Writes one PNG figure per image and the maps as .npy arrays into --out. "
        "Every input gets an answer; the exit status is 1 when any input could not be read.",
    )
    p.add_argument("--run", required=True, help="run folder (model.safetensors + model.json)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the figures and maps (made if missing)")
    p.add_argument("--class", dest="target", metavar="LABEL", help="class to explain (default: each top prediction)")
    p.add_argument("--cam-layer", metavar="NAME", help="Grad-CAM layer, a dotted module path (default: the registry's)")
    p.add_argument("--layer", metavar="NAME", help="layer whose strongest channels are shown (default: Grad-CAM's)")
    p.add_argument("--channels", type=int, default=8, help="channels of --layer shown (default 8; 0: none)")
    p.add_argument("--window", type=int, help="occlusion square in pixels (default: a quarter of the input side)")
    p.add_argument("--stride", type=int, help="occlusion step in pixels (default: half the window)")
    p.add_argument("--no-occlusion", action="store_true", help="skip occlusion (one forward pass per position)")
    p.add_argument("--batch-size", type=int, default=64, help="occluded copies per forward pass (default 64)")
    p.add_argument("--topk", type=int, default=5, help="predictions listed per image (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON array, one object per input")
    p.add_argument("paths", nargs="+", metavar="IMAGE", help="image files, folders or glob patterns")
    p.set_defaults(func=explain)


def explain(args: argparse.Namespace) -> int:
    from imgcls.inference import Predictor, expand_inputs
    from imgcls.inference.explain import ExplainOptions, explain, prepare_out, write_explanations

    options = ExplainOptions(
        target=args.target,
        cam_layer=args.cam_layer,
        layer=args.layer,
        occlusion=not args.no_occlusion,
        window=args.window,
        stride=args.stride,
        channels=args.channels,
        topk=args.topk,
        batch_size=args.batch_size,
    )
    predictor = Predictor.from_run(args.run, precision="fp32")
    paths = expand_inputs(args.paths)
    explanations = explain(predictor, paths, options)
    first = next(explanations, None)  # options are checked before the first image: fail before making --out
    out = prepare_out(args.out, args.run)
    records = write_explanations(itertools.chain([first] if first is not None else [], explanations), out)
    failed = 0
    if args.json:
        sys.stdout.write("[")
    for k, record in enumerate(records):
        failed += "error" in record
        if args.json:
            sys.stdout.write(("\n  " if k == 0 else ",\n  ") + json.dumps(record))
        elif "error" in record:
            print(f"{record['path']}: error: {record['error']}", flush=True)
        else:
            top, cls = record["predictions"][0], record["class"]
            about = "" if cls["index"] == top["index"] else f"; maps explain {cls['label']} {cls['probability']:.3f}"
            print(f"{record['path']}: {top['label']} {top['probability']:.3f}{about} -> {record['figure']}", flush=True)
    if args.json:
        sys.stdout.write("\n]\n" if paths else "]\n")
    if failed:
        print(f"imgcls: {failed} of {len(paths)} inputs could not be read", file=sys.stderr)
    return 1 if failed else 0


__all__ = ["register"]
