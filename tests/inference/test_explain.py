"""Explanation maps on known cases, on every registered model, and `imgcls explain` end to end.

The known cases are networks whose answer depends on one image region, on images that also hold a distractor of
the same brightness (a blue square) elsewhere: a hand-set network whose class is the quadrant holding a red square,
and a small CNN (convolutions, global average pooling, a linear layer) trained for a few seconds to tell a red
square from a green one. Grad-CAM and occlusion must both put their maximum on the square the answer depends on.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from imgcls.classic import is_classic
from imgcls.errors import UserError
from imgcls.inference import Predictor
from imgcls.models import create_model, list_models, model_entry
from imgcls.models.saliency import (
    cam_layer,
    find_layer,
    grad_cam,
    occlusion,
    stage_maps,
    top_channels,
    window_offsets,
)

SIZE, PATCH = 32, 8
QUADRANTS = ((0, 0), (0, 16), (16, 0), (16, 16))  # top-left corners, class k = quadrant k


def quadrant_images(n: int, seed: int = 0, colours: int = 0) -> tuple[torch.Tensor, torch.Tensor, list]:
    """``n`` normalised images ``(n, 3, 32, 32)`` on a dim noisy background, each with a blue 8x8 square and
    (mostly) one of another colour in another quadrant, both at random places inside their quadrants.

    ``colours=0``: the class is the quadrant of the red square (4 classes). ``colours=2``: the class is the
    square's colour, red or green, in a random quadrant; ``colours=3`` adds a third class, images with the blue
    square alone (so that "green" cannot be learnt as "not red"). Also returns each image's squares' top-left
    corners, ``(square, distractor)`` (``square`` is ``None`` for the blue-only class)."""
    g = torch.Generator().manual_seed(seed)
    x = 0.1 * torch.rand(n, 3, SIZE, SIZE, generator=g)
    labels = torch.randint(0, colours or 4, (n,), generator=g)
    boxes = []
    for i in range(n):
        where = int(labels[i]) if not colours else int(torch.randint(0, 4, (1,), generator=g))
        colour = 0 if not colours else int(labels[i])  # channel 0 red, 1 green; 2: no square but the blue one
        blue = (where + 1 + int(torch.randint(0, 3, (1,), generator=g))) % 4
        placed = []
        for quadrant, channel in ((where, colour), (blue, 2)):
            top, left = QUADRANTS[quadrant]
            dy, dx = (int(v) for v in torch.randint(0, 16 - PATCH + 1, (2,), generator=g))
            if channel == 2 and quadrant == where:
                placed.append(None)
                continue
            x[i, :, top + dy : top + dy + PATCH, left + dx : left + dx + PATCH] = 0.0
            x[i, channel, top + dy : top + dy + PATCH, left + dx : left + dx + PATCH] = 1.0
            placed.append((top + dy, left + dx))
        boxes.append(placed)
    return (x - 0.5) / 0.25, labels, boxes


def _peak_inside(m: torch.Tensor, corner: tuple[int, int]) -> bool:
    """Whether the map's maximum is reached inside the 8x8 square at ``corner`` (ties may lie elsewhere too)."""
    top, left = corner
    return float(m[top : top + PATCH, left : left + PATCH].max()) >= float(m.max()) - 1e-6


def _argmax2d(m: torch.Tensor) -> tuple[int, int]:
    flat = int(m.flatten().argmax())
    return divmod(flat, m.shape[-1])


def _probabilities(model: nn.Module):
    def probs(x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model(x), dim=1)

    return probs


