"""Loading weights: format detection, key mapping, parity with torchvision/timm, class-count change, downloads.

Parity: ``tests/models/golden/<name>.json`` holds the reference library's key layout and logits for weights
filled by ``fill_value`` (the same procedure as ``tools/make_golden.py``, re-implemented here). The test writes
those tensors under the reference key names into a file, loads it through ``create_model(weights=file)`` and
compares our logits with the reference ones.
"""

from __future__ import annotations

import json
import logging
import math
import re
import zlib
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from tests.models.helpers import TinyNet, outputs, trained_tiny

import imgcls
from imgcls.errors import UserError
from imgcls.models import weights as W

GOLDEN = Path(__file__).parent / "golden"
PERIOD = 65521


# ---- the deterministic fill of tools/make_golden.py, re-implemented on our side -----------------------------------
def uniform(key: str, n: int) -> torch.Tensor:
    return _tile(_block(key, n), n)


def _block(key: str, n: int) -> torch.Tensor:
    # The script's integer hash in numpy's uint32 arithmetic (wraps mod 2**32, no masking needed).
    h = np.arange(min(n, PERIOD), dtype=np.uint32) + np.uint32(zlib.crc32(key.encode()))
    for _ in range(2):
        h = (h ^ (h >> np.uint32(16))) * np.uint32(0x45D9F3B)
    h = h ^ (h >> np.uint32(16))
    return torch.from_numpy(h.astype(np.float64) / 2.0**32)


