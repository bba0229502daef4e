"""model.safetensors + model.json: round trip, and weights refused unless their SHA-256 is the recorded one."""

import json

import pytest
import torch

from imgcls import create_model
from imgcls.engine.bundle import ModelMeta, load_bundle, read_meta, save_bundle
from imgcls.errors import UserError


def _bundle(folder):
    torch.manual_seed(0)
    model = create_model("lenet5", num_classes=3, in_chans=1)
    meta = ModelMeta("lenet5", 3, ["a", "b", "c"], [1, 32, 32], [0.5], [0.25], in_chans=1, resize=32)
    save_bundle(folder, model, meta)
    return model


def test_round_trip_gives_the_same_model(tmp_path):
    model = _bundle(tmp_path)
    loaded, meta = load_bundle(tmp_path)
    assert meta.classes == ["a", "b", "c"] and len(meta.sha256) == 64
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(loaded(x), model.eval()(x))
    assert not list(tmp_path.glob("*.tmp"))


def test_tampered_weights_are_refused_everywhere(tmp_path):
    _bundle(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(UserError, match="SHA-256"):
        load_bundle(tmp_path)
    # The same file named directly as weights (predict --model NAME --weights FILE) is checked against model.json.
    with pytest.raises(UserError, match="SHA-256"):
        create_model("lenet5", num_classes=3, in_chans=1, weights=weights)


def test_missing_hash_is_refused(tmp_path):
    _bundle(tmp_path)
    meta_file = tmp_path / "model.json"
    raw = json.loads(meta_file.read_text())
    raw["sha256"] = ""
    meta_file.write_text(json.dumps(raw))
    assert read_meta(tmp_path).sha256 == ""
    with pytest.raises(UserError, match="no sha256"):
        load_bundle(tmp_path)
