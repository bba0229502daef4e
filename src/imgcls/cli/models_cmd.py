"""`imgcls models` (the registry as a table) and `imgcls summary` (params and MACs per module)."""

from __future__ import annotations

import argparse
import json
import re

from imgcls.errors import UserError

# Models whose summary is laid out like their paper's table (Szegedy et al. 2014, Table 1).
PAPER_TABLES = {"googlenet"}


def register(sub: argparse._SubParsersAction) -> None:
    """Add `models` and `summary` to the `imgcls` parser."""
    p = sub.add_parser("models", help="list the registered models", description="List registered models.")
    p.add_argument("pattern", nargs="?", default="*", metavar="PATTERN", help="fnmatch pattern or a substring")
    p.set_defaults(func=run_models)

    p = sub.add_parser(
        "summary",
        help="parameters, output shapes and MACs per layer of a model",
        description="One row per top-level module: output shape, parameters, multiply-accumulates; then totals.",
    )
    p.add_argument("name", metavar="NAME", help="a registered model (see `imgcls models`)")
    p.add_argument("--input-size", metavar="S", help="S, HxW or C,H,W (default: the model's native size)")
    p.add_argument(
        "--num-classes",
        type=int,
        metavar="K",
        help="classifier outputs (default: 10 for 32×32 models, else 1000)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run_summary)


def parse_input_size(text: str | None, native: tuple[int, int, int]) -> tuple[int, int, int] | None:
    """``"224"`` → (C, 224, 224) with the model's C; ``"160x128"`` → (C, 160, 128); ``"1,28,28"`` as written."""
    if text is None:
        return None
    parts = [p for p in re.split(r"[x×,\s]+", text.strip()) if p]
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        dims = []
    if len(dims) == 1:
        dims = [native[0], dims[0], dims[0]]
    elif len(dims) == 2:
        dims = [native[0], *dims]
    if len(dims) != 3 or min(dims) < 1:
        raise UserError(f"--input-size {text}: expected S, HxW or C,H,W with positive integers")
    return (dims[0], dims[1], dims[2])


def run_models(args: argparse.Namespace) -> int:
    from imgcls.models import list_models, model_entry

    pattern = args.pattern if any(c in args.pattern for c in "*?[") else f"*{args.pattern}*"
    names = list_models(pattern)
    if not names:
        raise UserError(f"no registered model matches {args.pattern!r} (run `imgcls models` for all)")
    rows = [("name", "input", "paper")]
    for name in names:
        e = model_entry(name)
        rows.append((name, "x".join(map(str, e.input_size)), e.paper))
    width = max(len(r[0]) for r in rows)
    iwidth = max(len(r[1]) for r in rows)
    for r in rows:
        print(f"{r[0]:<{width}}  {r[1]:<{iwidth}}  {r[2]}".rstrip())
    return 0


def run_summary(args: argparse.Namespace) -> int:
    from imgcls.models import model_entry
    from imgcls.models.profile import format_table, profile_model

    entry = model_entry(args.name)
    size = parse_input_size(args.input_size, entry.input_size)
    classes = entry.default_num_classes if args.num_classes is None else args.num_classes
    model, prof = profile_model(args.name, size, num_classes=classes)
    if args.json:
        print(json.dumps({"name": args.name, **prof.to_dict()}, indent=2))
    else:
        print(f"{args.name}: {entry.paper}" if entry.paper else args.name)
        print(format_table(prof, model, paper=args.name in PAPER_TABLES))
    return 0
