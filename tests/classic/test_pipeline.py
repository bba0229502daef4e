"""Pipelines learn a separable problem, round-trip through arrays exactly, and refuse bad settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("skimage")
pytest.importorskip("cv2")

from imgcls.classic import is_classic
from imgcls.classic.pipeline import PipelineConfig, fit_temperature
from imgcls.errors import UserError
from imgcls.models import create_model, list_models, model_entry

CLASSIC = ["hog_svm", "lbp_svm", "sift_bovw_svm", "sift_vlad_svm", "sift_fisher_svm"]
# Small vocabularies and descriptor grids for 32-pixel test images: the same code paths, a fraction of the work.
# VLAD gets one word: with words that split the two classes' descriptors apart, VLAD keeps only their residuals
# around each word (it drops the counts), which carry no class information on this toy problem.
SMALL = {
    "hog_svm": {},
    "lbp_svm": {},
    "sift_bovw_svm": dict(image_size=32, patch=8, step=4, codebook=8, codebook_images=30, pyramid=1),
    "sift_vlad_svm": dict(image_size=32, patch=8, step=4, codebook=1, codebook_images=30),
    "sift_fisher_svm": dict(image_size=32, patch=8, step=4, codebook=4, pca=8, codebook_images=30),
}


def stripes(n: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Class 0: vertical bars; class 1: horizontal bars (random period and phase, noise): ``(n, 1, S, S)`` uint8."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    coords = np.arange(size)
    images = []
    for label in labels:
        period, phase = rng.uniform(5, 9), rng.uniform(0, 10)
        wave = 127 + 100 * np.sin(2 * np.pi * (coords + phase) / period)
        img = np.tile(wave, (size, 1)) if label == 0 else np.tile(wave[:, None], (1, size))
        img = img + rng.normal(0, 15, (size, size))
        images.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(images)[:, None], labels


def textures(n: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Class 0: bars (edges: uniform LBP patterns); class 1: pixel noise (mostly non-uniform patterns)."""
    images, labels = stripes(n, seed, size)
    rng = np.random.default_rng(seed + 1)
    noise = rng.integers(0, 256, images.shape, dtype=np.uint8)
    return np.where(labels[:, None, None, None] == 1, noise, images), labels


def _data(name: str, n: int, seed: int):
    images, labels = (textures if name == "lbp_svm" else stripes)(n, seed)
    if model_entry(name).input_size[0] == 3:
        images = np.repeat(images, 3, axis=1)
    return images, labels


def _model(name: str, **kw):
    in_chans = model_entry(name).input_size[0]
    return create_model(name, num_classes=2, in_chans=in_chans, **{**SMALL[name], **kw})


def _inputs(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).float() / 255.0  # what a run's loader gives: mean 0, std 1


def test_the_classic_models_are_registered_with_their_papers():
    assert set(CLASSIC) <= set(list_models())
    for name in CLASSIC:
        entry = model_entry(name)
        assert is_classic(name) and "classic" in entry.tags
        assert any(year in entry.paper for year in ("2002", "2005", "2006", "2010"))
    assert not is_classic("lenet5") and not is_classic("no_such_model") and not is_classic(None)
    for name in CLASSIC:  # create_model's default channels are the registry's, as for the CNNs
        assert create_model(name).in_chans == model_entry(name).input_size[0]


@pytest.mark.parametrize("name", CLASSIC)
def test_a_pipeline_learns_a_separable_two_class_problem(name):
    x_train, y_train = _data(name, 60, seed=0)
    x_test, y_test = _data(name, 40, seed=1)
    model = _model(name)
    report = model.fit(x_train, y_train, seed=0)
    assert report.train_top1 == 100.0
    logits = model(_inputs(x_test))
    assert logits.shape == (40, 2) and logits.dtype == torch.float32
    accuracy = (logits.argmax(1).numpy() == y_test).mean()
    assert accuracy >= 0.95, f"{name}: {accuracy:.2%}"


def test_logits_rank_classes_as_the_svm_decision_values_and_give_calibrated_probabilities():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (90, 3, 32, 32), dtype=np.uint8)
    labels = np.arange(90) % 3
    images[labels == 1, 0] //= 2  # three classes that differ in their red channel's contrast
    images[labels == 2, 0] //= 8
    model = create_model("hog_svm", num_classes=3)
    model.fit(images, labels)
    x = _inputs(images[:12])
    decision = model.pipeline.decision_function(images[:12].transpose(0, 2, 3, 1))
    logits = model(x).double().numpy()
    np.testing.assert_allclose(logits, decision / model.pipeline.temperature, rtol=1e-6)
    np.testing.assert_array_equal(np.argsort(-logits, axis=1), np.argsort(-decision, axis=1))
    probs = torch.softmax(model(x), dim=1)
    np.testing.assert_allclose(probs.sum(1).numpy(), 1.0, rtol=1e-6)


def test_binary_logits_are_zero_and_the_decision_value():
    x, y = _data("hog_svm", 40, seed=0)
    model = _model("hog_svm")
    model.fit(x, y)
    d = model.pipeline.decision_function(x.transpose(0, 2, 3, 1))
    assert d.shape == (40,)  # liblinear's single binary decision value
    logits = model(_inputs(x)).double().numpy()
    np.testing.assert_array_equal(logits[:, 0], 0.0)
    np.testing.assert_allclose(logits[:, 1], d / model.pipeline.temperature, rtol=1e-6)


