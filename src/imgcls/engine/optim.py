"""Optimisers with the usual parameter groups.

- Weight decay skips normalisation weights and biases (one-dimensional tensors): decaying a BatchNorm scale
  only fights the next layer's rescaling and slows training (Goyal et al. 2017, arXiv:1706.02677, Sec. 2.1
  on where decay belongs; the exclusion is the common practice of timm and torchvision's references).
- Fine-tuning: the classifier (``model.get_classifier()``) learns at ``lr``, the backbone at
  ``lr * backbone_lr_mult``; ``freeze_backbone`` trains the classifier alone.
- ``norm_bias_lr_mult``: the shifts (biases) of normalisation layers learn at ``lr * norm_bias_lr_mult`` in a
  group of their own. airbench (Jordan 2024, arXiv:2404.00498, Section 3.2) trains its BatchNorm shifts 64×
  faster; its weight decay is written per step (``lr * wd``), so that group's decay is divided by the same
  factor and the decay per step stays that of the other groups.
- ``muon``: Muon (`imgcls.engine.muon`) for the hidden weight matrices (every trainable weight of two or more
  dimensions outside the classifier: the convolution filters), SGD for the rest — the classifier at
  ``sgd_lr``, every other parameter (biases, normalisation shifts) at ``sgd_lr * norm_bias_lr_mult`` with its
  decay divided by the same factor (decay per step kept, as for the ``norm_bias`` group). ``lr``, ``momentum``
  and ``nesterov`` are Muon's; ``sgd_momentum`` the SGD groups' (default: ``momentum``). Muon's groups get no
  weight decay; ``muon_normalize_weights`` rescales each filter bank to norm √out before every step instead
  (airbench94_muon).
- SGD with momentum or Nesterov momentum (Sutskever et al. 2013), AdamW (Loshchilov & Hutter 2019,
  arXiv:1711.05101: decay decoupled from the adaptive step), RMSprop as Inception v3 used it (Szegedy et al.
  2015, arXiv:1512.00567, Sec. 8: decay 0.9, epsilon 1.0, lr 0.045).

Each parameter group carries ``base_lr`` (its peak learning rate) and ``group_name``; the schedule scales
``base_lr``, so layer-wise multipliers survive every schedule. ``end_epochs`` (``schedule.end_at_freeze``) moves
the parameters named by a prefix into a copy of their group that carries ``end_epoch``: the schedule then runs
that group over its own epochs (`imgcls.engine.schedule`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from imgcls.engine.config import OPTIMIZERS, OptimConfig
from imgcls.engine.muon import Muon
from imgcls.errors import UserError


def _head_parameter_ids(model: nn.Module) -> set[int]:
    """ids of the classifier's parameters; every parameter counts as head when the model has no classifier."""
    get = getattr(model, "get_classifier", None)
    try:
        head = get() if callable(get) else None
    except NotImplementedError:
        head = None
    if head is None:
        return {id(p) for p in model.parameters()}
    return {id(p) for p in head.parameters()}


def _no_decay(name: str, param: torch.Tensor) -> bool:
    # Norm scales/shifts and biases are 1-D; conv and linear weights are >= 2-D.
    return param.ndim <= 1 or name.endswith(".bias")


def _norm_bias_ids(model: nn.Module) -> set[int]:
    norms = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
    return {id(m.bias) for m in model.modules() if isinstance(m, norms) and getattr(m, "bias", None) is not None}


