"""COCO metrics for detections (``faster-coco-eval``), optimal LRP (Oksuz et al. 2021), per-level table,
PR / F1 curves and confusion matrix, and COCO results json export."""

from .coco import (METRIC_NAMES, detections_to_coco_results, evaluate_coco, evaluate_detections, lrp_thresholds,
                   targets_to_coco_dict)
from .lrp import mean_over_classes, optimal_lrp

__all__ = ["METRIC_NAMES", "detections_to_coco_results", "evaluate_coco", "evaluate_detections", "lrp_thresholds",
           "mean_over_classes", "optimal_lrp", "targets_to_coco_dict"]
