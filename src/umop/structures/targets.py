"""Training targets built from an assignment: one-hot classification targets, matched boxes, and the dense
box pairs a box loss runs on (no boolean indexing, no host synchronisation)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["one_hot_targets", "matched_gt_boxes", "masked_box_pairs"]


def one_hot_targets(labels: Tensor, positive: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """``(B, A, C)`` one-hot targets from labels ``(B, A)`` (rows of zeros for background / ignored priors),
    built with one scatter (no ``(B, A, C + 1)`` int64 intermediate)."""
    targets = torch.zeros(*labels.shape, num_classes, dtype=dtype, device=labels.device)
    index = labels.clamp(min=0, max=num_classes - 1).unsqueeze(-1)
    return targets.scatter_(-1, index, positive.unsqueeze(-1).to(dtype))


def matched_gt_boxes(gt_boxes: Tensor, matched_gt: Tensor) -> Tensor:
    """``(B, A, 4)``: the padded gt box ``gt_boxes (B, M, 4)`` each prior is matched to (``matched_gt (B, A)``;
    -1 = none gives gt 0, to be masked by the caller)."""
    index = matched_gt.clamp(min=0).unsqueeze(-1).expand(-1, -1, 4)
    return torch.gather(gt_boxes, 1, index)


def masked_box_pairs(pred: Tensor, target: Tensor, positive: Tensor) -> tuple[Tensor, Tensor]:
    """Replace the non-positive entries of ``pred``/``target`` ``(B, A, 4)`` by one fixed valid box.

    Lets a box loss run densely over all priors (no boolean indexing, no host sync) with finite values and
    exactly zero gradient at the non-positive priors; the caller still multiplies by a positive mask/weight.
    """
    dummy = pred.new_zeros(4)  # [0, 0, 1, 1] by fills: torch.tensor(..., device=cuda) would block the host
    dummy[2:] = 1.0
    dummy = dummy.expand_as(pred)
    mask = positive.unsqueeze(-1)
    return torch.where(mask, pred, dummy), torch.where(mask, target.to(pred.dtype), dummy)
