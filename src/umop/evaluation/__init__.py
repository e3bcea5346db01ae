"""COCO metrics for detections (``faster-coco-eval``) and COCO results json export."""

from .coco import METRIC_NAMES, detections_to_coco_results, evaluate_coco, evaluate_detections, targets_to_coco_dict

__all__ = ["METRIC_NAMES", "detections_to_coco_results", "evaluate_coco", "evaluate_detections",
           "targets_to_coco_dict"]
