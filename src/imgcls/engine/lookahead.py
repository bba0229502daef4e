"""Lookahead: slow weights that follow the optimiser's fast weights (Zhang et al. 2019, arXiv:1907.08610).

Every ``k`` optimiser steps the slow weights move a fraction ``alpha`` toward the fast weights and the fast
weights restart from there (the paper's Algorithm 1):

    slow <- slow + alpha (fast - slow)
    fast <- slow

With a constant ``alpha`` this is the paper's Lookahead (``k = 5``, ``alpha = 0.5`` in its experiments). With
``ramp_power = p`` the step grows from ``alpha = 1`` (no lookahead at the start, when the fast weights move
far) toward the configured ``alpha`` at the end of training:

    alpha(t) = 1 - (1 - alpha) (t / T) ** p

which is airbench's EMA-style lookahead (Jordan 2024, arXiv:2404.00498, Section 3.6): there the kept fraction
``1 - alpha(t) = 0.95**5 (t / T)**3`` with ``k = 5``, i.e. ``alpha = 1 - 0.95**5``, ``p = 3``. At the end of
training :meth:`finish` copies the slow weights into the model (the paper evaluates the slow weights).
Floating-point buffers (BatchNorm running statistics) follow the same rule, so the model stays consistent.
"""

from __future__ import annotations

import torch
from torch import nn


class Lookahead:
    """Slow copies of a model's floating-point parameters and buffers.

    Args:
        model: the model being trained (unwrapped).
        k: optimiser steps between synchronisations (``>= 1``).
        alpha: the slow weights' step toward the fast weights, in ``(0, 1]``.
        total_steps: the run's optimiser steps ``T``; needed with ``ramp_power``.
        ramp_power: ``None`` for a constant ``alpha``; ``p`` for the ramp of the module docstring.
    """

    def __init__(
        self,
        model: nn.Module,
        k: int = 5,
        alpha: float = 0.5,
        total_steps: int | None = None,
        ramp_power: float | None = None,
    ):
        if k < 1:
            raise ValueError(f"Lookahead k must be at least 1: {k}")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"Lookahead alpha must be in (0, 1]: {alpha}")
        if ramp_power is not None and not total_steps:
            raise ValueError("Lookahead with ramp_power needs total_steps")
        self.k, self.alpha, self.total_steps, self.ramp_power = k, alpha, total_steps, ramp_power
        self.steps = 0
        self.slow = {name: t.detach().clone() for name, t in self._tensors(model).items()}

    @staticmethod
    def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
        return {name: t for name, t in model.state_dict(keep_vars=True).items() if t.dtype.is_floating_point}

    def current_alpha(self, step: int | None = None) -> float:
        """``alpha`` at optimiser step ``step`` (default: the current one)."""
        if self.ramp_power is None:
            return self.alpha
        t = min(1.0, (self.steps if step is None else step) / self.total_steps)
        return 1.0 - (1.0 - self.alpha) * t**self.ramp_power

    @torch.no_grad()
    def _sync(self, model: nn.Module, alpha: float) -> None:
        for name, fast in self._tensors(model).items():
            slow = self.slow[name]
            slow.lerp_(fast.detach().to(slow.dtype), alpha)
            fast.data.copy_(slow)

    def step(self, model: nn.Module) -> bool:
        """Count one optimiser step; every ``k``-th synchronises slow and fast weights. Returns whether it did."""
        self.steps += 1
        if self.steps % self.k:
            return False
        self._sync(model, self.current_alpha())
        return True

    def finish(self, model: nn.Module) -> None:
        """Make the model's weights the slow weights (call once training ends)."""
        self._sync(model, 0.0)

    def state_dict(self) -> dict:
        return {"slow": dict(self.slow), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        for name, value in state["slow"].items():
            self.slow[name].copy_(value)
        self.steps = int(state["steps"])


__all__ = ["Lookahead"]
