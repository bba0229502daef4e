"""Run configuration: one typed dataclass per concern, recipes, and what goes into ``config.json``.

Precedence is defaults < recipe < command-line flags. A recipe is a YAML file with the top-level sections
``model``, ``data``, ``augment``, ``optim``, ``schedule`` and ``train``; ``--recipe NAME`` picks one shipped
in ``imgcls/recipes/``, anything with a path separator or a ``.yaml``/``.yml`` suffix is read from disk.
``DataConfig`` belongs to the data layer and ``AugmentConfig`` to its transforms; ``data.spec`` (the dataset
given by ``--data``) is kept beside the data layer's fields.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from imgcls.errors import UserError

SECTIONS = ("model", "data", "augment", "optim", "schedule", "train")


@dataclass
class ModelConfig:
    """Which network to train and how it is built."""

    name: str | None = None
    weights: str | None = None  # our weights, a torchvision/timm state dict, "torchvision" or "timm"
    image_size: int | None = None  # None: the model's native input size
    in_chans: int | None = None  # None: the model's native channel count
    kwargs: dict[str, Any] = field(default_factory=dict)  # family options: drop_rate, aux_logits...
    channels_last: bool | None = None  # None: on for convolutional nets
    compile: bool = False  # torch.compile the training model


@dataclass
class OptimConfig:
    """Optimiser, weight decay and the fine-tuning knobs."""

    name: str = "sgd"  # sgd | adamw | rmsprop
    lr: float = 0.1  # for the whole batch (all ranks, all accumulation steps)
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    decay_norm_and_bias: bool = False  # the usual exclusion: no decay on norm weights and biases
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW
    alpha: float = 0.9  # RMSprop squared-gradient decay (Szegedy et al. 2015, Sec. 8)
    eps: float | None = None  # None: 1e-8 for AdamW, 1.0 for RMSprop (Inception v3)
    backbone_lr_mult: float = 1.0  # fine-tuning: backbone learns at lr * mult, the new classifier at lr
    norm_bias_lr_mult: float = 1.0  # normalisation-layer shifts learn at lr * mult (airbench: 64)
    freeze_backbone: bool = False  # train the classifier only
    clip_grad_norm: float | None = None  # max global L2 norm of the gradient
    accum_steps: int = 1  # gradient accumulation: optimiser step every N batches


@dataclass
class ScheduleConfig:
    """Learning-rate schedule, applied per optimiser step (per epoch only for ``plateau``)."""

    name: str = "cosine"  # constant | step | multistep | cosine | linear | onecycle | plateau
    warmup_epochs: float = 0.0  # linear warm-up (Goyal et al. 2017, arXiv:1706.02677)
    warmup_start: float = 0.1  # warm-up starts at lr * warmup_start
    step_size: float = 30.0  # step: epochs between decays
    milestones: list[float] = field(default_factory=lambda: [30.0, 60.0, 80.0])  # multistep (epochs)
    gamma: float = 0.1  # step / multistep decay factor
    min_lr_ratio: float = 0.0  # cosine / linear floor, as a fraction of the peak lr
    pct_start: float = 0.3  # one-cycle: fraction of steps spent rising
    div_factor: float = 25.0  # one-cycle: start at lr / div_factor
    final_div_factor: float = 1e4  # one-cycle: end at start / final_div_factor
    plateau_factor: float = 0.1  # plateau: multiply lr by this...
    plateau_patience: int = 10  # ...after this many epochs without improvement of validation loss
    plateau_threshold: float = 1e-4  # relative improvement that counts


@dataclass
class TrainConfig:
    """The loop itself and the run folder."""

    out: str | None = None
    epochs: int = 10
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    task: str | None = None  # None: what the data says
    loss: str = "auto"  # auto | ce | bce | hinge | huber | l1
    label_smoothing: float = 0.0
    ema_decay: float | None = None  # e.g. 0.999; evaluation and the shipped weights then use the EMA
    lookahead_k: int = 0  # Lookahead every k optimiser steps (0: off; Zhang et al. 2019 use 5)
    lookahead_alpha: float = 0.5  # slow weights' step toward the fast ones (engine/lookahead.py)
    lookahead_ramp_power: float | None = None  # ramp alpha from 1 down to lookahead_alpha as (t/T)**p (airbench: 3)
    final_tta: str = "none"  # test-time augmentation of the final evaluation (none | flip | flip-translate)
    init_whitening_images: int = 5000  # training images passed to a model's init_whitening hook
    freeze_after: dict[str, int] = field(default_factory=dict)  # {parameter-name prefix: epochs it learns}
    val_every: int = 1  # validate every N epochs and after the last (0: after the last only)
    save: str = "best"  # best (by validation top-1) | last
    max_bad_steps: int = 5  # stop after this many non-finite losses in a row
    checkpoint_every_steps: int = 0  # 0: only at epoch ends (and on SIGTERM / Ctrl-C)
    checkpoint_every_seconds: float = 600.0  # also checkpoint mid-epoch this often (0: never)
    resume: bool = False
    overwrite: bool = False
    report: bool = True  # write eval.json, predictions and report/ at the end
    progress: str = "auto"  # auto (bar on a terminal, lines otherwise) | bar | lines | none


@dataclass
class RunConfig:
    """Everything a run needs; ``data`` and ``augment`` are the data layer's own config objects."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: Any = None  # imgcls.data.DataConfig
    augment: Any = None  # imgcls.data.transforms.AugmentConfig
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data_spec: str | None = None  # --data: a folder, a CSV file or a built-in name

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types, sections as in a recipe; ``data.spec`` holds the dataset."""
        out: dict[str, Any] = {}
        for name in SECTIONS:
            value = getattr(self, name)
            out[name] = _plain(asdict(value)) if dataclasses.is_dataclass(value) else dict(value or {})
        out["data"] = {"spec": self.data_spec, **out["data"]}
        return out


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def recipe_names() -> list[str]:
    """Names of the recipes shipped with the package."""
    folder = resources.files("imgcls") / "recipes"
    return sorted(p.name.rsplit(".", 1)[0] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_recipe(name_or_path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Read a recipe: a shipped name (``digits``, ``cifar10``, ``imagenet``, ``finetune``) or a YAML path.

    Returns:
        ``{section: {key: value}}`` with only the known sections; unknown sections are a UserError.
    """
    text_name = str(name_or_path)
    is_path = os.sep in text_name or text_name.endswith((".yaml", ".yml")) or Path(text_name).is_file()
    if is_path:
        path = Path(text_name)
        if not path.is_file():
            raise UserError(f"recipe file not found: {path} (check --recipe)")
        text, where = path.read_text(), str(path)
    else:
        resource = resources.files("imgcls") / "recipes" / f"{text_name}.yaml"
        if not resource.is_file():
            raise UserError(f"unknown recipe: {text_name} (shipped: {', '.join(recipe_names())}; or give a path)")
        text, where = resource.read_text(), f"recipe {text_name}"
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "invalid YAML"
        raise UserError(f"{where}: not valid YAML ({first})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected sections {', '.join(SECTIONS)} at the top level")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise UserError(f"{where}: unknown section {unknown[0]} (sections: {', '.join(SECTIONS)})")
    for key, value in raw.items():
        if value is not None and not isinstance(value, dict):
            raise UserError(f"{where}: section {key} must be a mapping")
    return {key: dict(value or {}) for key, value in raw.items()}


