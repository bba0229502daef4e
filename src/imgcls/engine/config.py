"""Run configuration: one typed dataclass per concern, recipes, and what goes into ``config.json``.

Precedence is defaults < recipe < command-line flags. A recipe is a YAML file with the top-level sections
``model``, ``data``, ``augment``, ``optim``, ``schedule`` and ``train``; ``--recipe NAME`` picks one shipped
in ``imgcls/recipes/``, anything with a path separator or a ``.yaml``/``.yml`` suffix is read from disk
(`imgcls.config_reader.load_recipe`). ``DataConfig`` belongs to the data layer and ``AugmentConfig`` to its
transforms; ``data.spec`` (the dataset given by ``--data``) is kept beside the data layer's fields.

Every section is read by `imgcls.config_reader.read_section` and checked in its own ``__post_init__``: types
from the annotations, choices and ranges from the ``setting(...)`` of each field (defined once; the command
line takes its ``choices=`` from them). A ``null`` (``--set KEY=null``) sets a setting to null, which is an
error where a value is required.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from imgcls.config_reader import SECTIONS, check_settings, load_recipe, read_section, recipe_names, setting
from imgcls.errors import UserError

OPTIMIZERS = ("sgd", "adamw", "rmsprop", "muon")
SCHEDULES = ("constant", "step", "multistep", "cosine", "linear", "onecycle", "plateau")
LOSSES = ("ce", "bce", "hinge", "huber", "l1")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
TASKS = ("multiclass", "multilabel", "binary")
FINAL_TTA = ("none", "flip", "flip-translate")
TTA_MODES = (*FINAL_TTA, "ten-crop")  # `imgcls eval --tta`; ten-crop needs images larger than the crop
# What the shipped weights are chosen by (``train.select_metric``): "auto" is mAP for multi-label data, top-1
# otherwise; "loss" picks the lowest validation loss, the others the highest value.
SELECT_METRICS = ("auto", "top1", "top5", "mAP", "loss")
MAX_IMAGE_SIZE = 4096  # pixels per side; a 4096² RGB batch of 8 is already 1.6 GB of float32


@dataclass
class ModelConfig:
    """Which network to train and how it is built."""

    SECTION: ClassVar[str] = "model"
    name: str | None = None
    # our weights, a torchvision/timm state dict file, "torchvision" or "timm"; None (or "none"): from scratch
    weights: str | None = None
    image_size: int | None = setting(None, ge=1, le=MAX_IMAGE_SIZE)  # None: the model's native input size
    in_chans: int | None = setting(None, ge=1, le=64)  # None: the model's native channel count
    kwargs: dict[str, Any] = field(default_factory=dict)  # family options: drop_rate, aux_logits...
    channels_last: bool | None = None  # None: on for convolutional nets
    compile: bool = False  # torch.compile the training model

    def __post_init__(self) -> None:
        check_settings(self)
        if isinstance(self.weights, str) and self.weights.strip().lower() in ("none", ""):
            self.weights = None


@dataclass
class OptimConfig:
    """Optimiser, weight decay and the fine-tuning knobs."""

    SECTION: ClassVar[str] = "optim"
    name: str = setting("sgd", choices=OPTIMIZERS)
    lr: float = setting(0.1, gt=0)  # for the whole batch (all ranks, all accumulation steps)
    momentum: float = setting(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = setting(5e-4, ge=0)
    decay_norm_and_bias: bool = False  # the usual exclusion: no decay on norm weights and biases
    betas: tuple[float, float] = setting((0.9, 0.999), ge=0, lt=1)  # AdamW
    alpha: float = setting(0.9, ge=0, le=1)  # RMSprop squared-gradient decay (Szegedy et al. 2015, Sec. 8)
    eps: float | None = setting(None, gt=0)  # None: 1e-8 for AdamW, 1.0 for RMSprop (Inception v3)
    backbone_lr_mult: float = setting(1.0, ge=0)  # fine-tuning: backbone learns at lr * mult, the classifier at lr
    norm_bias_lr_mult: float = setting(1.0, gt=0)  # normalisation-layer shifts learn at lr * mult (airbench: 64)
    freeze_backbone: bool = False  # train the classifier only (the backbone's BatchNorm statistics stay too)
    clip_grad_norm: float | None = setting(None, gt=0)  # max global L2 norm of the gradient
    accum_steps: int = setting(1, ge=1)  # gradient accumulation: optimiser step every N batches
    sgd_lr: float | None = setting(None, gt=0)  # muon: SGD lr of the classifier (the rest: sgd_lr * norm_bias_lr_mult)
    sgd_momentum: float | None = setting(None, ge=0, lt=1)  # muon: momentum of the SGD groups (None: momentum)
    muon_normalize_weights: bool = False  # muon: rescale each filter bank to norm sqrt(out) before each step
    ns_steps: int = setting(3, ge=1, le=20)  # muon: Newton-Schulz iterations per step

    def __post_init__(self) -> None:
        check_settings(self)
        if self.nesterov and self.name in ("sgd", "muon") and self.momentum <= 0:
            raise UserError("optim.nesterov: needs a positive optim.momentum")


@dataclass
class ScheduleConfig:
    """Learning-rate schedule, applied per optimiser step (per epoch only for ``plateau``)."""

    SECTION: ClassVar[str] = "schedule"
    name: str = setting("cosine", choices=SCHEDULES)
    warmup_epochs: float = setting(0.0, ge=0)  # linear warm-up (Goyal et al. 2017, arXiv:1706.02677)
    warmup_start: float = setting(0.1, ge=0, le=1)  # warm-up starts at lr * warmup_start
    step_size: float = setting(30.0, gt=0)  # step: epochs between decays
    # multistep: the epochs at which the lr is multiplied by gamma
    milestones: list[float] = field(default_factory=lambda: [30.0, 60.0, 80.0], metadata={"ge": 0})
    gamma: float = setting(0.1, gt=0)  # step / multistep decay factor
    min_lr_ratio: float = setting(0.0, ge=0, le=1)  # cosine / linear floor, as a fraction of the peak lr
    pct_start: float = setting(0.3, gt=0, lt=1)  # one-cycle: fraction of steps spent rising
    div_factor: float = setting(25.0, gt=0)  # one-cycle: start at lr / div_factor
    final_div_factor: float = setting(1e4, gt=0)  # one-cycle: end at start / final_div_factor
    plateau_factor: float = setting(0.1, gt=0, le=1)  # plateau: multiply lr by this...
    plateau_patience: int = setting(10, ge=0)  # ...after this many epochs without improvement of validation loss
    plateau_threshold: float = setting(1e-4, ge=0, lt=1)  # relative improvement that counts
    # A parameter that train.freeze_after freezes after N epochs runs the schedule over its own N epochs, so its
    # rate reaches the schedule's end as it freezes (airbench94_muon's whitening bias: 1 -> 0 over 3 epochs).
    end_at_freeze: bool = False

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass
class TrainConfig:
    """The loop itself and the run folder."""

    SECTION: ClassVar[str] = "train"
    out: str | None = None
    epochs: int = setting(10, ge=1)
    seed: int = setting(0, ge=0)
    device: str = "auto"  # auto | cpu | cuda | cuda:N (DEVICES for the command line)
    deterministic: bool = True  # GPU: reproducible kernels (exact resume); false: cudnn.benchmark (engine/device.py)
    precision: str = setting("auto", choices=PRECISIONS)
    task: str | None = setting(None, choices=(None, *TASKS))  # None: what the data says
    loss: str = setting("auto", choices=("auto", *LOSSES))
    label_smoothing: float = setting(0.0, ge=0, lt=1)
    ema_decay: float | None = setting(None, gt=0, lt=1)  # e.g. 0.999; evaluation and the shipped weights use the EMA
    lookahead_k: int = setting(0, ge=0)  # Lookahead every k optimiser steps (0: off; Zhang et al. 2019 use 5)
    lookahead_alpha: float = setting(0.5, gt=0, le=1)  # slow weights' step toward the fast ones (engine/lookahead.py)
    lookahead_ramp_power: float | None = setting(None, gt=0)  # ramp alpha from 1 to lookahead_alpha as (t/T)**p
    final_tta: str = setting("none", choices=FINAL_TTA)  # test-time augmentation of the final evaluation
    final_tta_fraction: float = setting(1.0, gt=0, le=1)  # ...on this least confident fraction (engine/evaluate.py)
    init_whitening_images: int = setting(5000, ge=1)  # training images passed to a model's init_whitening hook
    # {parameter-name prefix: epochs it learns}: staged freezing
    freeze_after: dict[str, int] = field(default_factory=dict, metadata={"ge": 0})
    val_every: int = setting(1, ge=0)  # validate every N epochs and after the last (0: after the last only)
    save: str = setting("best", choices=("best", "last"))  # best (by select_metric) | last
    select_metric: str = setting("auto", choices=SELECT_METRICS)  # what "best" means (see SELECT_METRICS)
    # Stop after this many validated epochs in a row without a better select_metric, and ship the best (0: off).
    early_stopping: int = setting(0, ge=0)
    early_stopping_min_delta: float = setting(0.0, ge=0)  # the gain that counts as better (percent, or loss units)
    # The first epoch that may be chosen as the best (the shipped weights, and where early stopping's patience
    # counts from): earlier epochs are validated and logged, never chosen, as Keras' EarlyStopping start_from_epoch.
    # On a few dozen held-out photos an early epoch can score high by luck (0 or 1: every epoch may be chosen).
    select_from_epoch: int = setting(0, ge=0)
    # Fine-tuning in two stages: the classifier trains alone (backbone frozen, its BatchNorm statistics too) for
    # this many epochs, then the whole network (0: off).
    unfreeze_after: int = setting(0, ge=0)
    lr_find: bool = False  # an LR range test (engine/lr_find.py) first; the run then trains at its suggestion
    lr_find_range: tuple[float, float] = setting((1e-5, 10.0), gt=0)  # the rates swept (optim.lr's scale)
    lr_find_steps: int = setting(100, ge=10)  # optimiser steps of the sweep
    max_bad_steps: int = setting(5, ge=1)  # stop after this many non-finite losses in a row
    checkpoint_every_steps: int = setting(0, ge=0)  # 0: only at epoch ends (and on SIGTERM / Ctrl-C)
    checkpoint_every_seconds: float = setting(600.0, ge=0)  # also checkpoint mid-epoch this often (0: never)
    resume: bool = False
    overwrite: bool = False
    report: bool = True  # write eval.json, predictions and report/ at the end
    progress: str = setting("auto", choices=("auto", "bar", "lines", "none"))  # auto: a bar on a terminal

    def __post_init__(self) -> None:
        check_settings(self)
        if self.resume and self.overwrite:
            raise UserError("--resume and --overwrite contradict each other: choose one")
        if not self.lr_find_range[0] < self.lr_find_range[1]:
            raise UserError(f"train.lr_find_range: needs [start, end] with start < end, got {list(self.lr_find_range)}")
        if not (self.device in DEVICES[1:] or self.device == "auto" or self.device.startswith("cuda:")):
            raise UserError(f"train.device: must be one of {', '.join(DEVICES)} (or cuda:N), got {self.device!r}")


@dataclass
class RunConfig:
    """Everything a run needs; ``data`` and ``augment`` are the data layer's own config objects."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: Any = None  # imgcls.data.DataConfig
    augment: Any = None  # imgcls.data.augment.AugmentConfig
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


