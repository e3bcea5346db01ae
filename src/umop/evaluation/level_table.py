"""Which pyramid level found each object: true positives, their IoU and false positives per level P3..P7.

Each detection carries the index of the pyramid level that produced it (``"level"`` in a COCO results entry,
``"levels"`` (K,) in a detector's output; 0 = P3). With COCO's own matches at IoU 0.5 (area "all", 100
detections per image and class, crowd boxes ignored; see :mod:`umop.evaluation.matches`) the table gives,
per level, the number of true positives, their mean IoU and the number of false positives, and per object
size range (COCO's small < 32², medium < 96², large; by the ground truth's ``area``) the recall and the
share of the objects found by each level. The level shares of a size range sum to its recall.
"""
from __future__ import annotations

import numpy as np

from .matches import CocoMatches

__all__ = ["SIZE_RANGES", "level_name", "level_table"]

SIZE_RANGES = {"small": (0.0, 32.0 ** 2), "medium": (32.0 ** 2, 96.0 ** 2), "large": (96.0 ** 2, np.inf),
               "all": (0.0, np.inf)}


def level_name(level: int) -> str:
    """``0 -> "P3"``: the FPN level index used by umop's detectors (P3..P7)."""
    return f"P{int(level) + 3}"


def level_table(matches: CocoMatches, row_ids: np.ndarray, levels_by_id: np.ndarray, gt_ids: np.ndarray,
                gt_areas: np.ndarray, gt_ignored: np.ndarray, num_levels: int = 5) -> dict:
    """Per-level counts of COCO's IoU-0.5 matches (vectorised over detections and boxes).

    Args:
        matches: COCO's matches (:func:`umop.evaluation.matches.read_matches`), N rows.
        row_ids: (N,) detection id of each row (:func:`~umop.evaluation.matches.reconstruct_evaluated_ids`).
        levels_by_id: (M + 1,) level of the detection with id ``j`` at index ``j`` (index 0 unused).
        gt_ids, gt_areas, gt_ignored: (G,) the ground-truth annotations' ids, ``area`` and crowd flags.
        num_levels: levels reported at least (P3..P7); more if a detection has a higher level.

    Returns:
        ``{"per_level": {"P3": {"num_tp", "mean_iou", "num_fp"}, ...},
        "recall_by_size": {"small"|"medium"|"large"|"all": {"num_gt", "recall", "found_by": {"P3": share}}}}``;
        ``mean_iou`` is -1.0 for a level without a true positive, ``recall`` -1.0 for a size without objects.
    """
    row_levels = levels_by_id[row_ids]
    if len(row_levels) and row_levels.min() < 0:
        raise ValueError("some evaluated detections have no 'level'")
    num_levels = max(num_levels, int(row_levels.max()) + 1 if len(row_levels) else 0)
    is_tp, is_fp = matches.is_tp, matches.is_fp
    num_tp = np.bincount(row_levels[is_tp], minlength=num_levels)
    iou_sum = np.bincount(row_levels[is_tp], weights=matches.iou[is_tp], minlength=num_levels)
    num_fp = np.bincount(row_levels[is_fp], minlength=num_levels)
    per_level = {}
    for level in range(num_levels):
        mean_iou = float(iou_sum[level] / num_tp[level]) if num_tp[level] else -1.0
        per_level[level_name(level)] = {"num_tp": int(num_tp[level]), "mean_iou": mean_iou,
                                        "num_fp": int(num_fp[level])}

    gt_ids = np.asarray(gt_ids, dtype=np.int64)
    order = np.argsort(gt_ids)
    found_level = np.full(len(gt_ids), -1, dtype=np.int64)  # in gt_ids order
    if is_tp.any():
        position = order[np.searchsorted(gt_ids[order], matches.gt_id[is_tp])]
        found_level[position] = row_levels[is_tp]
    areas = np.asarray(gt_areas, dtype=np.float64)
    counted = ~np.asarray(gt_ignored, dtype=bool)
    recall_by_size = {}
    for size, (low, high) in SIZE_RANGES.items():
        in_size = counted & (areas >= low) & (areas < high)
        total = int(in_size.sum())
        found = np.bincount(found_level[in_size & (found_level >= 0)], minlength=num_levels)
        recall_by_size[size] = {
            "num_gt": total,
            "recall": float(found.sum() / total) if total else -1.0,
            "found_by": {level_name(level): float(found[level] / total) if total else -1.0
                         for level in range(num_levels)},
        }
    return {"per_level": per_level, "recall_by_size": recall_by_size}
