"""The one configuration reader: one wording for unknown keys in every section, typed and range-checked values,
choices defined once, and recipe files that cannot be binary, huge, or expand through YAML aliases."""

from __future__ import annotations

import pytest

from imgcls.config_reader import MAX_RECIPE_NODES, choices_of, load_recipe, read_section
from imgcls.data import DataConfig
from imgcls.data.augment import AugmentConfig
from imgcls.engine.config import (
    OPTIMIZERS,
    SCHEDULES,
    ModelConfig,
    OptimConfig,
    ScheduleConfig,
    TrainConfig,
    resolve_config,
)
from imgcls.errors import UserError

SECTIONS = [
    ("model", ModelConfig),
    ("data", DataConfig),
    ("augment", AugmentConfig),
    ("optim", OptimConfig),
    ("schedule", ScheduleConfig),
    ("train", TrainConfig),
]


@pytest.mark.parametrize(("section", "cls"), SECTIONS)
def test_every_section_words_an_unknown_key_the_same_way(section, cls):
    with pytest.raises(UserError) as info:
        read_section(cls, {"no_such_key": 1}, section)
    assert str(info.value).startswith(f"{section}: unknown setting 'no_such_key' (known: ")


@pytest.mark.parametrize(("section", "cls"), SECTIONS)
def test_every_section_refuses_a_value_that_is_not_a_mapping(section, cls):
    with pytest.raises(UserError, match=f"^{section}: expected a mapping of settings"):
        read_section(cls, [1, 2], section)


@pytest.mark.parametrize(
    ("cls", "values", "message"),
    [
        (OptimConfig, {"lr": "1e-3"}, None),  # YAML's string for 1e-3 is a number here
        (OptimConfig, {"lr": 0}, "optim.lr: must be > 0, got 0.0"),
        (OptimConfig, {"lr": float("nan")}, "optim.lr: must be a finite number, got nan"),
        (OptimConfig, {"momentum": 1.5}, "optim.momentum: must be in [0, 1), got 1.5"),
        (OptimConfig, {"accum_steps": 2.5}, "optim.accum_steps: expected an integer, got 2.5"),
        (OptimConfig, {"nesterov": "yes"}, "optim.nesterov: expected true or false, got 'yes'"),
        (OptimConfig, {"name": "lion"}, "optim.name: must be one of sgd, adamw, rmsprop, muon, got 'lion'"),
        (ScheduleConfig, {"milestones": [10, -1]}, "schedule.milestones: must be >= 0, got [10.0, -1.0]"),
        (TrainConfig, {"freeze_after": {"conv": -2}}, "train.freeze_after: must be >= 0, got {'conv': -2}"),
        (TrainConfig, {"task": "regression"}, "train.task: must be one of null, multiclass"),
        (TrainConfig, {"epochs": True}, "train.epochs: expected an integer, got True"),
        (ModelConfig, {"image_size": -3}, "model.image_size: must be in [1, 4096], got -3"),
        (ModelConfig, {"kwargs": [1]}, "model.kwargs: expected a mapping, got [1]"),
        (DataConfig, {"batch_size": "big"}, "data.batch_size: expected an integer, got 'big'"),
        (AugmentConfig, {"hflip": None}, "augment.hflip: expected a number, got null"),
    ],
)
def test_values_are_typed_and_range_checked_with_the_setting_named(cls, values, message):
    if message is None:
        assert read_section(cls, values).lr == pytest.approx(1e-3)
        return
    with pytest.raises(UserError) as info:
        read_section(cls, values)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_choices_are_defined_once_and_used_by_the_command_line():
    from imgcls.cli import build_parser

    assert choices_of(OptimConfig, "name") == OPTIMIZERS and choices_of(ScheduleConfig, "name") == SCHEDULES
    train = next(a for a in build_parser()._subparsers._group_actions[0].choices["train"]._actions if a.dest == "task")
    assert tuple(train.choices) == choices_of(TrainConfig, "task") == ("multiclass", "multilabel", "binary")


def test_null_reaches_the_setting(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  name: resnet50\n  weights: torchvision\n")
    assert resolve_config(str(recipe)).model.weights == "torchvision"
    assert resolve_config(str(recipe), {"model": {"weights": None}}).model.weights is None


def test_a_yaml_alias_bomb_is_refused_quickly(tmp_path):
    # Nine levels of nine aliases: 9**9 = 387 million values once expanded, from 600 bytes of text.
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    path = tmp_path / "bomb.yaml"
    path.write_text("train:\n" + "\n".join("  " + line for line in lines) + "\n")
    with pytest.raises(UserError, match=f"expands to more than {MAX_RECIPE_NODES:,} values"):
        load_recipe(path)


def test_a_binary_or_huge_recipe_is_refused(tmp_path):
    binary = tmp_path / "model.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    with pytest.raises(UserError, match="not a text file"):
        load_recipe(binary)
    huge = tmp_path / "huge.yaml"
    huge.write_text("train:\n  epochs: 1\n" + "# padding\n" * 200_000)
    with pytest.raises(UserError, match="is not a recipe"):
        load_recipe(huge)
