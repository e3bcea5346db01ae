"""FCOS point assignment, batched over the images of a batch.

Tian et al., "FCOS: Fully Convolutional One-Stage Object Detection", ICCV 2019, Sec. 3.1-3.2, with the
"center sampling" improvement of the FCOS repository / mmdetection (``center_sample_radius=1.5``):

- a point ``(x, y)`` of level ``l`` (stride ``s_l``) is a candidate of a gt box when it lies inside the gt's
  *centre region*: the box of half-size ``radius * s_l`` around the gt centre, clipped to the gt box
  (without centre sampling: inside the gt box itself);
- its regression target ``(l*, t*, r*, b*)`` (FCOS Eq. 1) must satisfy
  ``lo_l <= max(l*, t*, r*, b*) <= hi_l`` with the scale ranges ``(-1, 64), (64, 128), (128, 256),
  (256, 512), (512, inf)`` of P3..P7 (FCOS Sec. 3.2);
- a point that is a candidate of several boxes takes the one of minimal area ("ambiguous samples").

Same arithmetic as mmdetection's ``FCOSHead._get_target_single`` (``>= lo``, ``<= hi``, strict ``> 0`` inside
tests, first index on area ties), on ``(B, A, M)`` tensors with no loop over images or points.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from .common import AssignResult, PaddedTargets, box_iou_batched

__all__ = ["FCOSAssigner", "FCOS_REGRESS_RANGES", "fcos_centerness"]

FCOS_REGRESS_RANGES: tuple[tuple[float, float], ...] = (
    (-1.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0), (512.0, math.inf))


def fcos_centerness(distances: Tensor) -> Tensor:
    """FCOS Eq. 3: ``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))``.

    ``distances``: ``(..., 4)`` ``(l, t, r, b)``, positive for points inside their box -> ``(...)``.
    Non-positive distances (points outside) give 0.
    """
    distances = distances.clamp(min=0)
    left_right = distances[..., 0::2]
    top_bottom = distances[..., 1::2]
    ratio = (left_right.min(dim=-1).values / left_right.max(dim=-1).values.clamp(min=1e-12)) * (
        top_bottom.min(dim=-1).values / top_bottom.max(dim=-1).values.clamp(min=1e-12))
    return ratio.sqrt()


class FCOSAssigner:
    """Batched FCOS assigner (centre sampling + scale ranges + min-area disambiguation).

    Args:
        num_classes: number of classes ``C`` (background label = ``C``).
        strides: stride of each level.
        regress_ranges: ``(lo, hi)`` of ``max(l*, t*, r*, b*)`` for each level.
        center_sampling: restrict positives to the centre region (mmdetection / FCOS repository improvement).
        center_sample_radius: half-size of the centre region in strides (1.5).
        virtual_anchor_scale: ``AssignResult.ious`` is the IoU of a ``scale * stride`` square centred on the
            point with its matched gt (for level statistics only; FCOS itself uses no IoU).

    The :class:`AssignResult` carries ``extras["bbox_targets"]`` ``(B, A, 4)`` (the matched gt box, zeros where
    none) and ``extras["centerness"]`` ``(B, A)`` (FCOS Eq. 3 target, 0 where none).
    """

    def __init__(
        self,
        num_classes: int,
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        regress_ranges: Sequence[tuple[float, float]] = FCOS_REGRESS_RANGES,
        center_sampling: bool = True,
        center_sample_radius: float = 1.5,
        virtual_anchor_scale: float = 8.0,
    ) -> None:
        if len(strides) != len(regress_ranges):
            raise ValueError(f"strides ({len(strides)}) and regress_ranges ({len(regress_ranges)}) must have one "
                             "entry per level")
        if center_sample_radius <= 0:
            raise ValueError(f"center_sample_radius must be > 0, got {center_sample_radius}")
        self.num_classes = num_classes
        self.strides = [int(s) for s in strides]
        self.regress_ranges = [(float(lo), float(hi)) for lo, hi in regress_ranges]
        self.center_sampling = center_sampling
        self.center_sample_radius = center_sample_radius
        self.virtual_anchor_scale = virtual_anchor_scale

    def _per_point(self, values: Sequence[float], num_points_per_level: list[int], device, dtype) -> Tensor:
        """``(A,)``: each level's value repeated over its points (fills, no host-to-device copy)."""
        return torch.cat([torch.full((count,), float(value), device=device, dtype=dtype)
                          for value, count in zip(values, num_points_per_level)])

    def __call__(self, points: Tensor, num_points_per_level: list[int], gt: PaddedTargets) -> AssignResult:
        """Assign ``points`` (``(A, 2)`` xy or ``(A, 4)`` zero-size boxes ``[x, y, x, y]``) to the padded gt.

        Args:
            points: all levels concatenated in level order.
            num_points_per_level: ``A_l`` per level, summing to ``A``; one entry per stride.
            gt: ``PaddedTargets`` with boxes ``(B, M, 4)``, labels ``(B, M)``, mask ``(B, M)``.
        Returns:
            :class:`AssignResult` with ``(B, A)`` labels / matched_gt / ious and the extras above.
        """
        gt_boxes, gt_labels, gt_mask = gt
        if points.ndim != 2 or points.shape[-1] not in (2, 4):
            raise ValueError(f"points must have shape (A, 2) or (A, 4), got {tuple(points.shape)}")
        if len(num_points_per_level) != len(self.strides):
            raise ValueError(f"num_points_per_level has {len(num_points_per_level)} levels, but the assigner "
                             f"has {len(self.strides)} strides")
        if sum(num_points_per_level) != points.shape[0]:
            raise ValueError(f"num_points_per_level {list(num_points_per_level)} sums to "
                             f"{sum(num_points_per_level)}, but points has {points.shape[0]} rows")
        dtype, device = gt_boxes.dtype, gt_boxes.device
        points = points.to(dtype)
        if points.shape[-1] == 4:
            points = (points[:, :2] + points[:, 2:]) / 2
        xs = points[None, :, None, 0]  # (1, A, 1)
        ys = points[None, :, None, 1]
        x1, y1, x2, y2 = (gt_boxes[:, None, :, i] for i in range(4))  # each (B, 1, M)

        # FCOS Eq. 1 regression targets of every point for every gt: (B, A, M, 4)
        distances = torch.stack((xs - x1, ys - y1, x2 - xs, y2 - ys), dim=-1)
        if self.center_sampling:
            radius = self._per_point([s * self.center_sample_radius for s in self.strides],
                                     num_points_per_level, device, dtype)[None, :, None]  # (1, A, 1)
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            cx1 = torch.maximum(cx - radius, x1)
            cy1 = torch.maximum(cy - radius, y1)
            cx2 = torch.minimum(cx + radius, x2)
            cy2 = torch.minimum(cy + radius, y2)
            centre_distances = torch.stack((xs - cx1, ys - cy1, cx2 - xs, cy2 - ys), dim=-1)
            inside = centre_distances.min(dim=-1).values > 0
        else:
            inside = distances.min(dim=-1).values > 0
        max_distance = distances.max(dim=-1).values  # (B, A, M)
        lower = self._per_point([lo for lo, _ in self.regress_ranges], num_points_per_level, device, dtype)
        upper = self._per_point([hi for _, hi in self.regress_ranges], num_points_per_level, device, dtype)
        in_range = (max_distance >= lower[None, :, None]) & (max_distance <= upper[None, :, None])
        candidate = inside & in_range & gt_mask[:, None, :]

        areas = ((x2 - x1) * (y2 - y1)).expand_as(max_distance)  # (B, A, M)
        areas = torch.where(candidate, areas, torch.full_like(areas, math.inf))
        min_area, best_gt = areas.min(dim=2)  # (B, A), first index on ties
        positive = torch.isfinite(min_area)

        matched_labels = torch.gather(gt_labels, 1, best_gt)
        labels = torch.where(positive, matched_labels, torch.full_like(matched_labels, self.num_classes))
        matched_gt = torch.where(positive, best_gt, torch.full_like(best_gt, -1))

        matched_boxes = torch.gather(gt_boxes, 1, best_gt.unsqueeze(-1).expand(-1, -1, 4))  # (B, A, 4)
        matched_boxes = torch.where(positive.unsqueeze(-1), matched_boxes, torch.zeros_like(matched_boxes))
        matched_distances = torch.gather(distances, 2, best_gt[..., None, None].expand(-1, -1, 1, 4)).squeeze(2)
        centerness = torch.where(positive, fcos_centerness(matched_distances), torch.zeros_like(min_area))

        half = self.virtual_anchor_scale / 2 * self._per_point(self.strides, num_points_per_level, device, dtype)
        virtual_boxes = torch.cat((points - half[:, None], points + half[:, None]), dim=1)  # (A, 4)
        virtual_iou = torch.gather(box_iou_batched(virtual_boxes, gt_boxes), 2, best_gt.unsqueeze(-1)).squeeze(-1)
        ious = torch.where(positive, virtual_iou, torch.zeros_like(virtual_iou))
        return AssignResult(labels, matched_gt, ious, list(num_points_per_level), self.num_classes,
                            extras={"bbox_targets": matched_boxes, "centerness": centerness})
