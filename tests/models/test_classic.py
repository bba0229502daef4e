"""The classic half of the zoo against its papers: LeNet-5, AlexNet, ZFNet, NiN, VGG, GoogLeNet, BN-Inception.

Shape, parameter-count and multiply-add checks build the models on the meta device (shapes only, no memory, no
arithmetic), so they stay fast even for VGG's 140M parameters; gradient checks run real numbers on the small
models, and on the large ones under the `slow` marker.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from imgcls import create_model, list_models
from imgcls.errors import UserError
from imgcls.models import model_entry
from imgcls.models.googlenet import INCEPTIONS as GOOGLENET_ROWS
from imgcls.models.layers import LocalResponseNorm, StochasticPool2d

CLASSIC = [
    "lenet5",
    "alexnet",
    "zfnet",
    "nin",
    "nin_cifar",
    "vgg11",
    "vgg11_lrn",
    "vgg13",
    "vgg16_conv1",
    "vgg16",
    "vgg19",
    "vgg11_bn",
    "vgg13_bn",
    "vgg16_conv1_bn",
    "vgg16_bn",
    "vgg19_bn",
    "vgg16_cifar",
    "googlenet",
    "inception_v2",
]

# Small enough to run real forward/backward passes in the fast suite: (name, input side, batch).
SMALL = [
    ("lenet5", 32, 2),
    ("nin_cifar", 32, 2),
    ("vgg16_cifar", 32, 2),
    ("nin", 224, 1),
    ("googlenet", 96, 2),
    ("inception_v2", 64, 2),
]
LARGE = [(name, 224, 1) for name in CLASSIC if name.startswith(("alexnet", "zfnet", "vgg")) and "cifar" not in name]


def _native(name: str) -> tuple[int, int, int]:
    return model_entry(name).input_size


def _meta_model(name: str, **kw) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, **kw)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_all_classic_models_are_registered():
    assert set(CLASSIC) <= set(list_models())


# Papers' and reference implementations' counts, at the native input size.
PARAM_COUNTS = {
    ("lenet5", 10): 61_706,  # LeCun et al. 1998 with full C3 and a linear output (module docstring)
    ("alexnet", 1000): 60_965_224,  # Krizhevsky et al. 2012, two groups
    ("vgg11", 1000): 132_863_336,  # Simonyan & Zisserman 2014, Table 2: A 133M
    ("vgg11_lrn", 1000): 132_863_336,  # A-LRN: LRN has no parameters
    ("vgg13", 1000): 133_047_848,  # B 133M
    ("vgg16_conv1", 1000): 133_638_952,  # C 134M
    ("vgg16", 1000): 138_357_544,  # D 138M
    ("vgg19", 1000): 143_667_240,  # E 144M
    ("vgg11_bn", 1000): 132_868_840,  # torchvision's published counts
    ("vgg13_bn", 1000): 133_053_736,
    ("vgg16_bn", 1000): 138_365_992,
    ("vgg19_bn", 1000): 143_678_248,
    ("vgg16_cifar", 10): 14_728_266,  # kuangliu/pytorch-cifar VGG('VGG16')
    ("nin_cifar", 10): 966_986,  # Lin et al. 2013, the released CIFAR-10 model's ~0.97M
    ("vgg16_conv1_bn", 1000): 133_638_952 + 8_448,  # C plus BN on its 4,224 conv channels (as vgg16_bn = D + 8,448)
    # Counted by hand from the layer sizes. ZFNet, Zeiler & Fergus 2013, Figure 3: conv 96@7×7, 256@5×5, 384@3×3,
    # 384@3×3, 256@3×3 (with biases), fc 9216→4096→4096→1000.
    ("zfnet", 1000): (96 * 3 * 49 + 96) + (256 * 96 * 25 + 256) + (384 * 256 * 9 + 384) + (384 * 384 * 9 + 384)
    + (256 * 384 * 9 + 256) + (9216 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 1000 + 1000),
    # NiN, the authors' released ImageNet model: 11×11/4 96, 1×1 96, 96; 5×5 256, 1×1 256, 256; 3×3 384, 1×1 384,
    # 384; 3×3 1024, 1×1 1024, 1×1 1000 (the class maps).
    ("nin", 1000): (96 * 363 + 96) + 2 * (96 * 96 + 96) + (256 * 96 * 25 + 256) + 2 * (256 * 256 + 256)
    + (384 * 256 * 9 + 384) + 2 * (384 * 384 + 384) + (1024 * 384 * 9 + 1024) + (1024 * 1024 + 1024)
    + (1000 * 1024 + 1000),
}  # fmt: skip


@pytest.mark.parametrize(("name", "num_classes"), list(PARAM_COUNTS))
def test_parameter_count(name, num_classes):
    in_chans = _native(name)[0]
    assert _params(_meta_model(name, num_classes=num_classes, in_chans=in_chans)) == PARAM_COUNTS[name, num_classes]


def test_googlenet_and_bn_inception_parameter_counts():
    g = _meta_model("googlenet")
    main = sum(p.numel() for n, p in g.named_parameters() if not n.startswith("aux"))
    # Szegedy et al. 2014, Table 1 sums to ~6.8M; its per-row figures round and omit biases.
    assert 6.7e6 < main < 7.1e6
    assert _params(_meta_model("googlenet", aux_logits=False)) == main
    # Ioffe & Szegedy 2015 BN-Inception: ~11.3M (the released Caffe model's size).
    assert 11.2e6 < _params(_meta_model("inception_v2")) < 11.4e6


# torchvision's VGG state-dict layout: indices of the convolutions in `features` (BN at conv + 1).
TORCHVISION_CONV_INDICES = {
    "vgg11": [0, 3, 6, 8, 11, 13, 16, 18],
    "vgg13": [0, 2, 5, 7, 10, 12, 15, 17, 20, 22],
    "vgg16": [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28],
    "vgg19": [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34],
    "vgg11_bn": [0, 4, 8, 11, 15, 18, 22, 25],
    "vgg13_bn": [0, 3, 7, 10, 14, 17, 21, 24, 28, 31],
    "vgg16_bn": [0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40],
    "vgg19_bn": [0, 3, 7, 10, 14, 17, 20, 23, 27, 30, 33, 36, 40, 43, 46, 49],
}


@pytest.mark.parametrize("name", list(TORCHVISION_CONV_INDICES))
def test_vgg_state_dict_keys_are_torchvisions(name):
    expected = set()
    for i in TORCHVISION_CONV_INDICES[name]:
        expected |= {f"features.{i}.weight", f"features.{i}.bias"}
        if name.endswith("_bn"):
            expected |= {f"features.{i + 1}.{k}" for k in ("weight", "bias", "running_mean", "running_var")}
            expected.add(f"features.{i + 1}.num_batches_tracked")
    for i in (0, 3, 6):
        expected |= {f"classifier.{i}.weight", f"classifier.{i}.bias"}
    assert set(_meta_model(name).state_dict()) == expected


def test_vgg_columns_match_table_1():
    c = _meta_model("vgg16_conv1")
    kernels = [m.kernel_size for m in c.features if isinstance(m, nn.Conv2d)]
    # Column C: conv3 everywhere except the last layer of stages 3, 4 and 5, which is conv1.
    assert kernels.count((1, 1)) == 3 and [kernels[i] for i in (6, 9, 12)] == [(1, 1)] * 3
    a_lrn = _meta_model("vgg11_lrn")
    assert isinstance(a_lrn.features[2], LocalResponseNorm)
    depth = {n: sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in _meta_model(n).modules()) for n in CLASSIC[5:11]}
    assert depth == {"vgg11": 11, "vgg11_lrn": 11, "vgg13": 13, "vgg16_conv1": 16, "vgg16": 16, "vgg19": 19}


@pytest.mark.parametrize("name", CLASSIC)
def test_shapes_at_native_size(name):
    """Output and feature shapes, on the meta device; forward == forward_head(forward_features)."""
    c, h, w = _native(name)
    model = _meta_model(name, num_classes=7, in_chans=c).eval()
    x = torch.empty(2, c, h, w, device="meta")
    feats = model.forward_features(x)
    assert feats.dim() == 4 and feats.shape[:2] == (2, model.num_features)
    assert model(x).shape == (2, 7)
    assert model.forward_head(feats).shape == (2, 7)
    assert model.get_classifier() is not None and model.num_classes == 7


@pytest.mark.parametrize(("name", "size", "batch"), SMALL)
def test_forward_backward_small(name, size, batch):
    _check_forward_backward(name, size, batch)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "size", "batch"), LARGE)
def test_forward_backward_large(name, size, batch):
    _check_forward_backward(name, size, batch)


def _check_forward_backward(name: str, size: int, batch: int) -> None:
    torch.manual_seed(0)
    c = _native(name)[0]
    model = create_model(name, num_classes=5, in_chans=c)
    x = torch.randn(batch, c, size, size)

    model.train()
    out = model(x)
    outputs = out if isinstance(out, tuple) else (out,)
    for o in outputs:
        assert o.shape == (batch, 5) and torch.isfinite(o).all()
    sum(o.square().mean() for o in outputs).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no (finite) gradient for {missing[:5]}"
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())

    model.eval()
    with torch.no_grad():
        y = model(x)
        torch.testing.assert_close(model.forward_head(model.forward_features(x)), y)
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
        assert pre.dim() == 2 and pre.shape[0] == batch
        # pre_logits is exactly what the classifier consumes (NiN's is a 1×1 convolution).
        clf = model.get_classifier()
        logits = clf(pre[:, :, None, None]).flatten(1) if isinstance(clf, nn.Conv2d) else clf(pre)
        torch.testing.assert_close(logits, y)
        model.reset_classifier(3)
        assert model(x).shape == (batch, 3) and model.num_classes == 3


def test_googlenet_aux_heads_only_in_training():
    torch.manual_seed(0)
    model = create_model("googlenet", num_classes=4)
    assert model.aux_weights == (0.3, 0.3)
    x = torch.randn(2, 3, 112, 112)
    model.train()
    out = model(x)
    assert isinstance(out, tuple) and len(out) == 3 and all(o.shape == (2, 4) for o in out)
    model.eval()
    y = model(x)
    assert isinstance(y, torch.Tensor) and y.shape == (2, 4)
    model.reset_classifier(6)
    model.train()
    assert [o.shape[1] for o in model(x)] == [6, 6, 6]
    plain = create_model("googlenet", num_classes=4, aux_logits=False).train()
    assert plain.aux_weights == () and isinstance(plain(x), torch.Tensor)
    assert not any(n.startswith("aux") for n, _ in plain.named_children())


def test_googlenet_module_names_follow_table_1():
    names = [n for n, _ in _meta_model("googlenet").named_children()]
    for n in ["conv1", "conv2", "conv3", "fc", "aux1", "aux2"] + [f"inception{k}" for k in GOOGLENET_ROWS]:
        assert n in names
    assert names.index("inception3a") < names.index("inception5b") < names.index("fc")


def _macs_per_child(model: nn.Module, input_size: tuple[int, int, int]) -> dict[str, float]:
    """Multiply-adds (flops / 2) of one sample through each top-level child, in millions."""
    macs = {}
    x = torch.empty(1, *input_size, device="meta")
    for name, child in model.named_children():
        if name.startswith("aux"):
            continue
        if isinstance(child, nn.Linear):
            x = x.flatten(1)
        with FlopCounterMode(display=False) as counter:
            x = child(x)
        macs[name] = counter.get_total_flops() / 2 / 1e6
    return macs


def _inception_macs_from_columns(row, in_chans: int, hw: int) -> float:
    """Table 1's columns turned into multiply-adds by hand: sum over convolutions of H·W·C_in·k²·C_out."""
    convs = [
        (in_chans, 1, row.n1x1),
        (in_chans, 1, row.n3x3_reduce),
        (row.n3x3_reduce, 9, row.n3x3),
        (in_chans, 1, row.n5x5_reduce),
        (row.n5x5_reduce, 25, row.n5x5),
        (in_chans, 1, row.pool_proj),
    ]
    return sum(hw * cin * k * cout for cin, k, cout in convs) / 1e6


