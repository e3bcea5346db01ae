"""COCO's own matches at IoU 0.5, read back from ``faster-coco-eval`` (no re-implementation of the matching).

After ``COCOeval_faster.evaluate()`` (which computed the IoUs and loaded the annotations into its C++
datasets), faster-coco-eval's C++ ``COCOevalEvaluateImages`` is run once more, for the single IoU threshold
0.5 and the area range "all" (a 40th of the matching work of the AP evaluation, the same IoUs and
annotations). It returns one ``ImageEvaluation`` per (category, image), the equivalent of pycocotools'
``evalImgs``, whose pickle state (faster-coco-eval 1.8, ``csrc/faster_eval_api/faster_eval_api.cpp``) is::

    (detection_matches (D,) matched gt id or 0, ground_truth_matches (G,) matched dt id or 0,
     detection_scores (D,) sorted high to low, ground_truth_ignores (G,), detection_ignores (D,),
     matched_annotations [(dt_id, gt_id, iou), ...] in detection order)

for the image's top ``maxDets[-1]`` detections of that class (stable sort by score). This is what LRP
(Oksuz et al. 2021) and the per-level table need. The layout is checked on every call (sizes, and the matched
ids against the detections' order reconstructed from the results) so that a changed layout fails loudly
instead of giving wrong numbers.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["CocoMatches", "read_matches", "reconstruct_evaluated_ids"]


@dataclass
class CocoMatches:
    """Evaluated detections of every (category, image) at IoU 0.5, area "all", in COCO's order.

    Rows are ordered by category index, then image index (``params.imgIds`` order), then rank by score within
    the image, i.e. the order in which pycocotools' ``accumulate`` concatenates ``dtScores``.

    Attributes:
        category: (N,) int64 index into ``category_ids``.
        image: (N,) int64 index into ``image_ids``.
        score: (N,) float64.
        gt_id: (N,) int64 id of the matched ground-truth annotation, 0 when unmatched.
        dt_id: (N,) int64 id of the detection where matched (0 elsewhere: COCO keeps no id of a false positive).
        iou: (N,) float64 IoU with the matched box (0 when unmatched).
        ignored: (N,) bool, matched to an ignored (crowd) box: neither TP nor FP.
        num_gt: (K,) int64 non-ignored ground-truth boxes per category.
        category_ids, image_ids: the evaluated COCO ids.
    """

    category: np.ndarray
    image: np.ndarray
    score: np.ndarray
    gt_id: np.ndarray
    dt_id: np.ndarray
    iou: np.ndarray
    ignored: np.ndarray
    num_gt: np.ndarray
    category_ids: list[int]
    image_ids: list[int]

    @property
    def is_tp(self) -> np.ndarray:
        """(N,) bool: matched to a non-ignored ground-truth box."""
        return (self.gt_id != 0) & ~self.ignored

    @property
    def is_fp(self) -> np.ndarray:
        """(N,) bool: unmatched and not ignored."""
        return (self.gt_id == 0) & ~self.ignored


def _layout_error(detail: str) -> RuntimeError:
    import faster_coco_eval

    return RuntimeError(f"faster-coco-eval {faster_coco_eval.__version__}: unexpected ImageEvaluation layout "
                        f"({detail}); umop was written against faster-coco-eval 1.8")


def _evaluate_at_iou_05(evaluator) -> list:
    """faster-coco-eval's C++ per-image matching for IoU 0.5, area "all", ``maxDets[-1]`` detections."""
    import faster_coco_eval.faster_eval_api_cpp as cpp

    params = evaluator._paramsEval
    category_ids = params.catIds if params.useCats else [-1]
    ious = [[evaluator.ious[image_id, category_id] for category_id in category_ids] for image_id in params.imgIds]
    evaluations = cpp.COCOevalEvaluateImages([[0.0, 1e5 ** 2]], int(params.maxDets[-1]), [0.5], ious,
                                             evaluator.gt_dataset, evaluator.dt_dataset, params.imgIds,
                                             params.catIds, bool(params.useCats))
    return evaluations


