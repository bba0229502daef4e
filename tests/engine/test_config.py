"""Configuration: shipped recipes, precedence defaults < recipe < flags, typed values, config.json contents."""

from __future__ import annotations

import pytest

from imgcls.cli import build_parser
from imgcls.cli.train_cmd import build_config
from imgcls.engine.config import (
    OptimConfig,
    config_record,
    load_recipe,
    recipe_names,
    resolve_config,
)
from imgcls.errors import UserError


def test_every_shipped_recipe_resolves():
    assert set(recipe_names()) >= {"digits", "cifar10", "imagenet", "finetune"}
    for name in recipe_names():
        cfg = resolve_config(name)
        assert cfg.model.name, name


def test_cifar10_recipe_is_the_table_recipe():
    cfg = resolve_config("cifar10")
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == ("sgd", 0.1, 0.9, 5e-4)
    assert cfg.data.batch_size == 128
    assert (cfg.schedule.name, cfg.train.epochs) == ("cosine", 200)
    assert (cfg.augment.crop_padding, cfg.augment.hflip) == (4, 0.5)


def test_precedence_defaults_recipe_flags(tmp_path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("optim:\n  lr: 1e-3\n  name: adamw\ntrain:\n  epochs: 7\n")
    assert load_recipe(recipe)["optim"]["lr"] == "1e-3"  # PyYAML reads 1e-3 (no dot) as a string...
    args = build_parser().parse_args(
        ["train", "--recipe", str(recipe), "--epochs", "3", "--set", "optim.momentum=0.5", "--out", "r"]
    )
    cfg = build_config(args)
    assert cfg.optim.lr == pytest.approx(1e-3)  # ...the typed config turns it into a float
    assert cfg.optim.name == "adamw"  # recipe over default
    assert cfg.train.epochs == 3  # flag over recipe
    assert cfg.optim.momentum == 0.5  # --set over default
    assert cfg.optim.weight_decay == OptimConfig().weight_decay  # default kept


def test_resume_uses_the_saved_configuration(tmp_path):
    import json

    run = tmp_path / "run"
    run.mkdir()
    saved = resolve_config("digits", {"train": {"out": str(run), "epochs": 9}})
    (run / "config.json").write_text(json.dumps(config_record(saved)))
    args = build_parser().parse_args(["train", "--out", str(run), "--resume", "--epochs", "12"])
    cfg = build_config(args)
    assert (cfg.model.name, cfg.data_spec, cfg.train.epochs, cfg.train.resume) == ("lenet5", "digits", 12, True)


def test_config_record_holds_versions_and_commit():
    record = config_record(resolve_config("digits"), run={"classes": ["a"]})
    assert record["data"]["spec"] == "digits"
    assert {"torch", "python", "imgcls"} <= set(record["versions"])
    assert "git_commit" in record and record["run"]["classes"] == ["a"]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("optimizer:\n  lr: 0.1\n", "unknown section optimizer"),
        ("optim:\n  learning_rate: 0.1\n", "optim: unknown setting 'learning_rate'"),
        ("optim:\n  lr: fast\n", "optim.lr"),
        ("optim: [1, 2]\n", "mapping"),
        ("optim:\n  lr: [0.1\n", "not valid YAML"),
    ],
)
def test_bad_recipes_are_one_line_user_errors(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=match) as info:
        resolve_config(str(path))
    assert "\n" not in str(info.value)


def test_unknown_recipe_name():
    with pytest.raises(UserError, match="unknown recipe: digitz"):
        load_recipe("digitz")
