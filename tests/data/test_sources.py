"""Folder, CSV and built-in sources: class order, clutter, splits, CSV errors with line numbers."""

from __future__ import annotations

import logging

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
        ("a.png,cat\nb.png,\n", "line 2: no label"),
        ("a.png,cat\n,dog\n", "line 2: empty path"),
        ("a.png,cat dog\n", "line 1: 2 labels but --task multiclass"),
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
