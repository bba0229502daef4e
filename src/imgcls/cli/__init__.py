"""The `imgcls` command line: parse arguments, call one library function, print. No logic lives here."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from imgcls.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    from imgcls.cli import data_cmd, explain_cmd, infer_cmd, lr_find_cmd, models_cmd, train_cmd, weights_cmd

    parser = argparse.ArgumentParser(prog="imgcls", description="Train, measure and ship image classifiers.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (train_cmd, lr_find_cmd, infer_cmd, explain_cmd, models_cmd, weights_cmd, data_cmd):
        module.register(sub)
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time of the record (it may be replaced, e.g. under test capture)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def _console_logging() -> None:
    """Show the library's progress notes and warnings (skipped files, downloads) as plain lines on stderr."""
    logger = logging.getLogger("imgcls")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("imgcls: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; user mistakes become a one-line message and exit status 2."""
    from imgcls._memory import keep_freed_memory

    keep_freed_memory()  # large tensors reuse freed memory instead of faulting it in again (imgcls._memory)
    _console_logging()
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