def test_googlenet_ops_per_module_match_table_1():
    macs = _macs_per_child(_meta_model("googlenet").eval(), (3, 224, 224))
    # Szegedy et al. 2014, Table 1, "ops" column (multiply-adds).
    paper = {"3a": 128, "3b": 304, "4a": 73, "4b": 88, "4c": 100, "4d": 119, "4e": 170, "5b": 71}
    for k, v in paper.items():
        assert macs[f"inception{k}"] == pytest.approx(v, rel=0.03), k
    # Table 1 prints 54M for 5a, but its own 5a columns (256, 160, 320, 32, 128, 128 on 7×7×832) give 51.1M,
    # as its 1072K params do not match them either; the model follows the columns.
    assert macs["inception5a"] == pytest.approx(_inception_macs_from_columns(GOOGLENET_ROWS["5a"], 832, 49))
    assert macs["inception5a"] == pytest.approx(51.08, rel=0.01)
    # The "convolution 3×3" row includes its 1×1 reduction: 360M.
    assert macs["conv2"] + macs["conv3"] == pytest.approx(360, rel=0.03)


def test_googlenet_and_bn_inception_map_sizes():
    g = _meta_model("googlenet").eval()
    x = torch.empty(1, 3, 224, 224, device="meta")
    shapes = {}
    for name, child in g.named_children():
        if name.startswith("aux") or name in ("dropout", "fc", "avgpool"):
            continue
        x = child(x)
        shapes[name] = tuple(x.shape[1:])
    # Table 1's "output size" column.
    assert shapes["conv1"] == (64, 112, 112) and shapes["maxpool1"] == (64, 56, 56)
    assert shapes["conv3"] == (192, 56, 56) and shapes["maxpool2"] == (192, 28, 28)
    assert [shapes[f"inception{k}"] for k in ("3a", "3b", "4a", "4e", "5a", "5b")] == [
        (256, 28, 28),
        (480, 28, 28),
        (512, 14, 14),
        (832, 14, 14),
        (832, 7, 7),
        (1024, 7, 7),
    ]

    b = _meta_model("inception_v2").eval()
    x = torch.empty(1, 3, 224, 224, device="meta")
    shapes = {}
    for name, child in b.named_children():
        if name in ("dropout", "fc", "avgpool"):
            continue
        x = child(x)
        shapes[name] = tuple(x.shape[1:])
    # Ioffe & Szegedy 2015, Figure 5, with 4c-4e from the column sums (608, 608, 1056; see the module docstring).
    expected = {
        "3a": (256, 28),
        "3b": (320, 28),
        "3c": (576, 14),
        "4a": (576, 14),
        "4b": (576, 14),
        "4c": (608, 14),
        "4d": (608, 14),
        "4e": (1056, 7),
        "5a": (1024, 7),
        "5b": (1024, 7),
    }
    for k, (chans, side) in expected.items():
        assert shapes[f"inception{k}"] == (chans, side, side), k
    bn_count = sum(isinstance(m, nn.BatchNorm2d) for m in b.modules())
    conv_count = sum(isinstance(m, nn.Conv2d) for m in b.modules())
    assert bn_count == conv_count  # batch norm after every convolution


