"""KL loss for bounding-box regression with uncertainty.

He, Zhu, Wang, Savvides and Zhang, "Bounding Box Regression with Uncertainty for Accurate Object Detection",
CVPR 2019 (arXiv:1809.08545), Sec. 3.2, Eq. 4-9.

The network predicts, per box coordinate, a mean ``x_e`` and ``alpha = log(sigma^2)`` (predicting ``alpha``
instead of ``sigma`` avoids gradient explosion, Eq. 8). The ground truth is a Dirac delta (the limit of a
Gaussian with ``sigma -> 0``), and the loss is the KL divergence between the two distributions with the
terms that do not depend on the network dropped (Eq. 5-8):

    L_reg = e^{-alpha} / 2 * (x_g - x_e)^2 + alpha / 2                   |x_g - x_e| <= 1
    L_reg = e^{-alpha} * (|x_g - x_e| - 1/2) + alpha / 2                 |x_g - x_e| >  1    (Eq. 9)

i.e. ``e^{-alpha} * smooth_l1(x_g - x_e) + alpha / 2``. ``beta`` generalises the threshold 1 as in
smooth L1 (``0.5 d^2 / beta`` inside, ``|d| - 0.5 beta`` outside); ``beta = 1`` is the paper's form.

mmdetection has no KL loss; this follows the paper and the authors' Detectron code (``e^{-alpha}``-weighted
smooth L1 plus ``alpha / 2``, both inputs receiving gradients).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ._weights import broadcast_weight
from .iou import weight_reduce_loss

__all__ = ["kl_loss", "KLLoss"]


def kl_loss(pred: Tensor, target: Tensor, weight: Tensor | None = None, reduction: str = "mean",
            avg_factor: float | Tensor | None = None, *, log_var: Tensor, beta: float = 1.0) -> Tensor:
    """KL loss (He et al. 2019, Eq. 9), element-wise then weighted and reduced.

    Args:
        pred: (..., 4) predicted box regression means ``x_e``.
        target: (..., 4) regression targets ``x_g``.
        weight: optional, broadcastable to ``pred`` or of shape ``pred.shape[:-1]`` (per box).
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        avg_factor: with ``"mean"``, divide the weighted sum by this instead of the element count.
        log_var: (..., 4) predicted ``alpha = log(sigma^2)``, same shape as ``pred`` (keyword-only, required).
        beta: smooth-L1 threshold (paper: 1).

    Returns:
        scalar, or pred's shape for ``reduction="none"``.
    """
    if pred.shape != target.shape or log_var.shape != pred.shape:
        raise ValueError(f"pred, target and log_var must have the same shape, got pred {tuple(pred.shape)}, "
                         f"target {tuple(target.shape)}, log_var {tuple(log_var.shape)}")
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta!r}")
    diff = (pred - target).abs()
    smooth_l1 = torch.where(diff <= beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)
    loss = torch.exp(-log_var) * smooth_l1 + 0.5 * log_var
    return weight_reduce_loss(loss, broadcast_weight(weight, pred), reduction, avg_factor)


class KLLoss(nn.Module):
    """Module form of :func:`kl_loss` with ``loss_weight``; ``forward(pred, target, weight, ..., log_var=)``."""

    def __init__(self, beta: float = 1.0, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__()
        if beta <= 0:
            raise ValueError(f"beta must be positive, got {beta!r}")
        if reduction not in ("none", "mean", "sum"):
            raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
        self.beta = float(beta)
        self.reduction = reduction
        self.loss_weight = float(loss_weight)

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None,
                avg_factor: float | Tensor | None = None, reduction_override: str | None = None, *,
                log_var: Tensor) -> Tensor:
        reduction = reduction_override or self.reduction
        return self.loss_weight * kl_loss(pred, target, weight, reduction, avg_factor, log_var=log_var,
                                          beta=self.beta)