class ColourNet(nn.Module):
    """A CNN as the zoo builds them: a pointwise and a 3x3 convolution, global average pooling, a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def trained_colour_net() -> ColourNet:
    torch.manual_seed(0)
    net = ColourNet()
    x, y, _ = quadrant_images(256, seed=1, colours=3)
    opt = torch.optim.Adam(net.parameters(), lr=2e-2)
    for step in range(40):
        idx = torch.arange(step * 32, step * 32 + 32) % len(x)
        # Label smoothing keeps the probabilities away from 1, where hiding anything would change nothing.
        loss = nn.functional.cross_entropy(net(x[idx]), y[idx], label_smoothing=0.2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


class HandSetNet(nn.Module):
    """No training: a 1x1 convolution that responds to red and is negative on blue (red - blue), a ReLU, and a
    head whose logit k is the sum of the map over quadrant k."""

    def __init__(self) -> None:
        super().__init__()
        self.detect = nn.Conv2d(3, 1, 1)
        self.relu = nn.ReLU()
        with torch.no_grad():
            self.detect.weight.copy_(torch.tensor([1.0, 0.0, -1.0]).view(1, 3, 1, 1) * 0.25)  # on normalised input
            self.detect.bias.zero_()
        mask = torch.zeros(4, SIZE, SIZE)
        for k, (top, left) in enumerate(QUADRANTS):
            mask[k, top : top + 16, left : left + 16] = 1.0 / 16.0
        self.register_buffer("mask", mask.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.detect(x)).flatten(1) @ self.mask.T


def test_trained_net_is_right_so_the_known_case_means_something(trained_colour_net):
    x, y, _ = quadrant_images(64, seed=2, colours=3)
    with torch.no_grad():
        accuracy = (trained_colour_net(x).argmax(1) == y).float().mean()
    assert accuracy == 1.0


@pytest.mark.parametrize("net_name", ["trained", "hand-set"])
def test_gradcam_and_occlusion_peak_on_the_region_the_answer_depends_on(net_name, trained_colour_net):
    trained = net_name == "trained"
    net = trained_colour_net if trained else HandSetNet().eval()
    x, y, boxes = quadrant_images(12, seed=3, colours=2 if trained else 0)
    cam = grad_cam(net, x, y, "features.3" if trained else "relu")
    occ = occlusion(_probabilities(net), x, y, window=8, stride=2, batch_size=40)
    assert cam.maps.shape == occ.maps.shape == (12, SIZE, SIZE)
    offsets = window_offsets(SIZE, 8, 2)
    for i in range(12):
        square, blue = boxes[i]
        assert _peak_inside(cam.maps[i], square), f"image {i}: Grad-CAM peak outside the class's square"
        assert _peak_inside(occ.maps[i], square), f"image {i}: occlusion peak outside the class's square"
        # The grey square that costs the most probability is centred on the class's square (ZFNet, Fig. 7 d).
        r, c = _argmax2d(occ.base[i] - occ.probability[i])
        centre = (offsets[r] + 3.5, offsets[c] + 3.5)
        assert all(corner <= v <= corner + PATCH - 1 for v, corner in zip(centre, square)), f"image {i}: {centre}"
        # The distractor matters little: hiding it costs far less probability than hiding the class's square.
        hidden_blue = occ.maps[i][blue[0] : blue[0] + PATCH, blue[1] : blue[1] + PATCH]
        assert float(hidden_blue.max()) < 0.5 * float(occ.maps[i].max())
    assert float(cam.maps.max()) == pytest.approx(1.0) and float(cam.maps.min()) >= 0.0


def test_gradcam_is_the_papers_formula_on_a_linear_head():
    # y_c = sum_ij w_c * A_ij / 16 over quadrant c (hand-set net, one channel): alpha = mean gradient = 1/4 of
    # 1/16 inside quadrant c; L = ReLU(alpha * A). At the layer's resolution the raw map is exactly alpha * A.
    net = HandSetNet().eval()
    x, y, _ = quadrant_images(3, seed=4)
    cam = grad_cam(net, x, y, "relu")
    with torch.no_grad():
        a = net.relu(net.detect(x))[:, 0]
    assert torch.allclose(cam.raw, a * (1 / 64), atol=1e-6)


def test_single_logit_binary_explains_both_classes():
    # One logit z = sum of the red map: class 1 is explained by z, class 0 by -z (whose Grad-CAM is then empty).
    class OneLogit(HandSetNet):
        def forward(self, x):
            return self.relu(self.detect(x)).flatten(1).sum(1, keepdim=True)

    net = OneLogit().eval()
    x, _, _ = quadrant_images(2, seed=5)
    ones, zeros = grad_cam(net, x, torch.tensor([1, 1]), "relu"), grad_cam(net, x, torch.tensor([0, 0]), "relu")
    assert float(ones.maps.max()) == pytest.approx(1.0)
    assert float(zeros.maps.abs().max()) == 0.0


def test_occlusion_windows_cover_every_pixel_and_stay_inside():
    assert window_offsets(32, 8, 4) == [0, 4, 8, 12, 16, 20, 24]
    assert window_offsets(30, 8, 4) == [0, 4, 8, 12, 16, 20, 22]  # the last one flush with the edge
    assert window_offsets(8, 8, 3) == [0]
    with pytest.raises(UserError, match="larger than"):
        window_offsets(8, 9, 1)


def test_occlusion_of_a_pixel_counting_model_is_the_windows_share():
    # p(class 1) = fraction of pixels above 0 in the image's top-left 16x16 corner; an all-bright image with a 4px
    # window: hiding a window fully inside the corner removes 16 of 256 bright pixels.
    def probs(x):
        share = (x[:, 0, :16, :16] > 0.5).float().mean(dim=(1, 2))
        return torch.stack([1 - share, share], dim=1)

    x = torch.ones(1, 1, 32, 32)
    occ = occlusion(probs, x, torch.tensor([1]), window=4, stride=4, batch_size=7)
    assert occ.base.tolist() == [1.0]
    assert occ.probability.shape == (1, 8, 8)
    assert torch.allclose(occ.probability[0, :4, :4], torch.full((4, 4), 1 - 16 / 256))
    assert torch.allclose(occ.probability[0, 4:, :], torch.ones(4, 8)) and torch.allclose(
        occ.probability[0, :, 4:], torch.ones(8, 4)
    )
    # The map: the drop with the square centred on the pixel. Centres at 1.5, 5.5, ..., 29.5; windows inside the
    # corner are centred up to 13.5, those beyond it from 17.5, with a linear ramp between.
    assert torch.allclose(occ.maps[0, :14, :14], torch.full((14, 14), 16 / 256))
    assert float(occ.maps[0, 18:, :].abs().max()) == 0.0 and float(occ.maps[0, :, 18:].abs().max()) == 0.0
    assert torch.allclose(occ.maps[0, 5, 14:18], torch.tensor([0.875, 0.625, 0.375, 0.125]) * 16 / 256)


def test_top_channels_are_the_strongest_by_mean():
    conv = nn.Conv2d(1, 4, 1, bias=True)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.copy_(torch.tensor([0.5, 3.0, -1.0, 2.0]))
    net = nn.Sequential(conv)
    found = top_channels(net, torch.zeros(2, 1, 5, 5), "0", k=2)
    assert found.index.tolist() == [[1, 3], [1, 3]]
    assert found.mean.tolist() == [[3.0, 2.0], [3.0, 2.0]] and found.maps.shape == (2, 2, 5, 5)
    assert found.channels == 4


def test_layer_names_are_checked_with_the_names_there_are():
    model = create_model("resnet18_cifar", num_classes=3)
    assert find_layer(model, "layer4") is model.layer4
    vgg = create_model("vgg16_cifar", num_classes=3)
    assert isinstance(find_layer(vgg, "features.-2"), nn.ReLU) and find_layer(vgg, "features.-1") is vgg.features[-1]
    with pytest.raises(UserError, match=r"layer 'layer9'.*has no module 'layer9'.*layer4"):
        find_layer(model, "layer9")
    with pytest.raises(UserError, match=r"features\.99"):
        find_layer(vgg, "features.99")
    with pytest.raises(UserError, match=r"not \(channels, height, width\) maps"):
        grad_cam(model, torch.zeros(1, 3, 32, 32), None, "fc")


def test_stage_maps_are_the_last_map_at_each_resolution():
    model = create_model("resnet18_cifar", num_classes=3).eval()
    stages = stage_maps(model, torch.zeros(1, 3, 32, 32))
    # conv1 .. layer1 at 32, layer2 at 16, layer3 at 8, layer4 and the (identity) norm at 4.
    assert [(s.name, tuple(s.maps.shape)) for s in stages] == [
        ("layer1", (64, 32, 32)),
        ("layer2", (128, 16, 16)),
        ("layer3", (256, 8, 8)),
        ("norm", (512, 4, 4)),
    ]


def test_hooks_leave_the_model_as_it_was():
    model = create_model("resnet18_cifar", num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(x)
    grad_cam(model, x, None, "layer4")
    top_channels(model, x, "layer3")
    stage_maps(model, x)
    with torch.no_grad():
        assert torch.equal(model(x), before)
    assert not any(m._forward_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


# --- every registered model ------------------------------------------------------------------------------------

# Real arithmetic at the native size for the small ones (the rest: shapes only here, real under `slow`).
REAL_QUICK = ("lenet5", "nin_cifar", "airbench94", "resnet18_cifar", "vgg16_cifar", "zfnet")


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_has_a_working_cam_layer(name):
    entry = model_entry(name)
    if is_classic(name):  # classical pipelines: a one-line "does not apply", nothing else
        with pytest.raises(UserError, match="does not apply to classical pipeline models"):
            cam_layer(name)
        return
    assert entry.cam_layer, f"{name}: its registry entry names no cam_layer"
    with torch.device("meta"):  # shapes only: no memory or arithmetic, so every model fits in the quick suite
        model = create_model(name, num_classes=3)
    x = torch.zeros(2, *entry.input_size, device="meta")
    found = grad_cam(model, x, torch.tensor([0, 2], device="meta"), cam_layer(name))
    assert found.maps.shape == (2, *entry.input_size[1:])
    h, w = found.raw.shape[-2:]
    assert h * w > 1, f"{name}: {entry.cam_layer} is {h}×{w} at the native input, no map to show"
    if name in REAL_QUICK:
        _check_real(name, entry.input_size)


def _check_real(name: str, input_size) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=3).eval()
    x = torch.randn(2, *input_size)
    found = grad_cam(model, x, None, cam_layer(name))
    assert torch.isfinite(found.maps).all() and float(found.maps.min()) >= 0.0 and float(found.maps.max()) <= 1.0
    assert float(found.raw.amax()) > 0.0, f"{name}: the top class's Grad-CAM is empty"


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in list_models() if not is_classic(n)])
def test_every_registered_model_gives_a_real_gradcam(name):
    from imgcls.models import check_model_args

    entry = model_entry(name)
    size = entry.input_size[1]
    for side in (64, 96, 128, size):  # the smallest of these the network takes keeps the test fast
        try:
            check_model_args(name, num_classes=3, image_size=side)
        except UserError:
            continue
        size = side
        break
    _check_real(name, (entry.input_size[0], size, size))


# --- Predictor.explain and the command line ---------------------------------------------------------------------


@pytest.fixture
def predictor(kit, tmp_path):
    run = kit.write_run(tmp_path / "run", name="resnet18_cifar", num_classes=4)
    return Predictor.from_run(run, precision="fp32")


def test_predictor_explain_answers_every_input(predictor, kit, tmp_path):
    images = kit.write_images(tmp_path / "images", 2)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    found = predictor.explain([images[0], broken, images[1]], window=8, stride=8, channels=3)
    assert [e.ok for e in found] == [True, False, True]
    assert "broken.png" in found[1].path and found[1].error
    first = found[0]
    expected = predictor.predict([images[0]])[0].predictions
    assert [p.label for p in first.predictions] == [p.label for p in expected]
    assert first.explained == expected[0]  # the top class by default
    assert first.image.shape == (32, 32, 3) and first.image.dtype == np.uint8
    assert first.cam.shape == first.occlusion.shape == (32, 32)
    assert first.occlusion_grid.shape == (4, 4) and first.window == 8
    assert first.channels.shape == (3, 4, 4) and first.channel_layer == first.cam_layer == "layer4"
    other = predictor.explain([images[0]], target="class_3", occlusion=False, channels=0)[0]
    assert other.explained.index == 3 and other.occlusion is None and other.channels is None


def test_explain_options_are_checked_before_any_image(predictor, kit, tmp_path):
    images = kit.write_images(tmp_path / "images", 1)
    with pytest.raises(UserError, match="--class dog: not a class of this model"):
        predictor.explain(images, target="dog")
    with pytest.raises(UserError, match="layer 'layer7'"):
        predictor.explain(images, layer="layer7")
    with pytest.raises(UserError, match="--window 40: larger than the 32-pixel input"):
        predictor.explain(images, window=40)


def test_onnx_backend_cannot_explain(kit, tmp_path):
    run = kit.write_run(tmp_path / "run", name="resnet18_cifar", num_classes=4)
    predictor = Predictor.from_run(run, backend="onnx")
    with pytest.raises(UserError, match="explain needs the PyTorch model"):
        predictor.explain(kit.write_images(tmp_path / "images", 1))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imgcls", *args], capture_output=True, text=True, timeout=600)


def test_explain_command_writes_figures_and_maps(kit, tmp_path):
    run = kit.write_run(tmp_path / "run", name="resnet18_cifar", num_classes=4)
    images = kit.write_images(tmp_path / "a", 1) + kit.write_images(tmp_path / "b", 1)  # same file name twice
    (tmp_path / "notes.jpg").write_text("not an image")
    out = tmp_path / "explained"
    done = _cli("explain", "--run", str(run), "--out", str(out), "--window", "16", "--json",
                *map(str, images), str(tmp_path / "notes.jpg"))  # fmt: skip
    assert done.returncode == 1, done.stderr  # one input could not be read; the others were answered
    records = json.loads(done.stdout)
    assert [("error" in r) for r in records] == [False, False, True]
    assert "1 of 3 inputs could not be read" in done.stderr
    figures = [r["figure"] for r in records[:2]]
    assert [p.rsplit("/", 1)[1] for p in figures] == ["img_000.png", "img_000-2.png"]
    for record in records[:2]:
        with open(record["figure"], "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        cam = np.load(record["maps"]["gradcam"])
        occ = np.load(record["maps"]["occlusion"])
        acts = np.load(record["maps"]["activations"])
        assert cam.shape == occ.shape == (32, 32) and acts.shape == (8, 4, 4)
        assert cam.min() >= 0.0 and cam.max() <= 1.0
        assert record["class"] == record["predictions"][0] and record["layers"]["gradcam"] == "layer4"
        assert record["occlusion"] == {"window": 16, "stride": 8}


def test_explain_command_refusals_are_one_line_and_write_nothing(kit, tmp_path):
    run = kit.write_run(tmp_path / "run", name="resnet18_cifar", num_classes=4)
    image = str(kit.write_images(tmp_path / "images", 1)[0])
    for args, message in (
        (["--out", str(run / "report")], "inside the run's own files"),
        (["--out", str(tmp_path / "new"), "--class", "zebra"], "--class zebra: not a class"),
        (["--out", str(tmp_path / "new"), "--cam-layer", "nowhere"], "layer 'nowhere'"),
    ):
        done = _cli("explain", "--run", str(run), *args, image)
        assert done.returncode == 2 and done.stderr.startswith("imgcls: error: ") and message in done.stderr
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "new").exists() and not (run / "report").exists()
