"""Box coders, broadcasting over any leading dimensions (``(..., 4)``).

- :class:`DeltaXYWHBoxCoder`: R-CNN deltas ``(dx, dy, dw, dh)`` (Girshick et al. 2014, Eq. 6-9) used by
  RetinaNet; same arithmetic as torchvision's ``BoxCoder`` (weights (1, 1, 1, 1) for RetinaNet), so decoded
  boxes are bit-identical to torchvision's.
- :class:`DistancePointCoder`: FCOS distances ``(l, t, r, b)`` from a point to the box sides (FCOS Eq. 1),
  optionally divided by a per-point normaliser (the stride).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

__all__ = ["DeltaXYWHBoxCoder", "DistancePointCoder"]


class DeltaXYWHBoxCoder:
    """Encode boxes relative to anchors as ``(dx, dy, dw, dh) * weights``.

    Args:
        weights: ``(wx, wy, ww, wh)``, (1, 1, 1, 1) for RetinaNet (torchvision; mmdetection ``target_stds``
            (1, 1, 1, 1)).
        bbox_xform_clip: upper clamp of ``dw``, ``dh`` before ``exp`` (log(1000 / 16), torchvision).
    """

    def __init__(
        self, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0), bbox_xform_clip: float = math.log(1000.0 / 16)
    ) -> None:
        self.weights = tuple(float(w) for w in weights)
        self.bbox_xform_clip = bbox_xform_clip

    def encode(self, boxes: Tensor, anchors: Tensor) -> Tensor:
        """``boxes``, ``anchors``: ``(..., 4)`` xyxy (broadcastable) -> deltas ``(..., 4)``."""
        wx, wy, ww, wh = self.weights
        anchor_w = anchors[..., 2] - anchors[..., 0]
        anchor_h = anchors[..., 3] - anchors[..., 1]
        anchor_cx = anchors[..., 0] + 0.5 * anchor_w
        anchor_cy = anchors[..., 1] + 0.5 * anchor_h
        box_w = boxes[..., 2] - boxes[..., 0]
        box_h = boxes[..., 3] - boxes[..., 1]
        box_cx = boxes[..., 0] + 0.5 * box_w
        box_cy = boxes[..., 1] + 0.5 * box_h
        dx = wx * (box_cx - anchor_cx) / anchor_w
        dy = wy * (box_cy - anchor_cy) / anchor_h
        dw = ww * torch.log(box_w / anchor_w)
        dh = wh * torch.log(box_h / anchor_h)
        return torch.stack((dx, dy, dw, dh), dim=-1)

    def decode(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        """``deltas``, ``anchors``: ``(..., 4)`` (broadcastable) -> boxes ``(..., 4)`` xyxy."""
        anchors = anchors.to(deltas.dtype)
        wx, wy, ww, wh = self.weights
        widths = anchors[..., 2] - anchors[..., 0]
        heights = anchors[..., 3] - anchors[..., 1]
        ctr_x = anchors[..., 0] + 0.5 * widths
        ctr_y = anchors[..., 1] + 0.5 * heights
        dx = deltas[..., 0] / wx
        dy = deltas[..., 1] / wy
        dw = torch.clamp(deltas[..., 2] / ww, max=self.bbox_xform_clip)
        dh = torch.clamp(deltas[..., 3] / wh, max=self.bbox_xform_clip)
        pred_ctr_x = dx * widths + ctr_x
        pred_ctr_y = dy * heights + ctr_y
        half_w = 0.5 * (torch.exp(dw) * widths)
        half_h = 0.5 * (torch.exp(dh) * heights)
        return torch.stack((pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h), dim=-1)


class DistancePointCoder:
    """FCOS: distances ``(l, t, r, b)`` from a point -> box (FCOS Eq. 1). Decode only: the FCOS assigner
    computes the distance targets, and the box losses of FCOS / VFNet work on decoded boxes.

    ``points``: ``(..., 2)`` ``(x, y)`` or ``(..., 4)`` zero-size boxes ``[x, y, x, y]`` (the prior format of
    :class:`umop.models.anchors.PointGenerator`); ``normalizer``: optional ``(...,)`` divisor (stride) of
    the distances (``norm_on_bbox`` in FCOS improvements).
    """

    @staticmethod
    def _xy(points: Tensor) -> tuple[Tensor, Tensor]:
        if points.shape[-1] == 4:
            return 0.5 * (points[..., 0] + points[..., 2]), 0.5 * (points[..., 1] + points[..., 3])
        return points[..., 0], points[..., 1]

    def decode(self, distances: Tensor, points: Tensor, normalizer: Optional[Tensor] = None) -> Tensor:
        """distances ``(..., 4)`` -> boxes ``(..., 4)`` xyxy."""
        if normalizer is not None:
            distances = distances * normalizer.unsqueeze(-1)
        x, y = self._xy(points.to(distances.dtype))
        return torch.stack((x - distances[..., 0], y - distances[..., 1], x + distances[..., 2], y + distances[..., 3]), dim=-1)
