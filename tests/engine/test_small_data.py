"""Small data (issue 14 items 2 and 4): the warning about epochs of a few steps, early stopping that ships the best
epoch, and two-stage fine-tuning (``train.unfreeze_after``) whose first stage leaves the backbone, its BatchNorm
statistics included, bit-identical. Runs are real `imgcls train` commands on real files; the ants/bees photo
folder (``../shared/datasets/hymenoptera.tar.gz``) is used when present."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgcls.cli import main
from imgcls.engine.checkpoint import load_checkpoint
from imgcls.engine.train import batch_size_warning, epochs_without_gain
from imgcls.models import create_model

REPO = Path(__file__).resolve().parents[2]
HYMENOPTERA_TAR = Path(os.environ.get("IMGCLS_HYMENOPTERA", REPO.parent / "shared" / "datasets" / "hymenoptera.tar.gz"))


@pytest.fixture(scope="session")
def ants_and_bees(tmp_path_factory) -> Path:
    """The ants/bees folder (``train/`` and ``val/``, 245 + 153 photos), unpacked once per session."""
    if not HYMENOPTERA_TAR.is_file():
        pytest.skip(f"ants/bees archive not found at {HYMENOPTERA_TAR} (set IMGCLS_HYMENOPTERA)")
    root = tmp_path_factory.mktemp("hymenoptera")
    with tarfile.open(HYMENOPTERA_TAR) as tar:
        tar.extractall(root, filter="data")
    return next(p.parent for p in root.rglob("train") if (p.parent / "val").is_dir())


def _quiet(*settings: str) -> list[str]:
    return [item for s in ("train.report=false", "train.progress=none", *settings) for item in ("--set", s)]


# --- the warning about few steps per epoch ---------------------------------------------------------------------


def test_batch_size_warning_texts():
    # The case: 196 training photos at the default batch of 128 give one step and drop 68 photos.
    assert batch_size_warning(196, 128) == (
        "imgcls: warning: --batch-size 128 on 196 training images gives 1 step per epoch and leaves 68 images "
        "(35 %) out of every epoch; --batch-size 16 gives 12 steps and leaves 4 out"
    )
    # Gradient accumulation counts optimiser steps: 25 batches of 64 are 7 steps of 4 batches.
    assert batch_size_warning(1618, 64, accum_steps=4) == (
        "imgcls: warning: --batch-size 64 on 1618 training images gives 7 steps per epoch and leaves 18 images "
        "(1 %) out of every epoch; --batch-size 32 gives 13 steps and leaves 18 out"
    )
    assert batch_size_warning(196, 16) is None  # 12 steps, 4 left out (2 %)
    assert batch_size_warning(1000, 100) is None  # exactly 10 steps, none left out
    assert batch_size_warning(8, 4) == (
        "imgcls: warning: --batch-size 4 on 8 training images gives 2 steps per epoch and leaves 0 images (0 %) out "
        "of every epoch; --batch-size 1 gives 8 steps and leaves 0 out"
    )


def test_a_run_with_a_batch_too_large_for_its_data_says_so(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--recipe", "digits", "--epochs", "1", "--batch-size", "512", "--out", str(run)]
    assert main(argv + _quiet("train.save=last")) == 0
    err = capsys.readouterr().err
    assert (
        "imgcls: warning: --batch-size 512 on 1618 training images gives 3 steps per epoch and leaves 82 images "
        "(5 %) out of every epoch; --batch-size 128 gives 12 steps and leaves 82 out\n"
    ) in err


# --- early stopping --------------------------------------------------------------------------------------------


def test_epochs_without_gain_by_hand():
    rows = [{"v": 50.0}, {"v": 60.0}, {"v": None}, {"v": 60.0}, {"v": 59.0}]
    assert epochs_without_gain(rows, "v", higher=True) == 2  # the tie and the fall; the unvalidated row not counted
    assert epochs_without_gain(rows[:2], "v", higher=True) == 0
    assert epochs_without_gain([{"v": 50.0}, {"v": 50.5}], "v", higher=True, min_delta=1.0) == 1  # too small a gain
    assert epochs_without_gain([{"v": 1.0}, {"v": 0.9}, {"v": 0.95}], "v", higher=False) == 1  # loss: lower wins
    assert epochs_without_gain([], "v", higher=True) == 0
    # train.select_from_epoch: an early lucky epoch is not the reference the patience counts from.
    lucky = [{"epoch": 1, "v": 90.0}, {"epoch": 2, "v": 60.0}, {"epoch": 3, "v": 70.0}, {"epoch": 4, "v": 65.0}]
    assert epochs_without_gain(lucky, "v", higher=True) == 3
    assert epochs_without_gain(lucky, "v", higher=True, start=2) == 1  # best 70 at epoch 3, then one fall
    assert epochs_without_gain(lucky, "v", higher=True, start=5) == 0  # nothing may be chosen yet


def test_early_stopping_stops_and_ships_the_best_epoch(tmp_path, capsys):
    # LeNet-5 on the digits gains less than 1 point of top-1 per epoch within a few epochs: with a patience of 1
    # the run stops long before its 15 epochs, and the weights it ships are the best epoch's, not the last's.
    run = tmp_path / "run"
    argv = ["train", "--recipe", "digits", "--out", str(run), "--precision", "fp32"]
    argv += _quiet("train.early_stopping=1", "train.early_stopping_min_delta=1.0")
    assert main(argv) == 0
    out = capsys.readouterr().out
    with open(run / "metrics.csv", newline="") as f:
        rows = [{k: (float(v) if v else None) for k, v in r.items()} for r in csv.DictReader(f)]
    assert 2 <= len(rows) < 15
    for k in range(1, len(rows)):  # it ran on while the patience held, and stopped as soon as it ran out
        assert epochs_without_gain(rows[:k], "val_top1", True, 1.0) < 1
    assert epochs_without_gain(rows, "val_top1", True, 1.0) == 1
    best = max(range(len(rows)), key=lambda i: (rows[i]["val_top1"], -i))
    best_epoch, best_top1 = best + 1, rows[best]["val_top1"]
    line = (
        f"imgcls: early stopping after epoch {len(rows)}: no better top1 in 1 validated epoch (best {best_top1:.4g} "
        f"at epoch {best_epoch}, whose weights ship)"
    )
    assert line in out.splitlines()
    selection = json.loads((run / "config.json").read_text())["run"]["selection"]
    assert selection["stopped_early"] is True and selection["planned_epochs"] == 15
    assert selection["shipped_epoch"] == selection["best_epoch"] == best_epoch
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(best_top1, abs=1e-3)


def test_select_from_epoch_never_ships_an_earlier_epoch(tmp_path, capsys):
    # The digits' LeNet-5 is best within its first epochs: with select_from_epoch 4 of 5 the shipped weights are
    # epoch 4's or 5's, whichever validated better, and early stopping counts its patience from there.
    run = tmp_path / "run"
    argv = ["train", "--recipe", "digits", "--epochs", "5", "--out", str(run), "--precision", "fp32"]
    assert main(argv + _quiet("train.select_from_epoch=4", "train.early_stopping=3")) == 0
    capsys.readouterr()
    with open(run / "metrics.csv", newline="") as f:
        rows = [{k: (float(v) if v else None) for k, v in r.items()} for r in csv.DictReader(f)]
    assert len(rows) == 5, "patience 3 cannot run out counting from epoch 4"
    chosen = max((3, 4), key=lambda i: (rows[i]["val_top1"], -i))
    selection = json.loads((run / "config.json").read_text())["run"]["selection"]
    assert selection["best_epoch"] == selection["shipped_epoch"] == chosen + 1
    assert main(["eval", "--run", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(rows[chosen]["val_top1"], abs=1e-3)
    assert main([*argv[:-4], "--out", str(tmp_path / "other"), "--set", "train.select_from_epoch=6"]) == 2
    assert "train.select_from_epoch 6: the run has only 5 epoch(s)" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            ["train.early_stopping=3", "train.save=last"],
            "train.early_stopping 3: ships the best epoch, so it needs train.save best (not last)",
        ),
        (
            ["train.early_stopping=3", "train.val_every=0"],
            "train.early_stopping: needs validation during the run (train.val_every 0 validates after the last "
            "epoch only)",
        ),
        (
            ["train.unfreeze_after=5"],
            "train.unfreeze_after 5: the run has only 3 epoch(s), so the backbone would never train (train longer, or "
            "use --freeze-backbone to train the classifier alone)",
        ),
    ],
)
def test_contradictory_small_data_settings_are_refused_in_one_line(tmp_path, capsys, settings, message):
    run = tmp_path / "run"
    argv = ["train", "--recipe", "digits", "--epochs", "3", "--out", str(run)]
    assert main(argv + _quiet(*settings)) == 2
    assert capsys.readouterr().err == f"imgcls: error: {message}\n"
    assert not run.exists()


# --- two-stage fine-tuning ---------------------------------------------------------------------------------------


def test_freeze_backbone_beside_unfreeze_after_says_the_backbone_stays_frozen(tmp_path, capsys):
    # The fine-tune recipe has two stages; --freeze-backbone on top of it (a linear probe) keeps the backbone frozen
    # throughout and says that the recipe's stage setting does not apply (not silently, not as an error).
    run = tmp_path / "run"
    argv = ["train", "--recipe", "digits", "--epochs", "1", "--freeze-backbone", "--out", str(run)]
    assert main(argv + _quiet("train.unfreeze_after=1", "train.save=last")) == 0
    assert (
        "imgcls: --freeze-backbone: the backbone stays frozen for the whole run (train.unfreeze_after 1 does not apply)"
    ) in capsys.readouterr().out.splitlines()


def _photo_folder(root: Path, per_class: int = 12, size: int = 32) -> Path:
    """Two class folders of PNGs, class i brighter in channel i, plus noise."""
    rng = np.random.default_rng(0)
    for i, name in enumerate(("a", "b")):
        (root / name).mkdir(parents=True)
        for j in range(per_class):
            pixels = rng.integers(0, 160, size=(size, size, 3), dtype=np.uint8)
            pixels[..., i] += 90
            Image.fromarray(pixels).save(root / name / f"{j}.png")
    return root


def _published_format_weights(tmp_path: Path, name: str, num_classes: int) -> tuple[Path, dict]:
    """A state dict with torchvision's key names (our ResNets use them), saved as torch.save writes published files;
    running means far from what any data gives, so a BatchNorm update cannot hide."""
    torch.manual_seed(7)
    net = create_model(name, num_classes=num_classes)
    with torch.no_grad():
        for key, buf in net.named_buffers():
            if key.endswith("running_mean"):
                buf.uniform_(-1, 1)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    path = tmp_path / f"{name}-published.pth"
    torch.save(state, path)
    return path, state


def _backbone(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def test_unfreeze_after_trains_the_head_first_with_the_backbone_bit_identical_then_everything(tmp_path):
    data = _photo_folder(tmp_path / "photos")
    weights, before = _published_format_weights(tmp_path, "resnet18_cifar", num_classes=2)

    def train(run: Path, epochs: int, *extra: str) -> dict:
        argv = ["train", "--data", str(data), "--model", "resnet18_cifar", "--weights", str(weights)]
        argv += ["--out", str(run), "--epochs", str(epochs), "--batch-size", "8", "--lr", "0.05", "--precision", "fp32"]
        argv += [*extra, *_quiet("train.unfreeze_after=1", "schedule.name=constant", "schedule.warmup_epochs=0")]
        argv += _quiet("train.save=last", "data.val_fraction=0.25", f"data.cache_dir={tmp_path / 'cache'}")
        assert main(argv) == 0
        return load_checkpoint(run / "checkpoints" / "last.pt")["model"]

    head_only = train(tmp_path / "staged", 1)  # stage 1 alone: the classifier learns, nothing else moves
    assert not torch.equal(head_only["fc.weight"], before["fc.weight"])
    for key, value in _backbone(before).items():
        assert torch.equal(head_only[key], value), f"{key} changed while the backbone was frozen"
    assert "bn1.running_mean" in before and "layer4.1.bn2.running_var" in before
    resumed = train(tmp_path / "staged", 2, "--resume")  # stage 2: everything trains
    for key in ("conv1.weight", "layer1.0.conv1.weight", "bn1.running_mean", "layer4.1.bn2.running_var"):
        assert not torch.equal(resumed[key], before[key]), f"{key} did not train after unfreezing"
    straight = train(tmp_path / "straight", 2)  # the same two stages without the interruption
    for key, value in straight.items():
        assert torch.equal(resumed[key], value), key


@pytest.mark.slow
def test_finetune_recipe_from_a_published_format_file_on_ants_and_bees(tmp_path, ants_and_bees):
    # The fine-tune recipe on the real photo folder from a local torchvision-format ResNet-18 file (1000 classes:
    # the classifier is replaced for the 2 classes), as a user types it (`python -m imgcls` in a child process):
    # the head alone for the recipe's first stage, the backbone and its BatchNorm statistics bit-identical, then all.
    weights, before = _published_format_weights(tmp_path, "resnet18", num_classes=1000)
    run = tmp_path / "run"
    env = dict(os.environ, IMGCLS_DATA=str(tmp_path / "cache"))

    def imgcls(*argv: str) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "imgcls", *argv], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    def train(epochs: int, *extra: str) -> dict:
        argv = ["train", "--recipe", "finetune", "--data", str(ants_and_bees), "--model", "resnet18"]
        argv += ["--weights", str(weights), "--image-size", "64", "--epochs", str(epochs), "--out", str(run)]
        imgcls(*argv, *extra, *_quiet("train.save=last"))
        return load_checkpoint(run / "checkpoints" / "last.pt")["model"]

    from imgcls.engine.config import resolve_config

    stage_one = resolve_config("finetune").train.unfreeze_after
    assert stage_one >= 1
    first = train(stage_one)
    for key, value in _backbone(before).items():
        assert torch.equal(first[key], value), f"{key} changed in the head-only stage"
    assert first["fc.weight"].shape == (2, 512)
    assert not torch.equal(first["fc.weight"], before["fc.weight"][:2])
    last = train(stage_one + 1, "--resume")
    for key in ("conv1.weight", "bn1.running_mean", "layer4.1.bn2.running_var"):
        assert not torch.equal(last[key], before[key]), key
    result = json.loads(imgcls("eval", "--run", str(run), "--json").stdout)
    assert result["num_samples"] == 153 and 0.0 <= result["top1"] <= 100.0


def test_the_small_recipe_steps_often_on_a_few_hundred_photos_and_ships_its_best_epoch():
    from imgcls.engine.config import resolve_config

    cfg = resolve_config("small")
    assert batch_size_warning(196, cfg.data.batch_size) is None  # the ants/bees training split: 12 steps per epoch
    assert batch_size_warning(196, 128) is not None
    assert cfg.model.weights is None and cfg.train.early_stopping > 0 and cfg.train.save == "best"
    assert cfg.train.ema_decay and cfg.train.label_smoothing > 0 and cfg.augment.random_resized_crop
    assert cfg.schedule.warmup_epochs > 0 and cfg.train.early_stopping < cfg.train.epochs
