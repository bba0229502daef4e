"""`imgcls models` and `imgcls summary`, run in-process through `main`."""

from __future__ import annotations

import json

import pytest

import imgcls
from imgcls.cli import main
from imgcls.cli.models_cmd import parse_input_size
from imgcls.errors import UserError


def test_models_lists_every_registered_model(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "input", "paper"]
    assert [line.split()[0] for line in lines[1:]] == imgcls.list_models()


def test_models_pattern_and_substring(capsys):
    assert main(["models", "resnet1*"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert names == imgcls.list_models("resnet1*") and "resnet18" in names
    assert main(["models", "resnet"]) == 0  # no wildcard: a substring
    lines = capsys.readouterr().out.splitlines()[1:]
    names = [line.split()[0] for line in lines]
    assert "preact_resnet18" in names and all("resnet" in n for n in names)
    row = next(line for line in lines if line.startswith("resnet18 ")).split(None, 2)
    assert row[1] == "3x224x224" and row[2] == imgcls.models.model_entry("resnet18").paper


def test_models_without_match_is_exit_2(capsys):
    assert main(["models", "nosuchnet*"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imgcls: error: no registered model matches 'nosuchnet*'") and err.count("\n") == 1


def test_summary_unknown_model_is_one_line_exit_2(capsys):
    assert main(["summary", "resnt18"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("imgcls: error: unknown model: resnt18") and captured.err.count("\n") == 1


def test_summary_table_has_rows_and_totals(capsys):
    assert main(["summary", "resnet18"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:2] == ["layer", "type"]
    layer1 = next(line for line in lines if line.startswith("layer1 "))
    assert "64×56×56" in layer1 and "147,968" in layer1
    assert lines[-1].startswith("total") and "11,689,512" in lines[-1] and "1.8G" in lines[-1]


def test_summary_json_and_input_size(capsys):
    assert main(["summary", "resnet18", "--input-size", "64", "--num-classes", "10", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["name"] == "resnet18" and data["input_size"] == [3, 64, 64]
    layers = {row["name"]: row for row in data["layers"]}
    assert layers["layer4"]["output_shape"] == [512, 2, 2] and layers["fc"]["output_shape"] == [10]
    assert sum(row["macs"] for row in data["layers"]) == data["macs"]
    assert sum(row["params"] for row in data["layers"]) == data["params"]


def test_summary_googlenet_is_shaped_like_the_paper(capsys):
    assert main(["summary", "googlenet"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[1].split() == ["type", "layer", "output", "size", "params", "ops"]
    # Szegedy et al. 2014, Table 1: rows and output sizes (H×W×C).
    expect = {
        "conv1": ("convolution 7×7/2", "112×112×64"),
        "inception3a": ("inception (3a)", "28×28×256"),
        "inception4e": ("inception (4e)", "14×14×832"),
        "inception5b": ("inception (5b)", "7×7×1024"),
        "fc": ("linear", "1000"),
    }
    for name, (kind, size) in expect.items():
        row = next(line for line in lines if f" {name} " in f" {line} ")
        assert row.startswith(kind) and size in row, row
    # The test-time network (Table 1: ~6.8M parameters, 1.5 G multiply-adds), then the auxiliary classifiers that
    # training adds (Section 5: discarded at inference time), then both together.
    assert lines[-3].split() == ["total", "(test", "time)", "7.0M", "1.6G"]
    assert lines[-2].split() == ["+", "training", "only", "(aux1,", "aux2)", "6.4M"]
    assert lines[-1].split() == ["total", "with", "training-only", "heads", "13.4M"]


def test_summary_separates_inception_v3s_auxiliary_head(capsys):
    assert main(["summary", "inception_v3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-3].split() == ["total", "(test", "time)", "3×299×299", "in", "23,834,568", "5.7G"]
    assert lines[-2].split() == ["+", "training", "only", "(AuxLogits)", "3,326,696"]
    assert lines[-1].split() == ["total", "with", "training-only", "heads", "27,161,264"]
    assert main(["summary", "inception_v3", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["inference_params"], data["params"], data["training_only"]) == (23_834_568, 27_161_264, ["AuxLogits"])


def test_summary_bad_input_size(capsys):
    assert main(["summary", "resnet18", "--input-size", "big"]) == 2
    assert "--input-size big" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "expected"),
    [("224", (3, 224, 224)), ("160x128", (3, 160, 128)), ("1,28,28", (1, 28, 28)), (None, None)],
)
def test_parse_input_size(text, expected):
    assert parse_input_size(text, (3, 224, 224)) == expected


@pytest.mark.parametrize("text", ["0", "a", "1,2,3,4", "-5"])
def test_parse_input_size_rejects(text):
    with pytest.raises(UserError, match="--input-size"):
        parse_input_size(text, (3, 224, 224))


def test_summary_input_too_small_is_exit_2(capsys):
    assert main(["summary", "vgg16", "--input-size", "16"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imgcls: error: input size 3x16x16 does not fit vgg16:") and err.count("\n") == 1


def test_summary_counts_a_cifar_size_model_with_10_classes(capsys):
    assert main(["summary", "lenet5", "--json"]) == 0
    layers = {row["name"]: row for row in json.loads(capsys.readouterr().out)["layers"]}
    assert layers["fc"]["output_shape"] == [10]  # LeNet-5's ten digits, not ImageNet's 1000
