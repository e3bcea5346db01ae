"""Varifocal loss (Zhang et al., "VarifocalNet: An IoU-aware Dense Object Detector", CVPR 2021, Eq. 2).

With ``p = sigmoid(x)`` the predicted IoU-aware classification score and ``q`` the target score (the IoU of
the predicted box with its ground truth for the ground-truth class of a positive, 0 otherwise)::

    VFL(p, q) = -q (q log p + (1 - q) log(1 - p))      if q > 0
              = -alpha p^gamma log(1 - p)               if q = 0

Positives are weighted by their own target ``q`` (``iou_weighted=True``; with ``False`` they get weight 1)
and are not down-weighted by the focal term, negatives are down-weighted by ``alpha p^gamma``. The
implementation follows mmdetection's ``varifocal_loss``: binary cross-entropy with the soft target ``q``
times the focal weight ``q * [q > 0] + alpha |p - q|^gamma * [q <= 0]``, with the gradient flowing through
the focal weight as well (no ``detach``), which is exactly the derivative of Eq. 2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._precision import upcast_low_precision
from ._weights import broadcast_weight
from .base import ClassificationLoss
from .reduction import weight_reduce_loss

__all__ = ["varifocal_loss", "VarifocalLoss"]


def _check_options(alpha: float, gamma: float) -> None:
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")


def varifocal_loss(
    pred: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
    *,
    alpha: float = 0.75,
    gamma: float = 2.0,
    iou_weighted: bool = True,
) -> Tensor:
    """Varifocal loss, element-wise then weighted and reduced (mmdetection semantics).

    Args:
        pred: ``(..., C)`` classification logits (any shape).
        target: same shape as ``pred``; IoU-aware targets in ``[0, 1]`` (0 for background and for the
            non-target classes of a positive).
        weight: optional, broadcastable to ``pred`` or of shape ``pred.shape[:-1]`` (e.g. ``(B, A)`` per
            prior, 0 = ignored).
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        avg_factor: with ``"mean"``, divide the sum by this (e.g. the number of positives) instead.
        alpha: weight of the negatives' focal term (paper: 0.75), keyword-only.
        gamma: focusing exponent of the negatives (paper: 2.0), keyword-only.
        iou_weighted: weight positives by their target ``q`` (paper) or by 1, keyword-only.

    Returns:
        the reduced loss (0-d) or, with ``reduction="none"``, the element-wise loss shaped like ``pred``.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    _check_options(alpha, gamma)
    pred = upcast_low_precision(pred)  # bf16/fp16 (AMP): float32 loss
    target = target.to(pred.dtype)
    prob = pred.sigmoid()
    positive = target > 0
    positive_weight = target if iou_weighted else torch.ones_like(target)
    focal_weight = torch.where(positive, positive_weight, alpha * (prob - target).abs().pow(gamma))
    loss = F.binary_cross_entropy_with_logits(pred, target, reduction="none") * focal_weight
    return weight_reduce_loss(loss, broadcast_weight(weight, pred), reduction, avg_factor)


class VarifocalLoss(ClassificationLoss):
    """Varifocal loss (Zhang et al., CVPR 2021) as a detector's classification loss (config ``varifocal``).

    :class:`~umop.losses.base.ClassificationLoss` protocol with ``needs_quality``: the IoU-aware target is
    ``targets * quality[..., None]`` (the IoU of the positive's decoded box at its class; it must be > 0 at
    the positives, VFNet clamps it at 1e-6), the loss ``sum(weight * VFL) / avg_factor``.
    """

    needs_quality = True

    def __init__(self, alpha: float = 0.75, gamma: float = 2.0, iou_weighted: bool = True,
                 loss_weight: float = 1.0) -> None:
        super().__init__(loss_weight)
        _check_options(alpha, gamma)
        self.alpha, self.gamma, self.iou_weighted = float(alpha), float(gamma), bool(iou_weighted)

    def compute(self, logits, targets, num_priors_per_level, weight, avg_factor, *, quality, loc_error):
        soft_targets = targets.to(logits.dtype) * quality.detach().to(logits.dtype).unsqueeze(-1)
        loss = varifocal_loss(logits, soft_targets, weight, reduction="sum", alpha=self.alpha,
                              gamma=self.gamma, iou_weighted=self.iou_weighted)
        return loss / avg_factor, {}

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, iou_weighted={self.iou_weighted}"
