"""The modern half of the zoo against its papers and published weights: ResNet, pre-activation ResNet, ResNeXt,
DenseNet, DPN, Inception v3, Inception-v4 and Inception-ResNet-v2, plus their CIFAR-size variants.

Parameter counts, multiply-adds, state-dict layouts and head behaviour are checked on the meta device (shapes
only, no memory or arithmetic), so they cost nothing even for 88M-parameter models. Real forward/backward
passes run at reduced resolution (every family here is fully convolutional up to its global pooling); the
heaviest models run under the `slow` marker.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from imgcls import create_model, list_models
from imgcls.errors import UserError
from imgcls.models import model_entry
from imgcls.models.densenet import DenseNet, DenseNetSpec

IMAGENET = [
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "preact_resnet18",
    "preact_resnet34",
    "preact_resnet50",
    "preact_resnet101",
    "preact_resnet152",
    "resnext50_32x4d",
    "resnext101_32x4d",
    "resnext101_32x8d",
    "densenet121",
    "densenet169",
    "densenet201",
    "dpn92",
    "inception_v3",
    "inception_v4",
    "inception_resnet_v2",
]
CIFAR = [
    "resnet18_cifar",
    "resnet50_cifar",
    "resnet101_cifar",
    "preact_resnet18_cifar",
    "resnext29_32x4d_cifar",
    "resnext29_2x64d_cifar",
    "densenet121_cifar",
    "dpn92_cifar",
]
MODERN = IMAGENET + CIFAR

# Exact parameter counts. ImageNet models at 1000 classes: the papers' networks as torchvision and timm publish
# them (torchvision's model tables; timm's for DPN-92, Inception-v4 and Inception-ResNet-v2). CIFAR models at
# 10 classes: kuangliu/pytorch-cifar's networks.
PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "resnext50_32x4d": 25_028_904,
    "resnext101_32x4d": 44_177_704,
    "resnext101_32x8d": 88_791_336,
    "densenet121": 7_978_856,
    "densenet169": 14_149_480,
    "densenet201": 20_013_928,
    "dpn92": 37_668_392,
    "inception_v3": 27_161_264,  # with the auxiliary head, as torchvision counts it
    "inception_v4": 42_679_816,
    "inception_resnet_v2": 55_843_464,
    "resnet18_cifar": 11_173_962,
    "resnet50_cifar": 23_520_842,
    "resnet101_cifar": 42_512_970,
    "preact_resnet18_cifar": 11_171_146,
    "resnext29_32x4d_cifar": 4_774_218,
    "resnext29_2x64d_cifar": 9_128_778,
    "densenet121_cifar": 6_956_298,
    "dpn92_cifar": 34_236_634,
}

# Multiply-adds at the native input size (G): He et al. 2015, Table 1 (the paper's V1 stride placement), the
# V1.5 figure torchvision gives for ResNet-50, Xie et al. 2016, Tables 1 and 5 (ResNeXt, whose stride already
# sits on the 3×3), Chen et al. 2017, Table 2 (DPN-92), and torchvision's model tables for DenseNet-121 and
# Inception v3 (their papers give no such table).
MACS = [
    ("resnet18", {}, 1.8),
    ("resnet34", {}, 3.6),
    ("resnet50", {"stride_in_1x1": True}, 3.8),
    ("resnet101", {"stride_in_1x1": True}, 7.6),
    ("resnet152", {"stride_in_1x1": True}, 11.3),
    ("resnet50", {}, 4.1),
    ("resnext50_32x4d", {}, 4.2),
    ("resnext101_32x4d", {}, 7.8),
    ("dpn92", {}, 6.5),
    ("densenet121", {}, 2.83),
    ("inception_v3", {}, 5.71),
]

# Real forward/backward passes: (name, input side). The fast set covers every block type (basic, bottleneck,
# pre-activation, grouped, dense, Inception) at small sides that keep each family's valid convolutions and a
# final grid of at least 1×1 (Inception: 75); the rest run under `slow`.
FAST = [
    ("resnet18", 32),
    ("resnet50", 32),
    ("preact_resnet18", 32),
    ("densenet121", 32),
    ("inception_v3", 75),
    ("resnet18_cifar", 16),
    ("preact_resnet18_cifar", 16),
    ("resnext29_32x4d_cifar", 16),
]
SLOW = [
    *[(name, 64) for name in IMAGENET if name not in dict(FAST) and not name.startswith("inception")],
    ("inception_v4", 75),
    ("inception_resnet_v2", 75),
    *[(name, 32) for name in CIFAR if name not in dict(FAST)],
]


@pytest.fixture(autouse=True)
def _one_thread():
    # These tensors are small: a second intra-op thread buys nothing, and on a shared, busy machine its
    # synchronisation made the same tests several times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _meta_model(name: str, **kw) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, **kw)


def _classes(name: str) -> int:
    return 10 if name.endswith("_cifar") else 1000


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _macs(model: nn.Module, size: int) -> int:
    with torch.device("meta"), FlopCounterMode(display=False) as counter:
        model.eval()(torch.empty(1, 3, size, size))
    return counter.get_total_flops() // 2


def test_every_modern_model_is_registered():
    assert set(MODERN) <= set(list_models())
    assert set(PARAMS) <= set(MODERN)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_count_matches_reference(name):
    assert _n_params(_meta_model(name, num_classes=_classes(name))) == PARAMS[name]


PREACT = ["preact_resnet18", "preact_resnet34", "preact_resnet50", "preact_resnet101", "preact_resnet152"]


@pytest.mark.parametrize("name", PREACT)
def test_preact_counts_follow_from_resnets(name):
    """He et al. 2016 publish no ImageNet counts: the pre-activation nets have ResNet's convolutions and classifier
    (torchvision's count less its batch norms) and one BN before each residual-branch conv plus the final one."""
    pre, plain = _meta_model(name), _meta_model(name.removeprefix("preact_"))

    def norm_params(model: nn.Module) -> int:
        return sum(p.numel() for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())

    assert _n_params(pre) - norm_params(pre) == PARAMS[name.removeprefix("preact_")] - norm_params(plain)
    convs_in = sum(m.in_channels for n, m in pre.named_modules() if _branch_conv(n, m))
    assert norm_params(pre) == 2 * (convs_in + pre.num_features)


def _branch_conv(name: str, module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and name.startswith("layer") and ".downsample." not in name


@pytest.mark.parametrize(("name", "kw", "paper_gmacs"), MACS)
def test_multiply_adds_match_paper(name, kw, paper_gmacs):
    gmacs = _macs(_meta_model(name, **kw), model_entry(name).input_size[-1]) / 1e9
    assert gmacs == pytest.approx(paper_gmacs, rel=0.03)


def test_stride_placement_v1_vs_v15():
    v15 = _meta_model("resnet50")
    v1 = _meta_model("resnet50", stride_in_1x1=True)
    assert v15.layer2[0].conv1.stride == (1, 1) and v15.layer2[0].conv2.stride == (2, 2)
    assert v1.layer2[0].conv1.stride == (2, 2) and v1.layer2[0].conv2.stride == (1, 1)
    assert _n_params(v1) == _n_params(v15)
    assert _macs(v1, 224) < _macs(v15, 224)  # a 1×1 stride skips work the 3×3 would do at full resolution


@pytest.mark.parametrize(
    "name",
    ["resnet18", "resnet50", "resnext50_32x4d", "preact_resnet50", "resnet18_cifar", "resnext29_2x64d_cifar"],
)
def test_zero_init_residual_starts_each_branch_at_zero(name):
    model = create_model(name, zero_init_residual=True)
    blocks = [m for m in model.modules() if hasattr(m, "last_norm")]
    assert blocks and all(torch.count_nonzero(b.last_norm().weight) == 0 for b in blocks)
    plain = create_model(name)
    assert all(torch.count_nonzero(b.last_norm().weight) > 0 for b in plain.modules() if hasattr(b, "last_norm"))


# State-dict keys and shapes the published weights use (torchvision for ResNet/ResNeXt/DenseNet/Inception v3,
# timm for DPN-92/Inception-v4/Inception-ResNet-v2): a file loads only if every key and shape matches.
PUBLISHED_LAYOUT = {
    "resnet50": {
        "conv1.weight": (64, 3, 7, 7),
        "bn1.running_var": (64,),
        "layer1.0.conv2.weight": (64, 64, 3, 3),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer1.0.downsample.1.weight": (256,),
        "layer4.2.bn3.weight": (2048,),
        "fc.weight": (1000, 2048),
    },
    "resnext50_32x4d": {
        "layer1.0.conv1.weight": (128, 64, 1, 1),
        "layer2.0.conv2.weight": (256, 8, 3, 3),
        "layer4.0.downsample.0.weight": (2048, 1024, 1, 1),
    },
    "densenet121": {
        "features.conv0.weight": (64, 3, 7, 7),
        "features.norm0.weight": (64,),
        "features.denseblock1.denselayer1.norm1.weight": (64,),
        "features.denseblock1.denselayer6.conv2.weight": (32, 128, 3, 3),
        "features.transition1.conv.weight": (128, 256, 1, 1),
        "features.denseblock4.denselayer16.conv1.weight": (128, 992, 1, 1),
        "features.norm5.weight": (1024,),
        "classifier.weight": (1000, 1024),
    },
    "dpn92": {
        "features.conv1_1.conv.weight": (64, 3, 7, 7),
        "features.conv2_1.c1x1_w_s1.bn.weight": (64,),
        "features.conv2_1.c1x1_w_s1.conv.weight": (288, 64, 1, 1),
        "features.conv2_1.c3x3_b.conv.weight": (96, 3, 3, 3),
        "features.conv2_3.c1x1_a.bn.weight": (320,),
        "features.conv3_1.c1x1_w_s2.conv.weight": (576, 336, 1, 1),
        "features.conv5_3.c1x1_c.conv.weight": (2176, 768, 1, 1),
        "features.conv5_bn_ac.bn.weight": (2688,),
        "classifier.weight": (1000, 2688, 1, 1),
    },
    "inception_v3": {
        "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
        "Conv2d_4a_3x3.bn.running_mean": (192,),
        "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
        "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
        "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
        "Mixed_7b.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
        "AuxLogits.conv1.conv.weight": (768, 128, 5, 5),
        "AuxLogits.fc.weight": (1000, 768),
        "fc.weight": (1000, 2048),
    },
    "inception_v4": {
        "features.0.conv.weight": (32, 3, 3, 3),
        "features.3.conv.conv.weight": (96, 64, 3, 3),
        "features.4.branch1.1.conv.weight": (64, 64, 1, 7),
        "features.10.branch1.2.conv.weight": (256, 224, 3, 3),
        "features.17.branch3.1.conv.weight": (128, 1024, 1, 1),
        "features.18.branch1.3.conv.weight": (320, 320, 3, 3),
        "features.21.branch2_3b.conv.weight": (256, 512, 3, 1),
        "last_linear.weight": (1000, 1536),
    },
    "inception_resnet_v2": {
        "conv2d_1a.conv.weight": (32, 3, 3, 3),
        "mixed_5b.branch3.1.conv.weight": (64, 192, 1, 1),
        "repeat.9.conv2d.bias": (320,),
        "mixed_6a.branch1.2.conv.weight": (384, 256, 3, 3),
        "repeat_1.19.branch1.2.conv.weight": (192, 160, 7, 1),
        "mixed_7a.branch2.2.conv.weight": (320, 288, 3, 3),
        "repeat_2.8.conv2d.weight": (2080, 448, 1, 1),
        "block8.branch1.2.conv.weight": (256, 224, 3, 1),
        "conv2d_7b.conv.weight": (1536, 2080, 1, 1),
        "classif.weight": (1000, 1536),
    },
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_LAYOUT))
def test_state_dict_layout_matches_published_weights(name):
    state = _meta_model(name).state_dict()
    for key, shape in PUBLISHED_LAYOUT[name].items():
        assert key in state, key
        assert tuple(state[key].shape) == shape, key


def test_resnet_keys_have_no_extra_modules():
    # torchvision's resnet50 has exactly these top-level names; anything else would be an unexpected key.
    state = _meta_model("resnet50").state_dict()
    assert {k.split(".")[0] for k in state} == {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"}
    assert not any(k.startswith("layer1.1.downsample") for k in state)


@pytest.mark.parametrize("name", ["dpn92", "inception_v3", "inception_v4", "inception_resnet_v2"])
def test_tensorflow_and_mxnet_ports_use_their_batchnorm_eps(name):
    norms = [m for m in _meta_model(name).modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(m.eps == 1e-3 for m in norms)


@pytest.mark.parametrize("name", MODERN)
def test_registry_entry_has_native_size_and_normalisation(name):
    entry = model_entry(name)
    if name.endswith("_cifar"):
        assert entry.input_size == (3, 32, 32)
        assert entry.mean == pytest.approx((0.4914, 0.4822, 0.4465))
    elif name.startswith("inception"):
        assert entry.input_size == (3, 299, 299)
        assert entry.mean == entry.std == (0.5, 0.5, 0.5)
    else:
        assert entry.input_size == (3, 224, 224)
    assert "arXiv:" in entry.paper


@pytest.mark.parametrize("name", MODERN)
def test_head_interface_and_reset_classifier(name):
    model = _meta_model(name, num_classes=7, in_chans=1).eval()
    side = model_entry(name).input_size[-1]
    x = torch.empty(2, 1, side, side, device="meta")
    feats = model.forward_features(x)
    assert feats.shape[1] == model.num_features
    assert model.forward_head(feats).shape == (2, 7)
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
    assert model(x).shape == (2, 7)

    # The backbone is untouched by a new classifier, so the head alone shows the new output width.
    with torch.device("meta"):
        model.reset_classifier(3)
    assert model.num_classes == 3
    assert model.forward_head(feats).shape == (2, 3)
    classifier = model.get_classifier()
    assert getattr(classifier, "out_features", getattr(classifier, "out_channels", None)) == 3
    assert classifier.weight.shape[0] == 3

    model.reset_classifier(0)
    assert model.forward_head(feats).shape == (2, model.num_features)


def test_inception_v3_aux_head_in_training_only():
    model = _meta_model("inception_v3", num_classes=5)
    assert model.aux_weights == (0.4,)
    x = torch.empty(2, 3, 299, 299, device="meta")
    out = model.train()(x)
    assert isinstance(out, tuple) and len(out) == 1 + len(model.aux_weights)
    assert [o.shape for o in out] == [(2, 5), (2, 5)]
    assert model.eval()(x).shape == (2, 5)

    with torch.device("meta"):
        model.reset_classifier(4)
    assert [o.shape for o in model.train()(x)] == [(2, 4), (2, 4)]

    no_aux = _meta_model("inception_v3", num_classes=5, aux_logits=False)
    assert no_aux.train()(x).shape == (2, 5)
    assert not any(k.startswith("AuxLogits") for k in no_aux.state_dict())


def test_invalid_global_pool_is_a_user_error():
    with pytest.raises(UserError, match="global_pool"):
        create_model("resnet18_cifar", global_pool="median")


def _check_trains(name: str, side: int, **kw) -> None:
    """Train-mode forward/backward: shape, finite outputs, a finite gradient for every parameter; then in eval
    mode ``forward == forward_head(forward_features)``."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, **kw).train()
    x = torch.randn(2, 3, side, side)
    out = model(x)
    outputs = out if isinstance(out, tuple) else (out,)
    for o in outputs:
        assert o.shape == (2, 7)
        assert torch.isfinite(o).all()
    weights = (1.0, *getattr(model, "aux_weights", ()))[: len(outputs)]
    loss = sum(w * nn.functional.cross_entropy(o, torch.tensor([0, 1])) for w, o in zip(weights, outputs))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward_head(model.forward_features(x)))


@pytest.mark.parametrize(("name", "side"), FAST)
def test_forward_backward(name, side):
    # The auxiliary head needs the native 299×299; it has its own (slow) test.
    _check_trains(name, side, **({"aux_logits": False} if name == "inception_v3" else {}))


@pytest.mark.slow
@pytest.mark.parametrize(("name", "side"), SLOW)
def test_forward_backward_large(name, side):
    _check_trains(name, side)


@pytest.mark.slow
def test_inception_v3_aux_head_trains_at_native_size():
    _check_trains("inception_v3", 299)


def test_densenet_checkpointing_gives_the_same_gradients():
    spec = DenseNetSpec(block_config=(3, 3), growth_rate=8, num_init_features=16, cifar_stem=True)
    torch.manual_seed(0)
    plain = DenseNet(spec, num_classes=5)
    efficient = DenseNet(spec, num_classes=5, memory_efficient=True)
    efficient.load_state_dict(plain.state_dict())
    x = torch.randn(4, 3, 16, 16)
    for model in (plain, efficient):
        model(x).square().sum().backward()
    for (name, p), q in zip(plain.named_parameters(), efficient.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


# Parity with the reference implementations the published weights come from: the reference model's own
# state dict (BN statistics randomised so eval-mode BN is not the identity) loads into ours with strict=True,
# and both give the same outputs. Runs where torchvision/timm are installed (never into this project's
# environment: they are not dependencies), skips elsewhere.
PARITY = [
    ("resnet18", "torchvision", {}, 64),
    ("resnet50", "torchvision", {}, 64),
    ("resnext50_32x4d", "torchvision", {}, 64),
    ("densenet121", "torchvision", {}, 64),
    ("inception_v3", "torchvision", {"init_weights": False, "transform_input": False}, 75),
    ("dpn92", "timm", {}, 64),
    ("inception_v4", "timm", {}, 75),
    ("inception_resnet_v2", "timm", {}, 75),
]


def _reference_model(name: str, source: str, kw: dict) -> nn.Module:
    try:
        if source == "torchvision":
            import torchvision.models as reference

            return getattr(reference, name)(weights=None, **kw)
        import timm

        return timm.create_model(name, pretrained=False, **kw)
    except Exception as e:  # absent, or built against another torch
        pytest.skip(f"{source} unavailable: {e}")


@pytest.mark.parametrize(("name", "source", "kw", "side"), PARITY)
def test_outputs_equal_reference_implementation(name, source, kw, side):
    torch.manual_seed(0)
    reference = _reference_model(name, source, kw).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in reference.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=generator))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=generator))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=generator))
    ours = create_model(name).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "name", ["resnet18", "densenet121", "dpn92", "inception_v3", "inception_v4", "inception_resnet_v2"]
)
def test_drop_rate_is_dropout_before_the_classifier(name):
    # Allocated without initialisation (the classifier is not used by pre_logits).
    model = _meta_model(name, drop_rate=0.5).to_empty(device="cpu")
    feats = torch.ones(4, model.num_features, 2, 2)
    pooled = model.train().forward_head(feats, pre_logits=True)
    assert set(pooled.unique().tolist()) == {0.0, 2.0}  # inverted dropout: survivors scaled by 1 / (1 - p)
    assert 0.3 < (pooled == 0).float().mean() < 0.7
    torch.testing.assert_close(model.eval().forward_head(feats, pre_logits=True), torch.ones(4, model.num_features))
