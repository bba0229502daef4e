"""Exponential moving average of the weights (Polyak & Juditsky 1992; as in Szegedy et al. 2015 Sec. 8 and
Tan & Le 2019 for evaluation).

``ema = d * ema + (1 - d) * w`` after every optimiser step, for every floating-point parameter and buffer
(BatchNorm running statistics included, so the averaged model evaluates consistently); integer buffers such
as ``num_batches_tracked`` are copied. The decay ramps up as ``min(d, (1 + n) / (10 + n))`` over the first
updates (TensorFlow's ``ExponentialMovingAverage(num_updates=...)``) so short runs are not dominated by the
random initialisation.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEma:
    """A frozen copy of a model that tracks the moving average of its weights.

    Args:
        model: the model being trained (unwrapped, not DDP).
        decay: the target decay ``d`` in (0, 1), e.g. 0.999 (a horizon of about 1000 steps).
        warmup: ramp the decay up over the first updates.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1): {decay}")
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.warmup = warmup
        self.updates = 0

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current weights into the average (call after each optimiser step)."""
        d = self.current_decay()
        self.updates += 1
        source = model.state_dict()
        for name, avg in self.module.state_dict().items():
            value = source[name].detach()
            if avg.dtype.is_floating_point:
                avg.mul_(d).add_(value.to(avg.dtype), alpha=1 - d)
            else:
                avg.copy_(value)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
        self.decay = float(state["decay"])


__all__ = ["ModelEma"]
