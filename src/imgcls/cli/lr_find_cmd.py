"""`imgcls lr-find`: the learning-rate range test of the run the flags describe (`imgcls.engine.lr_find`)."""

from __future__ import annotations

import argparse

from imgcls.cli.train_cmd import add_run_arguments, build_config


def register(sub: argparse._SubParsersAction) -> None:
    """Add `lr-find` to the `imgcls` parser."""
    p = sub.add_parser(
        "lr-find",
        help="suggest a learning rate: a short run with an exponentially growing rate (LR range test)",
        description="Train briefly with the learning rate growing exponentially from --start-lr to --end-lr and "
        "suggest a peak rate for the run the same flags describe (a tenth of the rate at the lowest smoothed loss). "
        "Nothing is trained for good; with --out, lr_find.json and lr_find.png are written there. "
        "`imgcls train --set train.lr_find=true` does the same first and then trains at the suggestion.",
    )
    add_run_arguments(p, out_help="a folder for lr_find.json and lr_find.png (optional)")
    p.add_argument("--start-lr", type=float, help="the first rate of the sweep (default 1e-5)")
    p.add_argument("--end-lr", type=float, help="the last rate of the sweep (default 10)")
    p.add_argument("--steps", type=int, help="optimiser steps of the sweep (default 100)")
    p.set_defaults(func=run_lr_find)


def run_lr_find(args: argparse.Namespace) -> int:
    from imgcls.engine.config import TrainConfig
    from imgcls.engine.lr_find import find_lr

    if args.start_lr is not None or args.end_lr is not None:
        low, high = TrainConfig().lr_find_range
        low = args.start_lr if args.start_lr is not None else low
        high = args.end_lr if args.end_lr is not None else high
        args.set = [*args.set, f"train.lr_find_range=[{low!r}, {high!r}]"]
    if args.steps is not None:
        args.set = [*args.set, f"train.lr_find_steps={args.steps}"]
    find_lr(build_config(args))
    return 0


__all__ = ["register"]
