"""Adaptive Training Sample Selection (ATSS), batched over the images of a batch.

Zhang et al., "Bridging the Gap Between Anchor-based and Anchor-free Detection via Adaptive Training Sample
Selection", CVPR 2020, Sec. 3.2 and Algorithm 1. For every ground-truth box ``g``:

1. on every pyramid level, take the ``topk`` (9) anchors whose centres are closest (L2) to the centre of ``g``:
   the candidates ``C_g`` (``topk * L`` anchors);
2. the IoU threshold of ``g`` is ``t_g = mean(IoU(C_g, g)) + std(IoU(C_g, g))`` (unbiased std, as
   ``torch.std`` in mmdetection's ``ATSSAssigner``);
3. a candidate is positive for ``g`` when its IoU is ``>= t_g`` and its centre lies inside ``g`` (every side
   distance ``> 0.01``, mmdetection's margin);
4. an anchor that is positive for several boxes takes the one of highest IoU.

Priors outside their image's own padded size (``prior_valid`` False, mmdetection's valid flags) are left out
of step 1 (mmdetection passes ATSS only the valid anchors, so a level may offer fewer than ``topk``), and so
of the mean and std of step 2; they are labelled ``-1`` (ignored, loss weight 0).

Everything is computed on ``(B, A_l, M)`` tensors: one ``topk`` per level (a loop over the 5 levels), no loop
over images or anchors and no host synchronisation.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .common import AssignResult, PaddedTargets, box_iou_batched, check_prior_valid

__all__ = ["ATSSAssigner"]

_NEG_INF = -1e8  # mmdetection's -INF for "not a positive of this gt"


class ATSSAssigner:
    """Batched ATSS assigner.

    Args:
        num_classes: number of classes ``C`` (background label = ``C``).
        topk: candidates per level and per gt box (ATSS paper: 9).
        center_margin: a candidate's centre must be farther than this from every side of the gt box
            (mmdetection: 0.01).
    """

    def __init__(self, num_classes: int, topk: int = 9, center_margin: float = 0.01) -> None:
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        self.num_classes = num_classes
        self.topk = topk
        self.center_margin = center_margin

    def __call__(self, anchors: Tensor, num_anchors_per_level: list[int], gt: PaddedTargets, *,
                 prior_valid: Optional[Tensor] = None) -> AssignResult:
        """Assign ``anchors (A, 4)`` xyxy (shared by the batch) to the padded gt.

        Args:
            anchors: ``(A, 4)``, all levels concatenated in level order.
            num_anchors_per_level: ``A_l`` per level, summing to ``A``.
            gt: ``PaddedTargets`` with boxes ``(B, M, 4)``, labels ``(B, M)``, mask ``(B, M)``.
            prior_valid: optional ``(B, A)`` bool, False for the anchors outside their image.
        Returns:
            :class:`AssignResult`: labels / matched_gt / ious ``(B, A)``; only invalid anchors are ignored (-1).
        """
        gt_boxes, gt_labels, gt_mask = gt
        if anchors.ndim != 2 or anchors.shape[-1] != 4:
            raise ValueError(f"anchors must have shape (A, 4), got {tuple(anchors.shape)}")
        if sum(num_anchors_per_level) != anchors.shape[0]:
            raise ValueError(f"num_anchors_per_level {list(num_anchors_per_level)} sums to "
                             f"{sum(num_anchors_per_level)}, but anchors has {anchors.shape[0]} rows")
        check_prior_valid(prior_valid, gt_boxes.shape[0], anchors.shape[0])
        anchors = anchors.to(gt_boxes.dtype)
        overlaps = box_iou_batched(anchors, gt_boxes)  # (B, A, M)

        anchor_centres = (anchors[:, :2] + anchors[:, 2:]) / 2  # (A, 2)
        gt_centres = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2  # (B, M, 2)

        # Step 1: top-k closest anchors per level -> candidate indices (B, K, M) into [0, A).
        candidates = []
        start = 0
        for count in num_anchors_per_level:
            if count == 0:
                continue
            level_centres = anchor_centres[start:start + count]  # (A_l, 2)
            # squared L2 distance (same order as the distance itself), exact unlike cdist's matmul path
            offsets = level_centres[None, :, None, :] - gt_centres[:, None, :, :]  # (B, A_l, M, 2)
            distances = offsets.pow(2).sum(dim=-1)  # (B, A_l, M)
            if prior_valid is not None:  # invalid anchors last; dropped below when they are picked
                distances = distances.masked_fill(~prior_valid[:, start:start + count, None], float("inf"))
            k = min(self.topk, count)
            _, index = distances.topk(k, dim=1, largest=False)  # (B, k, M)
            candidates.append(index + start)
            start += count
        candidate_index = torch.cat(candidates, dim=1)  # (B, K, M)
        num_candidates = candidate_index.shape[1]

        # Step 2: per-gt adaptive IoU threshold = mean + std of the candidates' IoU.
        candidate_ious = torch.gather(overlaps, 1, candidate_index)  # (B, K, M)
        if prior_valid is None:
            threshold = candidate_ious.mean(dim=1, keepdim=True)
            if num_candidates > 1:
                threshold = threshold + candidate_ious.std(dim=1, keepdim=True)  # unbiased, as torch.std
            is_positive = candidate_ious >= threshold  # (B, K, M)
        else:
            # mean + unbiased std over each (image, gt)'s valid candidates only
            candidate_valid = torch.gather(prior_valid[:, :, None].expand_as(overlaps), 1, candidate_index)
            weight = candidate_valid.to(candidate_ious.dtype)
            count = weight.sum(dim=1, keepdim=True)  # (B, 1, M)
            mean = (candidate_ious * weight).sum(dim=1, keepdim=True) / count.clamp(min=1)
            variance = ((candidate_ious - mean).pow(2) * weight).sum(dim=1, keepdim=True) / (count - 1).clamp(min=1)
            threshold = mean + variance.sqrt()
            is_positive = (candidate_ious >= threshold) & candidate_valid

        # Step 3: the candidate's centre must lie inside the gt box.
        cx = anchor_centres[:, 0][candidate_index]  # (B, K, M)
        cy = anchor_centres[:, 1][candidate_index]
        side_distances = torch.stack((cx - gt_boxes[:, None, :, 0], cy - gt_boxes[:, None, :, 1],
                                      gt_boxes[:, None, :, 2] - cx, gt_boxes[:, None, :, 3] - cy), dim=-1)
        is_positive = is_positive & (side_distances.min(dim=-1).values > self.center_margin) & gt_mask[:, None, :]

        # Step 4: scatter back to (B, A, M); an anchor positive for several gts keeps its max-IoU gt.
        positive_matrix = torch.zeros_like(overlaps, dtype=torch.bool).scatter_(1, candidate_index, is_positive)
        masked = torch.where(positive_matrix, overlaps, torch.full_like(overlaps, _NEG_INF))
        best_iou, best_gt = masked.max(dim=2)  # (B, A)
        positive = positive_matrix.any(dim=2)

        matched_labels = torch.gather(gt_labels, 1, best_gt)
        labels = torch.where(positive, matched_labels, torch.full_like(matched_labels, self.num_classes))
        matched_gt = torch.where(positive, best_gt, torch.full_like(best_gt, -1))
        ious = torch.where(positive, best_iou, torch.zeros_like(best_iou))
        if prior_valid is not None:
            labels = torch.where(prior_valid, labels, torch.full_like(labels, -1))
        max_ious = overlaps.masked_fill(~gt_mask[:, None, :], 0.0).amax(dim=2)  # negatives included
        if prior_valid is not None:
            max_ious = torch.where(prior_valid, max_ious, torch.zeros_like(max_ious))
        return AssignResult(labels, matched_gt, ious, list(num_anchors_per_level), self.num_classes,
                            prior_valid=prior_valid, max_ious=max_ious)