def merge(*layers: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Merge recipe-shaped dicts, later layers winning key by key; a ``None`` value sets the setting to null."""
    out: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for layer in layers:
        for section, values in (layer or {}).items():
            if section not in out:
                raise UserError(f"unknown section {section} (sections: {', '.join(SECTIONS)})")
            if values is not None and not isinstance(values, dict):
                raise UserError(f"{section}: expected a mapping of settings, got {values!r}")
            out[section].update(values or {})
    return out


def resolve_config(recipe: str | os.PathLike | None = None, overrides: dict | None = None) -> RunConfig:
    """Defaults < recipe < overrides (recipe-shaped: ``{"optim": {"lr": 0.05}, ...}``) -> RunConfig."""
    layers = [load_recipe(recipe)] if recipe else []
    return config_from_dict(merge(*layers, overrides or {}))


def config_from_dict(values: dict[str, dict[str, Any]]) -> RunConfig:
    """A RunConfig from recipe-shaped dicts (e.g. a saved ``config.json``), every section through one reader."""
    from imgcls.data import DataConfig
    from imgcls.data.augment import AugmentConfig

    values = {name: dict(values.get(name) or {}) for name in SECTIONS}
    spec = values["data"].pop("spec", None)
    if spec is not None and not isinstance(spec, str):
        raise UserError(f"data.spec: expected a folder, a CSV file or a built-in name, got {spec!r}")
    return RunConfig(
        model=read_section(ModelConfig, values["model"]),
        data=read_section(DataConfig, values["data"], "data"),
        augment=read_section(AugmentConfig, values["augment"], "augment"),
        optim=read_section(OptimConfig, values["optim"]),
        schedule=read_section(ScheduleConfig, values["schedule"]),
        train=read_section(TrainConfig, values["train"]),
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
    "DEVICES",
    "LOSSES",
    "OPTIMIZERS",
    "PRECISIONS",
    "SCHEDULES",
    "SECTIONS",
    "SELECT_METRICS",
    "TASKS",
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
