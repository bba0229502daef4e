"""A real (short) training run on the bundled digits, the NaN guard, and bad input through the command line."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from safetensors.torch import load_file

from imgcls.cli import main
from imgcls.engine.checkpoint import load_checkpoint
from imgcls.engine.train import METRICS_COLUMNS

EPOCHS = 4
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("train") / "run"
    code = main(["train", "--recipe", "digits", "--epochs", str(EPOCHS), "--out", str(run), "--seed", "0"])
    assert code == 0
    return run


def test_digits_run_reaches_stated_accuracy(digits_run):
    rows = list(csv.DictReader((digits_run / "metrics.csv").open()))
    assert tuple(rows[0]) == METRICS_COLUMNS
    assert [int(r["epoch"]) for r in rows] == list(range(1, EPOCHS + 1))
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    evaluated = json.loads((digits_run / "eval.json").read_text())
    # LeNet-5 on 8x8 digits upsampled to 32x32, four epochs: about 96-97% on the 179 held-out images.
    assert evaluated["top1"] >= 94.0
    assert evaluated["top1"] == pytest.approx(max(float(r["val_top1"]) for r in rows), abs=1e-3)  # best epoch


def test_run_folder_contents(digits_run):
    config = json.loads((digits_run / "config.json").read_text())
    assert config["model"]["name"] == "lenet5" and config["data"]["spec"] == "digits"
    assert config["train"]["epochs"] == EPOCHS and "torch" in config["versions"] and "git_commit" in config
    meta = json.loads((digits_run / "model.json").read_text())
    assert meta["classes"] == [str(i) for i in range(10)] and meta["input_size"] == [1, 32, 32]
    weights = load_file(str(digits_run / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())
    state = load_checkpoint(digits_run / "checkpoints" / "last.pt")
    assert (state["epoch"], state["batch"]) == (EPOCHS, 0)
    assert state["step"] == EPOCHS * 50  # 1618 training images // 32 per batch
    assert {"model", "optimizer", "schedule", "rng", "history"} <= set(state)
    pngs = sorted((digits_run / "report").glob("*.png"))
    assert pngs and all(p.read_bytes()[:8] == PNG_MAGIC for p in pngs)
    html = (digits_run / "report" / "report.html").read_text()
    assert "<html" in html.lower() and all(p.name in html for p in pngs)


def test_eval_verb_json_matches_the_run(digits_run, capsys):
    capsys.readouterr()
    assert main(["eval", "--run", str(digits_run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["top1"] == pytest.approx(json.loads((digits_run / "eval.json").read_text())["top1"], abs=1e-6)
    assert main(["eval", "--run", str(digits_run)]) == 0
    text = capsys.readouterr().out
    assert "top-1" in text and "precision" in text


def test_refuses_a_folder_holding_another_run(digits_run, capsys):
    before = {p: p.read_bytes() for p in digits_run.rglob("*") if p.is_file()}
    code = main(["train", "--recipe", "digits", "--out", str(digits_run)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("imgcls: error:") and "already holds a run" in err and "\n" not in err
    assert {p: p.read_bytes() for p in digits_run.rglob("*") if p.is_file()} == before


def test_nan_guard_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    # Epoch 1 trains normally; from epoch 2 the step schedule multiplies the learning rate by 1e30, so the
    # weights become NaN after one step and every later loss is NaN.
    run = tmp_path / "run"
    argv = ["train", "--recipe", "digits", "--epochs", "2", "--out", str(run), "--batch-size", "64"]
    argv += ["--set", "schedule.name=step", "--set", "schedule.step_size=1", "--set", "schedule.gamma=1e30"]
    argv += ["--set", "schedule.warmup_epochs=0", "--set", "train.max_bad_steps=3", "--set", "train.report=false"]
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert "NaN or infinite for 3 steps in a row" in err and "\n" not in err
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert (state["epoch"], state["batch"]) == (1, 0)
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert len(rows) == 1 and float(rows[0]["val_top1"]) > 50


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "lenet6", "--data", "digits"], "unknown model: lenet6"),
        (["--model", "lenet5", "--data", "{tmp}/no_such_folder"], "no_such_folder"),
        (["--model", "lenet5", "--data", "digits", "--batch-size", "5000"], "--batch-size 5000"),
        (["--model", "lenet5", "--data", "digits", "--precision", "fp32", "--out", "{tmp}/file.txt/run"], "--out"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, argv, message):
    (tmp_path / "file.txt").write_text("not a folder")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "run")]
    code = main(["train", *argv, "--epochs", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("imgcls: error:") and message in err and "\n" not in err
    assert not (tmp_path / "run" / "config.json").exists()


def _digits_argv(run, epochs: int, *extra: str) -> list[str]:
    argv = ["train", "--recipe", "digits", "--epochs", str(epochs), "--out", str(run), "--seed", "0"]
    argv += ["--set", "schedule.name=constant", "--set", "schedule.warmup_epochs=0", "--set", "train.report=false"]
    return argv + [item for flag in extra for item in ("--set", flag)]


def test_freeze_after_stops_a_parameter_and_val_every_skips_epochs(tmp_path):
    # Same seed, constant lr: the first epoch is identical in both runs, so a parameter frozen after epoch 1 of a
    # 3-epoch run must end exactly where the 1-epoch run left it, while the others keep learning.
    assert main(_digits_argv(tmp_path / "one", 1)) == 0
    argv = _digits_argv(tmp_path / "three", 3, "train.freeze_after={c1: 1, fc.bias: 1}", "train.val_every=2")
    assert main(argv) == 0
    one = load_file(tmp_path / "one" / "model.safetensors")
    three = load_file(tmp_path / "three" / "model.safetensors")
    for name in ("c1.weight", "c1.bias", "fc.bias"):
        assert torch.equal(one[name], three[name]), name
    assert not torch.equal(one["c3.weight"], three["c3.weight"])
    rows = list(csv.DictReader((tmp_path / "three" / "metrics.csv").open()))
    assert [r["val_top1"] != "" for r in rows] == [False, True, True]  # every 2nd epoch and the last
    assert all(r["train_loss"] for r in rows)


def test_end_at_freeze_lowers_the_frozen_parameters_rate_to_zero_as_it_freezes(tmp_path):
    # Linear schedule over 2 epochs, c1 frozen after 1: with end_at_freeze, c1's group reaches lr 0 at the end of
    # epoch 1, so its last step of epoch 1 is tiny; the checkpoint keeps the split group.
    base = ("schedule.name=linear", "train.freeze_after={c1: 1}")
    assert main(_digits_argv(tmp_path / "plain", 2, *base)) == 0
    assert main(_digits_argv(tmp_path / "own", 2, *base, "schedule.end_at_freeze=true")) == 0
    state = load_checkpoint(tmp_path / "own" / "checkpoints" / "last.pt")
    groups = {g["group_name"]: g for g in state["optimizer"]["param_groups"]}
    own = [g for name, g in groups.items() if name.endswith("@1")]
    assert own and all(g["end_epoch"] == 1 and g["lr"] == 0.0 for g in own)
    plain = load_checkpoint(tmp_path / "plain" / "checkpoints" / "last.pt")["optimizer"]["param_groups"]
    assert not any("end_epoch" in g for g in plain)
    a, b = load_file(tmp_path / "plain" / "model.safetensors"), load_file(tmp_path / "own" / "model.safetensors")
    assert not torch.equal(a["c1.weight"], b["c1.weight"])


def test_freeze_after_names_an_unknown_parameter(tmp_path, capsys):
    code = main(_digits_argv(tmp_path / "run", 1, "train.freeze_after={whiten.bias: 3}"))
    err = capsys.readouterr().err.strip()
    assert code == 2 and "train.freeze_after: lenet5 has no trainable parameter named whiten.bias" in err
    assert "\n" not in err
