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

from umop.losses._precision import upcast_low_precision
from umop.losses.iou import weight_reduce_loss

__all__ = ["varifocal_loss"]


def varifocal_loss(
    pred_logits: Tensor,
    target_score: Tensor,
    alpha: float = 0.75,
    gamma: float = 2.0,
    iou_weighted: bool = True,
    weight: Tensor | None = None,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """Varifocal loss, element-wise then weighted and reduced (mmdetection semantics).

    Args:
        pred_logits: ``(..., C)`` classification logits (any shape).
        target_score: same shape as ``pred_logits``; IoU-aware targets in ``[0, 1]`` (0 for background and for
            the non-target classes of a positive).
        alpha: weight of the negatives' focal term (paper: 0.75).
        gamma: focusing exponent of the negatives (paper: 2.0).
        iou_weighted: weight positives by their target ``q`` (paper) or by 1.
        weight: optional, broadcastable to ``pred_logits`` (e.g. ``(..., 1)`` per anchor, 0 = ignored).
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        avg_factor: with ``"mean"``, divide the sum by this (e.g. the number of positives) instead.

    Returns:
        the reduced loss (0-d) or, with ``reduction="none"``, the element-wise loss shaped like ``pred_logits``.
    """
    if pred_logits.shape != target_score.shape:
        raise ValueError(f"pred_logits and target_score must have the same shape, got "
                         f"{tuple(pred_logits.shape)} and {tuple(target_score.shape)}")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    pred_logits = upcast_low_precision(pred_logits)  # bf16/fp16 (AMP): float32 loss
    target_score = target_score.to(pred_logits.dtype)
    prob = pred_logits.sigmoid()
    positive = target_score > 0
    positive_weight = target_score if iou_weighted else torch.ones_like(target_score)
    focal_weight = torch.where(positive, positive_weight, alpha * (prob - target_score).abs().pow(gamma))
    loss = F.binary_cross_entropy_with_logits(pred_logits, target_score, reduction="none") * focal_weight
    return weight_reduce_loss(loss, weight, reduction, avg_factor)
