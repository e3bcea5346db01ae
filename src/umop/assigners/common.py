"""Shared pieces of the batched assigners: padded ground truth, validation, batched IoU, AssignResult."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, NamedTuple, Optional, Sequence

import torch
from torch import Tensor

__all__ = ["AssignResult", "PaddedTargets", "pad_targets", "validate_targets", "box_iou_batched",
           "check_prior_valid"]


class PaddedTargets(NamedTuple):
    """Ground truth of a batch padded to ``M = max(1, max boxes per image)``.

    boxes ``(B, M, 4)`` xyxy (zeros at padding), labels ``(B, M)`` long (-1 at padding),
    mask ``(B, M)`` bool (False = padding). Unpacks as ``gt_boxes, gt_labels, gt_mask``.
    """

    boxes: Tensor
    labels: Tensor
    mask: Tensor


@dataclass
class AssignResult:
    """Result of a geometry-only assignment of a batch.

    labels: ``(B, A)`` long, class in ``[0, C)``, ``C`` = background, ``-1`` = ignore.
    matched_gt: ``(B, A)`` long index into the padded gt, ``-1`` where none.
    ious: ``(B, A)`` float IoU of each prior with its matched gt (0 where none / not meaningful).
    num_anchors_per_level: anchors (priors) per level, summing to ``A``.
    extras: assigner-specific tensors (e.g. FCOS centerness targets), keyed by name.
    prior_valid: ``(B, A)`` bool, the priors inside their image's own padded size (mmdetection's valid
        flags; the others are labelled ``-1``), or ``None`` when every prior of the batch counts (FCOS, or
        an assignment made without image sizes).
    max_ious: ``(B, A)`` float, each prior box's largest IoU with any ground truth of its image, negatives
        included (mmdetection's ``MaxIoUAssigner`` ``max_overlaps``; what IoU-balanced sampling bins the
        negatives by); 0 without ground truth and at invalid priors; ``None`` for point priors (FCOS).
    """

    labels: Tensor
    matched_gt: Tensor
    ious: Tensor
    num_anchors_per_level: list[int]
    num_classes: int
    extras: dict[str, Tensor] = field(default_factory=dict)
    prior_valid: Optional[Tensor] = None
    max_ious: Optional[Tensor] = None

    @property
    def positive_mask(self) -> Tensor:
        """``(B, A)`` bool: prior assigned to an object."""
        return (self.labels >= 0) & (self.labels < self.num_classes)

    @property
    def valid_mask(self) -> Tensor:
        """``(B, A)`` bool: prior not ignored (positive or background)."""
        return self.labels >= 0


def check_prior_valid(prior_valid: Optional[Tensor], batch: int, num_priors: int) -> None:
    """``ValueError`` unless ``prior_valid`` is ``None`` or a ``(B, A)`` bool tensor."""
    if prior_valid is None:
        return
    if prior_valid.dtype != torch.bool or tuple(prior_valid.shape) != (batch, num_priors):
        raise ValueError(f"prior_valid must be a ({batch}, {num_priors}) bool tensor, got "
                         f"{tuple(prior_valid.shape)} {prior_valid.dtype}")


def validate_targets(targets: Sequence[Mapping[str, Tensor]], num_classes: Optional[int] = None) -> None:
    """Raise ``ValueError`` naming the image index for malformed targets.

    Checks (one host sync for the whole batch in the common, valid case): ``boxes`` is ``(N, 4)`` and finite,
    every box has positive width and height, ``labels`` is ``(N,)`` integer in ``[0, num_classes)``.
    Images with zero boxes are valid (background only).
    """
    if not isinstance(targets, (list, tuple)):
        raise ValueError(f"targets must be a list of dicts, got {type(targets).__name__}")
    for index, target in enumerate(targets):
        if not isinstance(target, Mapping) or "boxes" not in target or "labels" not in target:
            raise ValueError(f"targets[{index}] must be a dict with 'boxes' and 'labels'")
        boxes, labels = target["boxes"], target["labels"]
        if not isinstance(boxes, Tensor) or boxes.ndim != 2 or boxes.shape[-1] != 4:
            raise ValueError(f"targets[{index}]['boxes'] must be a (N, 4) tensor, got {getattr(boxes, 'shape', type(boxes))}")
        if not isinstance(labels, Tensor) or labels.ndim != 1 or labels.shape[0] != boxes.shape[0]:
            raise ValueError(
                f"targets[{index}]['labels'] must be a ({boxes.shape[0]},) tensor, got {getattr(labels, 'shape', type(labels))}"
            )
        if labels.is_floating_point() or labels.is_complex():
            raise ValueError(f"targets[{index}]['labels'] must be an integer tensor, got {labels.dtype}")
    all_boxes = torch.cat([t["boxes"].float() for t in targets]) if targets else torch.zeros(0, 4)
    all_labels = torch.cat([t["labels"].long().to(all_boxes.device) for t in targets]) if targets else torch.zeros(0)
    if all_boxes.numel() == 0:
        return
    upper = num_classes if num_classes is not None else torch.iinfo(torch.long).max
    bad_box = ~torch.isfinite(all_boxes).all(dim=1) | (all_boxes[:, 2] <= all_boxes[:, 0]) | (all_boxes[:, 3] <= all_boxes[:, 1])
    bad_label = (all_labels < 0) | (all_labels >= upper)
    if not bool((bad_box | bad_label.to(bad_box.device)).any()):
        return
    # Slow path, only on error: find the first offending image.
    for index, target in enumerate(targets):
        boxes = target["boxes"].float()
        labels = target["labels"]
        if not torch.isfinite(boxes).all():
            raise ValueError(f"targets[{index}]['boxes'] contains NaN or inf")
        bad = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
        if bad.any():
            box = boxes[bad][0].tolist()
            raise ValueError(f"targets[{index}]['boxes'] has a box with zero or negative size: {box}")
        bad = (labels < 0) | (labels >= upper)
        if bad.any():
            raise ValueError(
                f"targets[{index}]['labels'] has label {int(labels[bad][0])} outside [0, {num_classes})"
            )


def pad_targets(targets: Sequence[Mapping[str, Tensor]], device: Optional[torch.device | str] = None) -> PaddedTargets:
    """Pad per-image targets to ``(B, M, ...)`` tensors (``M >= 1`` so reductions over M are defined).

    Args:
        targets: list of ``{"boxes": (N_i, 4) xyxy, "labels": (N_i,) long}``.
        device: target device (default: the device of the first boxes tensor).
    """
    if len(targets) == 0:
        raise ValueError("targets must contain at least one image")
    device = torch.device(device) if device is not None else targets[0]["boxes"].device
    counts = [int(t["boxes"].shape[0]) for t in targets]
    batch, max_boxes = len(targets), max(1, max(counts))
    boxes = torch.zeros(batch, max_boxes, 4, dtype=torch.float32, device=device)
    labels = torch.full((batch, max_boxes), -1, dtype=torch.long, device=device)
    mask = torch.zeros(batch, max_boxes, dtype=torch.bool, device=device)
    for index, (target, count) in enumerate(zip(targets, counts)):  # copies and fills: no host sync
        if count:
            boxes[index, :count] = target["boxes"].to(device=device, dtype=torch.float32)
            labels[index, :count] = target["labels"].to(device=device, dtype=torch.long)
            mask[index, :count] = True
    return PaddedTargets(boxes, labels, mask)


def box_iou_batched(priors: Tensor, gt_boxes: Tensor) -> Tensor:
    """IoU of every prior with every gt box of each image, by broadcasting.

    Args:
        priors: ``(A, 4)`` (shared by the batch) or ``(B, A, 4)`` xyxy.
        gt_boxes: ``(B, M, 4)`` xyxy.
    Returns:
        ``(B, A, M)`` IoU (same arithmetic as ``torchvision.ops.box_iou``).
    """
    if priors.ndim == 2:
        priors = priors.unsqueeze(0)
    area_priors = (priors[..., 2] - priors[..., 0]) * (priors[..., 3] - priors[..., 1])  # (B|1, A)
    area_gt = (gt_boxes[..., 2] - gt_boxes[..., 0]) * (gt_boxes[..., 3] - gt_boxes[..., 1])  # (B, M)
    left_top = torch.max(priors[:, :, None, :2], gt_boxes[:, None, :, :2])
    right_bottom = torch.min(priors[:, :, None, 2:], gt_boxes[:, None, :, 2:])
    wh = (right_bottom - left_top).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_priors[:, :, None] + area_gt[:, None, :] - inter
    return inter / union
