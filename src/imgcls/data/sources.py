"""Turn a ``--data SPEC`` into class names and the samples of each split (nothing is decoded here).

SPEC is one of:

* a folder holding ``train/`` and ``val/`` (or ``test/``) with one subfolder per class, or class subfolders
  alone (then a seeded, per-class stratified split holds out ``val_fraction`` of each class);
* a CSV file ``path,labels`` (header optional; paths relative to the CSV; labels separated by ``label_sep``),
  multi-label when any row has more than one label;
* a built-in name: ``digits`` (scikit-learn's bundled 8×8 digits, offline), ``cifar10``, ``cifar100``
  (fine labels; ``cifar100:coarse`` for the 20 superclasses), ``mnist``, ``fashion-mnist`` (downloaded once,
  see `imgcls.data.download`). Sets with an official test split use it for validation.

Classes are sorted by name (the class map is saved with the run). Extensions are matched case-insensitively;
hidden files and folders, ``__MACOSX`` and files with other extensions are ignored.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imgcls.data.config import DataConfig
from imgcls.data.reader import is_image_file
from imgcls.errors import UserError

log = logging.getLogger("imgcls.data")

BUILTINS = ("digits", "cifar10", "cifar100", "cifar100:coarse", "mnist", "fashion-mnist")
TASKS = ("multiclass", "binary", "multilabel")
CLUTTER_DIRS = frozenset({"__MACOSX", "@eaDir", "$RECYCLE.BIN", "System Volume Information"})


@dataclass
class Split:
    """The samples of one split: files (`paths`) or decoded images (`images`, uint8 ``(N, C, H, W)``).

    `targets` is int64 ``(N,)`` class indices, or float32 ``(N, K)`` multi-hot for multi-label data.
    """

    targets: np.ndarray
    paths: list[str] | None = None
    images: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, index: np.ndarray) -> Split:
        return Split(
            targets=self.targets[index],
            paths=[self.paths[i] for i in index] if self.paths is not None else None,
            images=self.images[index] if self.images is not None else None,
        )


@dataclass
class Source:
    """What a SPEC resolved to."""

    spec: str
    kind: str  # "folder" | "csv" | "builtin"
    classes: list[str]
    task: str
    train: Split
    val: Split | None
    issues: list[tuple[str, str]] = field(default_factory=list)


def _visible(name: str) -> bool:
    return not name.startswith(".") and name not in CLUTTER_DIRS


def list_class_folders(root: Path) -> list[str]:
    """Class subfolders of `root`, sorted by name, clutter excluded."""
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and _visible(e.name))


def list_images(folder: Path) -> list[str]:
    """Image files under `folder` (recursively, following the order of sorted names), clutter excluded."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if _visible(d))
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if is_image_file(f))
    return found


def _scan_split(root: Path, classes: list[str]) -> tuple[list[str], np.ndarray]:
    paths, targets = [], []
    for index, name in enumerate(classes):
        files = list_images(root / name) if (root / name).is_dir() else []
        paths.extend(files)
        targets.extend([index] * len(files))
    return paths, np.asarray(targets, dtype=np.int64)


