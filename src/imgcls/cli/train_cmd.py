"""`imgcls train` and `imgcls eval`: parse flags, call the engine, print."""

from __future__ import annotations

import argparse
import json

from imgcls.errors import UserError
from imgcls.run_folder import RunFolder

# flag attribute -> (recipe section, key): flags override the recipe, which overrides the defaults.
FLAG_TARGETS = {
    "data": ("data", "spec"),
    "model": ("model", "name"),
    "weights": ("model", "weights"),
    "image_size": ("model", "image_size"),
    "compile": ("model", "compile"),
    "batch_size": ("data", "batch_size"),
    "workers": ("data", "workers"),
    "lr": ("optim", "lr"),
    "freeze_backbone": ("optim", "freeze_backbone"),
    "epochs": ("train", "epochs"),
    "seed": ("train", "seed"),
    "device": ("train", "device"),
    "precision": ("train", "precision"),
    "task": ("train", "task"),
    "out": ("train", "out"),
    "resume": ("train", "resume"),
    "overwrite": ("train", "overwrite"),
}


def register(sub: argparse._SubParsersAction) -> None:
    """Add `train` and `eval` to the `imgcls` parser."""
    from imgcls.engine.config import DEVICES, TTA_MODES

    p = sub.add_parser(
        "train",
        help="train a model on a dataset into a run folder",
        description="Train a model. Settings: defaults < --recipe < flags. "
        "Under torchrun (`torchrun --nproc_per_node N -m imgcls train ...`) it trains data-parallel.",
    )
    add_run_arguments(p, out_help="the run folder to write")
    p.add_argument("--resume", action="store_true", default=None, help="continue the run in --out")
    p.add_argument("--overwrite", action="store_true", default=None, help="replace the run in --out")
    p.set_defaults(func=run_train)

    e = sub.add_parser("eval", help="measure a finished run again (optionally on other data, with TTA)")
    e.add_argument("--run", required=True, metavar="RUN", help="a run folder written by `imgcls train`")
    e.add_argument("--data", metavar="SPEC", help="evaluate on this data instead of the run's validation split")
    e.add_argument("--tta", choices=TTA_MODES, default="none", help="test-time augmentation")
    e.add_argument(
        "--tta-fraction",
        type=float,
        default=1.0,
        metavar="F",
        help="flip / flip-translate: the other views only for the least confident fraction F of the images",
    )
    e.add_argument("--device", metavar="DEVICE", default="cpu", help=f"{', '.join(DEVICES)} or cuda:N (default cpu)")
    e.add_argument(
        "--precision",
        choices=("fp32", "bf16", "auto", "run"),
        default="fp32",
        help="autocast precision (default fp32, exact); run: the one the run was trained and evaluated in",
    )
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.set_defaults(func=run_eval)