def test_alexnet_groups_and_zfnet_map_sizes():
    a = _meta_model("alexnet")
    f = a.features
    # Krizhevsky et al. 2012, Figure 2: conv2, conv4, conv5 see only their own GPU's half.
    assert [f.conv1.groups, f.conv2.groups, f.conv3.groups, f.conv4.groups, f.conv5.groups] == [1, 2, 1, 2, 2]
    assert tuple(f.conv2.weight.shape) == (256, 48, 5, 5)
    names = [n for n, _ in f.named_children()]
    assert names[:4] == ["conv1", "relu1", "norm1", "pool1"] and "norm3" not in names
    assert isinstance(a.classifier[2], nn.Dropout) and a.classifier[2].p == 0.5

    z = _meta_model("zfnet").eval()
    x = torch.empty(1, 3, 224, 224, device="meta")
    sizes = {}
    for name, layer in z.features.named_children():
        x = layer(x)
        sizes[name] = tuple(x.shape[1:])
    # Zeiler & Fergus 2013, Figure 3.
    assert sizes["conv1"] == (96, 110, 110) and sizes["pool1"] == (96, 55, 55)
    assert sizes["conv2"] == (256, 26, 26) and sizes["pool2"] == (256, 13, 13)
    assert sizes["conv5"] == (256, 13, 13) and sizes["pool5"] == (256, 6, 6)
    assert z.features.conv1.kernel_size == (7, 7) and z.features.conv1.stride == (2, 2)
    assert z.features.conv2.kernel_size == (5, 5) and z.features.conv2.stride == (2, 2)


