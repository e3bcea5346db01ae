"""Quality focal loss (Li et al., "Generalized Focal Loss: Learning Qualified and Distributed Bounding
Boxes for Dense Object Detection", NeurIPS 2020, Eq. 5 / GFL's QFL).

The classification score is trained towards a soft quality target ``y`` in ``[0, 1]`` (the IoU of the
predicted box with its ground truth at the ground-truth class of a positive, 0 elsewhere)::

    QFL(sigma) = -|y - sigma|^beta ((1 - y) log(1 - sigma) + y log(sigma)),    sigma = sigmoid(x), beta = 2

i.e. binary cross-entropy with the soft target, modulated by ``|y - sigma|^beta`` (the gradient flows
through the modulating factor as well, as in mmdetection's ``quality_focal_loss``). For ``y`` in ``{0, 1}``
it is the focal loss without alpha.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ._precision import upcast_low_precision
from ._weights import broadcast_weight
from .base import ClassificationLoss
from .reduction import weight_reduce_loss

__all__ = ["quality_focal_loss", "QualityFocalLoss"]


def quality_focal_loss(pred: Tensor, target: Tensor, weight: Tensor | None = None, reduction: str = "mean",
                       avg_factor: float | Tensor | None = None, *, beta: float = 2.0) -> Tensor:
    """Quality focal loss (GFL Eq. 5), element-wise then weighted and reduced.

    Args:
        pred: (..., C) logits.
        target: same shape, soft targets in ``[0, 1]``.
        weight: optional, broadcastable to ``pred`` or of shape ``pred.shape[:-1]``.
        reduction, avg_factor: see :func:`umop.losses.reduction.weight_reduce_loss`.
        beta: the modulating exponent (paper: 2).

    Returns:
        scalar, or pred's shape for ``reduction="none"``.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta!r}")
    pred = upcast_low_precision(pred)  # bf16/fp16 (AMP): float32 loss
    target = target.to(pred.dtype)
    modulating = (pred.sigmoid() - target).abs().pow(beta)
    loss = F.binary_cross_entropy_with_logits(pred, target, reduction="none") * modulating
    return weight_reduce_loss(loss, broadcast_weight(weight, pred), reduction, avg_factor)


class QualityFocalLoss(ClassificationLoss):
    """Quality focal loss (GFL, Li et al. NeurIPS 2020) as a detector's classification loss
    (config name ``quality_focal``).

    :class:`~umop.losses.base.ClassificationLoss` protocol with ``needs_quality``: the soft target is
    ``targets * quality[..., None]``; the loss is ``sum(weight * QFL) / avg_factor``.
    """

    needs_quality = True

    def __init__(self, beta: float = 2.0, loss_weight: float = 1.0) -> None:
        super().__init__(loss_weight)
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta!r}")
        self.beta = float(beta)

    def compute(self, logits, targets, num_priors_per_level, weight, avg_factor, *, quality, loc_error):
        soft_targets = targets.to(logits.dtype) * quality.detach().to(logits.dtype).unsqueeze(-1)
        loss = quality_focal_loss(logits, soft_targets, weight, reduction="sum", beta=self.beta)
        return loss / avg_factor, {}

    def extra_repr(self) -> str:
        return f"beta={self.beta}"
