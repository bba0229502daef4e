"""Muon: momentum SGD whose update for each weight matrix is orthogonalised by a Newton–Schulz iteration.

Keller Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural networks" (kellerjordan.github.io/
posts/muon), first used for airbench94_muon (CIFAR-10, 94.01 % in 0.29 PFLOP) and the modded-nanogpt
speedruns. For a weight ``W`` of shape ``(out, ...)`` with gradient ``G``:

    B ← μ·B + G                       momentum buffer
    U ← G + μ·B  (Nesterov)  or  B
    W ← W · √out / ‖W‖_F              optional weight normalisation (airbench94_muon does it every step)
    W ← W − lr · NS(U.reshape(out, −1))

``NS`` is the quintic Newton–Schulz iteration ``X ← aX + (bA + cA²)X`` with ``A = XXᵀ`` and the coefficients
(3.4445, −4.7750, 2.0315), chosen to maximise the slope at zero: after ``X ← U/‖U‖_F`` a few steps push every
singular value of ``X`` into roughly [0.5, 1.5] — an approximate ``UVᵀ`` of the SVD ``U S Vᵀ`` — without
computing an SVD. The update is scale-free: multiplying the loss by a constant does not change it.

Muon is meant for the hidden weight matrices only (convolution filters here). Everything else — biases,
normalisation shifts, the classifier — belongs to a group with ``muon=False`` that this optimiser updates with
plain SGD (momentum, optional Nesterov, decay added to the gradient, exactly as ``torch.optim.SGD``), so a
recipe needs one optimiser and one schedule. Every group carries its own ``lr``, ``momentum``, ``nesterov`` and
``weight_decay``.

CPU note: the iteration runs in ``ns_dtype`` (fp32 by default). The reference runs it in bfloat16 on a GPU;
on a CPU without bf16 units bf16 matrix products are emulated and slower than fp32, and the matrices are small
(at most 256 × 2304 for airbench), so the iteration costs well under 1 % of a training step.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


@torch.no_grad()
def orthogonalize(g: Tensor, steps: int = 3, eps: float = 1e-7, dtype: torch.dtype = torch.float32) -> Tensor:
    """Approximately orthogonalise the 2-D matrix ``g`` by ``steps`` quintic Newton–Schulz iterations.

    Returns a matrix of ``g``'s shape and dtype whose singular values lie roughly in [0.5, 1.5] (module docstring).
    """
    if g.ndim != 2:
        raise ValueError(f"orthogonalize expects a matrix, got shape {tuple(g.shape)}")
    a, b, c = NS_COEFFICIENTS
    x = g.to(dtype)
    x = x / (x.norm() + eps)  # the top singular value is now at most 1
    tall = x.size(0) > x.size(1)
    if tall:  # iterate on the wide orientation: A = X Xᵀ is then the smaller Gram matrix
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    if tall:
        x = x.T
    return x.to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Muon for the groups with ``muon=True``, SGD with momentum for the others (module docstring).

    Args:
        params: parameters or groups; a group's ``muon`` flag (default ``True``) chooses the update.
        lr: learning rate.
        momentum: momentum coefficient μ (airbench94_muon: 0.6 for the filters, 0.85 for the SGD groups).
        nesterov: use the Nesterov form of the momentum.
        weight_decay: L2 decay added to the gradient (SGD groups) or applied as ``W ← W(1 − lr·wd)`` (Muon
            groups, decoupled, as the modded-nanogpt Muon does).
        normalize_weights: Muon groups: rescale each weight to Frobenius norm √out before its step.
        ns_steps: Newton–Schulz iterations per step (3 in airbench94_muon, 5 in modded-nanogpt).
        ns_dtype: dtype of the iteration.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        normalize_weights: bool = False,
        ns_steps: int = 3,
        ns_dtype: torch.dtype = torch.float32,
    ):
        if lr < 0:
            raise ValueError(f"Muon: lr must be non-negative, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"Muon: momentum must be in [0, 1), got {momentum}")
        if nesterov and momentum <= 0:
            raise ValueError("Muon: Nesterov momentum needs a positive momentum")
        if ns_steps < 1:
            raise ValueError(f"Muon: ns_steps must be at least 1, got {ns_steps}")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "nesterov": nesterov,
            "weight_decay": weight_decay,
            "normalize_weights": normalize_weights,
            "muon": True,
        }
        super().__init__(params, defaults)
        self.ns_steps = ns_steps
        self.ns_dtype = ns_dtype
        for group in self.param_groups:
            if group["muon"] and any(p.ndim < 2 for p in group["params"]):
                raise ValueError("Muon: a group with muon=True holds a parameter with fewer than 2 dimensions")

    def _direction(self, p: Tensor, grad: Tensor, group: dict) -> Tensor:
        """The momentum (or Nesterov) direction for ``p``, updating its buffer."""
        momentum = group["momentum"]
        if momentum == 0:
            return grad
        state = self.state[p]
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = state["momentum_buffer"] = grad.clone()
        else:
            buf.mul_(momentum).add_(grad)
        return grad.add(buf, alpha=momentum) if group["nesterov"] else buf

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, decay = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not group["muon"]:
                    grad = p.grad if decay == 0 else p.grad.add(p, alpha=decay)
                    p.add_(self._direction(p, grad, group), alpha=-lr)
                    continue
                direction = self._direction(p, p.grad, group)
                if group["normalize_weights"]:
                    p.mul_(p.size(0) ** 0.5 / p.norm().clamp_min(1e-12))
                if decay:
                    p.mul_(1 - lr * decay)
                update = orthogonalize(direction.reshape(p.size(0), -1), self.ns_steps, dtype=self.ns_dtype)
                p.add_(update.view_as(p), alpha=-lr)
        return loss


__all__ = ["NS_COEFFICIENTS", "Muon", "orthogonalize"]
