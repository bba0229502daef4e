"""model.safetensors + model.json: round trip, and weights refused unless their SHA-256 is the recorded one."""

import json
import os
import stat

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


def test_loaded_tensors_are_the_saved_ones_with_a_fresh_models_properties(tmp_path):
    """The network is built on the meta device and the saved tensors assigned: every parameter and buffer
    (BatchNorm statistics and counters included) holds the saved value, on the CPU, with a fresh model's dtype
    and requires_grad, and training it still changes it."""
    torch.manual_seed(0)
    model = create_model("resnet10t", num_classes=3)
    model.train()(torch.randn(4, 3, 64, 64))  # running statistics away from their initial values
    meta = ModelMeta("resnet10t", 3, ["a", "b", "c"], [3, 64, 64], [0.5] * 3, [0.25] * 3, resize=64)
    save_bundle(tmp_path, model, meta)
    loaded, _ = load_bundle(tmp_path)
    fresh = create_model("resnet10t", num_classes=3)
    saved = model.state_dict()
    for name, tensor in loaded.state_dict().items():
        assert tensor.device.type == "cpu" and tensor.dtype == saved[name].dtype, name
        assert torch.equal(tensor, saved[name]), name
    assert [p.requires_grad for p in loaded.parameters()] == [p.requires_grad for p in fresh.parameters()]
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(loaded(x), model.eval()(x))
    first = next(loaded.parameters())
    before = first.detach().clone()
    loaded.train()(x).sum().backward()
    torch.optim.SGD(loaded.parameters(), lr=0.1).step()
    assert not torch.equal(first.detach(), before)


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


def test_weights_file_gets_the_same_mode_as_the_other_files(tmp_path):
    old = os.umask(0o022)
    try:
        _bundle(tmp_path)
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"model.safetensors": 0o644, "model.json": 0o644}  # safetensors alone writes 0600


def _edit(folder, **changes):
    path = folder / "model.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return path


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"num_classes": 4, "classes": ["a", "b", "c", "d"]}, r"fc\.weight has shape \(3, 84\).*needs \(4, 84\)"),
        ({"name": "resnet18_cifar"}, "does not fit resnet18_cifar"),
        ({"name": "lenet_5"}, "unknown model: lenet_5"),
        ({"input_size": [1, 4, 4], "resize": 4}, "model.json: image size 4 is too small for lenet5"),
        ({"model_kwargs": {"colour": 1}}, "model.json: model_kwargs do not fit lenet5 .*no option colour"),
        ({"model_kwargs": {"pool": "nope"}}, "model.json: .*pool must be one of"),
    ],
)
def test_a_record_that_does_not_describe_the_weights_is_one_line(tmp_path, changes, expected):
    """The SHA-256 matches (the weights are intact) but model.json was edited by hand."""
    _bundle(tmp_path)
    meta_file = _edit(tmp_path, **changes)
    with pytest.raises(UserError, match=expected) as info:
        load_bundle(tmp_path)
    assert "\n" not in str(info.value) and str(meta_file.name) in str(info.value)


def test_predict_start_up_imports_neither_dynamo_nor_the_augmentations(tmp_path):
    """`imgcls predict` on a saved run: building the network on the meta device must not run PyTorch's Python
    reference kernels (their first use imports torch._dynamo, ~2 s), and reading images must not import the
    training augmentations (kornia, ~0.4 s)."""
    import subprocess
    import sys

    from PIL import Image

    _bundle(tmp_path / "run")
    Image.new("L", (40, 36), 128).save(tmp_path / "x.png")
    code = (
        "import sys\n"
        "from imgcls.cli import main\n"
        f"assert main(['predict', '--run', {str(tmp_path / 'run')!r}, {str(tmp_path / 'x.png')!r}]) == 0\n"
        "print(sorted(m for m in ('torch._dynamo', 'sympy', 'kornia') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
