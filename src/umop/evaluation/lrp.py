"""Optimal Localisation-Recall-Precision error (oLRP) of Oksuz et al., TPAMI 2021.

"One Metric to Measure them All: Localisation Recall Precision (LRP) for Evaluating Visual Detection
Tasks", Eq. 2 (LRP) and Sec. 4.2 (oLRP). For one class, with detections ranked by score and the
threshold s kept at each detection's score in turn::

    LRP(s) = ( sum_TP (1 - IoU) / (1 - tau) + N_FP + N_FN ) / ( N_TP + N_FP + N_FN ),   tau = 0.5

    oLRP = min_s LRP(s);  at the minimising s:  loc = sum_TP (1 - IoU) / N_TP   (mean 1 - IoU, NOT divided
    by 1 - tau), FP = N_FP / (N_TP + N_FP), FN = N_FN / N_GT,  threshold = s.

Conventions of the authors' pycocotools (github.com/kemaloksuz/LRP-Error, ``cocoeval.py``):
- matching is COCO's greedy matching at IoU 0.5 on area range "all" with at most 100 detections per image
  and class; crowd ground truth and the detections matched to it are ignored (neither TP nor FP);
- a class without (non-ignored) ground truth has no oLRP (``-1.0`` here, as pycocotools' AP);
- a class with ground truth but no detection, or no true positive, has oLRP = FN = 1 and undefined
  loc / FP / threshold (NaN there; ``-1.0`` in umop's JSON);
- the minimum is taken over the thresholds at the detections' scores only (not "keep nothing"), the
  first one on ties (``np.argmin``); detections are ranked by score with a stable sort, in image order;
- the means over classes (moLRP and its components) skip the undefined values of each component.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["LRP_TAU", "optimal_lrp", "mean_over_classes", "LRP_KEYS"]

LRP_TAU = 0.5
LRP_KEYS = ("oLRP", "loc", "FP", "FN", "threshold")


def optimal_lrp(scores: np.ndarray, is_tp: np.ndarray, tp_ious: np.ndarray, num_gt: int,
                tau: float = LRP_TAU) -> dict[str, float]:
    """oLRP of one class from its matched detections (vectorised over the detections).

    Args:
        scores: (D,) scores of the class' evaluated, non-ignored detections, in the order that breaks score
            ties (image order, then score order within an image, as COCO's ``dtScores`` are concatenated).
        is_tp: (D,) bool, True where the detection is matched to a non-ignored ground-truth box.
        tp_ious: (D,) IoU with the matched box (read only where ``is_tp``).
        num_gt: number of non-ignored ground-truth boxes of the class.
        tau: the TP IoU threshold that normalises the localisation term (0.5).

    Returns:
        ``{"oLRP", "loc", "FP", "FN", "threshold"}``: all NaN when ``num_gt == 0`` (not measurable);
        oLRP = FN = 1 and loc = FP = threshold = NaN when no detection is a true positive.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    is_tp = np.asarray(is_tp, dtype=bool).reshape(-1)
    tp_ious = np.asarray(tp_ious, dtype=np.float64).reshape(-1)
    if not (scores.shape == is_tp.shape == tp_ious.shape):
        raise ValueError(f"scores {scores.shape}, is_tp {is_tp.shape} and tp_ious {tp_ious.shape} differ in shape")
    if num_gt < 0:
        raise ValueError(f"num_gt must be >= 0, got {num_gt}")
    nan = float("nan")
    if num_gt == 0:
        return dict.fromkeys(LRP_KEYS, nan)
    if not is_tp.any():
        return {"oLRP": 1.0, "loc": nan, "FP": nan, "FN": 1.0, "threshold": nan}
    order = np.argsort(-scores, kind="mergesort")
    tp = is_tp[order]
    num_tp = np.cumsum(tp)
    num_fp = np.cumsum(~tp)
    num_fn = num_gt - num_tp
    total_loc = np.cumsum(np.where(tp, 1.0 - tp_ious[order], 0.0))
    lrp = (total_loc / (1.0 - tau) + num_fp + num_fn) / (num_tp + num_fp + num_fn)
    best = int(np.argmin(lrp))
    with np.errstate(invalid="ignore", divide="ignore"):
        loc = total_loc[best] / num_tp[best]
    return {"oLRP": float(lrp[best]), "loc": float(loc),
            "FP": float(num_fp[best] / (num_tp[best] + num_fp[best])), "FN": float(num_fn[best] / num_gt),
            "threshold": float(scores[order][best])}


def mean_over_classes(values: Sequence[float]) -> float:
    """Mean of the defined (non-NaN, > -1) values, ``-1.0`` when none is defined (the authors' summarize)."""
    array = np.asarray(list(values), dtype=np.float64)
    array = array[~np.isnan(array)]
    array = array[array > -1]
    return float(array.mean()) if array.size else -1.0
