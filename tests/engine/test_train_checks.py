"""What the loop promises beyond "it trains" (issues 11, 14, 19): frozen really is frozen, the shipped weights are
chosen by the task's metric, the learning rate logged is the one used, and a refused or failed start leaves
nothing behind. Every run is a real `imgcls train` through the command line on small real data."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgcls.cli import build_parser, main
from imgcls.cli.train_cmd import build_config
from imgcls.engine.checkpoint import load_checkpoint
from imgcls.models import create_model


def _photo_folder(root: Path, classes=("a", "b"), per_class: int = 12, size: int = 32) -> Path:
    """Class subfolders of small PNGs: class i is brighter in channel i, plus noise (learnable, not trivial)."""
    rng = np.random.default_rng(0)
    for i, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for j in range(per_class):
            pixels = rng.integers(0, 160, size=(size, size, 3), dtype=np.uint8)
            pixels[..., i % 3] += 90
            Image.fromarray(pixels).save(root / name / f"{j}.png")
    return root


def _multilabel_csv(root: Path, count: int = 48) -> Path:
    """``path,labels`` rows with 0-2 of three labels each; label k adds a bright square in quadrant k."""
    rng = np.random.default_rng(1)
    root.mkdir(parents=True)
    lines = ["path,labels"]
    for j in range(count):
        pixels = rng.integers(0, 80, size=(32, 32, 3), dtype=np.uint8)
        labels = [k for k in range(3) if rng.random() < 0.4] or [int(rng.integers(0, 3))]
        for k in labels:
            y, x = divmod(k, 2)
            pixels[16 * y : 16 * y + 16, 16 * x : 16 * x + 16] = 230
        Image.fromarray(pixels).save(root / f"{j}.png")
        lines.append(f"{j}.png," + " ".join(f"l{k}" for k in labels))
    (root / "list.csv").write_text("\n".join(lines) + "\n")
    return root / "list.csv"


def _quiet(*extra: str) -> list[str]:
    settings = ["train.report=false", "train.progress=none", "schedule.warmup_epochs=0", *extra]
    return [item for s in settings for item in ("--set", s)]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return _photo_folder(tmp_path_factory.mktemp("photos") / "data")


def _initial_weights(tmp_path: Path, num_classes: int = 2) -> tuple[Path, dict]:
    torch.manual_seed(7)
    net = create_model("resnet18_cifar", num_classes=num_classes)
    with torch.no_grad():  # running statistics far from what the data gives, so an update cannot hide
        for name, buf in net.named_buffers():
            if name.endswith("running_mean"):
                buf.uniform_(-1, 1)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    path = tmp_path / "init.pth"
    torch.save(state, path)
    return path, state


def test_freeze_backbone_leaves_every_backbone_parameter_and_buffer_bit_identical(tmp_path, photos):
    weights, before = _initial_weights(tmp_path)
    run = tmp_path / "probe"
    argv = ["train", "--data", str(photos), "--model", "resnet18_cifar", "--weights", str(weights), "--out", str(run)]
    argv += ["--freeze-backbone", "--epochs", "1", "--batch-size", "8", "--lr", "0.05", "--precision", "fp32"]
    argv += _quiet("train.save=last", "data.val_fraction=0.25", f"data.cache_dir={tmp_path / 'cache'}")
    assert main(argv) == 0
    after = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    head = {"fc.weight", "fc.bias"}
    assert set(after) == set(before)
    for name, tensor in before.items():
        if name in head:
            assert not torch.equal(after[name], tensor), f"{name} did not learn"
        else:
            assert torch.equal(after[name], tensor), f"{name} changed under --freeze-backbone"
    assert any(n.endswith("running_mean") for n in before)  # the buffers were part of the comparison


@pytest.mark.slow
def test_staged_freezing_freezes_batchnorm_statistics_too(tmp_path, photos):
    # Same seed, constant lr: epoch 1 is the same in both runs, so what freeze_after stops after epoch 1 (the stem
    # conv and its BatchNorm, parameters and running statistics) must end the 2-epoch run as the 1-epoch run left it.
    weights, _ = _initial_weights(tmp_path)

    def run(name: str, epochs: int) -> dict:
        out = tmp_path / name
        argv = ["train", "--data", str(photos), "--model", "resnet18_cifar", "--weights", str(weights)]
        argv += ["--out", str(out), "--epochs", str(epochs), "--batch-size", "8", "--precision", "fp32"]
        argv += _quiet("schedule.name=constant", "train.save=last", "train.freeze_after={conv1: 1, bn1: 1}")
        argv += _quiet("data.val_fraction=0.25", f"data.cache_dir={tmp_path / 'cache'}", "train.val_every=0")
        assert main(argv) == 0
        return load_checkpoint(out / "checkpoints" / "last.pt")["model"]

    one, two = run("one", 1), run("two", 2)
    frozen = [k for k in one if k.startswith(("conv1.", "bn1."))]
    assert {"bn1.running_mean", "bn1.running_var", "bn1.weight", "conv1.weight"} <= set(frozen)
    for name in frozen:
        assert torch.equal(one[name], two[name]), name
    assert not torch.equal(one["layer1.0.bn1.running_mean"], two["layer1.0.bn1.running_mean"])


def test_multilabel_run_ships_the_best_epoch_by_map_and_logs_map(tmp_path):
    listing = _multilabel_csv(tmp_path / "ml")
    run = tmp_path / "run"
    argv = ["train", "--data", str(listing), "--model", "lenet5", "--out", str(run), "--epochs", "3"]
    argv += ["--batch-size", "8", "--lr", "0.05", "--precision", "fp32", "--task", "multilabel"]
    argv += _quiet("data.val_fraction=0.25", f"data.cache_dir={tmp_path / 'cache'}")
    argv[argv.index("train.report=false")] = "train.report=true"
    assert main(argv) == 0
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    maps = [float(r["val_mAP"]) for r in rows]
    assert len(maps) == 3 and all(0 <= m <= 100 for m in maps)
    best = 1 + int(np.argmax(maps))
    selection = json.loads((run / "config.json").read_text())["run"]["selection"]
    assert (selection["metric"], selection["best_epoch"], selection["shipped_epoch"]) == ("mAP", best, best)
    assert selection["best_value"] == pytest.approx(max(maps), abs=1e-4)
    assert selection["last_epoch"] == 3 and selection["last"]["epoch"] == 3
    # The shipped weights, evaluated again, score the best epoch's mAP.
    assert json.loads((run / "eval.json").read_text())["mAP"] == pytest.approx(max(maps), abs=1e-3)


def _lr_run(tmp_path: Path, name: str, *settings: str) -> list[dict]:
    run = tmp_path / name
    argv = ["train", "--recipe", "digits", "--epochs", "2", "--batch-size", "128", "--out", str(run), "--seed", "0"]
    argv += ["--lr", "0.1", *_quiet("train.val_every=0", *settings)]
    assert main(argv) == 0
    return list(csv.DictReader((run / "metrics.csv").open()))


def test_lr_column_is_the_rate_the_steps_used(tmp_path):
    # A step schedule that divides by 10 after epoch 1: epoch 1 ran at 0.1 (the old column said 0.01, the value
    # after its last step), epoch 2 at 0.01.
    rows = _lr_run(tmp_path, "step", "schedule.name=step", "schedule.step_size=1", "schedule.gamma=0.1")
    assert [float(r["lr_mean"]) for r in rows] == pytest.approx([0.1, 0.01])
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.1, 0.01])
    assert [float(r["lr_max"]) for r in rows] == pytest.approx([0.1, 0.01])
    # One-cycle over 2 x 12 steps, peak at step 0.25 * 24 - 1 = 5: the peak 0.1 itself appears in lr_max.
    rows = _lr_run(tmp_path, "onecycle", "schedule.name=onecycle", "schedule.pct_start=0.25")
    assert float(rows[0]["lr_max"]) == pytest.approx(0.1, rel=1e-6)
    assert float(rows[1]["lr_max"]) < 0.1 and float(rows[0]["lr_mean"]) < 0.1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "resnet18_cifar", "--set", "model.kwargs={pool: stochastic}"], "model.kwargs"),
        (["--model", "alexnet", "--image-size", "16"], "--image-size 16: too small for alexnet (the smallest it takes"),
        (["--model", "lenet5", "--image-size", "0"], "model.image_size: must be in [1, 4096], got 0"),
        (["--model", "lenet5", "--lr", "nan"], "optim.lr: must be a finite number"),
        (["--model", "lenet5", "--lr", "inf"], "optim.lr: must be a finite number"),
        (["--model", "lenet5", "--set", "optim.clip_grad_norm=-1"], "optim.clip_grad_norm: must be > 0, got -1"),
        (["--model", "lenet5", "--set", "train.seed=[1, 2]"], "train.seed: expected an integer, got [1, 2]"),
        (["--model", "lenet5", "--set", "train.seed=null"], "train.seed: expected an integer, got null"),
        (["--model", "lenet5", "--set", "optim.lr=fast"], "optim.lr: expected a number, got 'fast'"),
        (["--model", "lenet5", "--set", "optim.betas=0.9"], "optim.betas: expected 2 values, got 0.9"),
        (["--model", "lenet5", "--set", "train.freeze_after=[c1]"], "train.freeze_after: expected a mapping"),
        (["--model", "lenet5", "--set", "schedule.name=cosin"], "schedule.name: must be one of constant, step"),
        (["--model", "lenet5", "--set", "train.select_metric=mAP"], "train.select_metric mAP: needs multi-label"),
        (["--model", "lenet5", "--weights", "{tmp}/missing.pth"], "missing.pth"),
        (["--model", "lenet5", "--batch-size", "5000"], "--batch-size 5000"),
    ],
)
def test_a_refused_start_is_one_line_and_leaves_no_folder(tmp_path, capsys, args, message):
    run = tmp_path / "runs" / "new"
    argv = ["train", "--data", "digits", *[a.replace("{tmp}", str(tmp_path)) for a in args], "--out", str(run)]
    code = main([*argv, "--epochs", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("imgcls: error:") and message in err and "\n" not in err, err
    assert not (tmp_path / "runs").exists()


def test_a_start_that_fails_before_its_first_checkpoint_removes_its_folder(tmp_path, capsys):
    # lr 1e20: every loss after the first step is NaN, the guard stops the run in epoch 1 before any checkpoint.
    run = tmp_path / "runs" / "new"
    argv = ["train", "--recipe", "digits", "--epochs", "1", "--lr", "1e20", "--out", str(run)]
    code = main([*argv, *_quiet("train.max_bad_steps=2", "schedule.name=constant")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "NaN or infinite" in err and "checkpoint" not in err
    assert not (tmp_path / "runs").exists()


def test_a_refused_start_in_an_existing_empty_folder_leaves_it_empty(tmp_path):
    run = tmp_path / "mine"
    run.mkdir()
    argv = ["train", "--data", "digits", "--model", "alexnet", "--image-size", "16", "--out", str(run)]
    proc = subprocess.run(
        [sys.executable, "-m", "imgcls", *argv],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert run.is_dir() and list(run.iterdir()) == []


def test_a_foreign_non_empty_folder_is_refused_without_overwrite(tmp_path, capsys):
    run = tmp_path / "mine"
    run.mkdir()
    (run / "eval.json").write_text("the user's own file")
    code = main(["train", "--recipe", "digits", "--epochs", "1", "--out", str(run)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "non-empty folder that holds no run" in err
    assert [p.name for p in run.iterdir()] == ["eval.json"] and (run / "eval.json").read_text() == "the user's own file"


def test_out_inside_data_is_refused(tmp_path, photos, capsys):
    code = main(["train", "--data", str(photos), "--model", "lenet5", "--out", str(photos / "run")])
    assert code == 2 and "is inside --data" in capsys.readouterr().err
    assert not (photos / "run").exists()


def test_set_null_and_weights_none_clear_the_recipes_weights(tmp_path):
    def config(*argv: str):
        return build_config(build_parser().parse_args(["train", "--recipe", "finetune", "--out", "r", *argv]))

    assert config().model.weights == "torchvision"  # what the recipe says
    assert config("--set", "model.weights=null").model.weights is None
    assert config("--weights", "none").model.weights is None
    assert config("--set", "model.image_size=null").model.image_size is None  # null: the model's native size
    assert config("--weights", str(tmp_path / "w.pth")).model.weights == str(tmp_path / "w.pth")


def test_weights_that_become_infinite_fail_the_run_and_are_never_written(tmp_path, capsys):
    # lr 1e38 is a finite setting, but its first update blows the weights up; every later loss is NaN and skipped,
    # so the epoch ends (it is shorter than max_bad_steps) with weights whose outputs are not finite.
    run = tmp_path / "runs" / "new"
    argv = ["train", "--recipe", "digits", "--epochs", "1", "--batch-size", "128", "--lr", "1e38", "--out", str(run)]
    code = main(
        [
            *argv,
            *_quiet("train.max_bad_steps=1000", "schedule.name=constant", "optim.momentum=0", "optim.nesterov=false"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "after epoch 1" in err and "stopped without writing them" in err, err
    assert not (tmp_path / "runs").exists()


def test_resume_refuses_data_whose_classes_changed(tmp_path, photos, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(photos, data)
    run = tmp_path / "run"
    argv = ["train", "--data", str(data), "--model", "lenet5", "--batch-size", "8", "--out", str(run)]
    argv += _quiet(f"data.cache_dir={tmp_path / 'cache'}", "data.val_fraction=0.25")
    assert main([*argv, "--epochs", "1"]) == 0
    (data / "b").rename(data / "c")
    before = (run / "checkpoints" / "last.pt").read_bytes()
    code = main([*argv, "--epochs", "2", "--resume"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--resume: the classes of" in err and "differ from the checkpoint's (a, b)" in err, err
    assert (run / "checkpoints" / "last.pt").read_bytes() == before


def test_two_trains_on_one_folder_the_second_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--recipe", "digits", "--epochs", "2", "--out", str(run), *_quiet()]
    first = subprocess.Popen([sys.executable, "-m", "imgcls", *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        lock = run / ".imgcls-train.lock"
        for _ in range(3000):  # the first holds the lock from the moment its folder exists
            if lock.exists() or first.poll() is not None:
                break
            time.sleep(0.1)
        assert lock.exists(), "the first run never took its lock"
        code = main(argv)
        err = capsys.readouterr().err.strip()
        assert code == 2 and ("another imgcls train is writing" in err or "already holds a run" in err), err
    finally:
        out, _ = first.communicate(timeout=600)
    assert first.returncode == 0, out.decode()
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]  # the first run's record, whole
    assert not lock.exists()  # released at the end
