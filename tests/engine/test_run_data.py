"""What a run records about its data: ``config.json`` keeps ``data.spec`` absolute, so the run is evaluated (and
resumed) from any working directory; a built-in name keeps meaning the built-in set (the rule written in
``imgcls.engine.train.absolute_spec``); ``--resume`` refuses data whose fingerprint (``Data.fingerprint``) differs
from the checkpoint's, and takes the same files from another folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
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


def _files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_resume_refuses_data_that_changed_and_accepts_the_same_data_moved(tmp_path, capsys):
    photos = _photo_folder(tmp_path / "photos")
    run = tmp_path / "run"
    argv = ["train", "--data", str(photos), "--model", "lenet5", "--out", str(run), *_quick()]
    assert main([*argv, "--set", f"data.cache_dir={tmp_path / 'cache'}"]) == 0
    config = json.loads((run / "config.json").read_text())
    checkpoint = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert config["run"]["data_fingerprint"] == checkpoint["data_fingerprint"]
    assert len(checkpoint["data_fingerprint"]) == 32

    moved = tmp_path / "elsewhere" / "photos"  # the same files in another folder: the same data
    shutil.copytree(photos, moved)
    before = _files(run)
    pixels = np.asarray(Image.open(photos / "a" / "0.png")).copy()
    Image.fromarray(pixels[:, ::-1].copy()).save(photos / "a" / "10.png")  # one photo more in class a
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("imgcls: error:")]
    assert errors == [
        f"imgcls: error: --resume: the data of {photos} is not what {run / 'checkpoints' / 'last.pt'} trained on "
        f"(fingerprint {errors[0].split('fingerprint ')[1][:32]}, the checkpoint's {checkpoint['data_fingerprint']}: "
        "a file was added, removed, replaced or relabelled); resume with the same data, or start a new run"
    ]
    assert errors[0].split("fingerprint ")[1][:32] != checkpoint["data_fingerprint"]
    assert _files(run) == before  # nothing of the run was touched

    assert main(["train", "--data", str(moved), "--out", str(run), "--resume", "--epochs", "2"]) == 0
    assert len((run / "metrics.csv").read_text().splitlines()) == 3  # header and two epochs
