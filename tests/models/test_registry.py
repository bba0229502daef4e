"""The registry: native defaults, option checks and the smallest input, before anything is built for real."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from imgcls import create_model, list_models
from imgcls.errors import UserError
from imgcls.models import check_model_args, model_entry, model_options


def _first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("name", [n for n in list_models() if "classic" not in model_entry(n).tags])
def test_default_input_channels_are_the_registrys(name):  # (the feature + SVM pipelines: tests/classic)
    # The registry's native input (channels too) is what create_model builds when nothing else is asked.
    with torch.device("meta"):
        model = create_model(name)
    assert _first_conv(model).in_channels == model_entry(name).input_size[0]


def test_lenet5_is_grey_scale_by_default():
    assert model_entry("lenet5").input_size == (1, 32, 32)
    model = create_model("lenet5", num_classes=10).eval()
    assert tuple(model.c1.weight.shape) == (6, 1, 5, 5)
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
    assert create_model("lenet5", in_chans=3).c1.in_channels == 3  # still a choice


def test_unknown_option_is_one_line_listing_the_families_options():
    expected = "resnet18 has no option pool (its options: drop_rate, global_pool, zero_init_residual, stride_in_1x1)"
    with pytest.raises(UserError) as err:
        check_model_args("resnet18", num_classes=10, in_chans=3, image_size=32, pool="stochastic")
    assert str(err.value) == expected
    with pytest.raises(UserError) as err:  # the same text from create_model itself
        create_model("resnet18", pool="stochastic")
    assert str(err.value) == expected
    assert model_options("lenet5") == {"pool": "avg"}
    check_model_args("lenet5", pool="stochastic")  # an option it has
    with pytest.raises(UserError) as err:
        check_model_args("inception_v2", drop_rate=0.2, aux_logits=False)
    assert str(err.value) == "inception_v2 has no option aux_logits (its options: drop_rate)"


def test_option_fixed_by_the_name_and_bad_values():
    with pytest.raises(UserError) as err:
        check_model_args("vgg11_bn", batch_norm=False)
    assert str(err.value) == "model option batch_norm cannot be set for vgg11_bn: its name fixes it"
    with pytest.raises(UserError, match=r"^pool .*median") as err:
        check_model_args("alexnet", pool="median")
    with pytest.raises(UserError) as err:
        check_model_args("resnet18", drop_rate="half")
    assert str(err.value).startswith("resnet18: invalid model options drop_rate='half': ")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("name", "size", "training", "smallest"),
    [
        ("alexnet", 16, True, 35),
        ("inception_v3", 64, False, 75),  # the test-time network
        ("inception_v3", 64, True, 299),  # training runs the auxiliary head on the 17×17 grid (5×5/3 pool, 5×5 conv)
        ("lenet5", 16, True, 32),
        ("googlenet", (20, 300), True, 31),
    ],
)
def test_too_small_input_names_the_smallest_one(name, size, training, smallest):
    shown = "×".join(map(str, size)) if isinstance(size, tuple) else str(size)
    with pytest.raises(UserError) as err:
        check_model_args(name, image_size=size, training=training)
    assert (
        str(err.value) == f"image size {shown} is too small for {name}: it needs at least {smallest}×{smallest} pixels"
    )
    check_model_args(name, image_size=smallest, training=training)
    with pytest.raises(UserError):
        check_model_args(name, image_size=smallest - 1, training=training)


@pytest.mark.parametrize(("name", "smallest"), [("alexnet", 35), ("lenet5", 32)])
def test_smallest_input_is_what_the_real_network_takes(name, smallest):
    # The meta-device search agrees with real arithmetic: one pixel less fails, the size found runs.
    c = model_entry(name).input_size[0]
    model = create_model(name).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, c, smallest, smallest)).shape == (1, 1000)
        with pytest.raises(RuntimeError):
            model(torch.zeros(1, c, smallest - 1, smallest - 1))


def test_counts_and_sizes_must_be_positive_integers():
    with pytest.raises(UserError) as err:
        check_model_args("resnet18", in_chans=0)
    assert str(err.value) == "in_chans of resnet18 must be an integer >= 1: 0"
    with pytest.raises(UserError) as err:
        check_model_args("resnet18", num_classes=-1)
    assert str(err.value) == "num_classes of resnet18 must be an integer >= 0: -1"
    with pytest.raises(UserError) as err:
        check_model_args("resnet18", image_size=0)
    assert str(err.value) == "image size of resnet18 must be a positive integer or (height, width): 0"
    with pytest.raises(UserError, match="unknown model: resnt18"):
        check_model_args("resnt18")


# ---- the tests follow the registry ----------------------------------------------------------------------------------
def test_every_registered_model_is_covered_by_the_shape_parameter_and_golden_tests():
    """A model added to (or removed from) the registry without its tests fails here, naming it."""
    from tests.models import test_airbench, test_classic, test_modern, test_small

    from imgcls.models.published import published_files

    registered = {n for n in list_models() if "classic" not in model_entry(n).tags}  # pipelines: tests/classic
    shapes = set(test_classic.CLASSIC) | set(test_modern.MODERN) | set(test_small.SMALL_MODELS) | {"airbench94"}
    params = (
        {name for name, _ in test_classic.PARAM_COUNTS}
        | {"googlenet", "inception_v2"}  # test_googlenet_and_bn_inception_parameter_counts (the papers' ranges)
        | set(test_modern.PARAMS)
        | set(test_modern.PREACT)
        | set(test_small.PARAMS)
        | ({"airbench94"} if test_airbench.AIRBENCH_PARAMS else set())
    )
    golden = {p.stem for p in (Path(__file__).parent / "golden").glob("*.json")}
    published = {model for model, _, _ in published_files()}
    assert sorted(registered - shapes) == [], "registered models without shape/forward tests"
    assert sorted(registered - params) == [], "registered models without a parameter count"
    assert sorted(published - golden) == [], "models with published weights but no golden logits"
    # And no test table names a model that is not registered (a removed model must not pass silently).
    assert sorted((shapes | params | golden) - registered) == []


def test_on_meta_skips_initialisers_of_meta_tensors_only():
    """Inside `on_meta`, modules are built on the meta device without running initialisers; a real tensor
    initialised there is still initialised (the mode only short-cuts meta tensors)."""
    from imgcls.models import on_meta

    with on_meta():
        net = create_model("resnet10t", num_classes=3)
        real = torch.zeros(64, device="cpu")
        nn.init.normal_(real)
        uniform = torch.zeros(64, device="cpu").uniform_()
    assert all(p.is_meta for p in net.parameters())
    assert real.std() > 0.5 and uniform.min() >= 0 and uniform.max() > 0.5
