"""`imgcls predict`, `export` and `serve` as a user runs them: JSON shape, exit codes, one-line errors."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from tests.inference import helpers
from tests.support import free_port

from imgcls.cli import main


@pytest.fixture
def setup(tmp_path):
    run = helpers.write_run(tmp_path / "run", num_classes=4)
    good = helpers.write_images(tmp_path / "photos", 5)
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a whole jpeg")
    (tmp_path / "notes.txt").write_text("hello")
    return run, good, tmp_path


def test_predict_json_shape_and_exit_codes(setup, capsys):
    run, good, root = setup
    assert main(["predict", "--run", str(run), "--json", "--topk", "3", *map(str, good[:2])]) == 0
    answers = json.loads(capsys.readouterr().out)
    assert [a["path"] for a in answers] == [str(p) for p in good[:2]]
    for a in answers:
        assert a.keys() == {"path", "predictions"} and len(a["predictions"]) == 3
        for p in a["predictions"]:
            assert p.keys() == {"label", "index", "probability"} and p["label"] == f"class_{p['index']}"

    # A folder (with a broken file), a text file and a missing file: all answered, exit status 1.
    code = main(["predict", "--run", str(run), "--json", str(root / "photos"), str(root / "notes.txt"), "nope.png"])
    out, err = capsys.readouterr()
    answers = json.loads(out)
    assert code == 1
    assert len(answers) == 5 + 1 + 1 + 1
    errors = {Path(a["path"]).name: a["error"] for a in answers if "error" in a}
    assert set(errors) == {"broken.jpg", "notes.txt", "nope.png"}
    assert all(isinstance(e, str) and e and "\n" not in e for e in errors.values())
    assert sum("predictions" in a for a in answers) == 5
    assert "3 of 8 inputs could not be read" in err


def test_predict_text_and_csv(setup, capsys):
    run, good, root = setup
    assert main(["predict", "--run", str(run), "--topk", "2", str(good[0])]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{good[0]}: class_") and line.count("class_") == 2

    out_csv = root / "answers.csv"
    code = main(["predict", "--run", str(run), "--csv", str(out_csv), "--batch-size", "2", str(root / "photos" / "*")])
    assert code == 1  # broken.jpg
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 6 and rows[0].keys() >= {"path", "error", "label_5", "probability_5"}
    broken = [r for r in rows if r["path"].endswith("broken.jpg")]
    assert broken[0]["error"] and not broken[0]["label_1"]
    assert all(r["label_1"].startswith("class_") for r in rows if not r["error"])


def test_predict_with_weights_and_onnx(setup, capsys):
    run, good, root = setup
    args = ["predict", "--json", "--topk", "1", str(good[0])]
    assert main([*args[:1], "--model", helpers.TINY, "--weights", str(run / "model.safetensors"), *args[1:]]) == 0
    by_weights = json.loads(capsys.readouterr().out)[0]["predictions"][0]
    assert main(["export", "--run", str(run), "--format", "onnx", "--out", str(root / "m.onnx")]) == 0
    assert "largest |difference| from PyTorch" in capsys.readouterr().out
    assert main([*args[:1], "--weights", str(root / "m.onnx"), "--backend", "onnx", *args[1:]]) == 0
    by_onnx = json.loads(capsys.readouterr().out)[0]["predictions"][0]
    assert by_weights["index"] == by_onnx["index"]
    assert by_onnx["label"] == f"class_{by_onnx['index']}"  # class names travel in the ONNX metadata


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["predict", "x.jpg"], "give --run RUN"),
        (["predict", "--run", "RUN", "--model", "lenet5", "x.jpg"], "not both"),
        (["predict", "--weights", "w.safetensors", "x.jpg"], "needs --model"),
        (["predict", "--run", "RUN", "--topk", "0", "x.jpg"], "--topk"),
        (["export", "--run", "RUN", "--format", "onnx", "--out", "nowhere/m.onnx"], "does not exist"),
    ],
)
def test_user_mistakes_are_one_line_errors(setup, capsys, monkeypatch, argv, message):
    run, _, root = setup
    monkeypatch.chdir(root)
    argv = [str(run) if a == "RUN" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("imgcls: error: ") and message in err and err.count("\n") == 1


def test_serve_refuses_weights_that_do_not_match(setup, capsys):
    run, _, _ = setup
    weights = run / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    # Refused at start-up, before anything listens: one line, exit status 2.
    assert main(["serve", "--run", str(run), "--port", str(free_port())]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imgcls: error: ") and "SHA-256" in err and err.count("\n") == 1


@pytest.mark.slow
def test_serve_subprocess_answers(setup):
    run, good, _ = setup
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "imgcls", "serve", "--run", str(run), "--port", str(port)],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
                time.sleep(0.2)
        assert health.json()["status"] == "ok"
        answer = httpx.post(f"http://127.0.0.1:{port}/predict", content=good[0].read_bytes(), timeout=30)
        assert answer.status_code == 200 and len(answer.json()["predictions"]) == 4
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_predict_model_and_run_weights_reads_channels_from_model_json(tmp_path, capsys):
    """Issue 11 item 9: a 1-channel LeNet-5 run predicted through --model/--weights answers as --run does."""
    run = helpers.write_run(tmp_path / "run", name="lenet5", num_classes=3, in_chans=1)
    photo = helpers.write_images(tmp_path / "photos", 1)[0]  # an RGB file, converted to the net's one channel
    assert main(["predict", "--json", "--run", str(run), str(photo)]) == 0
    by_run = json.loads(capsys.readouterr().out)
    weights = str(run / "model.safetensors")
    assert main(["predict", "--json", "--model", "lenet5", "--weights", weights, str(photo)]) == 0
    assert json.loads(capsys.readouterr().out) == by_run


def test_multilabel_predict_gives_the_thresholded_label_set(tmp_path, capsys):
    run = helpers.write_run(tmp_path / "run", num_classes=4, task="multilabel")
    photos = helpers.write_images(tmp_path / "photos", 3)
    meta = json.loads((run / "model.json").read_text())
    meta["thresholds"] = [0.0, 1.0, 0.5, 0.5]  # class_0 always, class_1 never
    (run / "model.json").write_text(json.dumps(meta))
    assert main(["predict", "--json", "--topk", "4", "--run", str(run), *map(str, photos)]) == 0
    for answer in json.loads(capsys.readouterr().out):
        probs = {p["label"]: p["probability"] for p in answer["predictions"]}
        cut = dict(zip([f"class_{i}" for i in range(4)], meta["thresholds"]))
        expected = [label for label in sorted(probs, key=lambda k: -probs[k]) if probs[label] >= cut[label]]
        assert answer["labels"] == expected and "class_0" in answer["labels"] and "class_1" not in answer["labels"]
    assert main(["predict", "--run", str(run), "--topk", "2", str(photos[0])]) == 0
    line = capsys.readouterr().out.strip()
    chosen, scores = line.split(": ", 1)[1].split(" · ")
    assert chosen.startswith("labels ") and "class_0" in chosen and "class_1" not in chosen
    assert scores.startswith("scores ") and scores.count("class_") == 2


def test_serve_on_a_busy_port_says_so_in_one_line_and_never_serving(setup):
    import socket

    run, _, _ = setup
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "imgcls", "serve", "--run", str(run), "--port", str(port)],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and "serving" not in done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imgcls: error: --host 127.0.0.1 --port") and "in use" in lines[0]