def parameter_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Split trainable parameters into (backbone|head) x (decay|no decay) groups with their lr and decay.

    Frozen backbone parameters get ``requires_grad = False`` and appear in no group. With
    ``norm_bias_lr_mult != 1`` the normalisation shifts form one more group, ``norm_bias``.
    """
    if cfg.norm_bias_lr_mult <= 0:
        raise UserError(f"optim.norm_bias_lr_mult must be positive: {cfg.norm_bias_lr_mult}")
    if cfg.name.lower() == "muon":
        return _muon_groups(model, cfg)
    head_ids = _head_parameter_ids(model)
    norm_bias_ids = _norm_bias_ids(model) if cfg.norm_bias_lr_mult != 1.0 else set()
    if cfg.freeze_backbone:
        if len(head_ids) == sum(1 for _ in model.parameters()):
            raise UserError("--freeze-backbone: this model has no separate classifier to train")
        for p in model.parameters():
            if id(p) not in head_ids:
                p.requires_grad_(False)
    buckets: dict[tuple[str, bool], list[torch.Tensor]] = {}
    norm_biases: list[torch.Tensor] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in norm_bias_ids:
            norm_biases.append(p)
            continue
        part = "head" if id(p) in head_ids else "backbone"
        decay = cfg.decay_norm_and_bias or not _no_decay(name, p)
        buckets.setdefault((part, decay), []).append(p)
    groups = []
    for (part, decay), params in sorted(buckets.items(), key=lambda kv: (kv[0][0], not kv[0][1])):
        lr = cfg.lr * (cfg.backbone_lr_mult if part == "backbone" else 1.0)
        groups.append(
            {
                "params": params,
                "lr": lr,
                "base_lr": lr,
                "weight_decay": cfg.weight_decay if decay else 0.0,
                "group_name": f"{part}{'' if decay else '_no_decay'}",
            }
        )
    if norm_biases:
        lr = cfg.lr * cfg.norm_bias_lr_mult
        decay = cfg.weight_decay / cfg.norm_bias_lr_mult if cfg.decay_norm_and_bias else 0.0
        groups.append(
            {"params": norm_biases, "lr": lr, "base_lr": lr, "weight_decay": decay, "group_name": "norm_bias"}
        )
    if not groups:
        raise UserError("the model has no trainable parameters")
    return groups


def _muon_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Muon's groups (module docstring): ``muon`` (hidden matrices), ``head`` and ``bias`` (SGD)."""
    if cfg.freeze_backbone:
        raise UserError("optim.name=muon: --freeze-backbone leaves no hidden weights for Muon (use sgd)")
    if cfg.sgd_lr is None:
        raise UserError("optim.name=muon needs optim.sgd_lr, the SGD learning rate of the classifier")
    head_ids = _head_parameter_ids(model)
    if len(head_ids) == sum(1 for _ in model.parameters()):
        raise UserError("optim.name=muon: this model has no separate classifier")
    parts: dict[str, list[torch.Tensor]] = {"muon": [], "head": [], "bias": []}
    for p in model.parameters():
        if p.requires_grad:
            parts["head" if id(p) in head_ids else "muon" if p.ndim >= 2 else "bias"].append(p)
    sgd_momentum = cfg.momentum if cfg.sgd_momentum is None else cfg.sgd_momentum
    bias_lr = cfg.sgd_lr * cfg.norm_bias_lr_mult
    bias_decay = cfg.weight_decay / cfg.norm_bias_lr_mult if cfg.decay_norm_and_bias else 0.0
    settings = {
        "muon": {"lr": cfg.lr, "momentum": cfg.momentum, "weight_decay": 0.0, "muon": True},
        "head": {"lr": cfg.sgd_lr, "momentum": sgd_momentum, "weight_decay": cfg.weight_decay, "muon": False},
        "bias": {"lr": bias_lr, "momentum": sgd_momentum, "weight_decay": bias_decay, "muon": False},
    }
    groups = [
        {"params": params, **settings[name], "base_lr": settings[name]["lr"], "group_name": name}
        for name, params in parts.items()
        if params
    ]
    if not any(g["muon"] for g in groups):
        raise UserError("optim.name=muon: the model has no trainable weight matrices outside its classifier")
    return groups


def _split_off(model: nn.Module, groups: list[dict], end_epochs: Mapping[str, int]) -> list[dict]:
    """``groups`` with the parameters whose names start with a prefix of ``end_epochs`` in groups of their own
    (same settings, ``end_epoch`` added, ``group_name`` suffixed with ``@N``), placed after their source group."""
    ends = {}
    for name, p in model.named_parameters():
        found = [n for prefix, n in end_epochs.items() if name.startswith(prefix)]
        if found:
            ends[id(p)] = min(found)
    out = []
    for group in groups:
        kept = [p for p in group["params"] if id(p) not in ends]
        if kept:
            out.append({**group, "params": kept})
        for n in sorted({ends[id(p)] for p in group["params"] if id(p) in ends}):
            moved = [p for p in group["params"] if ends.get(id(p)) == n]
            out.append({**group, "params": moved, "end_epoch": n, "group_name": f"{group['group_name']}@{n}"})
    return out


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, end_epochs: Mapping[str, int] | None = None
) -> torch.optim.Optimizer:
    """The optimiser named in ``cfg`` over ``parameter_groups(model, cfg)``; ``end_epochs`` maps parameter-name
    prefixes to the epoch their own schedule ends at (module docstring)."""
    if cfg.lr <= 0:
        raise UserError(f"--lr must be positive: {cfg.lr}")
    groups = parameter_groups(model, cfg)
    if end_epochs:
        groups = _split_off(model, groups, end_epochs)
    name = cfg.name.lower()
    if name == "sgd":
        if cfg.nesterov and cfg.momentum <= 0:
            raise UserError("optim.nesterov needs a positive optim.momentum")
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if name == "adamw":
        eps = 1e-8 if cfg.eps is None else cfg.eps
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=eps)
    if name == "rmsprop":
        eps = 1.0 if cfg.eps is None else cfg.eps
        return torch.optim.RMSprop(groups, lr=cfg.lr, alpha=cfg.alpha, eps=eps, momentum=cfg.momentum)
    if name == "muon":
        return Muon(
            groups,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            normalize_weights=cfg.muon_normalize_weights,
            ns_steps=cfg.ns_steps,
        )
    raise UserError(f"unknown optimizer: {cfg.name} (choose from {', '.join(OPTIMIZERS)})")


__all__ = ["OPTIMIZERS", "build_optimizer", "parameter_groups"]
