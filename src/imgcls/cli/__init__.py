"""The `imgcls` command line: parse arguments, call one library function, print. No logic lives here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from imgcls.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    from imgcls.cli import data_cmd, infer_cmd, models_cmd, train_cmd

    parser = argparse.ArgumentParser(prog="imgcls", description="Train, measure and ship image classifiers.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (train_cmd, infer_cmd, models_cmd, data_cmd):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; user mistakes become a one-line message and exit status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except UserError as exc:
        print(f"imgcls: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("imgcls: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)
