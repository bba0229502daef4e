"""Calibration on known cases: ECE against a hand count, temperature scaling on a model made over-confident on
purpose, and the temperature travelling from finalize_run through model.json into predict and export."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from tests.inference import helpers as kit

from imgcls.engine.calibration import (
    NUM_BINS,
    T_MIN,
    calibration_report,
    fit_temperature,
    nll,
    reliability,
    softmax_probabilities,
)
from imgcls.errors import UserError
from imgcls.run_folder import ModelMeta, RunFolder


def test_ece_equals_a_hand_count():
    # Top probabilities 0.9 (right), 0.9 (wrong), 0.62 (right), 0.7 (right); 15 bins of width 1/15:
    # 0.9 -> bin 14 (13/15 < 0.9 <= 14/15), 0.62 -> bin 10, 0.7 -> bin 11 (1-based).
    # ECE = (2 * |0.5 - 0.9| + |1 - 0.62| + |1 - 0.7|) / 4 = 1.48 / 4 = 0.37.
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.38, 0.62], [0.7, 0.3]])
    targets = torch.tensor([0, 1, 1, 0])
    found = reliability(probs, targets)
    assert found.ece == pytest.approx(37.0)
    assert found.num_samples == 4 and len(found.counts) == NUM_BINS == 15
    assert [i for i, c in enumerate(found.counts) if c] == [9, 10, 13] and found.counts[13] == 2
    assert found.accuracy[13] == 0.5 and found.confidence[13] == pytest.approx(0.9)
    assert found.accuracy[0] is None and found.confidence[0] is None
    # One-hot targets count as their class.
    assert reliability(probs, torch.nn.functional.one_hot(targets, 2).float()).ece == pytest.approx(37.0)


def test_bins_are_closed_on_the_right():
    # A confidence of exactly m/15 belongs to bin m; 1.0 to the last one.
    probs = torch.tensor([[1.0, 0.0], [2 / 3, 1 / 3]], dtype=torch.float64)
    found = reliability(probs, torch.tensor([0, 0]))
    assert found.counts[14] == 1 and found.counts[9] == 1  # 2/3 = 10/15
    assert reliability(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)).ece is None


def _over_confident(n: int = 6000, k: int = 5, scale: float = 3.0, seed: int = 0):
    """Logits whose softmax is the true label distribution (labels drawn from it), then multiplied by ``scale``:
    a model calibrated at T = 1 made over-confident; the right temperature is ``scale``."""
    g = torch.Generator().manual_seed(seed)
    z = 1.5 * torch.randn(n, k, generator=g, dtype=torch.float64)
    labels = torch.multinomial(torch.softmax(z, dim=1), 1, generator=g).squeeze(1)
    return scale * z, labels


def test_temperature_scaling_lowers_ece_and_keeps_every_prediction():
    logits, labels = _over_confident()
    t = fit_temperature(logits, labels)
    assert 2.7 < t < 3.3  # the scale it was made over-confident by
    before = reliability(softmax_probabilities(logits), labels).ece
    after = reliability(softmax_probabilities(logits, t), labels).ece
    assert before > 10.0 and after < before / 4
    assert torch.equal(softmax_probabilities(logits, t).argmax(1), logits.argmax(1))
    # The search stopped at the minimum of the NLL.
    assert nll(logits, labels, t) <= min(nll(logits, labels, t * 1.02), nll(logits, labels, t / 1.02))


def test_under_confident_logits_get_a_temperature_below_one():
    logits, labels = _over_confident(scale=0.4, seed=1)
    assert 0.36 < fit_temperature(logits, labels) < 0.44


def test_a_validation_set_the_model_gets_all_right_stops_at_the_bound():
    logits = torch.tensor([[3.0, 0.0], [0.0, 2.0], [1.0, -1.0]])
    assert fit_temperature(logits, torch.tensor([0, 1, 0])) == pytest.approx(T_MIN, rel=1e-5)
    assert fit_temperature(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)) == 1.0


def test_a_single_binary_logit_is_the_pair_zero_z():
    g = torch.Generator().manual_seed(2)
    z = 4.0 * torch.randn(500, 1, generator=g, dtype=torch.float64)
    y = (torch.rand(500, generator=g, dtype=torch.float64) < torch.sigmoid(z[:, 0] / 4.0)).long()
    pair = torch.cat([torch.zeros_like(z), z], dim=1)
    assert fit_temperature(z, y) == pytest.approx(fit_temperature(pair, y), rel=1e-9)
    torch.testing.assert_close(softmax_probabilities(z, 2.0)[:, 1], torch.sigmoid(z[:, 0] / 2.0))


def test_report_has_both_sides_and_is_plain_json():
    logits, labels = _over_confident(n=300)
    out = calibration_report(logits, labels, 3.0)
    json.dumps(out, allow_nan=False)
    assert out["bins"] == 15 and out["num_samples"] == 300 and out["temperature"] == 3.0
    assert out["ece_calibrated"] < out["ece"] and out["nll_calibrated"] < out["nll"]
    assert sum(out["reliability"]["counts"]) == sum(out["reliability_calibrated"]["counts"]) == 300
    assert "ece_calibrated" not in calibration_report(logits, labels)


# --- model.json, finalize_run, predict, export ------------------------------------------------------------------


def _meta(**kw) -> ModelMeta:
    fields = dict(name="lenet5", num_classes=3, classes=["a", "b", "c"], input_size=[1, 32, 32], mean=[0.5],
                  std=[0.25], in_chans=1)  # fmt: skip
    fields.update(kw)
    return ModelMeta(**fields)


def test_model_json_checks_the_temperature(tmp_path):
    _meta(temperature=1.7).check()
    for bad, why in ((0.0, "positive"), (-1.0, "positive"), (float("inf"), "positive"), ("2", "positive")):
        with pytest.raises(UserError, match=f"temperature.*{why}"):
            _meta(temperature=bad).check()
    with pytest.raises(UserError, match=r"temperature.*not used by multi-label"):
        _meta(temperature=2.0, task="multilabel").check()


def test_finalize_run_fits_the_temperature_into_model_json(tmp_path):
    from tests.engine.test_evaluate import TensorLoader, TinyConvNet, _fake_data

    from imgcls.engine.bundle import load_bundle, save_bundle
    from imgcls.engine.evaluate import evaluate_model, finalize_run
    from imgcls.models import create_model

    torch.manual_seed(3)
    data, _ = _fake_data(n=60, k=3)
    data.test = TensorLoader(
        torch.randn(9, 3, 8, 8, generator=torch.Generator().manual_seed(4)), torch.arange(9) % 3, 4
    )
    model = TinyConvNet(num_classes=3)
    with torch.no_grad():
        model.fc.weight.mul_(20.0)  # confident and mostly wrong: a temperature well above 1
    shipped = create_model("lenet5", num_classes=3, in_chans=1)
    sha = save_bundle(tmp_path, shipped, _meta()).sha256
    out = finalize_run(tmp_path, model, data)
    logits = evaluate_model(model, data.val, task="multiclass")
    t = fit_temperature(logits.logits, logits.targets)
    assert t > 1.5
    assert out["calibration"]["temperature"] == pytest.approx(t)
    assert out["ece"] == out["calibration"]["ece_calibrated"] < out["calibration"]["ece"]
    assert out["test"]["calibration"]["temperature"] == pytest.approx(t) and "ece" in out["test"]
    record = RunFolder(tmp_path).read_meta()
    assert record.temperature == pytest.approx(t) and record.sha256 == sha
    load_bundle(tmp_path)  # the weights still match their record
    assert finalize_run(tmp_path, model, data, calibrate=False).get("calibration") is None


@pytest.fixture
def calibrated_run(tmp_path):
    run = kit.write_run(tmp_path / "run", name="resnet18_cifar", num_classes=4)
    folder = RunFolder(run)
    meta = folder.read_meta()
    meta.temperature = 2.5
    folder.write_meta(meta)
    return run


@pytest.mark.parametrize("engine", ["eager", "graph", "onnx"])
def test_predict_divides_the_logits_by_the_temperature(calibrated_run, tmp_path, engine):
    from imgcls.engine.bundle import load_bundle
    from imgcls.inference import Predictor

    image = kit.write_images(tmp_path / "images", 1)[0]
    # Every engine answers the network's own logits (the onnx one's export too: no division inside it); the
    # Predictor divides once.
    predictor = Predictor.from_run(calibrated_run, precision="fp32", engine=engine)
    model, _ = load_bundle(calibrated_run)
    x = predictor.preprocess.normalise(predictor.load(image)[None])
    with torch.no_grad():
        logits = model.eval()(x)[0]
    answer = predictor.predict([image], topk=4)[0].predictions
    expected = torch.softmax(logits / 2.5, dim=0)
    assert [p.index for p in answer] == expected.argsort(descending=True).tolist()
    assert [p.probability for p in answer] == pytest.approx(expected.sort(descending=True).values.tolist(), abs=1e-5)
    # Not the uncalibrated answer: the temperature made a difference that the test can see.
    assert abs(answer[0].probability - float(torch.softmax(logits, 0).max())) > 0.01


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_includes_the_division(calibrated_run, tmp_path, fmt):
    from imgcls.engine.bundle import load_bundle
    from imgcls.inference import export_run
    from imgcls.inference.predictor import read_onnx_metadata

    out = tmp_path / f"model.{fmt}"
    export_run(calibrated_run, fmt, out)
    model, _ = load_bundle(calibrated_run)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = model.eval()(x).numpy() / 2.5
    if fmt == "onnx":
        (got,) = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})
        assert read_onnx_metadata(out)["temperature"] == 2.5
    else:
        extra = {"model.json": ""}
        with torch.no_grad():
            got = torch.jit.load(str(out), _extra_files=extra)(x).numpy()
        assert json.loads(extra["model.json"])["temperature"] == 2.5
    np.testing.assert_allclose(got, expected, atol=1e-4 * max(1.0, np.abs(expected).max()), rtol=0)


def test_onnx_predictor_answers_what_the_torch_one_does(calibrated_run, tmp_path):
    from imgcls.inference import Predictor, export_run

    images = kit.write_images(tmp_path / "images", 3)
    export_run(calibrated_run, "onnx", tmp_path / "model.onnx")
    torch_side = Predictor.from_run(calibrated_run, precision="fp32").predict(images, topk=4)
    for onnx_side in (
        Predictor.from_onnx(tmp_path / "model.onnx").predict(images, topk=4),  # the graph divides
        Predictor.from_run(calibrated_run, backend="onnx").predict(images, topk=4),  # exported on the fly
    ):
        for a, b in zip(torch_side, onnx_side):
            assert [p.index for p in a.predictions] == [p.index for p in b.predictions]
            assert [p.probability for p in a.predictions] == pytest.approx(
                [p.probability for p in b.predictions], abs=1e-4
            )


def test_eval_prints_the_ece_before_and_after():
    from imgcls.cli.train_cmd import format_eval

    result = {"top1": 50.0, "calibration": {"ece": 17.183, "ece_calibrated": 2.956, "temperature": 0.4978, "bins": 15}}
    assert "ECE 17.18% as trained, 2.96% after temperature 0.498 (15 bins)" in format_eval(result)
    assert "after" not in format_eval({"top1": 50.0, "calibration": {"ece": 3.0, "bins": 15}})
