"""IoU-family box regression losses for axis-aligned ``xyxy`` boxes.

All losses use mmdetection's functional signature
``(pred, target, weight=None, reduction="mean", avg_factor=None, *, eps=1e-7, <options>)``:

- ``pred``, ``target``: ``(..., 4)`` boxes ``(x1, y1, x2, y2)`` in the same coordinate frame;
- ``weight``: optional, broadcastable to ``(...)`` (per box) or exactly ``(..., 4)`` (per coordinate, averaged
  over the last dimension as mmdetection does);
- ``reduction``: ``"none"`` (per box loss, shape ``(...)``), ``"mean"`` or ``"sum"``;
- ``avg_factor``: when given with ``reduction="mean"`` the weighted sum is divided by it instead of by the
  number of boxes (mmdetection's ``weight_reduce_loss``); it may be a Python number or a 0-d tensor, so callers
  can normalise by a positive count without a host synchronisation.

The formulas follow the papers and match torchvision's ``generalized_box_iou_loss``,
``distance_box_iou_loss`` and ``complete_box_iou_loss`` (same ``eps`` placement):

- IoU loss (UnitBox, Yu et al. 2016): ``-log(IoU)`` (``mode="log"``, mmdetection's default), ``1 - IoU``
  (``"linear"``) or ``1 - IoU**2`` (``"square"``);
- GIoU loss (Rezatofighi et al. 2019, Eq. / Alg. 2): ``1 - IoU + |C \\ (A u B)| / |C|`` with ``C`` the smallest
  enclosing box;
- DIoU loss (Zheng et al. 2020, Eq. 6): ``1 - IoU + rho^2(b, b_gt) / c^2``;
- CIoU loss (Zheng et al. 2020, Eq. 10-11): DIoU loss ``+ alpha * v`` with
  ``v = 4/pi^2 (atan(w_gt/h_gt) - atan(w/h))^2`` and ``alpha = v / ((1 - IoU) + v)`` (no gradient through
  ``alpha``, as in the paper and torchvision).
"""

from __future__ import annotations

import math
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor

from .base import BoxLoss
from .reduction import weight_reduce_loss

__all__ = ["iou_loss", "giou_loss", "diou_loss", "ciou_loss", "bounded_iou_loss", "aligned_box_iou", "IoULoss",
           "GIoULoss", "DIoULoss", "CIoULoss", "BoundedIoULoss"]


def _check_boxes(pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got pred {tuple(pred.shape)} "
                         f"and target {tuple(target.shape)}")
    if pred.ndim == 0 or pred.shape[-1] != 4:
        raise ValueError(f"pred must have shape (..., 4) (xyxy boxes), got {tuple(pred.shape)}")


def _box_weight(weight: Tensor | None, pred: Tensor) -> Tensor | None:
    """Reduce an ``(..., 4)`` per-coordinate weight to a per-box weight (mmdetection's convention)."""
    if weight is None:
        return None
    if weight.shape == pred.shape:
        return weight.mean(dim=-1)
    try:
        torch.broadcast_shapes(weight.shape, pred.shape[:-1])
    except RuntimeError as exc:
        raise ValueError(f"weight of shape {tuple(weight.shape)} does not broadcast to the per-box shape "
                         f"{tuple(pred.shape[:-1])} nor equals pred's shape {tuple(pred.shape)}") from exc
    return weight


