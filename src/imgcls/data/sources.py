"""Turn a ``--data SPEC`` into class names and the samples of each split (nothing is decoded here).

SPEC is one of:

* a folder with one subfolder per class inside ``train/`` plus ``val/`` (or ``test/``): those are the training
  and validation splits. With ``train/``, ``val/`` **and** ``test/`` the third is a separate test split
  (`Source.test`), never used for choosing a checkpoint, that the engine evaluates once at the end. A folder of
  class subfolders alone is split by a seeded, per-class stratified draw holding out ``val_fraction`` of each
  class;
* a CSV file ``path,labels`` (``.tsv``: tab-separated; ``.txt``: tabs when its first line has one; header
  optional; paths relative to the list). Labels are separated by ``label_sep``. A row with several labels, or
  with none (an image showing none of the classes), makes the list multi-label; that is said in a log line, and
  a label that looks like a mis-split list (``"big, cat"`` read with a space separator gives ``big,``) is an
  error naming the line. Under ``--task multiclass``/``binary`` the whole field is the one label;
* a built-in name: ``digits`` (scikit-learn's bundled 8×8 digits, offline), ``cifar10``, ``cifar100`` (fine
  labels; ``cifar100:coarse`` for the 20 superclasses), ``mnist``, ``fashion-mnist`` (downloaded once, see
  `imgcls.data.download`). Sets with an official test split use it for validation.

Classes are sorted by name (the class map is saved with the run). Image files are those with an extension of a
format Pillow decodes (`imgcls.data.reader.IMAGE_EXTENSIONS`, matched case-insensitively), so a folder accepts
what ``predict`` accepts. Hidden files and folders (a leading dot; a name of dots only such as ``...`` is not
hidden), ``__MACOSX``-style clutter and run folders (``config.json`` with ``model.json``, ``metrics.csv`` or
``checkpoints/``: ``--out`` inside ``--data``) are skipped.

Files are identified by what they are, not how they are named: symbolic links are followed, but a folder already
visited (a link loop, a link to a parent) is not entered again, and a file reached twice (listed twice in a CSV,
by a relative and an absolute path, through a link, or as a hard link) is kept once — in the held-out split when
it also appears in training — and each drop is reported as a data issue.

`eval_source` resolves only the split an evaluation needs; `fingerprint` summarises a source so that a resumed
run can check it still trains on the same data.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from imgcls.data.config import DataConfig
from imgcls.data.reader import IMAGE_EXTENSIONS, is_hidden, is_image_file
from imgcls.errors import UserError

log = logging.getLogger("imgcls.data")

BUILTINS = ("digits", "cifar10", "cifar100", "cifar100:coarse", "mnist", "fashion-mnist")
TASKS = ("multiclass", "binary", "multilabel")
EVAL_SPLITS = ("auto", "val", "test")
CLUTTER_DIRS = frozenset({"__MACOSX", "@eaDir", "$RECYCLE.BIN", "System Volume Information"})
SPLIT_DIRS = ("train", "val", "test")
_OTHER_SEPARATORS = ",;|\t"


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
    """What a SPEC resolved to. `root` is the folder relative paths are taken from (the fingerprint)."""

    spec: str
    kind: str  # "folder" | "csv" | "builtin"
    classes: list[str]
    task: str
    train: Split
    val: Split | None
    issues: list[tuple[str, str]] = field(default_factory=list)
    test: Split | None = None
    root: Path | None = None


# --------------------------------------------------------------------------------------------------------------
# Folders.


def _visible(name: str) -> bool:
    return not is_hidden(name) and name not in CLUTTER_DIRS


def is_run_folder(path: str | os.PathLike) -> bool:
    """Whether `path` is an imgcls run folder (its report PNGs must not become training images)."""
    p = Path(path)
    return (p / "config.json").is_file() and any((p / n).exists() for n in ("model.json", "metrics.csv", "checkpoints"))


def _holds_only_runs(path: str) -> bool:
    """A folder of run folders (``--out data/runs/r1``): nothing in it but runs and files that are not images."""
    try:
        entries = list(os.scandir(path))
    except OSError:
        return False
    runs = [e for e in entries if e.is_dir() and is_run_folder(e.path)]
    others = [e for e in entries if _visible(e.name) and (e.is_dir() or is_image_file(e.name)) and e not in runs]
    return bool(runs) and not others


def list_class_folders(root: Path) -> list[str]:
    """Class subfolders of `root`, sorted by name; clutter, run folders and folders of runs excluded."""
    names = []
    for entry in os.scandir(root):
        if not entry.is_dir() or not _visible(entry.name):
            continue
        if is_run_folder(entry.path) or _holds_only_runs(entry.path):
            log.warning("%s: run folder(s) inside the data, not a class; skipped", entry.path)
            continue
        names.append(entry.name)
    return sorted(names)


def _dir_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def list_images(folder: Path) -> list[str]:
    """Image files under `folder`, recursively in sorted order, following links to folders but entering each
    folder once (module docstring); clutter and run folders excluded."""
    found: list[str] = []
    entered = {_dir_id(str(folder))}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            full = os.path.join(dirpath, d)
            ident = _dir_id(full)
            if not _visible(d) or ident is None:
                continue
            if ident in entered:
                log.warning("%s: a link back to a folder already scanned (a loop); not followed", full)
                continue
            if is_run_folder(full):
                log.warning("%s: a run folder inside the data; skipped", full)
                continue
            entered.add(ident)
            keep.append(d)
        dirnames[:] = keep
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if is_image_file(f))
    return found


def _scan_split(root: Path, classes: list[str], index: dict[str, int] | None = None) -> tuple[list[str], np.ndarray]:
    """Files and class indices of the class folders `classes` under `root` (indices from `index` when given)."""
    index = index or {c: i for i, c in enumerate(classes)}
    paths, targets = [], []
    for name in classes:
        files = list_images(root / name) if (root / name).is_dir() else []
        paths.extend(files)
        targets.extend([index[name]] * len(files))
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


def _file_id(path: str) -> tuple[int, int] | str:
    try:
        st = os.stat(path)
    except OSError:
        return os.path.realpath(path)  # the reader reports it; still one entry per real path
    return st.st_dev, st.st_ino


def drop_duplicates(splits: list[tuple[str, Split]]) -> tuple[list[Split], list[tuple[str, str]]]:
    """Keep every file once over `splits` (earlier splits win; within a split the first occurrence).

    Args:
        splits: ``(name, split)`` in priority order, e.g. test, validation, training.

    Returns:
        The splits without the repeats, and ``(path, reason)`` for each file dropped.
    """
    seen: dict[tuple[int, int] | str, tuple[str, str]] = {}
    out, issues = [], []
    for name, split in splits:
        if split.paths is None:
            out.append(split)
            continue
        keep = []
        for i, p in enumerate(split.paths):
            ident = _file_id(p)
            if ident in seen:
                first, where = seen[ident]
                reason = f"same file as {first}" + ("" if where == name else f" in the {where} split")
                issues.append((p, reason + f"; dropped from the {name} split"))
                continue
            seen[ident] = (p, name)
            keep.append(i)
        out.append(split if len(keep) == len(split.paths) else split.subset(np.asarray(keep, dtype=np.int64)))
    if issues:
        log.warning("%d duplicate file(s) dropped (listed in data_issues.csv); first: %s (%s)", len(issues), *issues[0])
    return out, issues


def _layout(root: Path) -> dict[str, Path]:
    """Which of ``train/``, ``val/``, ``test/`` the folder has."""
    return {n: root / n for n in SPLIT_DIRS if (root / n).is_dir() and _visible(n)}


def _held_out_roots(root: Path) -> tuple[Path | None, Path | None]:
    """``(validation folder, separate test folder)`` of a folder with ``train/`` (module docstring)."""
    layout = _layout(root)
    if "val" in layout:
        return layout["val"], layout.get("test")
    return layout.get("test"), None


def _check_extra(held: Path, classes: list[str], train_root: Path) -> None:
    extra = sorted(set(list_class_folders(held)) - set(classes))
    if extra:
        raise UserError(f"{held}: class folder(s) not in {train_root}: {', '.join(extra)}")


def folder_source(root: Path, cfg: DataConfig, task: str | None) -> Source:
    """Resolve an image folder (module docstring)."""
    layout = _layout(root)
    train_root = layout.get("train", root)
    classes = list_class_folders(train_root)
    if train_root == root:
        classes = [c for c in classes if c not in layout]  # val/ or test/ without train/ are not classes
    if not classes:
        raise UserError(f"{train_root}: no class subfolders (expected one folder of images per class)")
    task = _check_task(task, classes, "multiclass", str(root))
    if task == "multilabel":
        raise UserError(f"{root}: a folder of class subfolders is single-label; give a CSV list for --task multilabel")
    paths, targets = _scan_split(train_root, classes)
    for index, name in enumerate(classes):
        if not np.any(targets == index):
            log.warning("%s: class %r has no image files", train_root / name, name)
    val_root, test_root = _held_out_roots(root) if train_root != root else (None, None)
    if val_root is not None:
        named = []
        for name, folder in (("test", test_root), ("validation", val_root)):
            if folder is not None:
                _check_extra(folder, classes, train_root)
                held_paths, held_targets = _scan_split(folder, classes)
                named.append((name, Split(held_targets, paths=held_paths)))
        splits, issues = drop_duplicates([*named, ("training", Split(targets, paths=paths))])
        test = splits[0] if test_root is not None else None
        val, train = splits[-2], splits[-1]
    else:
        (split,), issues = drop_duplicates([("training", Split(targets, paths=paths))])
        tr, va = stratified_split(split.targets, cfg.val_fraction, cfg.split_seed)
        train, val, test = split.subset(tr), (split.subset(va) if len(va) else None), None
    if len(train) == 0:
        raise UserError(f"{train_root}: no image files found (extensions: {_extensions_hint()})")
    return Source(str(root), "folder", classes, task, train, val, issues, test=test, root=root)


def _extensions_hint() -> str:
    common = [".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".avif", ".jp2"]
    return ", ".join(e[1:] for e in common if e in IMAGE_EXTENSIONS) + ", ..."


# --------------------------------------------------------------------------------------------------------------
# CSV lists.


def _delimiter(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".tsv":
        return "\t"
    if suffix == ".txt":
        try:
            with open(path, encoding="utf-8-sig", errors="replace") as f:
                first = next((line for line in f if line.strip()), "")
        except OSError as exc:
            raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None
        return "\t" if "\t" in first else ","
    return ","


def _split_labels(field_text: str, cfg: DataConfig, task: str | None, where: str) -> list[str]:
    """The labels of one row (module docstring: one label under a single-label task, else split)."""
    text = field_text.strip()
    if task in ("multiclass", "binary"):
        return [text] if text else []
    labels = [s.strip() for s in text.split(cfg.label_sep) if s.strip()]
    for label in labels:
        for ch in _OTHER_SEPARATORS:
            if ch != cfg.label_sep and (label.startswith(ch) or label.endswith(ch)):
                raise UserError(
                    f"{where}: label {label!r} of {text!r} ends with {ch!r} but labels are split on "
                    f"{cfg.label_sep!r}; set data.label_sep={ch!r} for a list of labels, or --task multiclass "
                    f"if {text!r} is one class name"
                )
    return labels


def _read_rows(path: Path, cfg: DataConfig, task: str | None) -> tuple[list, list[tuple[str, str]]]:
    """``[(file, labels, line)]`` of the list and the rows skipped as data issues."""
    base = path.parent
    rows: list[tuple[str, list[str], int]] = []
    issues: list[tuple[str, str]] = []
    reader = None
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=_delimiter(path))
            for row in reader:
                line = reader.line_num
                if not row or all(not c.strip() for c in row):
                    continue
                if line == 1 and [c.strip().lower() for c in row] in (["path", "labels"], ["path", "label"]):
                    continue
                if len(row) != 2:
                    raise UserError(f"{path}: line {line}: expected 2 columns (path,labels), found {len(row)}")
                file = row[0].strip()
                if not file:
                    raise UserError(f"{path}: line {line}: empty path")
                labels = _split_labels(row[1], cfg, task, f"{path}: line {line}")
                if not labels and task in ("multiclass", "binary"):
                    raise UserError(f"{path}: line {line}: no label for {file} (--task {task} takes one per row)")
                full = Path(file) if os.path.isabs(file) else base / file
                if full.is_dir():
                    issues.append((str(full), f"listed on line {line} of {path.name} but is a folder, not an image"))
                elif not full.is_file():
                    issues.append((str(full), f"listed on line {line} of {path.name} but not found"))
                else:
                    rows.append((str(full), labels, line))
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not a UTF-8 text file ({exc.reason})") from None
    except csv.Error as exc:
        raise UserError(f"{path}: line {reader.line_num if reader else 0}: {exc}") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return rows, issues


def csv_source(path: Path, cfg: DataConfig, task: str | None) -> Source:
    """Resolve a CSV list ``path,labels``; malformed rows are a UserError with their line number, listed files
    that do not exist (or are folders) are skipped as data issues, repeats are dropped (module docstring)."""
    rows, issues = _read_rows(path, cfg, task)
    if not rows:
        raise UserError(f"{path}: no usable rows (expected lines of path,labels)")
    classes = sorted({label for _, labels, _ in rows for label in labels})
    odd = next(((labels, line) for _, labels, line in rows if len(labels) != 1), None)
    if task is None and odd is not None:
        shown = ", ".join(odd[0]) if odd[0] else "none"
        log.warning(
            "%s: multi-label list (line %d has %d labels: %s); pass --task multiclass if each row is one class",
            path,
            odd[1],
            len(odd[0]),
            shown,
        )
    task = _check_task(task, classes, "multilabel" if odd is not None else "multiclass", str(path))
    index = {c: i for i, c in enumerate(classes)}
    if task == "multilabel":
        targets = np.zeros((len(rows), len(classes)), dtype=np.float32)
        for i, (_, labels, _) in enumerate(rows):
            targets[i, [index[label] for label in labels]] = 1.0
    else:
        targets = np.asarray([index[labels[0]] for _, labels, _ in rows], dtype=np.int64)
    (split,), dupes = drop_duplicates([("training", Split(targets, paths=[p for p, _, _ in rows]))])
    tr, va = stratified_split(split.targets, cfg.val_fraction, cfg.split_seed)
    val = split.subset(va) if len(va) else None
    return Source(str(path), "csv", classes, task, split.subset(tr), val, issues + dupes, root=path.parent)


# --------------------------------------------------------------------------------------------------------------
# Built-in sets.


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


# --------------------------------------------------------------------------------------------------------------
# Evaluation: only the split that is evaluated.


@dataclass
class EvalSource:
    """The one split an evaluation reads: `samples`, named `split` (``"val"``, ``"test"`` or ``"all"``)."""

    spec: str
    kind: str
    classes: list[str]
    task: str
    split: str
    samples: Split
    issues: list[tuple[str, str]] = field(default_factory=list)


def eval_source(
    spec: str | os.PathLike,
    cfg: DataConfig,
    *,
    split: str = "auto",
    task: str | None = None,
    classes: list[str] | None = None,
) -> EvalSource:
    """Resolve the samples one evaluation reads, listing (never decoding) only what it needs.

    Args:
        spec: folder, CSV list or built-in name.
        cfg: the data settings (the split fraction and seed matter for ``split="val"``).
        split: ``"val"``: the validation split exactly as training saw it (a seeded fraction of class folders
            alone or of a CSV list, ``val/``, the official test set of a built-in). ``"test"``: a separate test
            split (``test/``, or a built-in's official test set). ``"auto"``: the data as given — a folder's
            held-out folder (``test/`` when there is one, else ``val/``), otherwise every image (a folder of class
            subfolders, a ``train/``-only folder, a CSV list, ``digits``), a built-in's official test set.
        task: the run's task (checked against the data).
        classes: the run's class map: the data's classes must be among them and take their indices (a folder may
            hold fewer classes than the run knows). None: the data's own sorted classes.

    Returns:
        `EvalSource`.

    Raises:
        UserError: unknown split, no such split in the data, classes the run does not know, no images.
    """
    if split not in EVAL_SPLITS:
        raise UserError(f"evaluation split: must be one of {', '.join(EVAL_SPLITS)}, got {split!r}")
    text = str(spec)
    if text in BUILTINS or split == "val":
        return _eval_resolved(text, cfg, split, task, classes)
    path = Path(text).expanduser()
    if path.is_dir():
        return _eval_folder(path, cfg, split, task, classes)
    if split == "test":
        raise UserError(f"--data {text}: a CSV list has no test split; give a folder with test/")
    source = resolve_source(spec, replace(cfg, val_fraction=0.0), task)
    picked = _reindex(source.classes, source.train, classes, text, source.task)
    return EvalSource(text, source.kind, classes or source.classes, source.task, "all", picked, source.issues)


def _eval_resolved(text: str, cfg: DataConfig, split: str, task: str | None, classes: list[str] | None) -> EvalSource:
    """Built-in sets, and the validation split of anything: the split `resolve_source` makes (listing only)."""
    if text == "digits" and split == "test":
        raise UserError("digits: has no test split (evaluate split 'val' or 'auto')")
    every = text == "digits" and split == "auto"
    source = resolve_source(text, replace(cfg, val_fraction=0.0) if every else cfg, task)
    if every:
        chosen, name = source.train, "all"
    elif text in BUILTINS and text != "digits":
        chosen, name = source.val, "test"  # the official test set, also the built-in's validation split
    else:
        chosen, name = source.val, "val"
    if chosen is None or not len(chosen):
        raise UserError(f"{text}: no validation images to evaluate (no val/ folder, data.val_fraction 0 or too few)")
    picked = _reindex(source.classes, chosen, classes, text, source.task)
    return EvalSource(text, source.kind, classes or source.classes, source.task, name, picked, source.issues)


def _eval_folder(root: Path, cfg: DataConfig, split: str, task: str | None, classes: list[str] | None) -> EvalSource:
    layout = _layout(root)
    if split == "test":
        if "test" not in layout:
            raise UserError(f"{root}: no test/ folder to evaluate")
        folder, name = layout["test"], "test"
    elif "test" in layout or "val" in layout:
        folder, name = layout.get("test", layout.get("val")), "test" if "test" in layout else "val"
    else:
        folder, name = layout.get("train", root), "all"
    found = list_class_folders(folder)
    if folder == root:
        found = [c for c in found if c not in layout]
    known = classes or found
    unknown = sorted(set(found) - set(known))
    if unknown:
        raise UserError(f"{folder}: class folder(s) the run does not know: {', '.join(unknown)}")
    if not found:
        raise UserError(f"{folder}: no class subfolders (expected one folder of images per class)")
    task = _check_task(task, known, "multiclass", str(root))
    paths, targets = _scan_split(folder, found, {c: i for i, c in enumerate(known)})
    (samples,), issues = drop_duplicates([(name, Split(targets, paths=paths))])
    if not len(samples):
        raise UserError(f"{folder}: no image files found (extensions: {_extensions_hint()})")
    return EvalSource(str(root), "folder", list(known), task, name, samples, issues)


def _reindex(have: list[str], split: Split, classes: list[str] | None, where: str, task: str) -> Split:
    """`split`'s targets (indices into `have`) as indices into `classes` (the run's map)."""
    if classes is None or list(classes) == list(have):
        return split
    unknown = sorted(set(have) - set(classes))
    if unknown:
        raise UserError(f"{where}: class(es) the run does not know: {', '.join(unknown)}")
    position = np.asarray([list(classes).index(c) for c in have], dtype=np.int64)
    if task == "multilabel":
        targets = np.zeros((len(split), len(classes)), dtype=np.float32)
        targets[:, position] = split.targets
    else:
        targets = position[split.targets]
    return Split(targets, paths=split.paths, images=split.images)


# --------------------------------------------------------------------------------------------------------------
# Fingerprint.


def fingerprint(source: Source) -> str:
    """A SHA-256 (hex, 32 digits) of what training learns from: kind, task, classes and, per split, every file's
    path relative to the data root, size and target (built-in sets: image shape and targets).

    The same data moved to another folder keeps its fingerprint; a renamed class, an added, removed, replaced or
    relabelled file changes it. Modification times are left out (a copy changes them, not the data).
    """
    h = hashlib.sha256(json.dumps([source.kind, source.task, list(source.classes)]).encode())
    root = str(source.root) if source.root is not None else None
    for name, split in (("train", source.train), ("val", source.val), ("test", source.test)):
        h.update(f"\n{name}\n".encode())
        if split is None:
            continue
        h.update(np.ascontiguousarray(split.targets).tobytes())
        if split.images is not None:
            h.update(json.dumps(list(split.images.shape)).encode())
        for p in split.paths or []:
            try:
                size = os.stat(p).st_size
            except OSError:
                size = -1
            rel = os.path.relpath(p, root) if root else p
            h.update(f"{rel}\0{size}\n".encode())
    return h.hexdigest()[:32]


__all__ = [
    "BUILTINS",
    "EVAL_SPLITS",
    "EvalSource",
    "Source",
    "Split",
    "digits_arrays",
    "drop_duplicates",
    "eval_source",
    "fingerprint",
    "is_run_folder",
    "list_images",
    "resolve_source",
    "stratified_split",
]
