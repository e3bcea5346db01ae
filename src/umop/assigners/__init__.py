"""Batched, geometry-only target assignment (no predictions needed).

Every assigner is a callable ``(priors (A, 4), num_priors_per_level, gt: PaddedTargets) -> AssignResult``.
"""

from .common import AssignResult, PaddedTargets, box_iou_batched, pad_targets, validate_targets
from .max_iou import MaxIoUAssigner

__all__ = ["AssignResult", "PaddedTargets", "MaxIoUAssigner", "box_iou_batched", "pad_targets", "validate_targets"]