def test_lenet5_layers():
    m = _meta_model("lenet5", num_classes=10, in_chans=1).eval()
    x = torch.empty(1, 1, 32, 32, device="meta")
    x = m.c1(x)
    assert x.shape[1:] == (6, 28, 28)
    x = m.c3(m.s2(x))
    assert x.shape[1:] == (16, 10, 10)
    assert m.c5(m.s4(x)).shape[1:] == (120, 1, 1)
    assert (m.f6.in_features, m.f6.out_features, m.fc.in_features) == (120, 84, 84)


def test_nin_class_maps_average_to_the_logits():
    torch.manual_seed(0)
    model = create_model("nin_cifar", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 192, 8, 8)
        # Section 3.2: one confidence map per class, averaged over space.
        maps = model.get_classifier()(feats)
        torch.testing.assert_close(maps.mean((2, 3)), model(x), rtol=1e-4, atol=1e-5)


def test_pool_option_selects_stochastic_pooling():
    torch.manual_seed(0)
    model = create_model("lenet5", num_classes=10, in_chans=1, pool="stochastic")
    assert sum(isinstance(m, StochasticPool2d) for m in model.modules()) == 2
    x = torch.randn(4, 1, 32, 32)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))  # test time is the deterministic weighted average
    model.train()
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert sum(isinstance(m, StochasticPool2d) for m in _meta_model("vgg11", pool="stochastic").modules()) == 5
    with pytest.raises(UserError, match="pool"):
        create_model("alexnet", pool="median")


@pytest.mark.slow
def test_lenet5_learns_handwritten_digits():
    """Real data: the 1,797 8×8 digits bundled with scikit-learn, padded to 32×32 as the paper pads MNIST."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    x = torch.nn.functional.interpolate(x, size=24, mode="bilinear", align_corners=False)
    x = torch.nn.functional.pad(x, (4, 4, 4, 4))  # 24×24 digit centred in a 32×32 field, like LeCun's 20×20 in 28
    x = (x - x.mean()) / x.std()
    y = torch.tensor(digits.target)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(x), generator=g)
    train, test = perm[:1400], perm[1400:]

    torch.manual_seed(0)
    model = create_model("lenet5", num_classes=10, in_chans=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(4):
        model.train()
        order = train[torch.randperm(len(train), generator=g)]
        for i in range(0, len(order), 50):
            batch = order[i : i + 50]
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x[test]).argmax(1) == y[test]).float().mean().item()
    assert accuracy > 0.95, accuracy
