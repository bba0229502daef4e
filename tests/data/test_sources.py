"""Folder, CSV and built-in sources: class order, clutter, splits, CSV errors with line numbers."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
from PIL import Image

from imgcls.data.config import DataConfig
from imgcls.data.sources import resolve_source, stratified_split
from imgcls.errors import UserError


def _img(path, value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 6), (value, value, value)).save(path)


def test_train_val_folder_with_clutter(tmp_path):
    for split in ("train", "val"):
        for cls in ("zebra", "Ant", "bee"):
            _img(tmp_path / split / cls / "a.png")
    _img(tmp_path / "train" / "bee" / "UPPER.JPG")
    _img(tmp_path / "train" / "bee" / "nested" / "deep.png")
    (tmp_path / "train" / "bee" / ".DS_Store").write_bytes(b"\0\0")
    _img(tmp_path / "train" / "bee" / ".hidden.png")
    (tmp_path / "train" / "bee" / "notes.txt").write_text("not an image")
    _img(tmp_path / "train" / "__MACOSX" / "x.png")
    _img(tmp_path / "train" / ".cache" / "y.png")
    src = resolve_source(tmp_path, DataConfig())
    assert src.classes == ["Ant", "bee", "zebra"]  # sorted by name (code-point order, like a sorted listdir)
    bee = [p for p, t in zip(src.train.paths, src.train.targets) if t == 1]
    assert sorted(p.rsplit("/", 1)[1] for p in bee) == ["UPPER.JPG", "a.png", "deep.png"]
    assert len(src.val) == 3 and src.val.targets.tolist() == [0, 1, 2]
    assert src.task == "multiclass"


def test_val_with_unknown_class_is_an_error(tmp_path):
    _img(tmp_path / "train" / "a" / "1.png")
    _img(tmp_path / "train" / "b" / "1.png")
    _img(tmp_path / "test" / "c" / "1.png")
    with pytest.raises(UserError, match="not in"):
        resolve_source(tmp_path, DataConfig())


def test_class_folders_alone_are_split_per_class(tmp_path):
    for cls, n in (("cat", 20), ("dog", 10)):
        for i in range(n):
            _img(tmp_path / cls / f"{i:02d}.png")
    cfg = DataConfig(val_fraction=0.2, split_seed=3)
    a, b = resolve_source(tmp_path, cfg), resolve_source(tmp_path, cfg)
    assert a.val.paths == b.val.paths  # reproducible
    assert np.bincount(a.val.targets).tolist() == [4, 2]  # stratified
    assert set(a.train.paths).isdisjoint(a.val.paths)
    assert len(a.train) + len(a.val) == 30
    other = resolve_source(tmp_path, DataConfig(val_fraction=0.2, split_seed=4))
    assert other.val.paths != a.val.paths


def test_stratified_split_keeps_one_of_each_class():
    targets = np.array([0, 0, 1, 1, 1, 2])
    tr, va = stratified_split(targets, 0.01, seed=0)
    assert sorted(targets[va].tolist()) == [0, 1]  # the singleton class 2 stays in training
    assert len(tr) + len(va) == 6


def test_empty_folder_and_empty_class(tmp_path, caplog):
    with pytest.raises(UserError, match="no class subfolders"):
        resolve_source(tmp_path, DataConfig())
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(UserError, match="no image files"):
        resolve_source(tmp_path, DataConfig())
    _img(tmp_path / "a" / "1.png")
    _img(tmp_path / "a" / "2.png")
    with caplog.at_level(logging.WARNING, logger="imgcls.data"):
        src = resolve_source(tmp_path, DataConfig())
    assert src.classes == ["a", "b"]
    assert any("'b' has no image files" in r.getMessage() for r in caplog.records)


def test_csv_multilabel(tmp_path):
    for name in ("x.png", "y.png", "sub/z.png"):
        _img(tmp_path / "imgs" / name)
    (tmp_path / "list.csv").write_text(
        "path,labels\nimgs/x.png,sky;sea\nimgs/y.png,sea\n\nimgs/sub/z.png,tree;sky\nimgs/missing.png,sky\n"
    )
    src = resolve_source(tmp_path / "list.csv", DataConfig(label_sep=";", val_fraction=0.0))
    assert src.classes == ["sea", "sky", "tree"] and src.task == "multilabel"
    assert src.train.targets.tolist() == [[1, 1, 0], [1, 0, 0], [0, 1, 1]]
    assert src.train.paths[0] == str(tmp_path / "imgs" / "x.png")  # relative to the CSV
    assert len(src.issues) == 1 and "line 6" in src.issues[0][1] and src.issues[0][0].endswith("missing.png")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("path,labels\na.png,cat\nb.png,cat,extra\n", "line 3: expected 2 columns"),
        ("a.png,cat\nb.png,\n", "line 2: no label for b.png \\(--task multiclass"),
        ("a.png,cat\n,dog\n", "line 2: empty path"),
        ('a.png,cat\nb.png,"big, cat"\n', "line 2: label 'big,' of 'big, cat' ends with ','"),
    ],
)
def test_csv_errors_name_the_line(tmp_path, text, message):
    _img(tmp_path / "a.png")
    _img(tmp_path / "b.png")
    (tmp_path / "l.csv").write_text(text)
    task = "multiclass" if "--task" in message else None
    with pytest.raises(UserError, match=message) as info:
        resolve_source(tmp_path / "l.csv", DataConfig(), task=task)
    assert str(tmp_path / "l.csv") in str(info.value)


def test_digits_builtin():
    src = resolve_source("digits", DataConfig(val_fraction=0.1))
    assert src.classes == [str(i) for i in range(10)]
    assert len(src.train) + len(src.val) == 1797
    assert src.train.images.shape[1:] == (1, 8, 8) and src.train.images.dtype == np.uint8
    assert src.train.images.max() == 255


def test_unknown_spec(tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        resolve_source(tmp_path / "nope", DataConfig())
    with pytest.raises(UserError, match="binary needs exactly 2"):
        resolve_source("digits", DataConfig(), task="binary")


def test_csv_row_without_labels_is_a_multilabel_negative(tmp_path, caplog):
    # Issue 11 item 3: an image showing none of the classes is valid multi-label data.
    for name in ("a.png", "b.png", "c.png", "d.png"):
        _img(tmp_path / name)
    (tmp_path / "l.csv").write_text("a.png,cat dog\nb.png,\nc.png,dog\nd.png,\n")
    with caplog.at_level(logging.WARNING, logger="imgcls.data"):
        src = resolve_source(tmp_path / "l.csv", DataConfig(val_fraction=0.0))
    assert src.task == "multilabel" and src.classes == ["cat", "dog"]
    assert src.train.targets.tolist() == [[1, 1], [0, 0], [0, 1], [0, 0]]
    assert any("multi-label list (line 1 has 2 labels" in r.getMessage() for r in caplog.records)  # not silent


def test_single_label_task_keeps_the_whole_field_and_tsv_uses_tabs(tmp_path):
    for name in ("a.png", "b.png", "c, d.png"):
        _img(tmp_path / name)
    (tmp_path / "l.csv").write_text('a.png,"big, cat"\nb.png,small dog\n"c, d.png",small dog\n')
    src = resolve_source(tmp_path / "l.csv", DataConfig(val_fraction=0.0), task="multiclass")
    assert src.classes == ["big, cat", "small dog"] and src.train.targets.tolist() == [0, 1, 1]
    # .tsv: tab-separated, so commas belong to names (before: split on commas, "expected 2 columns")
    (tmp_path / "l.tsv").write_text("path\tlabels\nc, d.png\tsea,side\na.png\tsky\n")
    tsv = resolve_source(tmp_path / "l.tsv", DataConfig(val_fraction=0.0, label_sep=" "))
    assert tsv.classes == ["sea,side", "sky"] and tsv.train.paths[0].endswith("c, d.png")


def test_duplicates_are_dropped_and_reported(tmp_path):
    # Issue 19 class 4: the same file twice in a CSV (relative and absolute path) must not reach both splits.
    for i in range(6):
        _img(tmp_path / f"{i}.png", value=i * 20)
    rows = [f"{i}.png,{'a' if i % 2 else 'b'}" for i in range(6)] + [f"{tmp_path / '2.png'},b", "./2.png,b"]
    (tmp_path / "l.csv").write_text("\n".join(rows) + "\n")
    src = resolve_source(tmp_path / "l.csv", DataConfig(val_fraction=0.5))
    everything = src.train.paths + src.val.paths
    assert len(everything) == 6 and len({os.path.realpath(p) for p in everything}) == 6
    assert sorted(r.split(";")[0] for _, r in src.issues) == [f"same file as {tmp_path / '2.png'}"] * 2
    # a file of train/ linked into val/ (or hard-linked) stays in validation only
    for split in ("train", "val"):
        for c in ("x", "y"):
            _img(tmp_path / "f" / split / c / f"{split}.png", value=99 if split == "val" else 3)
    os.symlink(tmp_path / "f" / "val" / "x" / "val.png", tmp_path / "f" / "train" / "x" / "leak.png")
    os.link(tmp_path / "f" / "val" / "y" / "val.png", tmp_path / "f" / "train" / "y" / "hard.png")
    folder = resolve_source(tmp_path / "f", DataConfig())
    assert sorted(os.path.basename(p) for p in folder.train.paths) == ["train.png", "train.png"]
    assert len(folder.val) == 2 and {os.path.basename(p) for p, _ in folder.issues} == {"leak.png", "hard.png"}
    assert all("in the validation split" in r for _, r in folder.issues)


def test_symlink_loop_is_not_followed(tmp_path):
    for c in ("a", "b"):
        for i in range(5):
            _img(tmp_path / c / f"{i}.png", value=i)
    os.symlink(tmp_path / "a", tmp_path / "a" / "again")  # a loop: a/again -> a
    os.symlink(tmp_path, tmp_path / "b" / "up")  # a link to the data root
    src = resolve_source(tmp_path, DataConfig(val_fraction=0.2))
    assert len(src.train) + len(src.val) == 10  # before the fix: a/again/again/... 40 levels deep
    assert set(src.train.paths).isdisjoint(src.val.paths)


def test_dot_names_run_folders_and_pillow_formats(tmp_path):
    # Issue 19 class 8: a class folder named "..." is a class; AVIF/JPEG 2000 are images in folders as in predict.
    # Class 4: a run folder written inside the data (--out inside --data) does not become a class.
    _img(tmp_path / "..." / "1.png")
    _img(tmp_path / "..." / "2.png")
    _img(tmp_path / "jp" / "x.png")
    Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "jp" / "y.jp2")
    Image.new("RGB", (8, 8), (10, 200, 10)).save(tmp_path / "jp" / "z.avif")
    (tmp_path / "jp" / "notes.h5").write_bytes(b"\x89HDF\r\n\x1a\n")  # a Pillow stub format: not an image
    run = tmp_path / "runs" / "r1"
    (run / "report").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "metrics.csv").write_text("epoch\n")
    _img(run / "report" / "curves.png")
    _img(tmp_path / "jp" / "inner_run" / "report" / "plot.png")
    (tmp_path / "jp" / "inner_run" / "config.json").write_text("{}")
    (tmp_path / "jp" / "inner_run" / "model.json").write_text("{}")
    src = resolve_source(tmp_path, DataConfig(val_fraction=0.0))
    assert src.classes == ["...", "jp"]
    jp = sorted(os.path.basename(p) for p, t in zip(src.train.paths, src.train.targets) if t == 1)
    assert jp == ["x.png", "y.jp2", "z.avif"]
    from imgcls.data.reader import read_image

    assert read_image(tmp_path / "jp" / "z.avif").size == (8, 8)


def test_fingerprint_follows_the_data_not_its_place(tmp_path):
    from imgcls.data.sources import fingerprint

    for c in ("a", "b"):
        for i in range(3):
            _img(tmp_path / "d" / c / f"{i}.png", value=i)
    first = fingerprint(resolve_source(tmp_path / "d", DataConfig()))
    os.rename(tmp_path / "d", tmp_path / "moved")
    assert fingerprint(resolve_source(tmp_path / "moved", DataConfig())) == first
    os.rename(tmp_path / "moved" / "b", tmp_path / "moved" / "c")  # a renamed class: labels would shift
    assert fingerprint(resolve_source(tmp_path / "moved", DataConfig())) != first
    _img(tmp_path / "moved" / "a" / "9.png")
    assert fingerprint(resolve_source(tmp_path / "moved", DataConfig())) != first


def test_csv_row_pointing_at_a_folder_is_a_listed_issue(tmp_path):
    _img(tmp_path / "a.png")
    _img(tmp_path / "b.png")
    (tmp_path / "sub").mkdir()
    (tmp_path / "l.csv").write_text("a.png,x\nb.png,y\nsub,x\n")
    src = resolve_source(tmp_path / "l.csv", DataConfig(val_fraction=0.0))
    assert src.issues == [(str(tmp_path / "sub"), "listed on line 3 of l.csv but is a folder, not an image")]
