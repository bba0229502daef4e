"""Predictor: preprocessing identical to evaluation, every input answered in order, backends that agree."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from imgcls.data.reader import load_for_eval
from imgcls.engine.bundle import load_bundle
from imgcls.errors import UserError
from imgcls.inference import Predictor, expand_inputs
from imgcls.inference.export import export_onnx
from imgcls.inference.predictor import Preprocess, TorchRunner, probabilities
from imgcls.models import create_model


def _reference_probs(run, paths) -> torch.Tensor:
    """What evaluation computes: the data layer's eval view, normalised by model.json, fp32 softmax."""
    model, meta = load_bundle(run)
    c, h, _ = meta.input_size
    x = torch.stack([load_for_eval(p, size=h, resize=meta.resize, in_chans=c) for p in paths]).float() / 255
    x = (x - torch.tensor(meta.mean).view(1, -1, 1, 1)) / torch.tensor(meta.std).view(1, -1, 1, 1)
    with torch.no_grad():
        return torch.softmax(model(x), dim=1)


def _probs(results, num_classes) -> torch.Tensor:
    out = torch.zeros(len(results), num_classes)
    for i, r in enumerate(results):
        for p in r.predictions:
            out[i, p.index] = p.probability
    return out


def test_predicts_exactly_as_evaluation(kit, tmp_path, images):
    # resize > size: the shorter side goes to 40, then a 32x32 center crop, as model.json says.
    run = kit.write_run(tmp_path / "run", resize=40)
    predictor = Predictor.from_run(run, precision="fp32", batch_size=5)
    results = predictor.predict(images, topk=5)
    expected = _reference_probs(run, images)
    assert [r.path for r in results] == [str(p) for p in images]
    torch.testing.assert_close(_probs(results, 5), expected, atol=2e-6, rtol=0)
    for r, row in zip(results, expected, strict=True):
        assert [p.index for p in r.predictions] == row.argsort(descending=True).tolist()
        assert all(p.label == f"class_{p.index}" for p in r.predictions)