def add_run_arguments(p: argparse.ArgumentParser, out_help: str) -> None:
    """The flags that describe a run (`train`, and `lr-find`, which tests the run it describes)."""
    from imgcls.config_reader import choices_of, recipe_names
    from imgcls.engine.config import DEVICES, TrainConfig

    p.add_argument("--data", metavar="SPEC", help="a folder, a CSV file, or digits, cifar10, cifar100, mnist...")
    p.add_argument("--model", metavar="NAME", help="a registered model (see `imgcls models`)")
    p.add_argument("--recipe", metavar="NAME|FILE", help=f"{', '.join(recipe_names())}, or a YAML file")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="images per step and process")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--image-size", type=int, help="input side in pixels (default: the model's)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", metavar="DEVICE", help=f"{', '.join(DEVICES)} or cuda:N (default auto)")
    p.add_argument("--precision", choices=choices_of(TrainConfig, "precision"))
    p.add_argument("--task", choices=choices_of(TrainConfig, "task"))
    p.add_argument("--out", metavar="RUN", help=out_help)
    p.add_argument(
        "--weights",
        metavar="FILE|torchvision|timm|none",
        help="start from these weights (fine-tuning): a weights file, the published torchvision or timm file, "
        "or none to train from scratch",
    )
    p.add_argument("--workers", type=int, help="data decoding processes")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--freeze-backbone", action="store_true", default=None, help="train the classifier only")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="any other setting, e.g. --set optim.name=adamw --set train.ema_decay=0.999 (repeatable; "
        "VALUE is YAML: null sets null, [1, 2] a list, {a: 1} a mapping)",
    )


def _parse_set(items: list[str]) -> dict[str, dict]:
    import yaml

    out: dict[str, dict] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise UserError(f"--set {item}: expected SECTION.KEY=VALUE, e.g. optim.name=adamw")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        out.setdefault(section, {})[name] = value
    return out


def overrides_from_args(args: argparse.Namespace) -> dict[str, dict]:
    """The flags the user gave, as recipe-shaped sections (``--set`` first, named flags win)."""
    out = _parse_set(args.set)
    for attr, (section, key) in FLAG_TARGETS.items():
        value = getattr(args, attr, None)
        if value is not None:
            out.setdefault(section, {})[key] = value
    return out


def build_config(args: argparse.Namespace):
    """defaults < recipe < flags; with --resume the run's saved configuration replaces defaults and recipe."""
    from imgcls.config_reader import SECTIONS
    from imgcls.engine.config import config_from_dict, merge, read_run_config, resolve_config

    overrides = overrides_from_args(args)
    if getattr(args, "resume", None) and args.out and RunFolder(args.out).config.is_file():
        saved = read_run_config(args.out)
        base = {name: saved.get(name) or {} for name in SECTIONS}
        return config_from_dict(merge(base, overrides))
    return resolve_config(args.recipe, overrides)


def run_train(args: argparse.Namespace) -> int:
    from imgcls.engine.train import train

    train(build_config(args))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from imgcls.engine.evaluate import evaluate

    result = evaluate(
        args.run,
        data=args.data,
        tta=args.tta,
        precision=args.precision,
        device=args.device,
        tta_fraction=args.tta_fraction,
    )
    if args.json:
        print(json.dumps(result, allow_nan=False, default=_none_for_nan))
        return 0
    print(format_eval(result))
    return 0


def _none_for_nan(value):
    return None


def format_eval(result: dict) -> str:
    """Human-readable summary of an evaluation: headline numbers, then one line per class."""
    splits = {"val": ", its validation split", "test": ", its test split", "all": ", all of it"}
    split = splits.get(result.get("split"), "")
    lines = [f"{result.get('run', '')} on {result.get('data', '')}{split} ({result.get('num_samples', '?')} images)"]
    head = [f"top-1 {result['top1']:.2f}%"] if result.get("top1") is not None else []
    if result.get("top5") is not None:
        head.append(f"top-5 {result['top5']:.2f}%")
    for key, label in (("loss", "loss"), ("mAP", "mAP"), ("auc", "ROC-AUC"), ("macro_f1", "macro F1")):
        if isinstance(result.get(key), (int, float)):
            head.append(f"{label} {result[key]:.4g}")
    lines.append("  ".join(head))
    calibration = result.get("calibration") or {}
    if calibration.get("ece") is not None:  # imgcls.engine.calibration: ECE in percent, 15 bins
        line = f"ECE {calibration['ece']:.2f}% as trained"
        if calibration.get("ece_calibrated") is not None:
            line += f", {calibration['ece_calibrated']:.2f}% after temperature {calibration['temperature']:.3g}"
        lines.append(line + f" ({calibration.get('bins', 15)} bins)")
    per_class = result.get("per_class") or {}
    classes = result.get("classes") or []
    if per_class.get("precision") and classes:
        width = max(len(c) for c in classes)
        lines.append(f"{'class':<{width}}  precision  recall     F1  support")
        for i, name in enumerate(classes):
            p, r, f = (per_class[k][i] for k in ("precision", "recall", "f1"))
            support = per_class.get("support", [""] * len(classes))[i]
            lines.append(f"{name:<{width}}  {100 * p:8.2f}%  {100 * r:6.2f}%  {100 * f:5.2f}%  {support:>7}")
    return "\n".join(lines)


__all__ = ["add_run_arguments", "build_config", "format_eval", "overrides_from_args", "register"]
