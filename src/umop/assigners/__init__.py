"""Batched, geometry-only target assignment (no predictions needed).

Every assigner is a callable ``(priors (A, 4), num_priors_per_level, gt: PaddedTargets) -> AssignResult``:
:class:`MaxIoUAssigner` (RetinaNet), :class:`ATSSAssigner` (ATSS, VFNet), :class:`FCOSAssigner` (FCOS).
"""

from .atss import ATSSAssigner
from .common import AssignResult, PaddedTargets, box_iou_batched, pad_targets, validate_targets
from .fcos import FCOSAssigner
from .max_iou import MaxIoUAssigner

__all__ = ["AssignResult", "PaddedTargets", "MaxIoUAssigner", "ATSSAssigner", "FCOSAssigner", "box_iou_batched",
           "pad_targets", "validate_targets"]
