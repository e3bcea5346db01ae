"""Optimiser and learning-rate schedule of the standard detection recipes (mmdetection 1x)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from .config import SolverConfig

__all__ = ["build_optimizer", "WarmupStepLR"]

_NORM_TYPES = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.SyncBatchNorm)


def build_optimizer(model: nn.Module, solver: SolverConfig, lr: float) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay) or AdamW over the trainable parameters of ``model``.

    With ``solver.norm_bias_decay`` False, norm-layer weights and all biases get no weight decay.
    """
    decay, no_decay = [], []
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if not parameter.requires_grad:
                continue
            if not solver.norm_bias_decay and (isinstance(module, _NORM_TYPES) or name == "bias"):
                no_decay.append(parameter)
            else:
                decay.append(parameter)
    groups = [{"params": decay, "weight_decay": solver.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters")
    if solver.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=solver.momentum)
    if solver.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"solver.optimizer must be 'sgd' or 'adamw', got '{solver.optimizer}'")


class WarmupStepLR(LRScheduler):
    """Linear warmup then step decay, stepped once per iteration.

    ``lr(it) = base_lr * warmup(it) * gamma ** (number of milestones <= it)`` with
    ``warmup(it) = 1 - (1 - warmup_ratio) * (1 - it / warmup_iters)`` for ``it < warmup_iters`` (mmdetection's
    linear warmup), 1 afterwards. Milestones are iteration counts (``epoch * iters_per_epoch``).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, milestones: Sequence[int], gamma: float = 0.1,
                 warmup_iters: int = 500, warmup_ratio: float = 0.001, last_epoch: int = -1) -> None:
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = gamma
        self.warmup_iters = warmup_iters
        self.warmup_ratio = warmup_ratio
        super().__init__(optimizer, last_epoch)

    def factor(self, iteration: int) -> float:
        """Multiplier of the base learning rate at ``iteration``."""
        decay = self.gamma ** sum(iteration >= m for m in self.milestones)
        if iteration < self.warmup_iters:
            decay *= 1.0 - (1.0 - self.warmup_ratio) * (1.0 - iteration / self.warmup_iters)
        return decay

    def get_lr(self) -> list[float]:
        return [base * self.factor(self.last_epoch) for base in self.base_lrs]