def _iou_terms(pred: Tensor, target: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """Return ``(iou, union, enclosing box)``, the pieces shared by the losses.

    Shapes: ``pred``, ``target`` ``(..., 4)`` -> ``iou``, ``union`` ``(...)``, enclosing box ``(..., 4)``.
    """
    px1, py1, px2, py2 = pred.unbind(-1)
    tx1, ty1, tx2, ty2 = target.unbind(-1)
    inter_w = (torch.min(px2, tx2) - torch.max(px1, tx1)).clamp(min=0)
    inter_h = (torch.min(py2, ty2) - torch.max(py1, ty1)).clamp(min=0)
    inter = inter_w * inter_h
    union = (px2 - px1) * (py2 - py1) + (tx2 - tx1) * (ty2 - ty1) - inter
    iou = inter / (union + eps)
    enclose = torch.stack(
        (torch.min(px1, tx1), torch.min(py1, ty1), torch.max(px2, tx2), torch.max(py2, ty2)), dim=-1)
    return iou, union, enclose


def aligned_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """IoU of corresponding boxes (``is_aligned=True`` in mmdetection): ``(..., 4), (..., 4) -> (...)``."""
    _check_boxes(boxes1, boxes2)
    return _iou_terms(boxes1, boxes2, eps)[0]


def _reduce_box_loss(loss: Tensor, pred: Tensor, weight: Tensor | None, reduction: str,
                     avg_factor: float | Tensor | None) -> Tensor:
    """Weight (per box or per coordinate) and reduce a per-box loss ``(...)``."""
    return weight_reduce_loss(loss, _box_weight(weight, pred), reduction, avg_factor)


def iou_loss(pred: Tensor, target: Tensor, weight: Tensor | None = None, reduction: str = "mean",
             avg_factor: float | Tensor | None = None, *, eps: float = 1e-7, mode: str = "log") -> Tensor:
    """IoU loss (UnitBox). ``mode``: ``"log"`` -> ``-log(IoU)`` (IoU clamped at ``eps``), ``"linear"`` ->
    ``1 - IoU``, ``"square"`` -> ``1 - IoU**2``. Shapes as in the module docstring."""
    _check_boxes(pred, target)
    iou = _iou_terms(pred, target, eps)[0]
    if mode == "log":
        loss = -iou.clamp(min=eps).log()
    elif mode == "linear":
        loss = 1 - iou
    elif mode == "square":
        loss = 1 - iou.pow(2)
    else:
        raise ValueError(f'mode must be "log", "linear" or "square", got {mode!r}')
    return _reduce_box_loss(loss, pred, weight, reduction, avg_factor)


def _giou(pred: Tensor, target: Tensor, eps: float) -> Tensor:
    iou, union, enclose = _iou_terms(pred, target, eps)
    area_c = (enclose[..., 2] - enclose[..., 0]) * (enclose[..., 3] - enclose[..., 1])
    return iou - (area_c - union) / (area_c + eps)


def giou_loss(pred: Tensor, target: Tensor, weight: Tensor | None = None, reduction: str = "mean",
              avg_factor: float | Tensor | None = None, *, eps: float = 1e-7) -> Tensor:
    """Generalised IoU loss ``1 - GIoU`` (Rezatofighi et al. 2019). Shapes as in the module docstring."""
    _check_boxes(pred, target)
    return _reduce_box_loss(1 - _giou(pred, target, eps), pred, weight, reduction, avg_factor)


def _diou_terms(pred: Tensor, target: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Return ``(iou, rho^2 / c^2)`` (DIoU paper Eq. 6)."""
    iou, _, enclose = _iou_terms(pred, target, eps)
    diag_sq = (enclose[..., 2] - enclose[..., 0]).pow(2) + (enclose[..., 3] - enclose[..., 1]).pow(2) + eps
    pred_centre = (pred[..., :2] + pred[..., 2:]) / 2
    target_centre = (target[..., :2] + target[..., 2:]) / 2
    centre_sq = (pred_centre - target_centre).pow(2).sum(-1)
    return iou, centre_sq / diag_sq


def _aspect_ratio_term(pred: Tensor, target: Tensor, iou: Tensor, eps: float) -> Tensor:
    """CIoU's ``alpha * v`` (Zheng et al. 2020, Eq. 9-11), ``alpha`` without gradient."""
    w_pred = pred[..., 2] - pred[..., 0]
    h_pred = pred[..., 3] - pred[..., 1] + eps  # + eps (mmdetection): a zero-size box gives atan(0/0) = NaN
    w_gt = target[..., 2] - target[..., 0]
    h_gt = target[..., 3] - target[..., 1] + eps
    v = (4 / math.pi ** 2) * (torch.atan(w_gt / h_gt) - torch.atan(w_pred / h_pred)).pow(2)
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return alpha * v


def diou_loss(pred: Tensor, target: Tensor, weight: Tensor | None = None, reduction: str = "mean",
              avg_factor: float | Tensor | None = None, *, eps: float = 1e-7) -> Tensor:
    """Distance IoU loss ``1 - IoU + rho^2 / c^2`` (Zheng et al. 2020, Eq. 6)."""
    _check_boxes(pred, target)
    iou, penalty = _diou_terms(pred, target, eps)
    return _reduce_box_loss(1 - iou + penalty, pred, weight, reduction, avg_factor)


def ciou_loss(pred: Tensor, target: Tensor, weight: Tensor | None = None, reduction: str = "mean",
              avg_factor: float | Tensor | None = None, *, eps: float = 1e-7) -> Tensor:
    """Complete IoU loss ``1 - IoU + rho^2 / c^2 + alpha * v`` (Zheng et al. 2020, Eq. 10-11)."""
    _check_boxes(pred, target)
    iou, penalty = _diou_terms(pred, target, eps)
    loss = 1 - iou + penalty + _aspect_ratio_term(pred, target, iou, eps)
    return _reduce_box_loss(loss, pred, weight, reduction, avg_factor)


def bounded_iou_loss(pred: Tensor, target: Tensor, weight: Tensor | None = None, reduction: str = "mean",
                     avg_factor: float | Tensor | None = None, *, beta: float = 0.2, eps: float = 1e-3) -> Tensor:
    """Bounded IoU loss (Tychsen-Smith and Petersson 2018, Sec. 3.2), per box summed over x, y, w, h.

    ``eps`` keeps the ratios finite for degenerate boxes (mmdetection: 1e-3). Shapes as in the module
    docstring.
    """
    _check_boxes(pred, target)
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta!r}")
    pred_ctr = (pred[..., :2] + pred[..., 2:]) / 2
    pred_size = pred[..., 2:] - pred[..., :2]
    with torch.no_grad():
        target_ctr = (target[..., :2] + target[..., 2:]) / 2
        target_size = target[..., 2:] - target[..., :2]
    delta = (target_ctr - pred_ctr).abs()
    loss_ctr = 1 - torch.clamp((target_size - 2 * delta) / (target_size + 2 * delta + eps), min=0)
    loss_size = 1 - torch.min(target_size / (pred_size + eps), pred_size / (target_size + eps))
    terms = torch.cat([loss_ctr, loss_size], dim=-1)                       # (..., 4): x, y, w, h
    loss = torch.where(terms < beta, 0.5 * terms * terms / beta, terms - 0.5 * beta).sum(-1)
    return _reduce_box_loss(loss, pred, weight, reduction, avg_factor)


class _IoUFamilyLoss(BoxLoss):
    """A loss on decoded boxes calling ``function(pred, target, weight, reduction, avg_factor, eps=...,
    **options)``, with the keyword options of :meth:`options`."""

    space = "boxes"
    function: ClassVar[Callable[..., Tensor]]

    def __init__(self, eps: float = 1e-7, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__(reduction, loss_weight)
        if eps <= 0:
            raise ValueError(f"eps must be positive, got {eps!r}")
        self.eps = float(eps)

    def options(self) -> dict[str, Any]:
        return {}

    def loss(self, pred, target, weight, reduction, avg_factor, **kwargs):
        return type(self).function(pred, target, weight, reduction, avg_factor, eps=self.eps, **self.options())


class IoULoss(_IoUFamilyLoss):
    """IoU loss (UnitBox, Yu et al. 2016) on decoded boxes; config name ``iou``. See :func:`iou_loss`."""

    function = iou_loss

    def __init__(self, mode: str = "log", eps: float = 1e-7, reduction: str = "mean",
                 loss_weight: float = 1.0) -> None:
        super().__init__(eps, reduction, loss_weight)
        if mode not in ("log", "linear", "square"):
            raise ValueError(f'mode must be "log", "linear" or "square", got {mode!r}')
        self.mode = mode

    def options(self) -> dict[str, Any]:
        return {"mode": self.mode}


class GIoULoss(_IoUFamilyLoss):
    """GIoU loss (Rezatofighi et al., CVPR 2019) on decoded boxes; config name ``giou``."""
    function = giou_loss


class DIoULoss(_IoUFamilyLoss):
    """DIoU loss (Zheng et al., AAAI 2020, Eq. 6) on decoded boxes; config name ``diou``."""
    function = diou_loss


class CIoULoss(_IoUFamilyLoss):
    """CIoU loss (Zheng et al., AAAI 2020, Eq. 10-11) on decoded boxes; config name ``ciou``."""
    function = ciou_loss


class BoundedIoULoss(_IoUFamilyLoss):
    """Bounded IoU loss (Tychsen-Smith and Petersson, CVPR 2018) on decoded boxes; config ``bounded_iou``."""

    function = bounded_iou_loss

    def __init__(self, beta: float = 0.2, eps: float = 1e-3, reduction: str = "mean",
                 loss_weight: float = 1.0) -> None:
        super().__init__(eps, reduction, loss_weight)
        if beta <= 0:
            raise ValueError(f"beta must be positive, got {beta!r}")
        self.beta = float(beta)

    def options(self) -> dict[str, Any]:
        return {"beta": self.beta}
