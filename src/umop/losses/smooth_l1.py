"""L1 and smooth L1 losses on encoded box deltas (mmdetection's ``l1_loss`` / ``smooth_l1_loss``).

- L1: ``|pred - target|``;
- smooth L1 (Girshick, "Fast R-CNN", ICCV 2015, Eq. 3, with the threshold ``beta`` of mmdetection and
  torchvision): ``0.5 d^2 / beta`` for ``|d| < beta``, ``|d| - 0.5 beta`` otherwise; ``beta = 1`` is the
  paper's form, ``beta = 1/9`` (0.11) RetinaNet's.

Element-wise (per coordinate), then :func:`~umop.losses.reduction.weight_reduce_loss`; ``weight`` may be
per coordinate or per box (``pred.shape[:-1]``).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ._weights import broadcast_weight
from .base import BoxLoss
from .reduction import weight_reduce_loss

__all__ = ["l1_loss", "smooth_l1_loss", "L1Loss", "SmoothL1Loss"]


def _check(pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got pred {tuple(pred.shape)} and "
                         f"target {tuple(target.shape)}")


def l1_loss(pred: Tensor, target: Tensor, weight: Tensor | None = None, reduction: str = "mean",
            avg_factor: float | Tensor | None = None) -> Tensor:
    """L1 loss ``|pred - target|``; ``pred``, ``target`` (..., D); the element-wise result has their shape."""
    _check(pred, target)
    loss = (pred - target).abs()
    return weight_reduce_loss(loss, broadcast_weight(weight, pred), reduction, avg_factor)


def smooth_l1_loss(pred: Tensor, target: Tensor, weight: Tensor | None = None, reduction: str = "mean",
                   avg_factor: float | Tensor | None = None, *, beta: float = 1.0) -> Tensor:
    """Smooth L1 loss (Fast R-CNN Eq. 3) with threshold ``beta`` (> 0); shapes as :func:`l1_loss`."""
    _check(pred, target)
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta!r}")
    diff = (pred - target).abs()
    loss = torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)
    return weight_reduce_loss(loss, broadcast_weight(weight, pred), reduction, avg_factor)


class L1Loss(BoxLoss):
    """L1 loss on encoded deltas; config name ``l1``."""

    space = "deltas"

    def loss(self, pred, target, weight, reduction, avg_factor, **kwargs):
        return l1_loss(pred, target, weight, reduction, avg_factor)


class SmoothL1Loss(BoxLoss):
    """Smooth L1 loss (Girshick, ICCV 2015) on encoded deltas; config name ``smooth_l1``."""

    space = "deltas"

    def __init__(self, beta: float = 1.0 / 9.0, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__(reduction, loss_weight)
        if beta <= 0:
            raise ValueError(f"beta must be positive, got {beta!r}")
        self.beta = float(beta)

    def loss(self, pred, target, weight, reduction, avg_factor, **kwargs):
        return smooth_l1_loss(pred, target, weight, reduction, avg_factor, beta=self.beta)
