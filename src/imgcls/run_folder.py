"""The run folder (DESIGN.md, "The run folder"): every file a run keeps, by name, and how each is read and written.

:class:`RunFolder` is the one place that spells the run folder's file names. The engine, the data layer's list
of skipped files, evaluation, the report, inference, export, serve and the command line ask it for paths and for
the contents of the small files; the weights (safetensors, SHA-256-checked) are read and written by
``imgcls.engine.bundle`` and the checkpoint by ``imgcls.engine.checkpoint``, at the paths given here. It sits at
the ground floor of the package (it imports no layer), so that every layer — the report below the engine
included — can use it.

What a run folder holds (``RUN/…``):

=====================  ====================================================================================
``config.json``        the resolved configuration, library versions, git commit, run facts; at the end
                       ``run.selection``: best and last epoch, which one the weights are, the run's time (engine)
``checkpoints/last.pt`` the full resumable state (engine)
``model.safetensors``  the weights to ship, and ``model.json`` (:class:`ModelMeta`) with their SHA-256
``metrics.csv``        one row per epoch (engine)
``data_issues.csv``    ``path, reason`` of every skipped file (data layer)
``eval.json``          the final evaluation on the validation split, with ``"test"`` inside when the data has a
                       separate test split (``imgcls.engine.evaluate.finalize_run``)
``predictions.csv``    top-5 per validation image; ``samples.npz``: a few images for the report's grid
``report/``            ``report.html`` and its PNGs (``imgcls.report``)
``model.onnx``         optional, written by ``imgcls export --out RUN/model.onnx``; ``predict --backend onnx``
``tensorboard/``       event files, when tensorboard is installed
``lr_find.json``       with ``train.lr_find`` (or ``imgcls lr-find --out``): the range test's curve and suggestion,
                       and its plot ``lr_find.png`` (``imgcls.engine.lr_find``)
=====================  ====================================================================================

Readers raise :class:`~imgcls.errors.UserError` naming the file for a malformed one; optional files read as
``None`` (or ``[]``) when absent, required ones (``model.json``) say what is missing. Writers replace a file
atomically (``imgcls._files``: temporary file, fsync, rename), so a killed or full-disk write leaves the previous
file and says so in one line.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from imgcls._files import atomic_write_bytes, sha256_file
from imgcls.errors import UserError

TASKS = ("multiclass", "binary", "multilabel")
MODEL_META_VERSION = 1


@dataclass
class ModelMeta:
    """The contents of ``model.json``: what it takes to use the weights beside it.

    Attributes:
        name: the registered architecture.
        num_classes: outputs of the classifier (the length of ``classes``).
        classes: label strings in index order.
        input_size: ``[C, H, W]`` the network takes (square).
        mean, std: per-channel normalisation in [0, 1] units (``C`` values each; every ``std`` > 0).
        task: ``"multiclass"``, ``"binary"`` or ``"multilabel"``.
        resize: shorter side before the center crop at evaluation (``H`` for no crop).
        in_chans: ``C``.
        model_kwargs: extra ``create_model`` arguments the run used.
        thresholds: multi-label only — the probability at or above which each class is predicted (one per class,
            tuned on validation, or 0.5 each); ``None`` elsewhere.
        epoch: the epoch whose weights these are (``None`` when not recorded).
        temperature: multi-class and binary — the scalar the logits are divided by before the softmax
            (temperature scaling fitted on validation, ``imgcls.engine.calibration``); ``None``: not fitted (1).
        sha256: hex SHA-256 of ``model.safetensors``.
        format_version: of this record.
    """

    name: str
    num_classes: int
    classes: list[str]
    input_size: list[int]
    mean: list[float]
    std: list[float]
    task: str = "multiclass"
    resize: int | None = None
    in_chans: int = 3
    model_kwargs: dict = field(default_factory=dict)
    thresholds: list[float] | None = None
    epoch: int | None = None
    temperature: float | None = None
    sha256: str = ""
    format_version: int = MODEL_META_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Any, where: str | os.PathLike = "model.json") -> ModelMeta:
        """Parse and check a ``model.json`` object; anything a reader could not use is a one-line UserError.

        Unknown keys are ignored (a newer writer may add some). ``where`` names the file in the messages.
        """
        if not isinstance(raw, dict):
            raise UserError(f"{where}: expected a JSON object, found {type(raw).__name__}")
        for key in ("name", "num_classes", "classes", "input_size", "mean", "std"):
            if key not in raw:
                raise UserError(f"{where}: missing {key!r}")
        known = {f.name for f in fields(cls)}
        meta = cls(**{k: v for k, v in raw.items() if k in known})
        meta.check(where)
        return meta

    def check(self, where: str | os.PathLike = "model.json") -> None:
        """Raise a UserError naming ``where`` and the field when a value is unusable (types, ranges, lengths)."""

        def bad(key: str, why: str) -> UserError:
            return UserError(f"{where}: {key} {why}")

        if not isinstance(self.name, str) or not self.name:
            raise bad("name", f"must be a registered model name, got {self.name!r}")
        if self.task not in TASKS:
            raise bad("task", f"must be one of {', '.join(TASKS)}, got {self.task!r}")
        if not _is_int(self.num_classes) or self.num_classes < 1:
            raise bad("num_classes", f"must be a positive integer, got {self.num_classes!r}")
        if not isinstance(self.classes, list) or not all(isinstance(c, str) for c in self.classes):
            raise bad("classes", "must be a list of label strings")
        if len(self.classes) != self.num_classes:
            raise bad("classes", f"has {len(self.classes)} names but num_classes is {self.num_classes}")
        fewest = 1 if self.task == "multilabel" else 2
        if self.num_classes < fewest or (self.task == "binary" and self.num_classes != 2):
            need = "exactly 2" if self.task == "binary" else f"at least {fewest}"
            raise bad("classes", f"a {self.task} classifier needs {need} classes, found {self.num_classes}")
        if len(set(self.classes)) != len(self.classes):
            raise bad("classes", "has duplicate names")
        if not _is_int(self.in_chans) or self.in_chans not in (1, 3):
            raise bad("in_chans", f"must be 1 or 3, got {self.in_chans!r}")
        size = self.input_size
        if not (isinstance(size, list) and len(size) == 3 and all(_is_int(v) and v >= 1 for v in size)):
            raise bad("input_size", f"must be [C, H, W] of positive integers, got {size!r}")
        if size[0] != self.in_chans or size[1] != size[2]:
            raise bad("input_size", f"must be [{self.in_chans}, S, S] (in_chans, square), got {size!r}")
        for key in ("mean", "std"):
            values = getattr(self, key)
            if not (isinstance(values, list) and all(_is_number(v) and math.isfinite(v) for v in values)):
                raise bad(key, f"must be a list of finite numbers, got {values!r}")
            if len(values) != self.in_chans:
                raise bad(key, f"needs {self.in_chans} value(s) (one per input channel), got {len(values)}")
        if any(v <= 0 for v in self.std):
            raise bad("std", f"must be positive (it divides every pixel), got {self.std!r}")
        if self.resize is not None and (not _is_int(self.resize) or self.resize < size[1]):
            raise bad("resize", f"must be an integer of at least the input size {size[1]}, got {self.resize!r}")
        if not isinstance(self.model_kwargs, dict):
            raise bad("model_kwargs", f"must be an object, got {self.model_kwargs!r}")
        if self.thresholds is not None:
            ok = isinstance(self.thresholds, list) and all(_is_number(t) and 0.0 <= t <= 1.0 for t in self.thresholds)
            if not ok or len(self.thresholds) != self.num_classes:
                raise bad("thresholds", f"must be {self.num_classes} probabilities in [0, 1], got {self.thresholds!r}")
        if self.epoch is not None and (not _is_int(self.epoch) or self.epoch < 0):
            raise bad("epoch", f"must be a non-negative integer, got {self.epoch!r}")
        if self.temperature is not None:
            ok = _is_number(self.temperature) and math.isfinite(self.temperature) and self.temperature > 0
            if not ok or self.task == "multilabel":
                why = "is not used by multi-label models" if ok else "must be a positive number"
                raise bad("temperature", f"{why}, got {self.temperature!r}")
        if not isinstance(self.sha256, str) or (self.sha256 and not re.fullmatch(r"[0-9a-f]{64}", self.sha256)):
            raise bad("sha256", "must be 64 lower-case hex digits")

    def class_thresholds(self) -> list[float] | None:
        """Multi-label decision thresholds per class (0.5 each when none were recorded); ``None`` otherwise."""
        if self.task != "multilabel":
            return None
        return list(self.thresholds) if self.thresholds is not None else [0.5] * self.num_classes


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class RunFolder:
    """The files of one run folder: their paths, and readers and writers for the small ones.

    Args:
        root: the folder (``--out RUN`` / ``--run RUN``); it need not exist yet.
    """

    CONFIG = "config.json"
    CHECKPOINT = "checkpoints/last.pt"
    WEIGHTS = "model.safetensors"
    META = "model.json"
    METRICS = "metrics.csv"
    ISSUES = "data_issues.csv"
    EVAL = "eval.json"
    PREDICTIONS = "predictions.csv"
    SAMPLES = "samples.npz"
    REPORT_DIR = "report"
    REPORT_PAGE = "report.html"
    ONNX = "model.onnx"
    TENSORBOARD = "tensorboard"
    LR_FIND = "lr_find.json"  # the learning-rate range test's curve and suggestion (engine/lr_find.py)
    LR_FIND_PLOT = "lr_find.png"
    LOCK = ".imgcls-train.lock"  # held by the one `train` writing the folder; removed when it ends

    # What makes a folder "a run": train refuses to write into one without --resume / --overwrite.
    MARKERS = (CONFIG, "checkpoints", WEIGHTS, META, METRICS)
    # What --overwrite removes (only our own entries: anything else in the folder is left alone).
    ENTRIES = (*MARKERS, ISSUES, EVAL, PREDICTIONS, SAMPLES, REPORT_DIR, TENSORBOARD, LR_FIND, LR_FIND_PLOT)

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.root)!r})"

    def __fspath__(self) -> str:
        return os.fspath(self.root)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunFolder) and self.root == other.root

    def __hash__(self) -> int:
        return hash(self.root)

    # --- paths -------------------------------------------------------------------------------------------------

    @property
    def config(self) -> Path:
        return self.root / self.CONFIG

    @property
    def checkpoint(self) -> Path:
        return self.root / self.CHECKPOINT

    @property
    def weights(self) -> Path:
        return self.root / self.WEIGHTS

    @property
    def meta(self) -> Path:
        return self.root / self.META

    @property
    def metrics(self) -> Path:
        return self.root / self.METRICS

    @property
    def issues(self) -> Path:
        return self.root / self.ISSUES

    @property
    def eval(self) -> Path:
        return self.root / self.EVAL

    @property
    def predictions(self) -> Path:
        return self.root / self.PREDICTIONS

    @property
    def samples(self) -> Path:
        return self.root / self.SAMPLES

    @property
    def report_dir(self) -> Path:
        return self.root / self.REPORT_DIR

    @property
    def report_page(self) -> Path:
        return self.report_dir / self.REPORT_PAGE

    @property
    def onnx(self) -> Path:
        return self.root / self.ONNX

    @property
    def tensorboard(self) -> Path:
        return self.root / self.TENSORBOARD

    @property
    def lr_find(self) -> Path:
        return self.root / self.LR_FIND

    @property
    def lr_find_plot(self) -> Path:
        return self.root / self.LR_FIND_PLOT

    @property
    def lock(self) -> Path:
        return self.root / self.LOCK

    # --- what the folder is ------------------------------------------------------------------------------------

    def holds_run(self) -> bool:
        """True when the folder already holds (part of) a run."""
        return self.root.is_dir() and any((self.root / m).exists() for m in self.MARKERS)

    def require(self, what: str = "run folder") -> RunFolder:
        """This folder, or a UserError when it does not exist (``what`` names the option, e.g. ``--run``)."""
        if not self.root.is_dir():
            raise UserError(f"{what} not found: {self.root}" + ("" if self.root.exists() else " (check --run)"))
        return self

    def own_files(self) -> list[Path]:
        """The files and folders the run writes itself (``model.onnx`` excepted: ``export`` may write it)."""
        return [self.root / name for name in (*self.ENTRIES, self.CHECKPOINT)]

    def is_own_file(self, path: str | os.PathLike) -> bool:
        """Whether ``path`` is (or lies inside) one of the files this run writes itself — the weights, their
        record, the checkpoint, the metrics, the report... — so that an output given by the user never replaces
        them. Compares real paths, so a symbolic link or ``..`` does not hide a match."""
        target = _real(path)
        for own in self.own_files():
            real = _real(own)
            if target == real or real in target.parents:
                return True
        return False

    def clear(self) -> None:
        """Remove the run's own entries (what ``--overwrite`` replaces); other files stay."""
        import shutil

        for name in self.ENTRIES:
            path = self.root / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()

    # --- model.json --------------------------------------------------------------------------------------------

    def read_meta(self) -> ModelMeta:
        """``model.json``, parsed and checked; a missing or malformed file is a UserError naming it."""
        if not self.meta.is_file():
            raise UserError(f"{self.meta}: not found (is {self.root} a finished run folder?)")
        return ModelMeta.from_dict(self._json(self.meta), self.meta)

    def read_meta_or_none(self) -> ModelMeta | None:
        """``model.json`` when present (checked), else ``None``."""
        return self.read_meta() if self.meta.is_file() else None

    def write_meta(self, meta: ModelMeta) -> Path:
        meta.check(self.meta)
        return self.write_json(self.meta, meta.to_dict(), indent=2)

    # --- the JSON files ----------------------------------------------------------------------------------------

    def read_config(self) -> dict[str, Any] | None:
        """``config.json`` as a dict; ``None`` when the run has none."""
        return self._object(self.config) if self.config.is_file() else None

    def write_config(self, record: dict[str, Any]) -> Path:
        return self.write_json(self.config, record, indent=2)

    def read_eval(self) -> dict[str, Any] | None:
        """``eval.json`` (the final evaluation) or ``None``."""
        return self._object(self.eval) if self.eval.is_file() else None

    def write_eval(self, payload: dict[str, Any]) -> Path:
        return self.write_json(self.eval, payload, indent=1)

    def _object(self, path: Path) -> dict[str, Any]:
        value = self._json(path)
        if not isinstance(value, dict):
            raise UserError(f"{path}: expected a JSON object, found {type(value).__name__}")
        return value

    def _json(self, path: Path) -> Any:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise UserError(f"{path}: not UTF-8 text (is it a JSON file?)") from None
        except ValueError as exc:
            raise UserError(f"{path}: malformed JSON ({exc})") from None
        except OSError as exc:
            raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None

    def write_json(self, path: str | os.PathLike, value: Any, indent: int | None = 2) -> Path:
        """Write ``value`` as strict JSON (NaN/Infinity refused: JSON has neither) to ``path`` atomically."""
        try:
            text = json.dumps(value, indent=indent, allow_nan=False)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None  # our bug: callers turn non-finite numbers into None
        return atomic_write_bytes(path, (text + "\n").encode("utf-8"))

    # --- metrics.csv -------------------------------------------------------------------------------------------

    def read_metrics(self) -> list[dict[str, float | None]]:
        """Rows of ``metrics.csv`` with numbers parsed (empty cells → ``None``); ``[]`` when absent."""
        path = self.metrics
        if not path.is_file():
            return []
        try:
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                if not reader.fieldnames or "epoch" not in reader.fieldnames:
                    raise UserError(f"{path}: not a metrics file (no 'epoch' column)")
                return [{k: _number(v) for k, v in row.items() if k} for row in reader]
        except (UnicodeDecodeError, csv.Error) as exc:
            raise UserError(f"{path}: unreadable metrics file ({exc})") from None

    def write_metrics(self, columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> Path:
        """Replace ``metrics.csv`` with one row per epoch (``None`` → empty cell; floats to 6 digits)."""
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row.get(c) is None else _cell(row[c]) for c in columns])
        return atomic_write_bytes(self.metrics, buf.getvalue().encode("utf-8"))

    # --- samples.npz -------------------------------------------------------------------------------------------

    def read_samples(self) -> dict[str, Any] | None:
        """The arrays of ``samples.npz`` (no pickles) or ``None`` when absent."""
        import numpy as np

        if not self.samples.is_file():
            return None
        try:
            with np.load(self.samples, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        except (OSError, ValueError, EOFError) as exc:
            raise UserError(f"{self.samples}: unreadable samples file ({exc})") from None

    def write_samples(self, **arrays: Any) -> Path:
        import numpy as np

        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        return atomic_write_bytes(self.samples, buf.getvalue())


def verify_weights(weights: str | os.PathLike, expected: str, record: str | os.PathLike) -> None:
    """Refuse ``weights`` (UserError) unless its SHA-256 is ``expected``, as the file ``record`` records it."""
    weights, record = Path(weights), Path(record)
    if not weights.is_file():
        raise UserError(f"{weights}: not found")
    if not expected:
        raise UserError(f"{record}: no sha256 for {weights.name}; refusing unverified weights")
    digest = sha256_file(weights)
    if digest != expected:
        raise UserError(f"{weights}: SHA-256 {digest[:12]}… does not match {record} ({expected[:12]}…); refusing")


def check_weights_file(path: str | os.PathLike) -> None:
    """Refuse a run folder's ``model.safetensors`` named as a plain weights file (``create_model(weights=...)``,
    ``predict --weights``, ``train --weights``) unless it matches the SHA-256 its ``model.json`` records. Any
    other file passes: it has no record to be checked against."""
    path = Path(path)
    run = RunFolder(path.parent)
    if path.name != RunFolder.WEIGHTS or not run.meta.is_file():
        return
    raw = run._json(run.meta)
    expected = raw.get("sha256") if isinstance(raw, dict) else None
    if expected:
        verify_weights(path, str(expected), run.meta)


def refuse_output(
    out: str | os.PathLike, option: str, inputs: Iterable[str | os.PathLike] = (), runs: Iterable[RunFolder] = ()
) -> Path:
    """Check a file the user asked a command to write before anything is read or written.

    Refused (one-line UserError): an output that is one of ``inputs`` (the same real path: a symbolic link, a
    ``..`` or a glob that matched it do not hide it), and a file a run folder keeps — of one of ``runs``, or of
    the run folder the output would land in (``model.onnx`` is allowed: ``export`` writes it there).

    Returns:
        ``out`` as a Path.
    """
    out = Path(out)
    target = _real(out)
    for item in inputs:
        if _real(item) == target:
            raise UserError(f"{option} {out}: is also an input ({item}); writing it would destroy it")
    runs = tuple(runs)
    for run in (*runs, RunFolder(out.parent)):
        if (run in runs or run.holds_run()) and run.is_own_file(out):
            raise UserError(f"{option} {out}: is one of the run's own files in {run.root}; choose another file")
    return out


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.fspath(path)))


def _number(text: str | None) -> float | None:
    if text is None or text.strip() == "":
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _cell(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


__all__ = [
    "TASKS",
    "ModelMeta",
    "RunFolder",
    "check_weights_file",
    "refuse_output",
    "verify_weights",
]