def _coerce(value: Any, annotation: str, where: str) -> Any:
    """Numbers from YAML strings: PyYAML reads ``1e-3`` (no dot) as a string, a classic recipe trap."""
    if value is None or annotation.startswith(("list", "dict", "tuple")):
        return value
    kinds = [k.strip() for k in annotation.split("|")]
    try:
        if "bool" in kinds:
            if not isinstance(value, bool):
                raise ValueError
        elif "float" in kinds and not isinstance(value, bool):
            return float(value)
        elif "int" in kinds and not isinstance(value, bool):
            if float(value) != int(float(value)):
                raise ValueError
            return int(float(value))
    except (TypeError, ValueError):
        raise UserError(f"{where}: expected {annotation}, got {value!r}") from None
    return value


def _build(cls: type, values: dict[str, Any], section: str) -> Any:
    """A dataclass from a dict, refusing unknown keys and ill-typed values with the setting named."""
    if hasattr(cls, "from_dict"):
        return cls.from_dict(values)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise UserError(f"unknown setting {section}.{unknown[0]} (known: {', '.join(sorted(fields))})")
    typed = {k: _coerce(v, str(fields[k].type), f"{section}.{k}") for k, v in values.items()}
    return cls(**typed)


def merge(*layers: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Merge recipe-shaped dicts, later layers winning key by key (``None`` values are ignored)."""
    out: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for layer in layers:
        for section, values in (layer or {}).items():
            if section not in out:
                raise UserError(f"unknown section {section} (sections: {', '.join(SECTIONS)})")
            for key, value in (values or {}).items():
                if value is not None:
                    out[section][key] = value
    return out


def resolve_config(recipe: str | os.PathLike | None = None, overrides: dict | None = None) -> RunConfig:
    """Defaults < recipe < overrides (recipe-shaped: ``{"optim": {"lr": 0.05}, ...}``) -> RunConfig."""
    layers = [load_recipe(recipe)] if recipe else []
    return config_from_dict(merge(*layers, overrides or {}))


def config_from_dict(values: dict[str, dict[str, Any]]) -> RunConfig:
    """A RunConfig from recipe-shaped dicts (e.g. a saved ``config.json``)."""
    from imgcls.data import DataConfig
    from imgcls.data.transforms import AugmentConfig

    values = {name: dict(values.get(name) or {}) for name in SECTIONS}
    spec = values["data"].pop("spec", None)
    return RunConfig(
        model=_build(ModelConfig, values["model"], "model"),
        data=_build(DataConfig, values["data"], "data"),
        augment=_build(AugmentConfig, values["augment"], "augment"),
        optim=_build(OptimConfig, values["optim"], "optim"),
        schedule=_build(ScheduleConfig, values["schedule"], "schedule"),
        train=_build(TrainConfig, values["train"], "train"),
        data_spec=spec,
    )


def library_versions() -> dict[str, str]:
    """Versions that matter for reproducing a run."""
    import numpy
    import torch

    import imgcls

    versions = {
        "imgcls": imgcls.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
    }
    for name in ("kornia", "PIL", "safetensors"):
        try:
            module = __import__(name)
            versions[name] = getattr(module, "__version__", "?")
        except ImportError:
            pass
    return versions


def git_commit() -> str | None:
    """The commit of the imgcls source tree, when it is a git checkout (None for an installed wheel)."""
    here = Path(__file__).resolve().parent
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def config_record(cfg: RunConfig, **extra: Any) -> dict[str, Any]:
    """What ``config.json`` holds: the resolved sections, library versions, git commit and run facts."""
    return {**cfg.to_dict(), "versions": library_versions(), "git_commit": git_commit(), **extra}


def read_run_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of a run folder as a dict."""
    path = Path(run_dir) / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: not found (is {run_dir} a run folder?)") from None
    except ValueError as exc:
        raise UserError(f"{path}: malformed JSON ({exc})") from None


__all__ = [
    "SECTIONS",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "ScheduleConfig",
    "TrainConfig",
    "config_from_dict",
    "config_record",
    "git_commit",
    "library_versions",
    "load_recipe",
    "merge",
    "read_run_config",
    "recipe_names",
    "resolve_config",
]
