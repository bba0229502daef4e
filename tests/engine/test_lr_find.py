"""The learning-rate range test (engine/lr_find.py): the sweep, the reading of a curve, the restoring of every
state, and ``train.lr_find`` in a real run on real data (LeNet-5 on the bundled digits)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from imgcls.cli import main
from imgcls.engine.checkpoint import load_checkpoint
from imgcls.engine.lr_find import centred_average, exponential_rates, range_test, read_curve
from imgcls.errors import UserError


def test_rates_are_exponential_from_start_to_end():
    rates = exponential_rates(1e-4, 1.0, 5)
    assert rates == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0], rel=1e-12)
    with pytest.raises(UserError, match=r"needs 0 < start < end, got \[1, 0.1\]"):
        exponential_rates(1.0, 0.1, 5)


def test_centred_average_has_no_lag_and_skips_missing_values():
    assert centred_average([1.0, 2.0, 3.0, 4.0, 5.0], 3) == pytest.approx([1.5, 2.0, 3.0, 4.0, 4.5])
    assert centred_average([1.0, None, 3.0], 3) == [1.0, 2.0, 3.0]
    assert centred_average([None, None], 1) == [None, None]


def test_reading_a_known_curve():
    # A valley with its bottom at lr = 1e-2, symmetric in log scale (so its centred average keeps the bottom there):
    # the lowest loss is read at 1e-2, the suggestion is a tenth of that, the steepest fall lies before the bottom.
    rates = exponential_rates(1e-5, 10.0, 61)  # ten steps per decade
    losses = [1.0 + (math.log10(lr) + 2) ** 2 for lr in rates]
    finding = read_curve(rates, losses, 1e-5, 10.0, 61, stopped=False)
    assert finding.min_loss_lr == pytest.approx(1e-2, rel=1e-9)
    assert finding.suggestion == pytest.approx(1e-3, rel=1e-9)
    assert 1e-5 <= finding.suggestion <= 10.0
    assert finding.steepest_lr is not None and finding.steepest_lr < finding.min_loss_lr


def test_a_curve_whose_lowest_point_is_at_the_start_suggests_the_start():
    rates = exponential_rates(1e-3, 1.0, 20)
    finding = read_curve(rates, [float(i) for i in range(20)], 1e-3, 1.0, 20, stopped=True)
    assert finding.suggestion == 1e-3  # clipped into the tested range, never below it
    assert finding.steepest_lr is None  # the loss never falls


def test_a_curve_without_a_finite_loss_is_one_line():
    with pytest.raises(UserError, match="no step gave a finite loss"):
        read_curve([1e-3], [None], 1e-3, 1.0, 10, stopped=True)


def _digits(batch_size: int = 64):
    from imgcls.data import DataConfig, build_data
    from imgcls.data.transforms import AugmentConfig

    return build_data(
        "digits",
        DataConfig(batch_size=batch_size, val_fraction=0.1),
        AugmentConfig(),
        image_size=32,
        in_chans=1,
        seed=0,
    )


def test_range_test_restores_model_optimizer_and_rng_and_keeps_group_ratios():
    from imgcls.engine.config import OptimConfig
    from imgcls.engine.optim import build_optimizer
    from imgcls.models import create_model

    data = _digits()
    torch.manual_seed(0)
    net = create_model("lenet5", num_classes=10, in_chans=1)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt = build_optimizer(net, OptimConfig(lr=0.1, momentum=0.9, backbone_lr_mult=0.25))
    seen: list[dict[str, float]] = []

    def step(batches) -> float:
        seen.append({g["group_name"]: g["lr"] for g in opt.param_groups})
        x, y = next(batches)
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return float(loss.detach())

    rng = torch.get_rng_state()
    finding = range_test(net, opt, data.train, step, headline_lr=0.1, start=1e-4, end=1.0, steps=30)
    assert torch.equal(torch.get_rng_state(), rng)
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} not restored"
    assert opt.state_dict()["state"] == {}  # no momentum left behind
    assert [g["lr"] for g in opt.param_groups] == [g["base_lr"] for g in opt.param_groups]
    assert seen[0]["head"] == pytest.approx(1e-4) and seen[0]["backbone"] == pytest.approx(0.25e-4)
    assert all(r["backbone"] == pytest.approx(0.25 * r["head"]) for r in seen)
    assert finding.lrs == pytest.approx([r["head"] for r in seen], rel=1e-12)
    assert 1e-4 <= finding.suggestion <= 1.0


def _digits_argv(run, *settings: str, epochs: int = 3) -> list[str]:
    argv = ["train", "--recipe", "digits", "--epochs", str(epochs), "--out", str(run), "--precision", "fp32"]
    base = ["train.report=false", "train.progress=none", *settings]
    return argv + [item for s in base for item in ("--set", s)]


@pytest.mark.slow
def test_train_lr_find_suggests_a_rate_in_range_that_trains_well(tmp_path):
    # LeNet-5 on the digits with SGD (momentum 0.9): the rates that train it well lie between about 1e-3 and 0.3
    # (the digits recipe uses 0.05); the suggestion must land there, be recorded, and give a good run.
    run = tmp_path / "run"
    assert main(_digits_argv(run, "train.lr_find=true", "train.lr_find_range=[1.0e-5, 10.0]")) == 0
    finding = json.loads((run / "lr_find.json").read_text())
    assert 1e-5 <= finding["suggestion"] <= 10.0
    assert 1e-3 <= finding["suggestion"] <= 0.3, finding["suggestion"]
    assert finding["min_loss_lr"] == pytest.approx(10 * finding["suggestion"]) or finding["suggestion"] == 1e-5
    assert (run / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((run / "config.json").read_text())
    assert config["optim"]["lr"] == finding["suggestion"]
    assert config["run"]["lr_find"]["suggestion"] == finding["suggestion"]
    rows = (run / "metrics.csv").read_text().splitlines()
    top1 = max(float(r.split(",")[3]) for r in rows[1:])
    assert top1 >= 90.0, rows


def test_a_run_that_tests_first_trains_exactly_as_one_started_at_the_suggestion(tmp_path):
    tested, plain = tmp_path / "tested", tmp_path / "plain"
    assert main(_digits_argv(tested, "train.lr_find=true", "train.lr_find_steps=30", epochs=1)) == 0
    lr = json.loads((tested / "config.json").read_text())["optim"]["lr"]
    assert main([*_digits_argv(plain, epochs=1), "--lr", repr(lr)]) == 0
    a = load_checkpoint(tested / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(plain / "checkpoints" / "last.pt")["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
