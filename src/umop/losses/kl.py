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

Variance voting at inference (Sec. 3.3, Alg. 1) is :func:`variance_voting`; ``KLLoss(var_voting=True)`` tells
the detector to apply it.

mmdetection has no KL loss; this follows the paper and the authors' Detectron code (``e^{-alpha}``-weighted
smooth L1 plus ``alpha / 2``, both inputs receiving gradients).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ._weights import broadcast_weight
from .base import BoxLoss
from .reduction import weight_reduce_loss

__all__ = ["kl_loss", "KLLoss", "variance_voting"]


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


class KLLoss(BoxLoss):
    """KL loss (He et al., CVPR 2019) on encoded deltas; config name ``kl``.

    ``needs_log_var``: the detector must predict ``log_var`` (N, 4), ``alpha = log(sigma^2)`` of each delta
    (the variance branch), and pass it as ``forward(pred, target, weight, avg_factor, log_var=...)``.
    ``var_voting`` (an option for inference, read by the detector) enables :func:`variance_voting` after NMS
    with ``sigma_t`` (paper: 0.02 for VGG / 0.05 otherwise in the authors' code).
    """

    space = "deltas"
    needs_log_var = True

    def __init__(self, beta: float = 1.0, var_voting: bool = False, sigma_t: float = 0.02,
                 reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__(reduction, loss_weight)
        if beta <= 0:
            raise ValueError(f"beta must be positive, got {beta!r}")
        if sigma_t <= 0:
            raise ValueError(f"sigma_t must be positive, got {sigma_t!r}")
        self.beta, self.var_voting, self.sigma_t = float(beta), bool(var_voting), float(sigma_t)

    def loss(self, pred, target, weight, reduction, avg_factor, *, log_var: Tensor | None = None, **kwargs):
        if log_var is None:
            raise ValueError("KLLoss needs log_var (N, 4), the predicted log-variance of the deltas")
        return kl_loss(pred, target, weight, reduction, avg_factor, log_var=log_var, beta=self.beta)


def variance_voting(boxes: Tensor, scores: Tensor, labels: Tensor, candidates: Tensor,
                    candidate_scores: Tensor, candidate_labels: Tensor, candidate_log_var: Tensor, *,
                    sigma_t: float = 0.02) -> Tensor:
    """Variance voting (He et al. 2019, Sec. 3.3, Alg. 1): refine each kept box by its neighbours.

    For a kept detection ``b`` and the candidates ``b_i`` of its class (before NMS, including ``b``) with
    ``IoU(b_i, b) > 0``: ``p_i = exp(-(1 - IoU(b_i, b))^2 / sigma_t)`` and, per coordinate ``x``,
    ``x = sum_i (p_i / sigma_{x,i}^2) x_i / sum_i (p_i / sigma_{x,i}^2)``. The scores are unchanged (the
    paper votes on coordinates only). Vectorised: one (D, M) IoU matrix; no loop over detections.

    Args:
        boxes: (D, 4) kept ``xyxy`` boxes of one image; ``scores`` (D,) and ``labels`` (D,) are only used
            for the class match (``scores`` is kept for a symmetric call).
        candidates: (M, 4) the candidates of the same image before NMS; ``candidate_scores`` (M,),
            ``candidate_labels`` (M,); ``candidate_log_var`` (M, 4) their predicted ``log(sigma^2)`` in
            box-coordinate units (the detector converts the delta variances).
        sigma_t: the IoU-closeness temperature.

    Returns:
        (D, 4) the voted boxes.
    """
    if boxes.ndim != 2 or boxes.shape[-1] != 4 or candidates.ndim != 2 or candidates.shape[-1] != 4:
        raise ValueError(f"boxes and candidates must be (D, 4) and (M, 4), got {tuple(boxes.shape)} and "
                         f"{tuple(candidates.shape)}")
    if candidate_log_var.shape != candidates.shape:
        raise ValueError(f"candidate_log_var must be {tuple(candidates.shape)}, got {tuple(candidate_log_var.shape)}")
    if sigma_t <= 0:
        raise ValueError(f"sigma_t must be positive, got {sigma_t!r}")
    if boxes.numel() == 0 or candidates.numel() == 0:
        return boxes.clone()
    from torchvision.ops import box_iou

    iou = box_iou(boxes, candidates)                                              # (D, M)
    neighbour = (iou > 0) & (labels[:, None] == candidate_labels[None, :])
    closeness = torch.exp(-(1 - iou).pow(2) / sigma_t) * neighbour                 # p_i, 0 off-neighbourhood
    inverse_var = torch.exp(-candidate_log_var)                                   # 1 / sigma^2, (M, 4)
    numerator = closeness @ (inverse_var * candidates)                            # (D, 4)
    denominator = closeness @ inverse_var
    voted = numerator / denominator.clamp(min=torch.finfo(denominator.dtype).tiny)
    return torch.where(denominator > 0, voted, boxes)