def test_every_input_gets_an_answer_in_order(kit, tmp_path, run_folder, images):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "text.jpg").write_text("this is not an image\n")
    (bad / "empty.png").write_bytes(b"")
    truncated = images[0].read_bytes()
    (bad / "truncated.jpg").write_bytes(truncated[: len(truncated) // 2])
    (bad / "no_images").mkdir()
    rgba = kit.photo(np.random.default_rng(1), 50, 40).convert("RGBA")
    inputs = [
        images[0],
        bad / "text.jpg",
        images[1].read_bytes(),
        bad / "empty.png",
        rgba,
        bad / "truncated.jpg",
        bad / "missing.jpg",
        str(bad / "no_images"),
        str(bad / "*.webp"),
        images[2],
    ]
    results = Predictor.from_run(run_folder, batch_size=3).predict(inputs, topk=3)

    assert len(results) == len(inputs)
    ok = [r.ok for r in results]
    assert ok == [True, False, True, False, True, False, False, False, False, True]
    assert results[2].path == "<input 2>" and results[4].path == "<input 4>"
    errors = {r.path.rsplit("/", 1)[-1]: r.error for r in results if not r.ok}
    assert "not an image" in errors["text.jpg"]
    assert "empty" in errors["empty.png"]
    assert "truncated" in errors["truncated.jpg"] or "corrupt" in errors["truncated.jpg"]
    assert errors["missing.jpg"] == "file not found"
    assert errors["no_images"] == "folder holds no image files"
    assert errors["*.webp"] == "no file matches this pattern"
    assert all("\n" not in e for e in errors.values())
    for r in results:
        if r.ok:
            probs = [p.probability for p in r.predictions]
            assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-5
            assert r.to_dict().keys() == {"path", "predictions"}
        else:
            assert r.to_dict().keys() == {"path", "error"}


def test_pil_and_bytes_inputs_match_the_file(kit, tmp_path, run_folder):
    rgba = kit.photo(np.random.default_rng(2), 64, 48).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((64, 48)))  # real transparency, composited on white
    rgba.save(tmp_path / "rgba.png")
    predictor = Predictor.from_run(run_folder, precision="fp32")
    by_file, by_image, by_bytes = predictor.predict(
        [tmp_path / "rgba.png", rgba, (tmp_path / "rgba.png").read_bytes()], topk=5
    )
    assert by_file.predictions == by_image.predictions == by_bytes.predictions


def test_batch_size_does_not_change_answers(run_folder, images):
    one = Predictor.from_run(run_folder, precision="fp32", batch_size=1).predict(images)
    many = Predictor.from_run(run_folder, precision="fp32", batch_size=5).predict(images)
    # Probabilities are reported to 6 decimals, so two equal answers may differ by one rounding step.
    torch.testing.assert_close(_probs(one, 5), _probs(many, 5), atol=2e-6, rtol=0)


def test_bf16_keeps_the_answers(kit, tmp_path):
    run = kit.write_run(tmp_path / "run")
    paths = kit.write_images(tmp_path / "images", 24, seed=3)
    fp32 = Predictor.from_run(run, precision="fp32", batch_size=8)
    bf16 = Predictor.from_run(run, precision="bf16", batch_size=8)
    assert bf16.precision == "bf16"
    assert bf16.runner.name in ("eager-bf16", "graph-bf16"), "bf16 runs on the faster bf16 engine measured here"
    assert set(bf16.selection.timings.seconds) == {"eager-bf16", "graph-bf16"}
    a, b = _probs(fp32.predict(paths), 5), _probs(bf16.predict(paths), 5)
    assert (a - b).abs().max() < 0.05  # bf16 keeps ~3 significant digits through the network
    assert (a.argmax(1) == b.argmax(1)).float().mean() >= 0.9


class _Untraceable(torch.nn.Module):
    """Refuses the bfloat16 example input that tracing feeds it, so the runner must fall back to eager autocast."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3 * 8 * 8, 4)

    def forward(self, x):
        if x.dtype != torch.float32:
            raise TypeError("fp32 input only")
        return self.fc(x.flatten(1))


def test_bf16_falls_back_to_eager_when_tracing_fails(caplog):
    preprocess = Preprocess(input_size=(3, 8, 8), resize=8, mean=(0.5,) * 3, std=(0.25,) * 3)
    model = _Untraceable()
    runner = TorchRunner(model, preprocess, precision="bf16")
    assert runner.graph is None and "bf16 graph not built (TypeError" in caplog.text
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    expected = TorchRunner(model, preprocess, precision="fp32")(x)
    torch.testing.assert_close(runner(x), expected, atol=0.1, rtol=0.05)


def test_onnx_backend_agrees_and_ignores_a_stale_export(kit, tmp_path, images):
    run = kit.write_run(tmp_path / "run", seed=0)
    other_model, other_meta = load_bundle(kit.write_run(tmp_path / "other", seed=1))
    # RUN/model.onnx exported from *other* weights must not be used for this run.
    export_onnx(other_model, other_meta, run / "model.onnx")
    torch_answers = Predictor.from_run(run, precision="fp32").predict(images)
    onnx_predictor = Predictor.from_run(run, backend="onnx")
    assert onnx_predictor.backend == "onnx" and onnx_predictor.sha256 == load_bundle(run)[1].sha256
    onnx_answers = onnx_predictor.predict(images)
    torch.testing.assert_close(_probs(onnx_answers, 5), _probs(torch_answers, 5), atol=1e-5, rtol=0)

    # An export of the run's own weights is picked up and needs nothing but the file.
    model, meta = load_bundle(run)
    export_onnx(model, meta, run / "model.onnx")
    from_file = Predictor.from_onnx(run / "model.onnx")
    assert from_file.classes == meta.classes and from_file.preprocess == onnx_predictor.preprocess
    torch.testing.assert_close(_probs(from_file.predict(images), 5), _probs(torch_answers, 5), atol=1e-5, rtol=0)


def test_from_weights_reads_the_classifier_size(kit, tmp_path, images):
    run = kit.write_run(tmp_path / "run", num_classes=7)
    weights = tmp_path / "plain.safetensors"  # the weights alone, away from their model.json
    shutil.copy(run / "model.safetensors", weights)
    predictor = Predictor.from_weights(kit.TINY, weights, precision="fp32")
    assert predictor.classes == [str(i) for i in range(7)]
    assert predictor.input_size == (3, 32, 32)  # the file's first convolution takes 3 channels
    # A torch pickle of the same state dict, wrapped as a training checkpoint, gives the same answers.
    model, _ = load_bundle(run)
    torch.save({"model": model.state_dict()}, tmp_path / "ckpt.pt")
    again = Predictor.from_weights(kit.TINY, tmp_path / "ckpt.pt", classes=list("abcdefg"), precision="fp32")
    first, second = predictor.predict(images[:3]), again.predict(images[:3])
    for r1, r2 in zip(first, second, strict=True):
        assert [p.index for p in r1.predictions] == [p.index for p in r2.predictions]
        assert [p.label for p in r2.predictions] == ["abcdefg"[p.index] for p in r1.predictions]
    with pytest.raises(UserError, match="7 classes but 3 class names"):
        Predictor.from_weights(kit.TINY, weights, classes=["a", "b", "c"])
    with pytest.raises(UserError, match="not found"):
        Predictor.from_weights(kit.TINY, tmp_path / "nope.safetensors")


def test_weights_of_a_run_folder_are_that_run(kit, tmp_path, images):
    """`predict --model NAME --weights RUN/model.safetensors` answers as `predict --run RUN` (issue 11 item 9)."""
    run = kit.write_run(tmp_path / "run", num_classes=4, in_chans=1, resize=36)
    by_weights = Predictor.from_weights(kit.TINY, run / "model.safetensors", precision="fp32")
    by_run = Predictor.from_run(run, precision="fp32")
    assert by_weights.classes == by_run.classes == [f"class_{i}" for i in range(4)]
    assert by_weights.preprocess == by_run.preprocess and by_weights.input_size == (1, 32, 32)
    assert [r.to_dict() for r in by_weights.predict(images[:3])] == [r.to_dict() for r in by_run.predict(images[:3])]
    with pytest.raises(UserError, match=r"says model\.safetensors holds lenet5"):
        Predictor.from_weights("resnet18_cifar", run / "model.safetensors")


@pytest.mark.parametrize("in_chans", [1, 3])
def test_from_weights_reads_the_input_channels_from_the_file(kit, tmp_path, images, in_chans):
    model = create_model("lenet5", num_classes=10, in_chans=in_chans)
    weights = tmp_path / f"lenet_{in_chans}.pt"
    torch.save(model.state_dict(), weights)
    predictor = Predictor.from_weights("lenet5", weights, precision="fp32")
    assert predictor.input_size == (in_chans, 32, 32)
    assert len(predictor.preprocess.mean) == in_chans
    answers = predictor.predict(images[:2])  # RGB files, converted to the network's channels
    assert all(r.ok and len(r.predictions) == 5 for r in answers)


def test_tampered_weights_are_refused(run_folder):
    weights = run_folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(UserError, match="SHA-256"):
        Predictor.from_run(run_folder)


def test_expand_inputs(kit, tmp_path):
    kit.write_images(tmp_path / "a", 2)
    kit.write_images(tmp_path / "a" / "nested", 2, suffix=".png")
    (tmp_path / "a" / "notes.txt").write_text("not an input")
    (tmp_path / "a" / ".hidden.jpg").write_bytes(b"")
    kit.write_images(tmp_path / "b", 3)
    paths = expand_inputs([tmp_path / "a", str(tmp_path / "b" / "img_00[01].jpg"), "missing/*.jpg"])
    names = [p.replace(str(tmp_path), "") for p in paths]
    assert names == [
        "/a/img_000.jpg",
        "/a/img_001.jpg",
        "/a/nested/img_000.png",
        "/a/nested/img_001.png",
        "/b/img_000.jpg",
        "/b/img_001.jpg",
        "missing/*.jpg",
    ]


def test_probabilities_per_task():
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    assert torch.allclose(probabilities(logits, "multiclass").sum(), torch.tensor(1.0))
    multi = probabilities(logits, "multilabel")
    torch.testing.assert_close(multi, torch.sigmoid(logits))
    binary = probabilities(torch.tensor([[0.0], [3.0]]), "binary")
    torch.testing.assert_close(binary[:, 1], torch.sigmoid(torch.tensor([0.0, 3.0])))
    torch.testing.assert_close(binary.sum(1), torch.ones(2))


def test_grayscale_model_takes_colour_files(kit, tmp_path, images):
    run = kit.write_run(tmp_path / "gray", in_chans=1)
    predictor = Predictor.from_run(run, precision="fp32")
    assert predictor.input_size[0] == 1
    results = predictor.predict(images[:4], topk=5)
    torch.testing.assert_close(_probs(results, 5), _reference_probs(run, images[:4]), atol=2e-6, rtol=0)


def test_bad_arguments_are_user_errors(run_folder, images):
    with pytest.raises(UserError, match="topk"):
        Predictor.from_run(run_folder).predict(images, topk=0)
    with pytest.raises(UserError, match="batch-size"):
        Predictor.from_run(run_folder, batch_size=0)
    with pytest.raises(UserError, match="backend"):
        Predictor.from_run(run_folder, backend="tensorrt")
    with pytest.raises(UserError, match=r"model\.json"):
        Predictor.from_run(run_folder.parent / "nowhere")


def test_one_input_is_answered_as_in_a_batch(run_folder, images, tmp_path):
    # A single input is decoded in the calling thread (no pool): same answer as inside a batch, same error text.
    predictor = Predictor.from_run(run_folder, precision="fp32", batch_size=4)
    batch = predictor.predict(images[:3])
    for i, path in enumerate(images[:3]):
        (alone,) = predictor.predict([path])
        assert alone == batch[i]
    bad = tmp_path / "bad.jpg"
    bad.write_text("this is not an image\n")
    (alone,) = predictor.predict([bad])
    (_, in_batch) = predictor.predict([images[0], bad])
    assert alone.error and alone.error == in_batch.error and not alone.predictions
