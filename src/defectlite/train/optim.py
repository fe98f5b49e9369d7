"""The optimiser of a stage and its learning-rate schedule (Xie & Shen 2022, Section 3.3.1; Loshchilov 2019)."""

from __future__ import annotations

import math

import torch
from torch import nn

from defectlite.train.config import OptimCfg


def build_optimizer(model: nn.Module, cfg: OptimCfg) -> torch.optim.Optimizer:
    """SGD (momentum, optionally Nesterov) or AdamW over ``model``'s parameters.

    Weight decay applies to weights with two or more dimensions only (convolutions, linear layers), not to
    biases and batch-norm scales, as timm and torchvision's references do.
    """
    decay = [p for p in model.parameters() if p.ndim > 1]
    other = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": other, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


def lr_at(epoch: float, cfg: OptimCfg) -> float:
    """Learning rate at a fractional epoch: linear warm-up from lr/10, then cosine or multi-step; constant
    ``swa_lr`` over the last ``swa_epochs`` epochs when SWA is on.

    Raises:
        ValueError: unknown ``cfg.schedule``.
    """
    if cfg.swa_epochs > 0 and epoch >= cfg.epochs - cfg.swa_epochs:
        return cfg.swa_lr
    if epoch < cfg.warmup_epochs:
        return cfg.lr * (0.1 + 0.9 * epoch / cfg.warmup_epochs)
    if cfg.schedule == "cosine":
        span = max(cfg.epochs - cfg.warmup_epochs, 1e-9)
        t = min((epoch - cfg.warmup_epochs) / span, 1.0)
        return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * t))
    if cfg.schedule == "multistep":
        return cfg.lr * cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    raise ValueError(f"unknown schedule {cfg.schedule!r} (cosine or multistep)")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every param group's learning rate (the loop calls it before each step)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
