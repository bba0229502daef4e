"""RunFolder: the names of DESIGN.md's run folder, its small files read and written, model.json checked."""

from __future__ import annotations

import json
import math
import os
import stat

import numpy as np
import pytest

from imgcls.errors import UserError
from imgcls.run_folder import ModelMeta, RunFolder


def _meta(**changes) -> dict:
    raw = {
        "name": "lenet5", "num_classes": 3, "classes": ["a", "b", "c"], "input_size": [1, 32, 32], "mean": [0.5],
        "std": [0.25], "task": "multiclass", "resize": 32, "in_chans": 1,
    }  # fmt: skip
    return {**raw, **changes}


def test_paths_are_the_ones_design_md_names(tmp_path):
    run = RunFolder(tmp_path)
    rel = {name: getattr(run, name).relative_to(tmp_path).as_posix() for name in (
        "config", "checkpoint", "weights", "meta", "metrics", "issues", "eval", "report_page")}  # fmt: skip
    assert rel == {
        "config": "config.json",
        "checkpoint": "checkpoints/last.pt",
        "weights": "model.safetensors",
        "meta": "model.json",
        "metrics": "metrics.csv",
        "issues": "data_issues.csv",
        "eval": "eval.json",
        "report_page": "report/report.html",
    }
    assert not run.holds_run()
    run.write_config({"a": 1})
    assert run.holds_run() and run.read_config() == {"a": 1}


def test_model_json_round_trip_and_defaults(tmp_path):
    run = RunFolder(tmp_path)
    run.write_meta(ModelMeta(**_meta()))
    meta = run.read_meta()
    assert meta.classes == ["a", "b", "c"] and meta.input_size == [1, 32, 32] and meta.thresholds is None
    assert meta.class_thresholds() is None
    ml = ModelMeta(**_meta(task="multilabel"))
    assert ml.class_thresholds() == [0.5, 0.5, 0.5]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"std": [0]}, "std"),
        ({"std": [-0.1]}, "std"),
        ({"mean": [float("nan")]}, "mean"),
        ({"mean": [0.5, 0.5, 0.5]}, "mean"),
        ({"num_classes": 5}, "classes"),
        ({"num_classes": 1, "classes": ["a"]}, "classes"),
        ({"num_classes": "3"}, "num_classes"),
        ({"classes": ["a", "a", "b"]}, "classes"),
        ({"name": ""}, "name"),
        ({"name": 7}, "name"),
        ({"input_size": [1, 32]}, "input_size"),
        ({"input_size": [3, 32, 32]}, "input_size"),
        ({"input_size": [1, 0, 0]}, "input_size"),
        ({"input_size": [1, 32, 16]}, "input_size"),
        ({"resize": 16}, "resize"),
        ({"task": "regression"}, "task"),
        ({"in_chans": 2, "input_size": [2, 32, 32]}, "in_chans"),
        ({"thresholds": [0.5]}, "thresholds"),
        ({"model_kwargs": [1]}, "model_kwargs"),
        ({"sha256": "xyz"}, "sha256"),
    ],
)
def test_a_hand_edited_model_json_is_one_line_naming_the_field(tmp_path, changes, field):
    path = tmp_path / "model.json"
    path.write_text(json.dumps(_meta(**changes)))
    with pytest.raises(UserError) as info:
        RunFolder(tmp_path).read_meta()
    message = str(info.value)
    assert message.startswith(f"{path}: {field}") and "\n" not in message


def test_missing_and_malformed_files(tmp_path):
    run = RunFolder(tmp_path / "run")
    with pytest.raises(UserError, match="not found"):
        run.read_meta()
    assert run.read_config() is None and run.read_eval() is None and run.read_metrics() == []
    run.root.mkdir()
    run.meta.write_text("[1, 2]")
    with pytest.raises(UserError, match="JSON object"):
        run.read_meta()
    run.eval.write_text("{oops")
    with pytest.raises(UserError, match=r"eval\.json: malformed JSON"):
        run.read_eval()
    run.config.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(UserError, match=r"config\.json"):
        run.read_config()
    run.samples.write_bytes(b"not a zip")
    with pytest.raises(UserError, match=r"samples\.npz"):
        run.read_samples()


def test_metrics_round_trip(tmp_path):
    run = RunFolder(tmp_path)
    columns = ("epoch", "train_loss", "val_top1", "val_top5")
    run.write_metrics(columns, [{"epoch": 1, "train_loss": 0.5, "val_top1": 80.5, "val_top5": None}])
    assert run.metrics.read_text().splitlines() == ["epoch,train_loss,val_top1,val_top5", "1,0.5,80.5,"]
    assert run.read_metrics() == [{"epoch": 1.0, "train_loss": 0.5, "val_top1": 80.5, "val_top5": None}]
    run.metrics.write_text("step,loss\n1,2\n")
    with pytest.raises(UserError, match="no 'epoch' column"):
        run.read_metrics()


def test_json_is_strict_and_samples_hold_no_pickles(tmp_path):
    run = RunFolder(tmp_path)
    with pytest.raises(ValueError, match=r"eval\.json"):
        run.write_eval({"top1": math.nan})
    assert not run.eval.exists()
    run.write_samples(images=np.zeros((2, 4, 4, 3), np.uint8), classes=np.asarray(["a", "b"]))
    back = run.read_samples()
    assert back["images"].shape == (2, 4, 4, 3) and list(back["classes"]) == ["a", "b"]


def test_own_files_are_recognised_through_links_and_dots(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.root.mkdir()
    (tmp_path / "link").symlink_to(run.root)
    assert run.is_own_file(tmp_path / "link" / "model.safetensors")
    assert run.is_own_file(run.root / "report" / ".." / "model.json")
    assert run.is_own_file(run.report_dir / "loss.png")
    assert run.is_own_file(run.checkpoint)
    assert not run.is_own_file(run.onnx)  # export may write RUN/model.onnx
    assert not run.is_own_file(tmp_path / "elsewhere.onnx")


def test_written_files_get_the_umask_mode_and_leave_no_temporary(tmp_path):
    run = RunFolder(tmp_path)
    old = os.umask(0o022)
    try:
        run.write_eval({"top1": 1.0})
        run.write_eval({"top1": 2.0})
    finally:
        os.umask(old)
    assert run.read_eval() == {"top1": 2.0}
    assert stat.S_IMODE(run.eval.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["eval.json"]


def test_clear_removes_only_the_runs_own_entries(tmp_path):
    run = RunFolder(tmp_path)
    run.write_config({})
    run.write_eval({})
    run.report_page.parent.mkdir()
    run.report_page.write_text("x")
    (tmp_path / "notes.txt").write_text("mine")
    run.clear()
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
