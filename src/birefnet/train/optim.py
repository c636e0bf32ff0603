"""Optimizer, learning-rate schedule and the official default learning rate."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from birefnet.train.config import OptimConfig

__all__ = ["build_optimizer", "build_scheduler", "default_lr", "lr_multiplier"]


def default_lr(task: str, batch_size: int) -> float:
    """Official learning rate: ``(1e-4 if DIS5K else 1e-5) * sqrt(batch_size / 4)``.

    Args:
        task: official task name.
        batch_size: batch size per process (official ``config.batch_size``).
    """
    return (1e-4 if task.upper() == "DIS5K" else 1e-5) * math.sqrt(batch_size / 4)


def _is_no_decay(name: str, param: nn.Parameter) -> bool:
    return param.ndim <= 1 or name.endswith(".bias")


def build_optimizer(model: nn.Module, config: OptimConfig, lr: float) -> torch.optim.Optimizer:
    """The optimizer over the parameters that require gradients (frozen ones are left out).

    Args:
        model: the (unwrapped) model.
        config: optimizer settings.
        lr: base learning rate (already resolved, see :func:`default_lr`).
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("no trainable parameters (is everything frozen?)")
    wd = config.weight_decay if config.name != "adam" else 0.0
    if config.no_decay_norm_bias and wd > 0:
        groups = [
            {"params": [p for n, p in named if not _is_no_decay(n, p)], "weight_decay": wd},
            {"params": [p for n, p in named if _is_no_decay(n, p)], "weight_decay": 0.0},
        ]
    else:
        groups = [{"params": [p for _, p in named], "weight_decay": wd}]
    if config.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=config.betas)
    if config.name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=config.betas)
    return torch.optim.SGD(groups, lr=lr, momentum=config.momentum)


def lr_multiplier(config: OptimConfig, step: int, steps_per_epoch: int, total_steps: int) -> float:
    """Factor on the base learning rate for optimizer step ``step`` (0-based).

    "official": ``lr_decay_rate ** (number of milestones <= current 1-based epoch - 1)``, i.e. the
    official per-epoch ``MultiStepLR``; "constant": 1; "cosine": half cosine from 1 to
    ``min_lr_ratio`` over the steps after warm-up. A linear warm-up multiplies any of them.
    """
    warm = 1.0
    if config.warmup_steps > 0 and step < config.warmup_steps:
        warm = (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        base = 1.0
    elif config.schedule == "official":
        epoch = step // max(1, steps_per_epoch)  # epochs completed before this step
        # MultiStepLR is stepped once per epoch; after `epoch` steps it has passed every
        # milestone m with m <= epoch.
        passed = sum(1 for m in config.lr_decay_epochs if m <= epoch)
        base = config.lr_decay_rate**passed
    else:
        span = max(1, total_steps - config.warmup_steps)
        t = min(1.0, max(0.0, (step - config.warmup_steps) / span))
        base = config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    return warm * base


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: OptimConfig, steps_per_epoch: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-optimizer-step ``LambdaLR`` following :func:`lr_multiplier` (its state is checkpointed)."""
    fn: Callable[[int], float] = lambda step: lr_multiplier(config, step, steps_per_epoch, total_steps)  # noqa: E731
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
