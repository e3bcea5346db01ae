"""Structures shared by the assigners, the detectors, the losses and the analyses: per-level prior layouts
(:mod:`.levels`) and training targets built from an assignment (:mod:`.targets`)."""

from .levels import level_index_for, level_matrix_for
from .targets import masked_box_pairs, matched_gt_boxes, one_hot_targets

__all__ = ["level_index_for", "level_matrix_for", "masked_box_pairs", "matched_gt_boxes", "one_hot_targets"]
