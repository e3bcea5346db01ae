"""Sigmoid focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017, Eq. 5).

``sigmoid_focal_loss`` is numerically equal to ``torchvision.ops.sigmoid_focal_loss`` (values and
gradients) but accepts ``alpha`` and ``gamma`` as tensors that broadcast against ``logits`` (UMOP's
progressive focal loss uses one (alpha, gamma) pair per pyramid level) and an mmdetection-style ``weight``.

Speed: the common case (gradient needed for ``logits`` only) runs through ``FocalLossFunction``
(:mod:`umop.losses.fused_focal`), an
``autograd.Function`` that computes the element-wise loss and its hand-derived gradient in the same pass
and keeps only the gradient for backward; binary targets take a short form that works in three buffers
in place (``binary_focal_prelude`` / ``binary_modulated_terms``) and, for a summed loss, applies the alpha
factor and row weights to per-row sums. It is about 5x faster than ``torchvision.ops.sigmoid_focal_loss``
on CPU (``benchmarks/loss_speed.py``). When ``targets``, ``alpha``, ``gamma`` or ``weight`` require
gradients, the plain autograd path (``focal_loss_reference``) is used instead, so every input still gets its
correct gradient.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._precision import upcast_low_precision
from ._weights import broadcast_weight
from .base import ClassificationLoss
from .fused_focal import FocalLossFunction, alpha_factor, focal_loss_terms, targets_are_binary
from .reduction import check_reduction, weight_reduce_loss

__all__ = ["sigmoid_focal_loss", "FocalLoss", "focal_loss_reference", "focal_loss_terms", "FocalLossFunction"]


def _as_tensor_or_float(value: float | Tensor) -> float | Tensor:
    return value if isinstance(value, Tensor) else float(value)


def focal_loss_reference(logits: Tensor, targets: Tensor, alpha: float | Tensor = 0.25,
                         gamma: float | Tensor = 2.0) -> Tensor:
    """Element-wise focal loss written as in the paper, differentiated by autograd.

    Same formula as ``torchvision.ops.sigmoid_focal_loss(..., reduction="none")``.
    """
    prob = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    one_minus_pt = 1 - (prob * targets + (1 - prob) * (1 - targets))
    return alpha_factor(targets, alpha) * ce * one_minus_pt**gamma


def sigmoid_focal_loss(pred: Tensor, target: Tensor, weight: Tensor | None = None, reduction: str = "mean",
                       avg_factor: float | Tensor | None = None, *, alpha: float | Tensor = 0.25,
                       gamma: float | Tensor = 2.0) -> Tensor:
    """Sigmoid focal loss (Lin et al. 2017, Eq. 5), equal to ``torchvision.ops.sigmoid_focal_loss`` with
    tensor-valued alpha/gamma, in mmdetection's loss convention.

    Args:
        pred: (..., C) logits, any float dtype.
        target: same shape as ``pred``: 1 for the positive class, 0 otherwise (soft targets allowed).
        weight: optional element weights broadcasting to ``pred`` (or of shape ``pred.shape[:-1]``,
            e.g. (B, A) per prior, 0 for an ignored prior), applied before the reduction.
        reduction: "none" (element-wise), "mean" or "sum".
        avg_factor: with "mean", divide the weighted sum by ``avg_factor`` (+ float32 eps) instead of the
            element count (:func:`umop.losses.reduction.weight_reduce_loss`); ignored with "none".
        alpha: weight of positives, float or tensor broadcasting to ``pred``; a negative float disables it.
        gamma: focusing exponent, float or tensor broadcasting to ``pred``.

    Returns:
        A tensor of ``pred.shape`` ("none") or a scalar.
    """
    check_reduction(reduction)
    if reduction == "sum" and avg_factor is not None:
        raise ValueError('avg_factor can only be used with reduction="mean" or "none", got reduction="sum"')
    logits, targets = upcast_low_precision(pred), target  # bf16/fp16 (AMP): float32 loss, grad in pred's dtype
    if logits.shape != targets.shape:
        raise ValueError(f"pred {tuple(logits.shape)} and target {tuple(targets.shape)} must have the same shape")
    alpha, gamma = _as_tensor_or_float(alpha), _as_tensor_or_float(gamma)
    weight = broadcast_weight(weight, logits)
    binary_dtype = targets.dtype == torch.bool
    targets = targets.to(logits.dtype)

    others_need_grad = torch.is_grad_enabled() and any(
        isinstance(value, Tensor) and value.requires_grad for value in (targets, alpha, gamma, weight))
    if others_need_grad:
        loss = focal_loss_reference(logits, targets, alpha, gamma)
        return weight_reduce_loss(loss, weight, reduction, avg_factor)

    scale: float | Tensor = 1.0 if weight is None else weight
    if reduction == "mean":
        if avg_factor is not None:
            scale = scale / (avg_factor + torch.finfo(torch.float32).eps)
        elif logits.numel():
            scale = scale / logits.numel()
    if torch.is_grad_enabled() and logits.requires_grad:
        return FocalLossFunction.apply(logits, targets, alpha, gamma, scale, reduction != "none",
                                       binary_dtype or targets_are_binary(targets))
    loss, _ = focal_loss_terms(logits, targets, alpha, gamma, need_grad=False)
    if not (isinstance(scale, float) and scale == 1.0):
        loss = loss * scale
    if reduction == "none" and loss.shape != logits.shape:
        loss = loss.expand(logits.shape)
    return loss if reduction == "none" else loss.sum()


class FocalLoss(ClassificationLoss):
    """Sigmoid focal loss (Lin et al., ICCV 2017) as a detector's classification loss (config name ``focal``).

    :class:`~umop.losses.base.ClassificationLoss` protocol: ``sum(weight * FL) / avg_factor`` through the
    fused :class:`FocalLossFunction` (``avg_factor`` folded into the prior weight, so the fused backward
    needs no extra (B, A, C) product).
    """

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, loss_weight: float = 1.0) -> None:
        super().__init__(loss_weight)
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.alpha, self.gamma = float(alpha), float(gamma)

    def compute(self, logits, targets, num_priors_per_level, weight, avg_factor, *, quality, loc_error):
        scale = 1.0 / avg_factor if weight is None else weight / avg_factor
        if not isinstance(scale, Tensor):
            scale = torch.as_tensor(scale, dtype=logits.dtype, device=logits.device)
        loss = sigmoid_focal_loss(logits, targets, scale, reduction="sum", alpha=self.alpha, gamma=self.gamma)
        return loss, {}

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}"
