"""The one reduction helper of the losses: element weights, then ``"none"`` / ``"mean"`` / ``"sum"`` with
mmdetection's ``avg_factor`` semantics (``mmdet.models.losses.utils.weight_reduce_loss``).

Every element-wise loss of :mod:`umop.losses` follows mmdetection's convention
``loss(pred, target, weight=None, reduction="mean", avg_factor=None, *, <options>)`` and ends with
:func:`weight_reduce_loss`.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["REDUCTIONS", "check_reduction", "weight_reduce_loss"]

REDUCTIONS = ("none", "mean", "sum")


def check_reduction(reduction: str, allowed: tuple[str, ...] = REDUCTIONS) -> str:
    """Return ``reduction`` or raise ``ValueError`` naming the argument and the allowed values."""
    if reduction not in allowed:
        raise ValueError(f"reduction must be one of {allowed}, got {reduction!r}")
    return reduction


def weight_reduce_loss(
    loss: Tensor,
    weight: Tensor | None = None,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """Apply an element-wise ``weight`` then reduce (mmdetection's ``weight_reduce_loss``).

    Args:
        loss: element-wise loss, any shape.
        weight: broadcastable to ``loss`` (or ``None``).
        reduction: ``"none"`` (weighted element-wise loss), ``"mean"`` or ``"sum"``.
        avg_factor: with ``"mean"``, the weighted sum is divided by ``avg_factor + eps`` (float32 eps, so
            that ``avg_factor = 0``, e.g. no positive, gives 0 and not NaN) instead of ``loss.numel()``;
            a Python number or a 0-d tensor (no host synchronisation). With ``"none"`` it is ignored;
            with ``"sum"`` it is an error (as in mmdetection).

    Returns:
        ``loss``'s shape for ``"none"``, a 0-d tensor otherwise.
    """
    check_reduction(reduction)
    if weight is not None:
        loss = loss * weight
    if avg_factor is None:
        if reduction == "mean":
            return loss.mean()
        if reduction == "sum":
            return loss.sum()
        return loss
    if reduction == "mean":
        return loss.sum() / (avg_factor + torch.finfo(torch.float32).eps)
    if reduction == "none":
        return loss
    raise ValueError('avg_factor can only be used with reduction="mean" or "none", got reduction="sum"')
