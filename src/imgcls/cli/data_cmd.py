"""``imgcls data stats SPEC [--json]`` and ``imgcls data preview SPEC --recipe R --out grid.png``."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``data`` verb and its sub-verbs to the `imgcls` parser."""
    data = sub.add_parser("data", help="look at a dataset: statistics and augmented previews")
    verbs = data.add_subparsers(dest="data_command", metavar="VERB", required=True)

    stats = verbs.add_parser("stats", help="classes, counts, image sizes, channel mean/std, problems found")
    stats.add_argument("spec", metavar="SPEC", help="folder, CSV list or built-in name (digits, cifar10, ...)")
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    stats.add_argument("--label-sep", default=None, help="label separator of a CSV list (default: space)")
    stats.set_defaults(func=_stats)

    preview = verbs.add_parser("preview", help="a grid of augmented training samples with their labels")
    preview.add_argument("spec", metavar="SPEC")
    preview.add_argument("--recipe", required=True, help="recipe name or YAML file (its data and augment sections)")
    preview.add_argument("--out", required=True, help="PNG file to write")
    preview.add_argument("--count", type=int, default=32, help="samples shown (default 32)")
    preview.add_argument("--seed", type=int, default=0)
    preview.add_argument("--image-size", type=int, default=None)
    preview.set_defaults(func=_preview)


def _stats(args: argparse.Namespace) -> int:
    from imgcls.data import DataConfig
    from imgcls.data.stats import dataset_stats, format_stats

    cfg = DataConfig(label_sep=args.label_sep) if args.label_sep else DataConfig()
    result = dataset_stats(args.spec, cfg)
    print(json.dumps(result, indent=2) if args.json else format_stats(result))
    return 0


def _preview(args: argparse.Namespace) -> int:
    from imgcls.errors import UserError
    from imgcls.report.preview import preview_grid

    if args.count < 1:
        raise UserError(f"--count: must be at least 1, got {args.count}")
    path = preview_grid(args.spec, args.recipe, args.out, count=args.count, seed=args.seed, image_size=args.image_size)
    print(f"wrote {path}")
    return 0
