"""predict without PyTorch (imgcls.inference.fastpath): the full path records an ONNX Runtime choice, a later
request that matches it answers the same from the same ONNX file with NumPy, and anything that differs takes the
full path again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tests.inference import helpers

from imgcls.inference import Predictor, fastpath
from imgcls.run_folder import RunFolder

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "inference-cache"
    monkeypatch.setenv("IMGCLS_INFERENCE_CACHE", str(folder))
    return folder


def _same_answers(full, fast) -> None:
    assert len(full) == len(fast)
    for a, b in zip(full, fast, strict=True):
        assert (a.path, a.error, a.labels) == (b.path, b.error, b.labels)
        assert [p.index for p in a.predictions] == [p.index for p in b.predictions]
        assert [p.label for p in a.predictions] == [p.label for p in b.predictions]
        np.testing.assert_allclose(
            [p.probability for p in a.predictions], [p.probability for p in b.predictions], atol=2e-6
        )


def _inputs(tmp_path) -> list[str]:
    paths = [str(p) for p in helpers.write_images(tmp_path / "images", 11)]
    broken = tmp_path / "images" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not really a jpeg")
    return [*paths, str(broken), str(tmp_path / "missing.png")]


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_a_recorded_onnx_choice_answers_the_same_without_the_full_path(tmp_path, cache, task):
    run = helpers.write_run(tmp_path / "run", task=task, num_classes=6)
    if task == "multiclass":  # a fitted temperature divides the logits on both paths
        record = json.loads(RunFolder(run).meta.read_text())
        record["temperature"] = 1.7
        RunFolder(run).meta.write_text(json.dumps(record))
    else:  # thresholds of the label sets, one per class, some of them on the high side
        record = json.loads(RunFolder(run).meta.read_text())
        record["thresholds"] = [0.2, 0.5, 0.9, 0.1, 0.6, 0.3]
        RunFolder(run).meta.write_text(json.dumps(record))
    assert fastpath.open_remembered(run, engine="onnx", batch_size=4) is None, "nothing recorded yet"
    full = Predictor.from_run(run, engine="onnx", batch_size=4)
    assert full.selection.engine.name == "onnx"
    fast = fastpath.open_remembered(run, engine="onnx", batch_size=4)
    assert fast is not None and fast.task == task
    assert "PyTorch not imported" in fast.selection.describe()
    inputs = _inputs(tmp_path)
    full_answers, fast_answers = full.predict(inputs, topk=4), fast.predict(inputs, topk=4)
    _same_answers(full_answers, fast_answers)
    assert sum(not r.ok for r in fast_answers) == 2, "the broken and the missing file are answered by their error"
    if task == "multilabel":
        label_sets = {r.labels for r in fast_answers if r.ok}
        assert len(label_sets) > 1, "the label sets differ between images (so their agreement means something)"


def test_anything_that_differs_takes_the_full_path(tmp_path, cache, monkeypatch):
    run = helpers.write_run(tmp_path / "run")
    Predictor.from_run(run, engine="onnx", batch_size=8)
    assert fastpath.open_remembered(run, engine="onnx", batch_size=8) is not None
    assert fastpath.open_remembered(run, engine="onnx", batch_size=32) is not None, "same timing batch (min(b, 8))"
    assert fastpath.open_remembered(run, engine="onnx", batch_size=4) is None, "timed on another batch"
    assert fastpath.open_remembered(run, batch_size=8) is None, "a measured choice is another request"
    assert fastpath.open_remembered(run, engine="eager", batch_size=8) is None
    assert fastpath.open_remembered(run, precision="bf16", engine="onnx", batch_size=8) is None
    with monkeypatch.context() as m:
        m.setenv("OMP_NUM_THREADS", "1")
        assert fastpath.open_remembered(run, engine="onnx", batch_size=8) is None, "other threads"
    (entry,) = json.loads((cache / fastpath.RECORDS).read_text()).values()
    onnx_file = Path(entry["file"])
    os.utime(onnx_file, ns=(onnx_file.stat().st_atime_ns, onnx_file.stat().st_mtime_ns + 10**9))
    assert fastpath.open_remembered(run, engine="onnx", batch_size=8) is None, "the ONNX file changed"
    Predictor.from_run(run, engine="onnx", batch_size=8)  # records it again
    assert fastpath.open_remembered(run, engine="onnx", batch_size=8) is not None
    meta_file = RunFolder(run).meta
    original = meta_file.read_text()
    meta_file.write_text(json.dumps({**json.loads(original), "name": "resnet18_cifar"}))
    assert fastpath.open_remembered(run, engine="onnx", batch_size=8) is None, "model.json edited by hand"
    meta_file.write_text(original)
    assert fastpath.open_remembered(run, engine="onnx", batch_size=8) is not None
    weights = RunFolder(run).weights
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert fastpath.open_remembered(run, engine="onnx", batch_size=8) is None, "weights that fail their SHA-256"


def test_an_int8_record_over_the_allowed_drop_takes_the_full_path(tmp_path, cache):
    run = helpers.write_run(tmp_path / "run")
    full = Predictor.from_run(run, engine="onnx", batch_size=4)
    meta = RunFolder(run).read_meta()
    check = {
        "engine": "onnx-int8",
        "images": 200,
        "fp32_top1": 80.0,
        "int8_top1": 77.5,
        "agreement": 95.0,
        "calibration_images": 64,
        "drop": 2.5,
    }
    fastpath.remember(meta, "int8", None, 4, "onnx-int8", full.selection.engine.file, 2, check)
    assert fastpath.open_remembered(run, precision="int8", batch_size=4, max_int8_drop=1.0) is None
    fast = fastpath.open_remembered(run, precision="int8", batch_size=4, max_int8_drop=3.0)
    assert fast is not None and fast.precision == "int8"
    assert "drop +2.50 points" in fast.selection.describe()


def test_the_command_answers_without_importing_pytorch_the_second_time(tmp_path, cache):
    run = helpers.write_run(tmp_path / "run")
    inputs = _inputs(tmp_path)
    probe = (
        "import json, sys; from imgcls.cli import main; code = main(sys.argv[1:]); "
        "print(json.dumps({'torch': 'torch' in sys.modules, 'code': code}), file=sys.stderr)"
    )
    command = [sys.executable, "-c", probe, "predict", "--run", str(run), "--engine", "onnx", "--json", *inputs]
    env = dict(os.environ, IMGCLS_INFERENCE_CACHE=str(cache))
    first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    for done, torch_loaded in ((first, True), (second, False)):
        status = json.loads(done.stderr.strip().splitlines()[-1])
        assert status == {"torch": torch_loaded, "code": 1}, done.stderr  # 1: two inputs could not be read
    assert "engine onnx (forced)" in first.stderr
    assert "engine onnx (remembered; PyTorch not imported)" in second.stderr
    a, b = json.loads(first.stdout), json.loads(second.stdout)
    assert [r.get("error") for r in a] == [r.get("error") for r in b]
    assert [[p["index"] for p in r.get("predictions", [])] for r in a] == [
        [p["index"] for p in r.get("predictions", [])] for r in b
    ]


def test_plan_takes_the_engine_estimated_to_answer_soonest_and_never_a_slower_one():
    entry = {
        "engine": "graph-bf16",
        "start": 2.0,
        "per_image": 0.010,
        "alternatives": {"onnx": {"start": 0.2, "per_image": 0.020}, "onnx-int8": {"start": 0.3, "per_image": 0.05}},
    }
    # graph-bf16 catches up with onnx at (2.0 - 0.2) / (0.020 - 0.010) = 180 images; ties keep the full path.
    assert fastpath.plan(entry, 1)[0] == "onnx"
    assert fastpath.plan(entry, 179)[0] == "onnx"
    assert fastpath.plan(entry, 180)[0] == "graph-bf16"
    assert fastpath.plan(entry, 5000)[0] == "graph-bf16"
    for n in (0, 1, 7, 50, 179, 180, 181, 400, 10**6):
        name, estimates = fastpath.plan(entry, n)
        assert estimates[name] == min(estimates.values()), n
        assert estimates["graph-bf16"] == pytest.approx(2.0 + 0.010 * n)
    assert fastpath.plan(entry, None) == ("graph-bf16", {}), "an unknown count keeps the fastest per image"
    assert fastpath.plan({**entry, "start": None}, 1) == ("graph-bf16", {}), "a missing figure too"
    assert fastpath.plan({"engine": "onnx"}, 1) == ("onnx", {})


def test_a_pytorch_choice_is_recorded_with_its_onnx_rivals_costs(tmp_path, cache, monkeypatch):
    """From a real measurement: an ONNX Runtime choice is recorded as before; a PyTorch choice (the same measurement
    with the remembered choice turned to the frozen graph, as on a host where it won) is recorded with its start
    (PyTorch's import, the weights and the engine) and its ONNX Runtime rival's costs."""
    run = helpers.write_run(tmp_path / "run")
    monkeypatch.setattr(fastpath, "_torch_import_seconds", 1.25)  # what the command line measures before this
    first = Predictor.from_run(run, precision="fp32", batch_size=4).selection
    if not first.settled:
        pytest.skip("the measurement ran beside busy processes, so nothing was remembered")
    records = cache / fastpath.RECORDS
    if first.engine.name == "onnx":
        (entry,) = json.loads(records.read_text()).values()
        assert entry["engine"] == "onnx" and Path(entry["file"]) == first.engine.file.resolve()
        assert "alternatives" not in entry
    choices_file = cache / "choices.json"
    (key,) = json.loads(choices_file.read_text())
    choices = json.loads(choices_file.read_text())
    choices[key]["engine"] = "graph"
    choices_file.write_text(json.dumps(choices))
    records.unlink(missing_ok=True)
    selection = Predictor.from_run(run, precision="fp32", batch_size=4).selection
    assert (selection.how, selection.engine.name) == ("remembered", "graph")
    (entry,) = json.loads(records.read_text()).values()
    graph, onnx = first.costs["graph"], first.costs["onnx"]
    assert entry["engine"] == "graph" and entry["start"] > 1.25 + graph.start
    assert entry["per_image"] == pytest.approx(graph.per_image)
    assert set(entry["alternatives"]) == {"onnx"}
    rival = entry["alternatives"]["onnx"]
    assert rival["start"] == pytest.approx(onnx.start) and rival["per_image"] == pytest.approx(onnx.per_image)
    assert Path(rival["file"]) == onnx.file.resolve() and rival["check"] is None
    for count in (1, 10**6):
        fast = fastpath.open_remembered(run, precision="fp32", batch_size=4, inputs=count)
        assert (fast.selection.engine_name if fast is not None else "graph") == fastpath.plan(entry, count)[0]
    assert fastpath.open_remembered(run, precision="fp32", batch_size=4) is None, "no count: the full path"
    monkeypatch.setattr(fastpath, "_torch_import_seconds", None)  # PyTorch imported by the caller: cost unknown
    records.unlink()
    Predictor.from_run(run, precision="fp32", batch_size=4)
    assert not records.exists()


def test_the_command_skips_pytorch_for_a_few_inputs_and_keeps_it_for_many(tmp_path, cache):
    """A recorded PyTorch choice and its ONNX Runtime rival, with figures that cross at 5 images: 1 input answers
    without PyTorch, 11 take the full path; the answers are the same."""
    run = helpers.write_run(tmp_path / "run")
    inputs = _inputs(tmp_path)[:11]
    onnx_file = Predictor.from_run(run, engine="onnx", batch_size=4).selection.engine.file
    (cache / fastpath.RECORDS).unlink()
    meta = RunFolder(run).read_meta()
    from imgcls.inference.engines import Cost

    rival = {"onnx": Cost(start=0.1, per_image=0.2, file=onnx_file)}
    fastpath.remember(meta, "fp32", None, 4, "graph", None, 2, start=1.0, per_image=0.001, alternatives=rival)
    probe = (
        "import json, sys; from imgcls.cli import main; code = main(sys.argv[1:]); "
        "print(json.dumps({'torch': 'torch' in sys.modules, 'code': code}), file=sys.stderr)"
    )
    command = [sys.executable, "-c", probe, "predict", "--run", str(run), "--precision", "fp32", "--batch-size", "4"]
    command += ["--json"]
    env = dict(os.environ, IMGCLS_INFERENCE_CACHE=str(cache))
    one = subprocess.run([*command, inputs[0]], capture_output=True, text=True, env=env, timeout=300)
    many = subprocess.run([*command, *inputs], capture_output=True, text=True, env=env, timeout=300)
    assert json.loads(one.stderr.strip().splitlines()[-1]) == {"torch": False, "code": 0}, one.stderr
    assert "engine onnx (chosen for 1 input: about 0.30 s here without PyTorch against 1.00 s for graph" in one.stderr
    assert json.loads(many.stderr.strip().splitlines()[-1]) == {"torch": True, "code": 0}, many.stderr
    assert "PyTorch not imported" not in many.stderr
    a, b = json.loads(one.stdout)[0], json.loads(many.stdout)[0]
    assert a["path"] == b["path"] and [p["index"] for p in a["predictions"]] == [p["index"] for p in b["predictions"]]
