"""Each schedule against hand-computed learning rates."""

from __future__ import annotations

import math

import pytest
import torch

from imgcls.engine.config import ScheduleConfig
from imgcls.engine.schedule import LRSchedule


def _optimizer(*lrs: float) -> torch.optim.Optimizer:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr, "base_lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, lr=lrs[0])


def _lrs(cfg: ScheduleConfig, steps_per_epoch: int, epochs: int, base: float = 0.1) -> list[float]:
    opt = _optimizer(base)
    sched = LRSchedule(opt, cfg, steps_per_epoch, epochs)
    out = []
    for _ in range(steps_per_epoch * epochs):
        out.append(opt.param_groups[0]["lr"])
        sched.step()
    return out


def test_step_schedule():
    lrs = _lrs(ScheduleConfig(name="step", step_size=2, gamma=0.1), steps_per_epoch=10, epochs=5)
    assert lrs[19] == pytest.approx(0.1)
    assert lrs[20] == pytest.approx(0.01)
    assert lrs[40] == pytest.approx(0.001)


def test_multistep_schedule():
    lrs = _lrs(ScheduleConfig(name="multistep", milestones=[1, 3], gamma=0.5), steps_per_epoch=10, epochs=4)
    assert lrs[9] == pytest.approx(0.1)
    assert lrs[10] == pytest.approx(0.05)
    assert lrs[29] == pytest.approx(0.05)
    assert lrs[30] == pytest.approx(0.025)


def test_cosine_schedule_by_hand():
    lrs = _lrs(ScheduleConfig(name="cosine"), steps_per_epoch=10, epochs=10)
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[25] == pytest.approx(0.1 * (1 + math.cos(math.pi / 4)) / 2)
    assert lrs[50] == pytest.approx(0.05)
    floor = _lrs(ScheduleConfig(name="cosine", min_lr_ratio=0.1), steps_per_epoch=10, epochs=10)
    assert floor[50] == pytest.approx(0.1 * (0.1 + 0.9 * 0.5))


def test_linear_warmup_then_cosine():
    lrs = _lrs(ScheduleConfig(name="cosine", warmup_epochs=1, warmup_start=0.1), steps_per_epoch=10, epochs=11)
    assert lrs[0] == pytest.approx(0.01)
    assert lrs[5] == pytest.approx(0.1 * (0.1 + 0.9 * 5 / 10))
    assert lrs[10] == pytest.approx(0.1)  # warm-up done: the cosine starts at its peak
    assert lrs[60] == pytest.approx(0.05)  # half-way through the 100 cosine steps


def test_onecycle_matches_pytorch_reference():
    cfg = ScheduleConfig(name="onecycle", pct_start=0.3, div_factor=25, final_div_factor=1e4)
    ours = _lrs(cfg, steps_per_epoch=10, epochs=10)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    ref_sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=100, cycle_momentum=False)
    ref = []
    for _ in range(100):
        ref.append(opt.param_groups[0]["lr"])
        opt.step()
        ref_sched.step()
    assert ours == pytest.approx(ref, rel=1e-6, abs=1e-12)
    assert ours[0] == pytest.approx(0.1 / 25)
    assert max(ours) == pytest.approx(0.1)


def test_plateau_reduces_after_patience():
    opt = _optimizer(0.1)
    sched = LRSchedule(opt, ScheduleConfig(name="plateau", plateau_patience=2, plateau_factor=0.1), 10, 10)
    for loss in (1.0, 0.5, 0.5, 0.5):
        sched.observe(loss)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)  # two epochs without improvement: still patient
    sched.observe(0.5)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)


def test_layerwise_groups_keep_their_ratio():
    opt = _optimizer(0.1, 0.01)
    sched = LRSchedule(opt, ScheduleConfig(name="cosine"), steps_per_epoch=10, epochs=1)
    for _ in range(5):
        sched.step()
    head, backbone = (g["lr"] for g in opt.param_groups)
    assert backbone == pytest.approx(head / 10)
    assert head == pytest.approx(0.05)


def test_state_dict_resumes_the_same_curve():
    cfg = ScheduleConfig(name="plateau", warmup_epochs=1, plateau_patience=0)
    opt = _optimizer(0.1)
    sched = LRSchedule(opt, cfg, steps_per_epoch=4, epochs=5)
    for _ in range(6):
        sched.step()
    sched.observe(1.0)
    sched.observe(2.0)  # no improvement, patience 0: reduce
    state = sched.state_dict()
    opt2 = _optimizer(0.1)
    resumed = LRSchedule(opt2, cfg, steps_per_epoch=4, epochs=5)
    resumed.load_state_dict(state)
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.01)


def test_a_group_with_an_end_epoch_runs_the_schedule_over_its_own_epochs():
    # airbench94_muon: the whitening bias falls 1 -> 0 over its 3 epochs while the rest falls over all 8.
    opt = _optimizer(0.1, 0.05)
    opt.param_groups[1]["end_epoch"] = 3
    sched = LRSchedule(opt, ScheduleConfig(name="linear", min_lr_ratio=0.0), steps_per_epoch=5, epochs=8)
    common, own = [], []
    for _ in range(40):
        common.append(opt.param_groups[0]["lr"])
        own.append(opt.param_groups[1]["lr"])
        sched.step()
    assert common == pytest.approx([0.1 * (1 - k / 40) for k in range(40)])
    assert own == pytest.approx([0.05 * max(0.0, 1 - k / 15) for k in range(40)])
    # A resumed schedule continues both curves.
    opt2 = _optimizer(0.1, 0.05)
    opt2.param_groups[1]["end_epoch"] = 3
    resumed = LRSchedule(opt2, ScheduleConfig(name="linear"), steps_per_epoch=5, epochs=8)
    resumed.load_state_dict({**sched.state_dict(), "step_count": 7})
    assert [g["lr"] for g in opt2.param_groups] == pytest.approx([0.1 * (1 - 7 / 40), 0.05 * (1 - 7 / 15)])


def test_an_end_epoch_compresses_warmup_and_cosine_alike():
    opt = _optimizer(1.0, 1.0)
    opt.param_groups[1]["end_epoch"] = 2
    cfg = ScheduleConfig(name="cosine", warmup_epochs=2, warmup_start=0.0)
    sched = LRSchedule(opt, cfg, steps_per_epoch=10, epochs=8)
    for _ in range(5):  # a quarter of the way through the group's 2 epochs = step 20 of the run's 80
        sched.step()
    assert opt.param_groups[1]["lr"] == pytest.approx(sched.factor(20)) and sched.factor(20) == pytest.approx(1.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.25)  # still warming up
