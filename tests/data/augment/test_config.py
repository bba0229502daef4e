"""AugmentConfig: the recipe contract (unknown keys, ranges, rules between settings, round trip)."""

from __future__ import annotations

import pytest

from imgcls.config_reader import choices_of
from imgcls.data.augment import AugmentConfig
from imgcls.data.augment.policies import POLICIES
from imgcls.errors import UserError


def test_from_dict_rejects_unknown_key_naming_it():
    with pytest.raises(UserError, match="'crop_pading'"):
        AugmentConfig.from_dict({"crop_pading": 4})


def test_from_dict_reads_lists_and_dashes_and_round_trips():
    aug = AugmentConfig.from_dict({"crop-padding": 4, "color_jitter": [0.4, 0.4, 0.4, 0.1], "hflip": 0.5})
    assert aug.crop_padding == 4 and aug.color_jitter == (0.4, 0.4, 0.4, 0.1)
    assert AugmentConfig.from_dict(aug.to_dict()) == aug


@pytest.mark.parametrize(
    "bad",
    [
        {"hflip": 1.5},
        {"padding_mode": "wrap"},
        {"autoaugment": "coco"},
        {"randaugment": "two,nine"},
        {"randaugment": "2,40"},
        {"color_jitter": [0.4, 0.4]},
        {"color_jitter": [0, 0, 0, 0.7]},
        {"rrc_scale": [1.0, 0.5]},
        {"crop_padding": 2.5},
        {"sampler": "weighted"},
        {"normalize": "zca"},
        {"autoaugment": "cifar10", "trivialaugment": True},
        {"sample_pairing": True, "mixup": 0.2},
    ],
)
def test_invalid_values_are_user_errors_naming_the_key(bad):
    with pytest.raises(UserError, match=f"augment.{next(iter(bad)).replace('-', '_')}|augment.autoaugment"):
        AugmentConfig.from_dict(bad)


def test_choices_are_declared_once_on_the_fields():
    assert choices_of(AugmentConfig, "autoaugment") == tuple(POLICIES)
    assert choices_of(AugmentConfig, "padding_mode") == ("constant", "reflect", "edge")
    with pytest.raises(UserError, match=r"augment\.autoaugment: must be one of null, imagenet, cifar10, svhn"):
        AugmentConfig(autoaugment="coco")


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"rrc_scale": [1.0, 0.5]}, "low end first"),
        ({"alternate_flip": True, "hflip": 0.5}, "hflip to 0"),
        ({"sample_pairing": True, "sample_pairing_start": 10, "sample_pairing_stop": 5}, "sample_pairing_stop"),
        ({"randaugment": "2,9", "trivialaugment": True}, "choose one"),
        ({"color_jitter": [0, 0, 0, 0.6]}, "half a turn"),
        ({"gaussian_blur_sigma": [2.0, 0.1]}, "low end first"),
    ],
)
def test_rules_between_settings(bad, match):
    with pytest.raises(UserError, match=match):
        AugmentConfig.from_dict(bad)