def read_matches(evaluator) -> CocoMatches:
    """The IoU-0.5, area-"all" matches of an evaluated ``COCOeval_faster`` (``evaluate()`` has run).

    A Python loop over the (category, image) evaluations, as pycocotools' ``accumulate``; no numpy work per
    entry: lists are extended in the loop and converted to arrays once.
    """
    params = getattr(evaluator, "_paramsEval", None)
    if not params or not getattr(evaluator, "ious", None) and params.imgIds:
        raise ValueError("evaluate() must run before the matches are read")
    if not params.useCats:
        raise ValueError("the matches are read per category (params.useCats must be 1)")
    evaluations = _evaluate_at_iou_05(evaluator)
    num_images, num_areas, num_thresholds = len(params.imgIds), 1, 1
    category_ids = [int(c) for c in params.catIds]
    if len(evaluations) != len(category_ids) * num_areas * num_images:
        raise _layout_error(f"{len(evaluations)} evaluations for {len(category_ids)} categories x {num_areas} "
                            f"areas x {num_images} images")
    # Plain list appends in the loop, one numpy conversion after it: per-entry numpy calls would cost more than
    # COCO's own evaluation on 5,000 images x 80 classes.
    counts: list[int] = []
    entries: list[int] = []
    scores: list[float] = []
    gt_ids: list[int] = []
    ignored: list[bool] = []
    first_matches: list[tuple] = []
    num_gt = np.zeros(len(category_ids), dtype=np.int64)
    for k in range(len(category_ids)):
        base = k * num_areas * num_images  # area "all" is index 0
        for i in range(num_images):
            state = evaluations[base + i].__getstate__()
            if len(state) != 6:
                raise _layout_error(f"state of {len(state)} fields")
            det_matches, _, det_scores, gt_ignores, det_ignores, matched = state
            if gt_ignores:
                num_gt[k] += len(gt_ignores) - sum(gt_ignores)
            num_dets = len(det_scores)
            if not num_dets:
                continue
            if len(det_matches) != num_thresholds * num_dets or len(det_ignores) != num_thresholds * num_dets:
                raise _layout_error(f"{len(det_matches)} detection matches for {num_dets} detections")
            row = det_matches[:num_dets]
            counts.append(num_dets)
            entries.append(k * num_images + i)
            scores.extend(det_scores)
            gt_ids.extend(row)
            ignored.extend(det_ignores[:num_dets])
            first_matches.extend(matched[:num_dets - row.count(0)])  # the first threshold's come first
    entry = np.repeat(np.asarray(entries, dtype=np.int64), np.asarray(counts, dtype=np.int64))
    gt_id = np.asarray(gt_ids, dtype=np.int64)
    is_matched = gt_id != 0
    first = np.asarray(first_matches, dtype=np.float64).reshape(-1, 3)
    if len(first) != int(is_matched.sum()) or not np.array_equal(first[:, 1].astype(np.int64), gt_id[is_matched]):
        raise _layout_error("matched annotations disagree with the detection matches")
    dt_id = np.zeros(len(gt_id), dtype=np.int64)
    iou = np.zeros(len(gt_id), dtype=np.float64)
    dt_id[is_matched] = first[:, 0].astype(np.int64)
    iou[is_matched] = first[:, 2]
    return CocoMatches(category=entry // num_images, image=entry % num_images,
                       score=np.asarray(scores, dtype=np.float64), gt_id=gt_id, dt_id=dt_id, iou=iou,
                       ignored=np.asarray(ignored, dtype=bool), num_gt=num_gt, category_ids=category_ids,
                       image_ids=[int(i) for i in params.imgIds])


def _index_in(sorted_ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of each of ``values`` in the sorted array ``sorted_ids``, -1 where absent."""
    values = np.asarray(values, dtype=np.int64)
    if not len(sorted_ids):
        return np.full(len(values), -1, dtype=np.int64)
    index = np.minimum(np.searchsorted(sorted_ids, values), len(sorted_ids) - 1)
    return np.where(sorted_ids[index] == values, index, -1)


def reconstruct_evaluated_ids(matches: CocoMatches, det_ids: np.ndarray, det_images: np.ndarray,
                              det_categories: np.ndarray, det_scores: np.ndarray, max_dets: int) -> np.ndarray:
    """The detection id of every row of ``matches`` (COCO stores none for false positives).

    Reproduces COCO's order without a loop: within an (image, category), detections in id order, stable-sorted
    by score (high first), the first ``max_dets`` kept; rows ordered by category, then image. Checked against
    the scores and the ids COCO does report (those of matched detections).

    Args:
        det_ids: (M,) ids of all detections (``loadRes`` gives ``1..M`` in results order).
        det_images, det_categories: (M,) COCO image / category ids.
        det_scores: (M,) scores.
        max_dets: ``params.maxDets[-1]``.

    Returns:
        (N,) int64 ids aligned with the rows of ``matches``.
    """
    k = _index_in(np.asarray(matches.category_ids, dtype=np.int64), det_categories)
    n = _index_in(np.asarray(matches.image_ids, dtype=np.int64), det_images)
    keep = (k >= 0) & (n >= 0)
    ids, k, n, scores = det_ids[keep], k[keep], n[keep], det_scores[keep]
    order = np.lexsort((ids, -scores, n, k))
    ids, k, n = ids[order], k[order], n[order]
    group = k * len(matches.image_ids) + n
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]]) if len(group) else np.zeros(0, dtype=np.int64)
    rank = np.arange(len(group)) - np.repeat(starts, np.diff(np.r_[starts, len(group)]))
    ids = ids[rank < max_dets]
    if len(ids) != len(matches.score):
        raise _layout_error(f"{len(matches.score)} evaluated detections but {len(ids)} reconstructed")
    matched = matches.dt_id != 0
    if not np.array_equal(ids[matched], matches.dt_id[matched]):
        raise _layout_error("detection order differs from the reconstructed one")
    return ids
