"""Balanced L1 loss (Pang et al., "Libra R-CNN: Towards Balanced Learning for Object Detection", CVPR 2019).

Libra R-CNN Sec. 3.3, Eq. 7-9: the gradient of the regression loss is promoted for inliers (``|x| < 1``) by
designing the gradient ``dL/dx = alpha * ln(b |x| + 1)`` for ``|x| < 1`` and ``gamma`` otherwise, with
``alpha * ln(b + 1) = gamma`` so that it is continuous. Integrating (Eq. 8):

    L_b(x) = alpha / b * (b|x| + 1) * ln(b|x| + 1) - alpha |x|      if |x| < 1
             gamma |x| + C                                           otherwise,   C = gamma / b - alpha

Defaults ``alpha = 0.5``, ``gamma = 1.5`` (so ``b = e^3 - 1``), ``beta = 1``.

The threshold ``beta`` generalises the ``1`` exactly as mmdetection's ``balanced_l1_loss`` does (Libra
RetinaNet uses ``beta = 0.11``):

    L(x) = alpha / b * (b|x| + 1) * ln(b|x| / beta + 1) - alpha |x|   if |x| < beta
           gamma |x| + gamma / b - alpha * beta                        otherwise.

This is continuous at ``|x| = beta`` for every ``beta``, but for ``beta != 1`` its gradient is not the
paper's ``alpha ln(b|x|/beta + 1)`` and jumps at ``beta``; we keep mmdetection's form for parity with its
configs (with ``beta = 1`` it is exactly the paper's Eq. 8).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ._weights import broadcast_weight
from .base import BoxLoss
from .reduction import weight_reduce_loss

__all__ = ["balanced_l1_loss", "BalancedL1Loss"]


def _check_options(alpha: float, gamma: float, beta: float) -> None:
    if alpha <= 0 or gamma <= 0 or beta <= 0:
        raise ValueError(f"alpha, gamma and beta must be positive, got alpha={alpha}, gamma={gamma}, beta={beta}")




def balanced_l1_loss(pred: Tensor, target: Tensor, weight: Tensor | None = None, reduction: str = "mean",
                     avg_factor: float | Tensor | None = None, *, alpha: float = 0.5, gamma: float = 1.5,
                     beta: float = 1.0) -> Tensor:
    """Balanced L1 loss, element-wise then weighted and reduced (Libra R-CNN Eq. 8).

    Args:
        pred: (..., 4) regression outputs (any shape).
        target: same shape as ``pred``.
        weight: optional, broadcastable to ``pred`` or of shape ``pred.shape[:-1]`` (per box).
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        avg_factor: with ``"mean"``, divide the weighted sum by this instead of the element count.
        alpha: inlier gradient scale (0.5); gamma: outlier gradient (1.5); beta: inlier threshold (1.0).

    Returns:
        scalar, or pred's shape for ``reduction="none"``.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got pred {tuple(pred.shape)} and "
                         f"target {tuple(target.shape)}")
    _check_options(alpha, gamma, beta)
    b = math.exp(gamma / alpha) - 1.0                      # alpha * ln(b + 1) = gamma (Eq. 9)
    diff = (pred - target).abs()
    inlier = alpha / b * (b * diff + 1) * torch.log(b * diff / beta + 1) - alpha * diff
    outlier = gamma * diff + (gamma / b - alpha * beta)
    loss = torch.where(diff < beta, inlier, outlier)
    return weight_reduce_loss(loss, broadcast_weight(weight, pred), reduction, avg_factor)


class BalancedL1Loss(BoxLoss):
    """Balanced L1 loss (Libra R-CNN, Pang et al. CVPR 2019) on encoded deltas; config name ``balanced_l1``."""

    space = "deltas"

    def __init__(self, alpha: float = 0.5, gamma: float = 1.5, beta: float = 1.0, reduction: str = "mean",
                 loss_weight: float = 1.0) -> None:
        super().__init__(reduction, loss_weight)
        _check_options(alpha, gamma, beta)
        self.alpha, self.gamma, self.beta = float(alpha), float(gamma), float(beta)

    def loss(self, pred, target, weight, reduction, avg_factor, **kwargs):
        return balanced_l1_loss(pred, target, weight, reduction, avg_factor, alpha=self.alpha,
                                gamma=self.gamma, beta=self.beta)
