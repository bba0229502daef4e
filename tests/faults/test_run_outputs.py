"""Issue 19, classes 3, 5, 6 and 8 for the run's outputs: the report on a full disk, outputs that are inputs,
hand-edited or impossible run files, and the small things (file modes, names with newlines).

Every case is the real command (``imgcls.cli.main`` in process, or the installed module in a subprocess) on real
files; each must end in one ``imgcls: error: ...`` line (exit status 2) or in a correct answer, and must leave the
user's files as they were.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

import pytest
import torch
from tests.faults.test_disk_full import fill, small_filesystem
from tests.inference import helpers
from tests.report.test_report import make_run

from imgcls.cli import main
from imgcls.engine.bundle import ModelMeta, save_bundle
from imgcls.errors import UserError
from imgcls.models import create_model
from imgcls.report import build_report
from imgcls.run_folder import RunFolder

pytestmark = pytest.mark.faults


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("imgcls: error: ") and err.count("\n") == 1, err
    return err.strip()


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_report_on_a_full_disk_is_one_line_and_leaves_no_temporary(tmp_path, figure):
    with small_filesystem(tmp_path / "mnt", "3m") as disk:
        run = make_run(disk / "run", k=10)
        build_report(run)  # a first report fits
        before = _snapshot(run)
        fill(disk)
        with pytest.raises(UserError, match="No space left on device") as info:
            build_report(run)
        message = str(info.value)
        assert "\n" not in message and str(run / "report") in message
        assert _snapshot(run) == before  # every earlier figure and page intact, no .tmp left behind
        figure("report_disk_full", {"message": message.replace(str(disk), "<disk>")})


@pytest.fixture
def run(tmp_path) -> Path:
    return helpers.write_run(tmp_path / "run", num_classes=4)


@pytest.fixture
def photos(tmp_path) -> list[Path]:
    return helpers.write_images(tmp_path / "photos", 3)


def test_export_never_writes_over_the_runs_own_files(run, tmp_path, capsys):
    before = _snapshot(run)
    for own in ("model.safetensors", "model.json", "checkpoints/last.pt", "report/x.onnx", "config.json"):
        code = main(["export", "--run", str(run), "--format", "onnx", "--out", str(run / own)])
        assert code == 2, own
        assert "run's own" in _error_line(capsys)
    link = tmp_path / "elsewhere"
    link.symlink_to(run)  # the same file by another name
    assert main(["export", "--run", str(run), "--format", "torchscript", "--out", str(link / "model.safetensors")]) == 2
    _error_line(capsys)
    assert _snapshot(run) == before
    assert main(["export", "--run", str(run), "--format", "onnx", "--out", str(run / "model.onnx")]) == 0


def test_predict_csv_refuses_an_output_that_is_an_input(run, photos, tmp_path, capsys):
    target = photos[0]
    before = target.read_bytes()
    assert main(["predict", "--run", str(run), "--csv", str(target), *map(str, photos)]) == 2
    assert str(target) in _error_line(capsys)
    answers = photos[0].parent / "answers.csv"
    answers.write_text("mine\n")  # a glob that matches the output names it as an input too
    assert main(["predict", "--run", str(run), "--csv", str(answers), str(photos[0].parent / "*")]) == 2
    _error_line(capsys)
    assert main(["predict", "--run", str(run), "--csv", str(run / "model.json"), str(photos[1])]) == 2
    _error_line(capsys)
    assert target.read_bytes() == before and answers.read_text() == "mine\n"
    assert RunFolder(run).read_meta().num_classes == 4


def _nan_run(folder: Path) -> Path:
    model = create_model("lenet5", num_classes=3, in_chans=1)
    with torch.no_grad():
        model.fc.weight.fill_(math.nan)
    meta = ModelMeta("lenet5", 3, ["a", "b", "c"], [1, 32, 32], [0.5], [0.25], in_chans=1)
    save_bundle(folder, model, meta)  # the SHA-256 matches: only the values are wrong
    return folder


def test_predict_json_never_prints_nan(tmp_path, photos, capsys):
    run = _nan_run(tmp_path / "nan")
    assert main(["predict", "--run", str(run), "--json", str(photos[0])]) == 2
    message = _error_line(capsys)
    assert "NaN" in message or "infinite" in message
    # std: [0] by hand in model.json would divide every pixel by zero.
    good = helpers.write_run(tmp_path / "zero_std", num_classes=4)
    record = json.loads((good / "model.json").read_text())
    record["std"] = [0, 0.2, 0.2]
    (good / "model.json").write_text(json.dumps(record))
    assert main(["predict", "--run", str(good), "--json", str(photos[0])]) == 2
    assert "std" in _error_line(capsys)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"num_classes": 5, "classes": ["a", "b", "c", "d", "e"]}, "shape"),
        ({"name": "resnet18_cifar"}, "does not fit resnet18_cifar"),
        ({"name": "no_such_model"}, "unknown model"),
        ({"input_size": [3, 2, 2], "resize": 2}, "image size 2 is too small"),
        ({"num_classes": 1, "classes": ["only"]}, "at least 2"),
        ({"classes": ["a", "b"]}, "classes has 2 names"),
    ],
)
def test_a_hand_edited_model_json_is_one_line_for_every_verb(run, photos, tmp_path, capsys, changes, expected):
    path = run / "model.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    for argv in (
        ["predict", "--run", str(run), str(photos[0])],
        ["export", "--run", str(run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")],
        ["eval", "--run", str(run), "--data", str(tmp_path)],
    ):
        assert main(argv) == 2, argv
        assert expected in _error_line(capsys), argv
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("port", ["70000", "-1", "65536"])
def test_serve_out_of_range_port_is_one_line(run, capsys, port):
    assert main(["serve", "--run", str(run), "--port", port]) == 2  # refused before anything binds or loads
    out, err = capsys.readouterr()
    assert err.startswith(f"imgcls: error: --port {port}: must be a port number") and err.count("\n") == 1
    assert "serving" not in out


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_export_tolerance_must_be_a_finite_non_negative_number(run, tmp_path, capsys, value):
    out = tmp_path / "m.onnx"
    assert main(["export", "--run", str(run), "--format", "onnx", "--out", str(out), "--tolerance", value]) == 2
    assert "--tolerance" in _error_line(capsys)
    assert not out.exists()


def test_weights_are_written_with_the_mode_of_every_other_file(tmp_path):
    old = os.umask(0o022)
    try:
        run = helpers.write_run(tmp_path / "run")
        RunFolder(run).write_eval({"top1": 1.0})
    finally:
        os.umask(old)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in run.iterdir()} == {
        "model.safetensors": 0o644, "model.json": 0o644, "eval.json": 0o644}  # fmt: skip


def test_a_newline_in_a_file_or_class_name_keeps_one_line_per_answer(tmp_path, capsys):
    run = helpers.write_run(tmp_path / "run", num_classes=3)
    record = json.loads((run / "model.json").read_text())
    record["classes"] = ["cat\nINJECTED: 1.000", "dog", "bird"]
    (run / "model.json").write_text(json.dumps(record))
    folder = tmp_path / "photos"
    paths = helpers.write_images(folder, 2)
    odd = paths[0].rename(folder / "two\nlines.jpg")
    assert main(["predict", "--run", str(run), "--topk", "3", str(odd), str(paths[1])]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith(str(folder / "two\\nlines.jpg") + ": ") and "cat\\nINJECTED" in lines[0]


def test_class_8_the_small_things_end_to_end(tmp_path, capsys, kit, figure):
    """Issue 19 class 8 through the real commands, counted for the Reliability table: a trained run's weights file
    has the mode of its other files; a class folder named ``...`` and AVIF/JPEG 2000 photos in folders are
    trained on; ``export --tolerance nan`` is one line; a newline in a file name keeps one answer per line; the
    service answers ``HEAD /`` as ``GET /``."""
    import httpx
    from PIL import Image

    checks: dict[str, bool] = {}
    data = tmp_path / "photos"
    for cls, colour in (("...", (220, 30, 30)), ("jp", (30, 30, 220))):
        (data / cls).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (40, 36), tuple(min(255, c + 5 * i) for c in colour)).save(data / cls / f"{i}.png")
    Image.new("RGB", (40, 36), (30, 30, 200)).save(data / "jp" / "y.jp2")
    Image.new("RGB", (40, 36), (30, 30, 210)).save(data / "jp" / "z.avif")
    old = os.umask(0o022)
    try:
        argv = ["train", "--model", "lenet5", "--data", str(data), "--image-size", "32", "--epochs", "1"]
        argv += ["--batch-size", "4", "--out", str(tmp_path / "run"), "--set", "train.report=false"]
        assert main([*argv, "--set", "train.progress=none"]) == 0
    finally:
        os.umask(old)
    capsys.readouterr()
    run = tmp_path / "run"
    record = json.loads((run / "model.json").read_text())
    modes = {stat.S_IMODE(p.stat().st_mode) for p in run.iterdir() if p.is_file()}
    checks["weights 0644 like every other file"] = modes == {0o644}
    checks["class '...' kept"] = record["classes"] == ["...", "jp"]
    assert main(["eval", "--run", str(run), "--data", str(data), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    checks["AVIF and JPEG 2000 read in folders"] = evaluated["num_samples"] == 6 + 8  # the .avif and .jp2 count
    out = tmp_path / "m.onnx"
    code = main(["export", "--run", str(run), "--format", "onnx", "--out", str(out), "--tolerance", "nan"])
    err = capsys.readouterr().err
    checks["--tolerance nan refused in one line"] = code == 2 and err.count("\n") == 1 and not out.exists()
    odd = tmp_path / "two\nlines.png"
    Image.new("RGB", (40, 36), (220, 30, 30)).save(odd)
    assert main(["predict", "--run", str(run), str(odd), str(data / "jp" / "0.png")]) == 0
    checks["a newline in a file name: one answer per line"] = len(capsys.readouterr().out.splitlines()) == 2
    with kit.served_lenet5(tmp_path / "served") as served:
        head, get = httpx.head(served.url + "/", timeout=30), httpx.get(served.url + "/", timeout=30)
        checks["HEAD / answered as GET /"] = head.status_code == get.status_code == 200 and head.content == b""
    failed = [name for name, ok in checks.items() if not ok]
    assert not failed, failed
    figure("small_things", {"passed": len(checks), "of": len(checks), "checks": list(checks)})