def stratified_split(targets: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, val)`` holding out `fraction` of every class (at least one image of classes with two
    or more), reproducible from `seed` alone. Multi-hot targets are split uniformly at random instead."""
    n = len(targets)
    rng = np.random.default_rng(seed)
    if fraction <= 0:
        return np.arange(n), np.arange(0)
    if targets.ndim == 2:
        perm = rng.permutation(n)
        k = min(n - 1, max(1, round(n * fraction))) if n > 1 else 0
        return np.sort(perm[k:]), np.sort(perm[:k])
    val = []
    for c in np.unique(targets):
        members = np.flatnonzero(targets == c)
        k = min(len(members) - 1, max(1, round(len(members) * fraction))) if len(members) > 1 else 0
        val.append(rng.permutation(members)[:k])
    val_idx = np.sort(np.concatenate(val)) if val else np.arange(0)
    train_mask = np.ones(n, dtype=bool)
    train_mask[val_idx] = False
    return np.flatnonzero(train_mask), val_idx


def _check_task(task: str | None, classes: list[str], default: str, where: str) -> str:
    task = task or default
    if task not in TASKS:
        raise UserError(f"--task: must be one of {', '.join(TASKS)}, got {task!r}")
    if task == "binary" and len(classes) != 2:
        raise UserError(f"{where}: --task binary needs exactly 2 classes, found {len(classes)}")
    if len(classes) < 2 and task != "multilabel":
        raise UserError(f"{where}: a classifier needs at least 2 classes, found {len(classes)} ({', '.join(classes)})")
    return task


def folder_source(root: Path, cfg: DataConfig, task: str | None) -> Source:
    """Resolve an image folder (module docstring)."""
    val_root = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    train_root = root / "train" if (root / "train").is_dir() else root
    classes = list_class_folders(train_root)
    if not classes:
        raise UserError(f"{train_root}: no class subfolders (expected one folder of images per class)")
    task = _check_task(task, classes, "multiclass", str(root))
    if task == "multilabel":
        raise UserError(f"{root}: a folder of class subfolders is single-label; give a CSV list for --task multilabel")
    paths, targets = _scan_split(train_root, classes)
    for index, name in enumerate(classes):
        if not np.any(targets == index):
            log.warning("%s: class %r has no image files", train_root / name, name)
    if val_root is not None and train_root != root:
        extra = sorted(set(list_class_folders(val_root)) - set(classes))
        if extra:
            raise UserError(f"{val_root}: class folder(s) not in {train_root}: {', '.join(extra)}")
        vpaths, vtargets = _scan_split(val_root, classes)
        train, val = Split(targets, paths=paths), Split(vtargets, paths=vpaths)
    else:
        tr, va = stratified_split(targets, cfg.val_fraction, cfg.split_seed)
        split = Split(targets, paths=paths)
        train, val = split.subset(tr), (split.subset(va) if len(va) else None)
    if len(train) == 0:
        raise UserError(f"{train_root}: no image files found (extensions: jpg, jpeg, png, bmp, gif, webp, tif, tiff)")
    return Source(str(root), "folder", classes, task, train, val)


def csv_source(path: Path, cfg: DataConfig, task: str | None) -> Source:
    """Resolve a CSV list ``path,labels``; malformed rows are a UserError with their line number, listed files
    that do not exist are skipped as data issues."""
    base = path.parent
    rows: list[tuple[str, list[str]]] = []
    issues: list[tuple[str, str]] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            for row in reader:
                line = reader.line_num
                if not row or all(not c.strip() for c in row):
                    continue
                if line == 1 and [c.strip().lower() for c in row] in (["path", "labels"], ["path", "label"]):
                    continue
                if len(row) != 2:
                    raise UserError(f"{path}: line {line}: expected 2 columns (path,labels), found {len(row)}")
                file, labels = row[0].strip(), [s.strip() for s in row[1].split(cfg.label_sep) if s.strip()]
                if not file:
                    raise UserError(f"{path}: line {line}: empty path")
                if not labels:
                    raise UserError(f"{path}: line {line}: no label for {file}")
                if task in ("multiclass", "binary") and len(labels) > 1:
                    raise UserError(f"{path}: line {line}: {len(labels)} labels but --task {task} takes one")
                full = Path(file) if os.path.isabs(file) else base / file
                if not full.is_file():
                    issues.append((str(full), f"listed on line {line} of {path.name} but not found"))
                    continue
                rows.append((str(full), labels))
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not a UTF-8 text file ({exc.reason})") from None
    except csv.Error as exc:
        raise UserError(f"{path}: line {reader.line_num}: {exc}") from None
    if not rows:
        raise UserError(f"{path}: no usable rows (expected lines of path,labels)")
    classes = sorted({label for _, labels in rows for label in labels})
    multi = any(len(labels) > 1 for _, labels in rows)
    task = _check_task(task, classes, "multilabel" if multi else "multiclass", str(path))
    index = {c: i for i, c in enumerate(classes)}
    if task == "multilabel":
        targets = np.zeros((len(rows), len(classes)), dtype=np.float32)
        for i, (_, labels) in enumerate(rows):
            targets[i, [index[label] for label in labels]] = 1.0
    else:
        targets = np.asarray([index[labels[0]] for _, labels in rows], dtype=np.int64)
    split = Split(targets, paths=[p for p, _ in rows])
    tr, va = stratified_split(targets, cfg.val_fraction, cfg.split_seed)
    return Source(str(path), "csv", classes, task, split.subset(tr), split.subset(va) if len(va) else None, issues)


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8×8 digits as uint8 ``(1797, 1, 8, 8)`` (0..16 scaled to 0..255) and labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return images, d.target.astype(np.int64)


def builtin_source(name: str, cfg: DataConfig, task: str | None) -> Source:
    """Resolve a built-in dataset name, downloading it on first use."""
    if name == "digits":
        images, targets = digits_arrays()
        classes = [str(i) for i in range(10)]
        task = _check_task(task, classes, "multiclass", name)
        tr, va = stratified_split(targets, cfg.val_fraction, cfg.split_seed)
        split = Split(targets, images=images)
        return Source(name, "builtin", classes, task, split.subset(tr), split.subset(va) if len(va) else None)
    from imgcls.data.download import load_builtin

    arrays = load_builtin(name, mirror=cfg.mirror)
    task = _check_task(task, arrays.classes, "multiclass", name)
    if task == "multilabel":
        raise UserError(f"{name}: is single-label; --task multilabel needs a CSV list")
    return Source(
        name,
        "builtin",
        arrays.classes,
        task,
        Split(arrays.train_targets, images=arrays.train_images),
        Split(arrays.test_targets, images=arrays.test_images),
    )


def resolve_source(spec: str | os.PathLike, cfg: DataConfig, task: str | None = None) -> Source:
    """Resolve `spec` (module docstring) into a `Source`.

    Raises:
        UserError: unknown name, missing path, no classes, malformed CSV.
    """
    text = str(spec)
    if text in BUILTINS:
        return builtin_source(text, cfg, task)
    path = Path(text).expanduser()
    if path.is_dir():
        return folder_source(path, cfg, task)
    if path.is_file() and path.suffix.lower() in (".csv", ".tsv", ".txt"):
        return csv_source(path, cfg, task)
    if path.exists():
        raise UserError(f"--data {text}: expected a folder, a .csv list or one of {', '.join(BUILTINS)}")
    raise UserError(f"--data {text}: no such folder or file, and not a built-in set ({', '.join(BUILTINS)})")


__all__ = ["BUILTINS", "Source", "Split", "digits_arrays", "list_images", "resolve_source", "stratified_split"]
