"""The small CPU-friendly models against their papers: MobileNetV2, MobileNetV3-Large/Small, EfficientNet-B0,
RegNetX/Y 400MF and 800MF, ResNet-10-T.

Counts and multiply-adds run on the meta device (shapes only); forward/backward passes at reduced sides are real.
Published-file parity (identical logits) is in test_weights.py (golden files from tools/make_golden.py).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from imgcls import create_model
from imgcls.models import model_entry
from imgcls.models.layers import StochasticDepth, make_divisible
from imgcls.models.regnet import REGNETS, stage_plan

SMALL_MODELS = [
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "regnet_x_400mf",
    "regnet_x_800mf",
    "regnet_y_400mf",
    "regnet_y_800mf",
    "resnet10t",
]

# Exact counts at 1000 classes: torchvision's model documentation (`num_params`) and, for resnet10t, timm's model.
PARAMS = {
    "mobilenet_v2": 3_504_872,
    "mobilenet_v3_large": 5_483_032,
    "mobilenet_v3_small": 2_542_856,
    "efficientnet_b0": 5_288_548,
    "regnet_x_400mf": 5_495_976,
    "regnet_x_800mf": 7_259_656,
    "regnet_y_400mf": 4_344_144,
    "regnet_y_800mf": 6_432_512,
    "resnet10t": 5_435_488,
}

# The papers' tables at 224×224: (parameters in millions, multiply-adds in millions, relative tolerance of the
# parameter figure, absolute tolerance of the multiply-adds in millions). Sandler et al. 2018, Table 4; Howard et
# al. 2019, Table 3; Tan & Le 2019, Table 2; Radosavovic et al. 2020, the RegNet model table (pycls model zoo),
# which rounds to 0.1 G (hence ±50 M). Parameters within the papers' rounding (0.05 M) except where the module
# docstrings state a deviation: MobileNetV2's 3.50 vs 3.4 M, RegNetX-400MF's 5.50 vs 5.2 M and RegNetY-800MF's
# 6.43 vs 6.3 M (torchvision's width rounding).
PAPER = {
    "mobilenet_v2": (3.4, 300, 0.04, 9),
    "mobilenet_v3_large": (5.4, 219, 0.02, 6),
    "mobilenet_v3_small": (2.5, 56, 0.02, 1.5),
    "efficientnet_b0": (5.3, 390, 0.02, 10),
    "regnet_x_400mf": (5.2, 400, 0.06, 50),
    "regnet_x_800mf": (7.3, 800, 0.02, 50),
    "regnet_y_400mf": (4.3, 400, 0.02, 50),
    "regnet_y_800mf": (6.3, 800, 0.025, 50),
}
# torchvision's `_ops` (G multiply-adds) for the RegNets, whose paper figures are rounded to 0.1 G.
TORCHVISION_GMACS = {"regnet_x_400mf": 0.414, "regnet_x_800mf": 0.800, "regnet_y_400mf": 0.402, "regnet_y_800mf": 0.834}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors: a second thread only adds synchronisation on a shared machine
    yield
    torch.set_num_threads(threads)


def _meta(name: str, **kw) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, **kw)


def _macs(model: nn.Module, size: int) -> int:
    with torch.device("meta"), FlopCounterMode(display=False) as counter:
        model.eval()(torch.empty(1, 3, size, size))
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("name", SMALL_MODELS)
def test_parameter_count_equals_the_published_models(name):
    assert sum(p.numel() for p in _meta(name).parameters()) == PARAMS[name]


@pytest.mark.parametrize("name", sorted(PAPER))
def test_parameters_and_multiply_adds_match_the_paper(name):
    params_m, macs_m, tolerance, macs_tolerance = PAPER[name]
    model = _meta(name)
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(params_m, rel=tolerance)
    macs = _macs(model, 224)
    assert macs / 1e6 == pytest.approx(macs_m, abs=macs_tolerance)
    if name in TORCHVISION_GMACS:
        assert macs / 1e9 == pytest.approx(TORCHVISION_GMACS[name], abs=0.0005)


def test_regnet_stages_follow_the_papers_equations():
    # Widths, depths and groups from d, w0, wa, wm, g (Eq. 2-4): the stage tables of torchvision's files; pycls has
    # 384 and 768 for the two last stages marked below (module docstring).
    assert stage_plan(REGNETS["regnet_x_400mf"]) == [(32, 1, 2), (64, 2, 4), (160, 7, 10), (400, 12, 25)]  # 384
    assert stage_plan(REGNETS["regnet_y_400mf"]) == [(48, 1, 6), (104, 3, 13), (208, 6, 26), (440, 6, 55)]
    assert stage_plan(REGNETS["regnet_x_800mf"]) == [(64, 1, 4), (128, 3, 8), (288, 7, 18), (672, 5, 42)]
    assert stage_plan(REGNETS["regnet_y_800mf"]) == [(64, 1, 4), (144, 3, 9), (320, 8, 20), (784, 2, 49)]  # 768
    se = _meta("regnet_y_800mf").trunk_output.block4[0].f.se
    assert (se.fc1.in_channels, se.fc1.out_channels) == (784, 80)  # a quarter of the block's input width, 320


def test_make_divisible_rounds_halves_up_and_never_loses_ten_percent():
    assert [make_divisible(v) for v in (18, 20, 36, 100, 4)] == [24, 24, 40, 104, 8]
    assert make_divisible(392, 16) == 400  # RegNetX-400MF's last stage (pycls: 384)


def test_mobilenet_v3_blocks_follow_tables_1_and_2():
    large, small = _meta("mobilenet_v3_large"), _meta("mobilenet_v3_small")
    assert len(large.features) == 17 and len(small.features) == 13  # stem, 15 / 11 blocks, the 1×1 expansion
    assert large.features[-1][0].out_channels == 960 and small.features[-1][0].out_channels == 576
    assert large.classifier[0].out_features == 1280 and small.classifier[0].out_features == 1024
    # Table 2, first block of Small: SE on the 16-wide stride-2 depthwise conv, squeeze 16 / 4 = 4 -> 8.
    first = small.features[1].block
    assert first[0][0].stride == (2, 2) and first[1].fc1.out_channels == 8
    assert isinstance(first[1].gate, nn.Hardsigmoid)
    norms = [m for m in large.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all((m.eps, m.momentum) == (1e-3, 0.01) for m in norms)
    assert sum(isinstance(m, nn.Hardswish) for m in large.features.modules()) == 1 + 2 * 9 + 1  # HS rows and ends


def test_efficientnet_b0_follows_table_1():
    model = _meta("efficientnet_b0")
    stages = list(model.features)[1:-1]
    assert [len(s) for s in stages] == [1, 2, 2, 3, 3, 4, 1]
    assert [s[0].block[-1][0].out_channels for s in stages] == [16, 24, 40, 80, 112, 192, 320]
    kernels = [s[0].block[1 if i else 0][0].kernel_size[0] for i, s in enumerate(stages)]
    assert kernels == [3, 3, 5, 3, 5, 5, 3]
    rates = [b.stochastic_depth.p for s in stages for b in s]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.2 * 15 / 16)  # linear in the block index
    se = stages[1][0].block[2]
    assert (se.fc1.in_channels, se.fc1.out_channels) == (96, 4)  # expanded 16·6, squeezed to 16 / 4


def test_resnet10t_stem_and_shortcut_are_resnet_c_and_d():
    model = _meta("resnet10t")
    convs = [m for m in model.conv1 if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride[0]) for c in convs] == [(3, 24, 2), (24, 32, 1), (32, 64, 1)]
    shortcut = model.layer2[0].downsample
    assert isinstance(shortcut[0], nn.AvgPool2d) and shortcut[1].stride == (1, 1)
    assert model_entry("resnet10t").input_size == (3, 176, 176)


def test_stochastic_depth_drops_whole_samples_and_keeps_the_expectation():
    layer = StochasticDepth(0.25).train()
    torch.manual_seed(0)
    x = torch.ones(4000, 3, 2, 2)
    y = layer(x)
    per_sample = y.flatten(1)
    assert set(per_sample.unique().tolist()) == {0.0, torch.tensor(4 / 3).item()}  # float32 1 / (1 - p)
    assert (per_sample == per_sample[:, :1]).all()  # a sample is dropped or kept whole
    assert y.mean().item() == pytest.approx(1.0, abs=0.03)
    assert torch.equal(layer.eval()(x), x)


@pytest.mark.parametrize("name", SMALL_MODELS)
def test_registry_entry(name):
    entry = model_entry(name)
    assert entry.mean == (0.485, 0.456, 0.406) and entry.std == (0.229, 0.224, 0.225)
    assert "arXiv:" in entry.paper
    # The eval crop of the default published file: 224 of 232 for torchvision's V2 recipes, else 224 of 256.
    v2 = {"mobilenet_v2", "mobilenet_v3_large", *[n for n in SMALL_MODELS if n.startswith("regnet")]}
    assert entry.crop_pct == pytest.approx(224 / 232 if name in v2 else 0.875)


@pytest.mark.parametrize("name", SMALL_MODELS)
def test_forward_backward_and_head(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5).train()
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing[:5]
    model.eval()
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape[1] == model.num_features
        pre = model.forward_head(feats, pre_logits=True)
        torch.testing.assert_close(model.get_classifier()(pre), model(x))
        model.reset_classifier(3)
        assert model(x).shape == (2, 3) and model.num_classes == 3
        model.reset_classifier(0)
        assert model(x).shape == pre.shape