def test_fit_temperature_recovers_a_known_temperature():
    rng = np.random.default_rng(4)
    z = rng.normal(0, 3, (4000, 5))
    true_t = 2.5
    p = np.exp(z / true_t)
    p /= p.sum(1, keepdims=True)
    y = np.array([rng.choice(5, p=row) for row in p])
    assert fit_temperature(z, y) == pytest.approx(true_t, rel=0.1)


@pytest.mark.parametrize("name", CLASSIC)
def test_save_load_round_trip_gives_identical_decision_values(name, tmp_path):
    from safetensors.torch import load_file, save_file

    x, y = _data(name, 40, seed=0)
    model = _model(name)
    model.fit(x, y, seed=0)
    state = model.state_dict()
    assert state and all(isinstance(v, torch.Tensor) for v in state.values())
    save_file(dict(state), str(tmp_path / "w.safetensors"))
    again = _model(name)
    # a fresh model states the shapes a fit gives (the engine checks a saved state against them before loading)
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in state.items()}
    result = again.load_state_dict(load_file(str(tmp_path / "w.safetensors")))
    assert list(result.missing_keys) == [] and list(result.unexpected_keys) == []
    inputs = _inputs(_data(name, 10, seed=5)[0])
    np.testing.assert_array_equal(again(inputs).numpy(), model(inputs).numpy())
    hwc = x.transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(again.pipeline.decision_function(hwc), model.pipeline.decision_function(hwc))


def test_the_engine_bundle_saves_and_refuses_a_tampered_weights_file(tmp_path):
    from imgcls.engine.bundle import load_bundle, save_bundle
    from imgcls.run_folder import ModelMeta

    x, y = _data("hog_svm", 40, seed=0)
    model = _model("hog_svm")
    model.fit(x, y)
    meta = ModelMeta(
        name="hog_svm",
        num_classes=2,
        classes=["v", "h"],
        input_size=[3, 32, 32],
        mean=[0.0] * 3,
        std=[1.0] * 3,
        in_chans=3,
        model_kwargs=model.config.to_dict(),
    )
    save_bundle(tmp_path, model, meta)
    loaded, _ = load_bundle(tmp_path)
    np.testing.assert_array_equal(loaded(_inputs(x)).numpy(), model(_inputs(x)).numpy())
    weights = tmp_path / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-3] ^= 0x01  # one bit of the last array
    weights.write_bytes(bytes(blob))
    with pytest.raises(UserError, match=r"SHA-256 .* does not match"):
        load_bundle(tmp_path)


def test_arrays_that_do_not_fit_the_settings_are_refused():
    x, y = _data("sift_bovw_svm", 40, seed=0)
    model = _model("sift_bovw_svm")
    model.fit(x, y)
    state = model.state_dict()
    bigger = _model("sift_bovw_svm", codebook=16)  # a vocabulary of another size
    with pytest.raises(UserError, match="do not fit"):
        bigger.load_state_dict(state)
    keys = bigger.load_state_dict({k: v for k, v in state.items() if k != "svm.coef"}, strict=False)
    assert keys.missing_keys == ["svm.coef"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_an_unfitted_model_and_tracing_are_refused_with_one_line():
    model = create_model("hog_svm", num_classes=2)
    with pytest.raises(UserError, match="not fitted"):
        model(torch.zeros(1, 3, 32, 32))
    x, y = _data("hog_svm", 20, seed=0)
    model.fit(x, y)
    with pytest.raises(UserError, match="does not apply to classical pipeline models"):
        torch.jit.trace(model, torch.zeros(1, 3, 32, 32))


def test_settings_are_validated_with_the_setting_named():
    with pytest.raises(UserError, match=r"unknown setting model\.kwargs\.drop_rate"):
        create_model("hog_svm", drop_rate=0.5)
    with pytest.raises(UserError, match=r"model\.kwargs\.C: must be positive"):
        create_model("hog_svm", C=0)
    with pytest.raises(UserError, match=r"model\.kwargs\.kernel: the chi2 map needs non-negative"):
        create_model("sift_vlad_svm", kernel="chi2")
    with pytest.raises(UserError, match=r"model\.kwargs\.encoding"):
        create_model("hog_svm", encoding="bovw")
    with pytest.raises(UserError, match=r"model\.kwargs\.codebook: expected int"):
        create_model("sift_bovw_svm", codebook="many")
    config = PipelineConfig.from_dict({"features": "daisy", "encoding": "bovw", "lbp_scales": [[8, 1]]})
    assert config.lbp_scales == ((8, 1.0),) and PipelineConfig.from_dict(config.to_dict()) == config


def test_a_class_without_training_images_is_refused():
    x, y = _data("hog_svm", 20, seed=0)
    model = create_model("hog_svm", num_classes=3)
    with pytest.raises(UserError, match="class index 2 has no training image"):
        model.fit(x, y)


def test_daisy_descriptors_work_in_place_of_sift():
    x, y = _data("sift_bovw_svm", 40, seed=0)
    model = _model("sift_bovw_svm", features="daisy")
    model.fit(x, y)
    x_test, y_test = _data("sift_bovw_svm", 20, seed=1)
    assert (model(_inputs(x_test)).argmax(1).numpy() == y_test).mean() >= 0.9
