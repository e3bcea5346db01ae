"""RetinaNet max-IoU assignment, batched over images (RetinaNet Sec. 4 "Anchors"; Faster R-CNN Sec. 3.1.2).

An anchor is positive when its best IoU with a gt box is ``>= pos_iou_thr`` (0.5), background when it is
``< neg_iou_thr`` (0.4), ignored in between. With ``low_quality_matches``, every anchor that reaches the
highest IoU of some gt box (ties included) is made positive as well; as in torchvision's
``Matcher.set_low_quality_matches_`` it is matched to its *own* best gt, which may be another box. So a gt
box is not guaranteed an anchor: when each of its best anchors overlaps another box more, it gets none (3 of
the 122 boxes of coco128 in the comparison of issue 9). mmdetection's ``gt_max_assign_all`` rule gives the
anchor to the box it rescues instead, see docs/DIFFERENCES.md.

Priors outside their image's own padded size (``prior_valid`` False, mmdetection's valid flags) take no
part: they are neither any gt's best anchor nor anyone's positive, and are labelled ``-1`` (ignored, loss
weight 0), as mmdetection's ``AnchorHead`` gives them label weight 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from typing import Optional

from .common import AssignResult, PaddedTargets, box_iou_batched, check_prior_valid

__all__ = ["MaxIoUAssigner"]


class MaxIoUAssigner:
    """Batched max-IoU assigner.

    Args:
        num_classes: number of classes ``C`` (background label = ``C``).
        pos_iou_thr: IoU at or above which an anchor is positive.
        neg_iou_thr: IoU below which an anchor is background (between: ignored, label -1).
        low_quality_matches: rescue, for each gt, the anchors of highest IoU with it.
        min_pos_iou: a gt's best IoU must exceed this for the rescue (0: a gt that touches no anchor
            at all rescues nothing, unlike torchvision which would then match every anchor).
    """

    def __init__(
        self,
        num_classes: int,
        pos_iou_thr: float = 0.5,
        neg_iou_thr: float = 0.4,
        low_quality_matches: bool = True,
        min_pos_iou: float = 0.0,
    ) -> None:
        if not 0.0 <= neg_iou_thr <= pos_iou_thr <= 1.0:
            raise ValueError(f"need 0 <= neg_iou_thr ({neg_iou_thr}) <= pos_iou_thr ({pos_iou_thr}) <= 1")
        self.num_classes = num_classes
        self.pos_iou_thr = pos_iou_thr
        self.neg_iou_thr = neg_iou_thr
        self.low_quality_matches = low_quality_matches
        self.min_pos_iou = min_pos_iou

    def __call__(self, anchors: Tensor, num_anchors_per_level: list[int], gt: PaddedTargets, *,
                 prior_valid: Optional[Tensor] = None) -> AssignResult:
        """Assign ``anchors (A, 4)`` (shared by the batch) to the padded gt ``(B, M, ...)``.

        ``prior_valid``: optional ``(B, A)`` bool, False for the anchors outside their image (label -1).
        Returns an :class:`AssignResult` with ``(B, A)`` labels / matched_gt / ious. No host sync.
        """
        gt_boxes, gt_labels, gt_mask = gt
        check_prior_valid(prior_valid, gt_boxes.shape[0], anchors.shape[0])
        ious = box_iou_batched(anchors, gt_boxes)  # (B, A, M)
        usable = gt_mask[:, None, :] if prior_valid is None else gt_mask[:, None, :] & prior_valid[:, :, None]
        ious = torch.where(usable, ious, torch.full_like(ious, -1.0))
        best_iou, best_gt = ious.max(dim=2)  # (B, A)

        positive = best_iou >= self.pos_iou_thr
        if self.low_quality_matches:
            gt_best_iou = ious.max(dim=1, keepdim=True).values  # (B, 1, M)
            rescuable = gt_mask[:, None, :] & (gt_best_iou > self.min_pos_iou)
            positive = positive | ((ious == gt_best_iou) & rescuable).any(dim=2)
        ignore = ~positive & (best_iou >= self.neg_iou_thr)
        if prior_valid is not None:
            positive = positive & prior_valid
            ignore = ignore | ~prior_valid

        matched_labels = torch.gather(gt_labels, 1, best_gt)  # (B, A)
        background = torch.full_like(matched_labels, self.num_classes)
        labels = torch.where(positive, matched_labels, background)
        labels = torch.where(ignore, torch.full_like(labels, -1), labels)
        matched_gt = torch.where(positive, best_gt, torch.full_like(best_gt, -1))
        matched_iou = torch.where(positive, best_iou, torch.zeros_like(best_iou))
        return AssignResult(labels, matched_gt, matched_iou, list(num_anchors_per_level), self.num_classes,
                            prior_valid=prior_valid, max_ious=best_iou.clamp(min=0))