def _tile(block: torch.Tensor, n: int) -> torch.Tensor:
    return block.repeat(-(-n // PERIOD))[:n] if n > PERIOD else block


def fill_value(key: str, shape: tuple[int, ...]) -> torch.Tensor:
    # Element-wise in u, so it is applied to one period and then tiled (same values as the script's order).
    n = math.prod(shape)
    u = _block(key, n)
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "running_var":
        v = 0.5 + u
    elif leaf == "running_mean":
        v = (2 * u - 1) * 0.1
    elif len(shape) >= 2:
        v = (2 * u - 1) * math.sqrt(3.0 / (n // shape[0]))
    elif leaf == "weight":
        v = 0.75 + 0.5 * u
    else:
        v = (2 * u - 1) * 0.1
    return _tile(v.to(torch.float32), n).reshape(shape)


def golden_state(golden: dict) -> dict[str, torch.Tensor]:
    return {
        k: torch.zeros((), dtype=torch.int64) if k.endswith("num_batches_tracked") else fill_value(k, tuple(shape))
        for k, shape in golden["keys"]
    }


def golden_input(golden: dict) -> torch.Tensor:
    c, h, w = golden["input_size"]
    return (2 * uniform("input", c * h * w) - 1).to(torch.float32).reshape(1, c, h, w)


def test_fill_matches_the_reference_script():
    # Values printed by tools/make_golden.py's own uniform() and fill_value() in the reference environment.
    expected = [0.04211889184080064, 0.21260882238857448, 0.7138902528677136, 0.3057383643463254]
    assert uniform("features.0.weight", 4).tolist() == expected
    assert fill_value("bn1.running_var", (3,)).tolist() == [1.0340919494628906, 0.971885085105896, 1.157044768333435]


# One architecture per reference library and layout quirk runs in `make test` (ResNet through create_model, Inception
# v3 with its auxiliary head's keys, DPN-92 with timm's 1×1-conv classifier, DenseNet below, one of each small family:
# inverted residuals with SE, MBConv with stochastic depth, RegNet's group convs, ResNet-C/D); the rest is slow.
FAST = {"resnet18", "inception_v3", "dpn92", "mobilenet_v3_small", "efficientnet_b0", "regnet_y_400mf", "resnet10t"}
GOLDEN_NAMES = [
    pytest.param(p.stem, marks=() if p.stem in FAST else pytest.mark.slow) for p in sorted(GOLDEN.glob("*.json"))
]


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_parity_with_reference_library(name, tmp_path):
    golden = json.loads((GOLDEN / f"{name}.json").read_text())
    path = tmp_path / f"{name}.safetensors"
    save_file(golden_state(golden), str(path))
    assert name in imgcls.list_models(), f"golden file {name}.json for a model that is not registered"
    if name == "resnet18":  # the user's path, with the model's own initialisation first
        model = imgcls.create_model(name, weights=path)
    else:
        with torch.device("meta"):  # skip initialising weights that the file replaces
            model = imgcls.create_model(name)
        W.load_weights(model, name, path)
    model.eval()
    with torch.no_grad():
        out = model(golden_input(golden))[0].double()
    ref = torch.tensor(golden["logits"], dtype=torch.float64)
    scale = golden["logits_std"]
    torch.testing.assert_close(out[: len(ref)], ref, rtol=1e-4, atol=1e-4 * scale)
    assert float(out.mean()) == pytest.approx(golden["logits_mean"], abs=1e-4 * scale)
    assert float(out.std()) == pytest.approx(golden["logits_std"], rel=1e-4)


def test_densenet_published_old_style_keys_load(tmp_path):
    """torchvision's published DenseNet files spell ``denselayer1.norm.1.weight``; they load to the same logits."""
    golden = json.loads((GOLDEN / "densenet121.json").read_text())
    old = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))([12])\.(weight|bias|running_mean|running_var)$")
    state = {old.sub(r"\1.\2.\3", k): v for k, v in golden_state(golden).items()}
    assert "features.denseblock1.denselayer1.norm.1.weight" in state
    path = tmp_path / "densenet121-old.pth"
    torch.save(state, path)
    model = imgcls.create_model("densenet121", weights=path).eval()
    with torch.no_grad():
        out = model(golden_input(golden))[0].double()
    ref = torch.tensor(golden["logits"], dtype=torch.float64)
    torch.testing.assert_close(out[: len(ref)], ref, rtol=1e-4, atol=1e-4 * golden["logits_std"])


@pytest.mark.parametrize(
    "layout",
    ["safetensors", "pickle", "state_dict_wrapper", "model_wrapper", "ddp_prefix", "compile_prefix", "no_num_batches"],
)
def test_formats_are_detected_and_mapped(layout, tmp_path):
    src = trained_tiny()
    state = src.state_dict()
    path = tmp_path / "weights.bin"  # the extension says nothing; the content decides
    if layout == "safetensors":
        save_file(dict(state), str(path))
    elif layout == "pickle":
        torch.save(state, path)
    elif layout == "state_dict_wrapper":
        torch.save({"state_dict": state, "epoch": 3, "optimizer": {"lr": 0.1}}, path)
    elif layout == "model_wrapper":
        torch.save({"model": state, "epoch": 3}, path)
    elif layout == "ddp_prefix":
        torch.save(OrderedDict((f"module.{k}", v) for k, v in state.items()), path)
    elif layout == "compile_prefix":
        save_file({f"_orig_mod.{k}": v for k, v in state.items()}, str(path))
    else:
        torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, path)
    dst = TinyNet()
    report = W.load_weights(dst, "tiny", path)
    assert report.file_format == ("safetensors" if layout in ("safetensors", "compile_prefix") else "pickle")
    torch.testing.assert_close(outputs(dst), outputs(src), rtol=0, atol=0)


def test_one_by_one_conv_classifier_maps_to_linear(tmp_path):
    src = trained_tiny()
    state = dict(src.state_dict())
    state["fc.weight"] = state["fc.weight"].reshape(10, 8, 1, 1)  # timm's DPN keeps its classifier as a conv
    torch.save(state, tmp_path / "w.pth")
    dst = TinyNet()
    report = W.load_weights(dst, "tiny", tmp_path / "w.pth")
    assert any("1x1" in m for m in report.mappings)
    torch.testing.assert_close(outputs(dst), outputs(src))


def test_first_conv_adapts_to_grey_input(tmp_path):
    src = trained_tiny()
    save_file(dict(src.state_dict()), str(tmp_path / "w.safetensors"))
    dst = TinyNet(in_chans=1)
    W.load_weights(dst, "tiny", tmp_path / "w.safetensors")
    # A grey image through the summed filters equals the same grey value on all three RGB channels.
    grey = torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(dst.eval()(grey), src(grey.expand(1, 3, 8, 8)), rtol=1e-5, atol=1e-6)


def test_other_class_count_keeps_backbone_and_logs(tmp_path, caplog):
    src = trained_tiny(num_classes=1000)
    torch.save(src.state_dict(), tmp_path / "imagenet.pth")
    torch.manual_seed(1)
    dst = TinyNet(num_classes=5)
    fresh_fc = dst.fc.weight.detach().clone()
    with caplog.at_level(logging.INFO, logger="imgcls"):
        report = W.load_weights(dst, "tiny", tmp_path / "imagenet.pth")
    assert report.new_classifier
    torch.testing.assert_close(dst.conv1.weight, src.conv1.weight, rtol=0, atol=0)
    torch.testing.assert_close(dst.bn1.running_var, src.bn1.running_var, rtol=0, atol=0)
    torch.testing.assert_close(dst.fc.weight, fresh_fc, rtol=0, atol=0)
    assert dst.fc.weight.shape == (5, 8)
    lines = [r.getMessage() for r in caplog.records if r.name == "imgcls"]
    assert len(lines) == 1 and "1000 classes" in lines[0] and "5" in lines[0]


def test_feature_extractor_drops_classifier(tmp_path):
    src = trained_tiny(num_classes=1000)
    torch.save(src.state_dict(), tmp_path / "imagenet.pth")
    dst = TinyNet(num_classes=0)
    W.load_weights(dst, "tiny", tmp_path / "imagenet.pth")
    torch.testing.assert_close(dst.conv1.weight, src.conv1.weight, rtol=0, atol=0)


def test_file_that_does_not_fit_names_keys_and_shapes(tmp_path):
    state = dict(trained_tiny().state_dict())
    state["conv2.weight"] = torch.zeros(3)
    del state["bn1.bias"]
    state["conv1.weight"] = torch.zeros(16, 3, 3, 3)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(UserError) as err:
        W.load_weights(TinyNet(), "tiny", tmp_path / "bad.pth")
    msg = str(err.value)
    assert "\n" not in msg and "bad.pth" in msg
    assert "missing 1: bn1.bias" in msg and "unexpected 1: conv2.weight" in msg
    assert "conv1.weight (16, 3, 3, 3) vs (8, 3, 3, 3)" in msg


def test_unreadable_and_foreign_files_are_user_errors(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match=r"junk\.pth: not a readable"):
        W.load_weights(TinyNet(), "tiny", tmp_path / "junk.pth")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "nostate.pt")
    with pytest.raises(UserError, match="holds no state dict"):
        W.load_weights(TinyNet(), "tiny", tmp_path / "nostate.pt")
    with pytest.raises(UserError, match="not found"):
        W.load_weights(TinyNet(), "tiny", tmp_path / "absent.pt")


