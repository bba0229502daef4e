"""What a run records about its data: ``config.json`` keeps ``data.spec`` absolute, so the run is evaluated (and
resumed) from any working directory; a built-in name keeps meaning the built-in set (the rule written in
``imgcls.engine.train.absolute_spec``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from imgcls.cli import main
from imgcls.engine.train import absolute_spec


def _photo_folder(root: Path, per_class: int = 10, size: int = 32) -> Path:
    rng = np.random.default_rng(0)
    for i, name in enumerate(("a", "b")):
        (root / name).mkdir(parents=True)
        for j in range(per_class):
            pixels = rng.integers(0, 160, size=(size, size, 3), dtype=np.uint8)
            pixels[..., i] += 90
            Image.fromarray(pixels).save(root / name / f"{j}.png")
    return root


def _quick(*settings: str) -> list[str]:
    base = ["train.report=false", "train.progress=none", "train.save=last", "data.val_fraction=0.3", *settings]
    return ["--epochs", "1", "--batch-size", "4", *[item for s in base for item in ("--set", s)]]


def test_absolute_spec_rule(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "digits").mkdir()
    assert absolute_spec("digits") == "digits"  # the built-in set, even beside a folder of that name
    assert absolute_spec("./digits") == str(tmp_path / "digits")
    assert absolute_spec("photos/../photos") == str(tmp_path / "photos")


def test_a_relative_data_folder_is_recorded_absolute_and_the_run_evaluates_from_elsewhere(
    tmp_path, monkeypatch, capsys
):
    _photo_folder(tmp_path / "work" / "photos")
    monkeypatch.chdir(tmp_path / "work")
    argv = ["train", "--data", "photos", "--model", "lenet5", "--out", "run", *_quick()]
    assert main(argv) == 0
    config = json.loads((tmp_path / "work" / "run" / "config.json").read_text())
    assert config["data"]["spec"] == str(tmp_path / "work" / "photos")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    capsys.readouterr()
    assert main(["eval", "--run", str(tmp_path / "work" / "run"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_samples"] == 6  # the run's own validation split, found again


def test_digits_means_the_bundled_set_even_beside_a_digits_folder(tmp_path, monkeypatch):
    _photo_folder(tmp_path / "digits")  # two classes, "a" and "b"
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", "digits", "--model", "lenet5", "--out", "run", *_quick()]) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data"]["spec"] == "digits"
    assert config["run"]["classes"] == [str(d) for d in range(10)]
