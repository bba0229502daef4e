"""Issue 11 audit of the engine's arithmetic: values computed by hand (or from the definition) for the losses and
schedules the other tests leave out, the EMA recursion, clipping and gradient accumulation in a real run."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from imgcls.cli import main
from imgcls.engine.checkpoint import load_checkpoint
from imgcls.engine.config import ScheduleConfig
from imgcls.engine.ema import ModelEma
from imgcls.engine.losses import build_loss, compute_loss
from imgcls.engine.schedule import LRSchedule
from imgcls.models import create_model


def _lrs(cfg: ScheduleConfig, steps_per_epoch: int, epochs: int, base: float = 0.1) -> list[float]:
    opt = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": base, "base_lr": base}], lr=base)
    sched = LRSchedule(opt, cfg, steps_per_epoch, epochs)
    out = []
    for _ in range(steps_per_epoch * epochs):
        out.append(opt.param_groups[0]["lr"])
        sched.step()
    return out


def test_linear_schedule_with_warmup_by_hand():
    # 10 epochs of 10 steps, 2 warm-up epochs from 0.2: then a straight fall over the 80 remaining steps to 0.07.
    cfg = ScheduleConfig(name="linear", warmup_epochs=2, warmup_start=0.2, min_lr_ratio=0.07)
    lrs = _lrs(cfg, steps_per_epoch=10, epochs=10)
    assert lrs[0] == pytest.approx(0.1 * 0.2)
    assert lrs[10] == pytest.approx(0.1 * (0.2 + 0.8 * 10 / 20))  # warm-up multiplies the (still flat) main curve
    assert lrs[20] == pytest.approx(0.1)  # the peak
    assert lrs[60] == pytest.approx(0.1 * (1 - 0.93 * 40 / 80))
    assert lrs[99] == pytest.approx(0.1 * (1 - 0.93 * 79 / 80))
    assert all(a >= b for a, b in itertools.pairwise(lrs[20:]))  # monotone after the peak


def test_constant_and_step_with_warmup_by_hand():
    lrs = _lrs(ScheduleConfig(name="constant", warmup_epochs=1, warmup_start=0.5), steps_per_epoch=4, epochs=3)
    assert lrs[:5] == pytest.approx([0.05, 0.0625, 0.075, 0.0875, 0.1])
    assert lrs[4:] == pytest.approx([0.1] * 8)
    lrs = _lrs(ScheduleConfig(name="step", step_size=1, gamma=0.5, warmup_epochs=1), steps_per_epoch=2, epochs=3)
    # warm-up from 0.1 over epoch 1 (main factor 1 there), then 0.5 per epoch
    assert lrs == pytest.approx([0.01, 0.055, 0.05, 0.05, 0.025, 0.025])


def test_plateau_threshold_is_relative():
    opt = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.1, "base_lr": 0.1}], lr=0.1)
    cfg = ScheduleConfig(name="plateau", plateau_patience=0, plateau_factor=0.5, plateau_threshold=0.1)
    sched = LRSchedule(opt, cfg, 1, 10)
    sched.observe(1.0)
    sched.observe(0.95)  # 5 % better: below the 10 % that counts, so no improvement: halve
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    sched.observe(0.85)  # 15 % better than the best 1.0: an improvement, lr kept
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)


def test_bce_label_smoothing_moves_targets_toward_half_by_hand():
    logits = torch.tensor([[0.0, 2.0]])
    target = torch.tensor([[1.0, 0.0]])
    t = [1 * 0.8 + 0.1, 0.1]  # eps 0.2: t' = t (1 - eps) + eps / 2

    def bce(x: float, y: float) -> float:
        p = 1 / (1 + math.exp(-x))
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))

    expected = (bce(0.0, t[0]) + bce(2.0, t[1])) / 2
    loss = build_loss("bce", task="multilabel", label_smoothing=0.2)(logits, target)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_hinge_counts_every_violating_class_and_huber_switches_to_linear():
    logits = torch.tensor([[0.0, 0.5, 2.0], [3.0, 0.0, 0.0]])
    target = torch.tensor([0, 0])
    # row 1: max(0, 1 - 0 + 0.5) + max(0, 1 - 0 + 2) = 4.5; row 2: no violation. Mean of (4.5 / 3, 0).
    assert build_loss("hinge")(logits, target).item() == pytest.approx((4.5 / 3) / 2, rel=1e-6)
    from imgcls.engine.losses import ProbabilityRegression

    # delta 0.1 < |0.5 - 1|: the linear branch, delta (|e| - delta / 2) per entry
    loss = ProbabilityRegression("huber", delta=0.1)(torch.zeros(1, 2), torch.tensor([0]))
    assert loss.item() == pytest.approx(2 * 0.1 * (0.5 - 0.05), rel=1e-6)


def test_aux_head_weights_by_hand():
    main_logits, aux = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 0.0]])
    total, _ = compute_loss(build_loss("ce"), (main_logits, aux), torch.tensor([1]), aux_weights=(0.4,))
    expected = math.log(2) + 0.4 * (math.log(math.e + 1) - 0.0)  # -log softmax: log(e^1 + e^0) - 0
    assert total.item() == pytest.approx(expected, rel=1e-6)


def test_ema_follows_its_recursion_with_the_warmup_ramp():
    net = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(0.0)
    ema = ModelEma(net, decay=0.9)
    expected = 0.0
    for n, w in enumerate([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0]):
        with torch.no_grad():
            net.weight.fill_(w)
        ema.update(net)
        d = min(0.9, (1 + n) / (10 + n))  # ramp, then the target decay
        expected = d * expected + (1 - d) * w
        assert ema.module.weight.item() == pytest.approx(expected, rel=1e-6)
    assert ema.current_decay() == pytest.approx(min(0.9, 13 / 22))  # still on the ramp after 12 updates


def _lenet_argv(run, weights, *settings: str) -> list[str]:
    argv = ["train", "--recipe", "digits", "--epochs", "1", "--out", str(run), "--weights", str(weights)]
    argv += ["--precision", "fp32", "--lr", "0.1"]
    base = ["train.report=false", "train.progress=none", "train.save=last", "schedule.name=constant"]
    base += ["schedule.warmup_epochs=0", "optim.momentum=0", "optim.nesterov=false", "optim.weight_decay=0"]
    base += ["augment.crop_padding=0"]
    return argv + [item for s in (*base, *settings) for item in ("--set", s)]


@pytest.fixture(scope="module")
def lenet_init(tmp_path_factory):
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("init") / "lenet5.pth"
    state = create_model("lenet5", num_classes=10, in_chans=1).state_dict()
    torch.save(state, path)
    return path, state


def test_clipping_bounds_the_step_to_lr_times_the_norm(tmp_path, lenet_init):
    # One optimiser step (batch = the whole training split), plain SGD: the update is lr * clipped gradient, whose
    # global L2 norm is exactly the clip value when the raw gradient is larger.
    path, before = lenet_init
    assert main(_lenet_argv(tmp_path / "run", path, "optim.clip_grad_norm=0.01", "data.batch_size=1618")) == 0
    after = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert after["step"] == 1
    delta = torch.sqrt(sum(((after["model"][k] - v) ** 2).sum() for k, v in before.items() if v.is_floating_point()))
    assert delta.item() == pytest.approx(0.1 * 0.01, rel=1e-3)


@pytest.mark.slow
def test_gradient_accumulation_equals_one_big_batch(tmp_path, lenet_init):
    # LeNet-5 has no BatchNorm and no dropout, and a batch of 64 is the concatenation of two batches of 32 (the order
    # is a permutation per epoch, cut into batches), so 2 x 32 accumulated must equal 64 up to summation order.
    path, before = lenet_init
    runs = {
        "big": ("data.batch_size=64",),
        "accumulated": ("data.batch_size=32", "optim.accum_steps=2"),
        "small": ("data.batch_size=32",),
    }
    models = {}
    for name, settings in runs.items():
        assert main(_lenet_argv(tmp_path / name, path, *settings)) == 0
        models[name] = load_checkpoint(tmp_path / name / "checkpoints" / "last.pt")["model"]
    for key, value in models["big"].items():
        assert torch.allclose(models["accumulated"][key], value, rtol=1e-4, atol=1e-6), key
    assert not torch.allclose(models["small"]["fc.weight"], models["big"]["fc.weight"], rtol=1e-3, atol=1e-5)
    assert not torch.equal(models["big"]["fc.weight"], before["fc.weight"])
