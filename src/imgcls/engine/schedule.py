"""Learning-rate schedules, evaluated per optimiser step so that short runs and warm-up are smooth.

The learning rate of every parameter group is ``base_lr * factor(step)``, where ``base_lr`` is the group's
peak rate (layer-wise multipliers stay intact) and ``step`` counts optimiser steps. A group with ``end_epoch``
(``schedule.end_at_freeze``: a parameter that ``train.freeze_after`` freezes then) runs the same curve compressed
onto its own epochs, ``factor(step * epochs / end_epoch)``, so that it reaches the schedule's end as it freezes
(airbench94_muon, Jordan 2024: the whitening bias falls linearly to 0 over its 3 epochs while the rest falls
over 8). The schedule is a pure function of the step plus, for ``plateau``, a small state, so a checkpoint
stores a few numbers and a resume continues on exactly the same curve.

- ``constant``.
- ``step``: ``gamma ** floor(epoch / step_size)`` (Krizhevsky et al. 2012 divided by 10 on plateaus; He et
  al. 2015 every 30 epochs on ImageNet).
- ``multistep``: ``gamma ** (number of milestones reached)``.
- ``cosine``: ``r + (1 - r) (1 + cos(pi t / T)) / 2`` over the steps after warm-up (Loshchilov & Hutter
  2017, arXiv:1608.03983, Eq. 5 without restarts; ``r = min_lr_ratio``).
- ``linear``: ``1 - (1 - r) t / T`` over the steps after warm-up, a straight fall to ``r = min_lr_ratio``
  (with a linear warm-up this is the triangular schedule of the CIFAR-10 speedruns: Page 2018's ResNet-9,
  airbench, Jordan 2024, arXiv:2404.00498: warm-up from 0.2 over 23 % of the steps, then down to 0.07).
- ``onecycle``: cosine rise from ``1/div_factor`` to 1 over ``pct_start`` of the run, then cosine fall to
  ``1/(div_factor * final_div_factor)`` (Smith & Topin 2018, arXiv:1708.07120; PyTorch's ``OneCycleLR``).
- ``plateau``: multiply by ``plateau_factor`` when the validation loss has not improved by a relative
  ``plateau_threshold`` for ``plateau_patience`` epochs (checked once per epoch via ``observe``).
- Linear warm-up from ``warmup_start`` to 1 over ``warmup_epochs`` (Goyal et al. 2017, arXiv:1706.02677,
  Sec. 2.2) multiplies any of the above except ``onecycle``, which has its own rise.
"""

from __future__ import annotations

import math

import torch

from imgcls.engine.config import SCHEDULES, ScheduleConfig
from imgcls.errors import UserError


class LRSchedule:
    """Sets the optimiser's learning rates for each optimiser step.

    Args:
        optimizer: its groups carry ``base_lr`` (set by ``build_optimizer``; ``lr`` is used when absent).
        cfg: the schedule settings.
        steps_per_epoch: optimiser steps per epoch (batches / accumulation steps).
        epochs: length of the run in epochs.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, steps_per_epoch: int, epochs: int):
        if cfg.name not in SCHEDULES:
            raise UserError(f"unknown schedule: {cfg.name} (choose from {', '.join(SCHEDULES)})")
        self.optimizer = optimizer
        self.cfg = cfg
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self.total_steps = max(1, self.steps_per_epoch * int(epochs))
        self.warmup_steps = 0 if cfg.name == "onecycle" else round(cfg.warmup_epochs * self.steps_per_epoch)
        for group in optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])
        self.step_count = 0
        self.plateau_scale = 1.0
        self.plateau_best = math.inf
        self.plateau_bad_epochs = 0
        self._apply()

    def factor(self, step: float) -> float:
        """Multiplier of ``base_lr`` for optimiser step ``step`` (0-based)."""
        cfg = self.cfg
        epoch = step / self.steps_per_epoch
        if cfg.name == "onecycle":
            return self._onecycle(step)
        if cfg.name == "step":
            main = cfg.gamma ** math.floor(epoch / cfg.step_size + 1e-9)
        elif cfg.name == "multistep":
            main = cfg.gamma ** sum(1 for m in cfg.milestones if epoch + 1e-9 >= m)
        elif cfg.name == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            t = min(max(step - self.warmup_steps, 0), span) / span
            main = cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
        elif cfg.name == "linear":
            span = max(1, self.total_steps - self.warmup_steps)
            t = min(max(step - self.warmup_steps, 0), span) / span
            main = 1.0 - (1.0 - cfg.min_lr_ratio) * t
        elif cfg.name == "plateau":
            main = self.plateau_scale
        else:
            main = 1.0
        if step < self.warmup_steps:
            main *= cfg.warmup_start + (1 - cfg.warmup_start) * step / self.warmup_steps
        return main

    def _onecycle(self, step: int) -> float:
        cfg = self.cfg
        start = 1.0 / cfg.div_factor
        end = start / cfg.final_div_factor
        rise = max(1.0, cfg.pct_start * self.total_steps - 1)  # the peak is reached at step `rise`
        fall = max(1.0, self.total_steps - 1 - rise)

        def cos_anneal(a: float, b: float, t: float) -> float:
            return b + (a - b) * 0.5 * (1 + math.cos(math.pi * min(max(t, 0.0), 1.0)))

        if step <= rise:
            return cos_anneal(start, 1.0, step / rise)
        return cos_anneal(1.0, end, (step - rise) / fall)

    def group_factor(self, group: dict, step: int) -> float:
        """Multiplier of ``group["base_lr"]`` at optimiser step ``step``: ``factor``, on the group's own epochs
        when it has an ``end_epoch`` (held at the schedule's end after it)."""
        end = group.get("end_epoch")
        if not end:
            return self.factor(step)
        return self.factor(min(step * self.total_steps / (end * self.steps_per_epoch), self.total_steps))

    def _apply(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * self.group_factor(group, self.step_count)

    def step(self) -> None:
        """Advance by one optimiser step (call after ``optimizer.step()``)."""
        self.step_count += 1
        self._apply()

    def observe(self, val_loss: float) -> None:
        """End of an epoch: feed the validation loss to ``plateau`` (a no-op for the other schedules)."""
        if self.cfg.name != "plateau" or not math.isfinite(val_loss):
            return
        if val_loss < self.plateau_best * (1 - self.cfg.plateau_threshold):
            self.plateau_best = val_loss
            self.plateau_bad_epochs = 0
        else:
            self.plateau_bad_epochs += 1
            if self.plateau_bad_epochs > self.cfg.plateau_patience:
                self.plateau_scale *= self.cfg.plateau_factor
                self.plateau_bad_epochs = 0
        self._apply()

    @property
    def lr(self) -> float:
        """The current learning rate of the first group with the largest base rate (the classifier's); the
        normalisation-shift group of ``optim.norm_bias_lr_mult`` does not count."""
        groups = [g for g in self.optimizer.param_groups if g.get("group_name") != "norm_bias"]
        group = max(groups or self.optimizer.param_groups, key=lambda g: g["base_lr"])
        return float(group["lr"])

    def state_dict(self) -> dict:
        """Plain numbers (checkpoint-safe)."""
        return {
            "step_count": self.step_count,
            "plateau_scale": self.plateau_scale,
            "plateau_best": self.plateau_best,
            "plateau_bad_epochs": self.plateau_bad_epochs,
        }

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
        self.plateau_scale = float(state["plateau_scale"])
        self.plateau_best = float(state["plateau_best"])
        self.plateau_bad_epochs = int(state["plateau_bad_epochs"])
        self._apply()


__all__ = ["SCHEDULES", "LRSchedule"]
