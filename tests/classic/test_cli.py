"""The classic pipelines through the public command line: real `python -m imgcls` processes on real files."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("skimage")

from imgcls.classic.models import PIPELINES
from imgcls.cli import main


def imgcls(*argv: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "imgcls", *argv], env=full_env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    """lbp_svm fitted on the bundled digits (the cheapest pipeline): one real `imgcls train`."""
    run = tmp_path_factory.mktemp("classic") / "lbp"
    done = imgcls("train", "--model", "lbp_svm", "--data", "digits", "--out", str(run), "--seed", "0")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "lbp_svm (Ojala et al. 2002" in done.stdout and "done in" in done.stdout
    return run


def _metrics(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_train_fills_the_run_folder(digits_run):
    from imgcls._files import sha256_file

    for name in ("config.json", "model.json", "model.safetensors", "metrics.csv", "data_issues.csv", "eval.json"):
        assert (digits_run / name).is_file(), name
    assert (digits_run / "report" / "report.html").is_file()
    assert not (digits_run / "checkpoints").exists()  # one pass: nothing to resume
    meta = json.loads((digits_run / "model.json").read_text())
    assert (
        meta["name"] == "lbp_svm"
        and meta["num_classes"] == 10
        and meta["sha256"] == sha256_file(digits_run / "model.safetensors")
    )
    assert meta["mean"] == [0.0] and meta["std"] == [1.0] and meta["model_kwargs"]["features"] == "lbp"
    config = json.loads((digits_run / "config.json").read_text())
    assert config["model"]["name"] == "lbp_svm" and config["run"]["pipeline"]["kernel"] == "chi2"
    rows = _metrics(digits_run)
    assert len(rows) == 1 and rows[0]["epoch"] == "1" and rows[0]["lr"] == ""
    assert float(rows[0]["val_top1"]) >= 90.0  # LBP histograms on 8x8 digits upsampled: ~96 % measured
    assert (digits_run / "data_issues.csv").read_text().splitlines() == ["path,reason"]


def test_eval_measures_the_same_top1_again(digits_run):
    done = imgcls("eval", "--run", str(digits_run), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["top1"] == pytest.approx(float(_metrics(digits_run)[0]["val_top1"]), abs=1e-3)
    assert result["top5"] >= result["top1"] and result["num_samples"] == 179


def test_predict_gives_ranked_probabilities_and_reports_a_broken_file(digits_run, tmp_path):
    from imgcls.data.sources import digits_arrays

    images, labels = digits_arrays()
    paths = []
    for i in range(0, 1797, 90):  # 20 digits as 8x8 PNG files
        path = tmp_path / f"digit{i}_{labels[i]}.png"
        Image.fromarray(images[i, 0]).save(path)
        paths.append(path)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    done = imgcls(
        "predict", "--run", str(digits_run), "--json", "--topk", "3", *map(str, paths), str(tmp_path / "broken.png")
    )
    assert done.returncode == 1, done.stderr  # one input could not be read; the others were answered
    answers = json.loads(done.stdout)
    assert len(answers) == 21 and "error" in answers[-1]
    correct = 0
    for answer, path in zip(answers[:-1], paths):
        probs = [p["probability"] for p in answer["predictions"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-5
        correct += answer["predictions"][0]["label"] == path.stem.split("_")[1]
    assert correct >= 15  # training saw these digits (most of them); ~96 % on held-out ones


def test_a_tampered_weights_file_is_refused(digits_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "tampered"
    shutil.copytree(digits_run, run)
    weights = run / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-2] ^= 0x10
    weights.write_bytes(bytes(blob))
    assert main(["eval", "--run", str(run)]) == 2
    assert main(["predict", "--run", str(run), str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("SHA-256" in line and "refusing" in line for line in err)


def test_tta_export_onnx_and_weights_alone_say_they_do_not_apply(digits_run, tmp_path, capsys):
    assert main(["eval", "--run", str(digits_run), "--tta", "flip"]) == 2
    assert main(["export", "--run", str(digits_run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    assert main(["predict", "--run", str(digits_run), "--backend", "onnx", str(tmp_path)]) == 2
    weights = str(digits_run / "model.safetensors")
    assert main(["predict", "--model", "lbp_svm", "--weights", weights, str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4
    assert all("does not apply to classical pipeline models" in line for line in err[:3]), err
    assert "use --run RUN" in err[3]
    assert not (tmp_path / "m.onnx").exists()


def test_train_refuses_resume_and_fine_tuning_before_writing_anything(tmp_path, capsys):
    run = tmp_path / "never"
    assert main(["train", "--model", "hog_svm", "--data", "digits", "--out", str(run), "--resume"]) == 2
    assert main(["train", "--model", "hog_svm", "--data", "digits", "--out", str(run), "--weights", "x.pt"]) == 2
    err = capsys.readouterr().err
    assert err.count("does not apply to classical pipeline models") == 2
    assert not run.exists()


def test_models_lists_the_pipelines_with_their_papers_and_summary_refuses(capsys):
    assert main(["models", "svm"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert sorted(line.split()[0] for line in lines) == sorted(PIPELINES)
    assert any("Lazebnik et al. 2006" in line for line in lines)
    assert any("Dalal & Triggs 2005" in line for line in lines)
    assert main(["summary", "sift_fisher_svm"]) == 2
    assert "not fitted" in capsys.readouterr().err


def _stripe_folder(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", 16), ("val", 6)):
        for label, name in enumerate(("horizontal", "vertical")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                wave = 127 + 100 * np.sin(2 * np.pi * (np.arange(40) + rng.uniform(0, 8)) / rng.uniform(5, 9))
                img = np.tile(wave[:, None], (1, 40)) if label == 0 else np.tile(wave, (40, 1))
                img = np.clip(img + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8)
                Image.fromarray(np.stack([img] * 3, axis=2)).save(folder / f"{i}.png")
    (root / "train" / "vertical" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)


def test_a_folder_run_skips_and_reports_a_broken_file(tmp_path, monkeypatch):
    _stripe_folder(tmp_path / "data")
    monkeypatch.setenv("IMGCLS_DATA", str(tmp_path / "cache"))
    run = tmp_path / "run"
    argv = ["train", "--model", "hog_svm", "--data", str(tmp_path / "data"), "--out", str(run)]
    # In this process (the digits runs above are the subprocess ones): the same command line, one start-up less.
    assert main([*argv, "--set", "train.report=false"]) == 0
    with open(run / "data_issues.csv", newline="") as f:
        issues = list(csv.DictReader(f))
    assert [Path(row["path"]).name for row in issues] == ["broken.png"]
    assert float(_metrics(run)[0]["val_top1"]) == 100.0  # bar orientation: what HOG measures


def test_serve_answers_like_predict(digits_run, tmp_path):
    import threading
    import time

    import httpx
    import uvicorn
    from tests.support import free_port

    from imgcls.data.sources import digits_arrays
    from imgcls.inference import Predictor
    from imgcls.serve import create_app

    images, _ = digits_arrays()
    path = tmp_path / "seven.png"
    Image.fromarray(images[7, 0]).save(path)
    predictor = Predictor.from_run(digits_run)
    assert predictor.precision == "fp32"
    expected = predictor.predict([path], topk=3)[0].predictions
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(predictor), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/model", timeout=30).json()["name"] == "lbp_svm"
        got = httpx.post(f"{url}/predict?topk=3", content=path.read_bytes(), timeout=60).json()["predictions"]
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    assert [p["index"] for p in got] == [p.index for p in expected]
    assert [p["probability"] for p in got] == pytest.approx([p.probability for p in expected], abs=1e-6)


def test_a_fit_that_fails_leaves_no_run_folder(tmp_path, monkeypatch, capsys):
    # Class "b" holds only a broken file: the data layer skips it, and the one-vs-rest SVM refuses a class
    # without training images, after the run folder was created: it must be gone again.
    monkeypatch.setenv("IMGCLS_DATA", str(tmp_path / "cache"))
    for split in ("train", "val"):
        for name in ("a", "b"):
            (tmp_path / "data" / split / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(tmp_path / "data" / split / "a" / f"{i}.png")
    (tmp_path / "data" / "train" / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "data" / "val" / "b" / "0.png")
    run = tmp_path / "runs" / "never"
    assert main(["train", "--model", "hog_svm", "--data", str(tmp_path / "data"), "--out", str(run)]) == 2
    assert "has no training image" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_explain_says_it_does_not_apply_and_writes_nothing(digits_run, tmp_path, capsys):
    from imgcls.data.sources import digits_arrays

    images, _ = digits_arrays()
    path = tmp_path / "three.png"
    Image.fromarray(images[3, 0]).save(path)
    out = tmp_path / "why"
    assert main(["explain", "--run", str(digits_run), "--out", str(out), str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "explain (Grad-CAM, occlusion, activations) does not apply to classical" in err[0]
    assert not out.exists()