def test_pickles_are_loaded_weights_only(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    torch.save({"conv1.weight": torch.zeros(1), "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="not a readable"):
        W.load_weights(TinyNet(), "tiny", tmp_path / "evil.pt")


# ---- input channels come from the file ----------------------------------------------------------------------------
def test_stored_in_chans_reads_the_first_convolution(tmp_path):
    grey = imgcls.create_model("lenet5", num_classes=10)  # native: 1 channel
    save_file(dict(grey.state_dict()), str(tmp_path / "grey.safetensors"))
    rgb = imgcls.create_model("lenet5", num_classes=10, in_chans=3)
    torch.save({f"module.{k}": v for k, v in rgb.state_dict().items()}, tmp_path / "rgb.pth")  # a DDP checkpoint
    assert W.stored_in_chans("lenet5", tmp_path / "grey.safetensors") == 1
    assert W.stored_in_chans("lenet5", tmp_path / "rgb.pth") == 3
    save_file({"other.weight": torch.zeros(2, 2)}, str(tmp_path / "foreign.safetensors"))
    assert W.stored_in_chans("lenet5", tmp_path / "foreign.safetensors") is None


@pytest.mark.parametrize("in_chans", [1, 3])
def test_predict_with_lenet5_weights_uses_the_files_channels(tmp_path, capsys, in_chans):
    # Issue 11 item 9: `predict --model lenet5 --weights FILE` with grey-scale weights failed with a shape mismatch.
    from PIL import Image

    from imgcls.cli import main

    torch.manual_seed(0)
    model = imgcls.create_model("lenet5", num_classes=10, in_chans=in_chans).eval()
    save_file(dict(model.state_dict()), str(tmp_path / "lenet5.safetensors"))
    image = tmp_path / "digit.png"
    Image.fromarray(np.tile(np.arange(32, dtype=np.uint8)[None] * 8, (32, 1))).save(image)
    args = ["predict", "--model", "lenet5", "--weights", str(tmp_path / "lenet5.safetensors"), "--json", str(image)]
    assert main(args) == 0
    (answer,) = json.loads(capsys.readouterr().out)
    assert len(answer["predictions"]) == 5 and {p["label"] for p in answer["predictions"]} <= {
        str(i) for i in range(10)
    }
