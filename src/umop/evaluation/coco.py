"""COCO-style box evaluation with ``faster-coco-eval`` (pycocotools-compatible, C++ accelerated), plus the
optimal LRP of Oksuz et al. 2021 and the per-pyramid-level table, both from COCO's own matches.

Detections and ground truth are plain lists of dicts with absolute ``xyxy`` boxes, one dict per image,
as produced by ``model.eval(); model(images)`` and by :class:`umop.data.CocoDetection`. Everything is
evaluated in memory: no annotation file has to exist.

Metric convention (as in pycocotools): a metric that has no ground truth to measure (e.g. ``APs`` on a
dataset without small objects, or the AP of a class absent from the evaluated images) is ``-1.0``.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["evaluate_detections", "evaluate_coco", "detections_to_coco_results", "targets_to_coco_dict",
           "lrp_thresholds", "METRIC_NAMES"]

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _as_numpy(value: Any, name: str, index: int, shape_tail: tuple[int, ...] = ()) -> np.ndarray:
    if value is None:
        raise ValueError(f"{name} of image {index} is missing")
    if isinstance(value, torch.Tensor):
        value = value.detach().to("cpu", torch.float64).numpy()
    array = np.asarray(value, dtype=np.float64)
    if shape_tail:
        if array.size == 0:
            array = array.reshape(0, *shape_tail)
        if array.ndim != 1 + len(shape_tail) or array.shape[1:] != shape_tail:
            raise ValueError(f"{name} of image {index} must have shape (N, {shape_tail[0]}), got {array.shape}")
    else:
        array = array.reshape(-1)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} of image {index} contains non-finite values")
    return array


def _xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    out = boxes.copy()
    out[:, 2:] = boxes[:, 2:] - boxes[:, :2]
    return out


def _check_labels(labels: np.ndarray, num_classes: int, name: str, index: int) -> np.ndarray:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes or np.any(labels != np.round(labels))):
        raise ValueError(f"{name} of image {index} must be integers in [0, {num_classes}), got {labels.tolist()}")
    return labels.astype(np.int64)


def _image_id(record: Mapping[str, Any], index: int, use_record_ids: bool) -> int:
    if use_record_ids and "image_id" in record:
        value = record["image_id"]
        return int(value.item() if isinstance(value, torch.Tensor) else value)
    return index


def targets_to_coco_dict(
    targets: Sequence[Mapping[str, Any]],
    num_classes: int,
    class_names: Sequence[str] | None = None,
    *,
    use_record_ids: bool = False,
) -> dict:
    """Build a COCO ground-truth dict from per-image targets.

    Args:
        targets: one dict per image with ``"boxes"`` (N, 4) absolute xyxy and ``"labels"`` (N,) in
            ``[0, num_classes)``; optional ``"image_id"`` (used when ``use_record_ids``), ``"orig_size"``
            (H, W) stored as the image size, and ``"iscrowd"`` (N,).
        num_classes: number of classes; category ids are ``label + 1``.
        class_names: optional names of the classes (default ``"class_<label>"``).
        use_record_ids: use each target's ``image_id`` instead of its position in the list.
    """
    names = _class_names(num_classes, class_names)
    images, annotations = [], []
    for index, target in enumerate(targets):
        image_id = _image_id(target, index, use_record_ids)
        boxes = _as_numpy(target.get("boxes"), "targets['boxes']", index, (4,))
        labels = _check_labels(_as_numpy(target.get("labels"), "targets['labels']", index), num_classes,
                               "targets['labels']", index)
        if len(labels) != len(boxes):
            raise ValueError(f"targets of image {index}: {len(boxes)} boxes but {len(labels)} labels")
        if "iscrowd" in target:
            crowd = _as_numpy(target["iscrowd"], "targets['iscrowd']", index).astype(np.int64)
        else:
            crowd = np.zeros(len(labels), dtype=np.int64)
        height, width = 0, 0
        if "orig_size" in target:
            height, width = (int(v) for v in _as_numpy(target["orig_size"], "targets['orig_size']", index)[:2])
        images.append({"id": image_id, "width": width, "height": height})
        for box, label, is_crowd in zip(_xyxy_to_xywh(boxes), labels, crowd):
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": int(label) + 1,
                "bbox": [float(v) for v in box],
                "area": float(box[2] * box[3]),
                "iscrowd": int(is_crowd),
            })
    categories = [{"id": label + 1, "name": name} for label, name in enumerate(names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def detections_to_coco_results(
    detections: Sequence[Mapping[str, Any]],
    image_ids: Sequence[int] | None = None,
    label_to_category_id: Mapping[int, int] | Sequence[int] | None = None,
    score_thresh: float | Sequence[float] = 0.0,
) -> list[dict]:
    """Convert per-image detections to a COCO results list (``loadRes`` / results-json format).

    Args:
        detections: one dict per image with ``"boxes"`` (K, 4) absolute xyxy, ``"scores"`` (K,),
            ``"labels"`` (K,) contiguous labels, optional ``"levels"`` (K,) pyramid level (0 = P3).
        image_ids: COCO image id of each entry of ``detections`` (default: the list position).
        label_to_category_id: maps a contiguous label to a COCO category id (default ``label + 1``).
        score_thresh: drop detections with a lower score; one value, or one per class (by contiguous label,
            e.g. the LRP-optimal thresholds of :func:`lrp_thresholds`).

    Returns:
        ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"[, "level"]}, ...]`` (``"level"`` where the
        detections carry ``"levels"``).
    """
    if image_ids is not None and len(image_ids) != len(detections):
        raise ValueError(f"image_ids has {len(image_ids)} entries but there are {len(detections)} detections")
    results = []
    for index, detection in enumerate(detections):
        boxes = _as_numpy(detection.get("boxes"), "detections['boxes']", index, (4,))
        scores = _as_numpy(detection.get("scores"), "detections['scores']", index)
        labels = _as_numpy(detection.get("labels"), "detections['labels']", index).astype(np.int64)
        if not (len(boxes) == len(scores) == len(labels)):
            raise ValueError(f"detections of image {index}: {len(boxes)} boxes, {len(scores)} scores, "
                             f"{len(labels)} labels")
        levels = None
        if detection.get("levels") is not None:
            levels = _as_numpy(detection["levels"], "detections['levels']", index).astype(np.int64)
            if len(levels) != len(scores):
                raise ValueError(f"detections of image {index}: {len(levels)} levels for {len(scores)} boxes")
        image_id = int(image_ids[index]) if image_ids is not None else index
        thresholds = _per_label_thresholds(score_thresh, labels)
        for k, (box, score, label) in enumerate(zip(_xyxy_to_xywh(boxes), scores, labels)):
            if score < thresholds[k]:
                continue
            category = int(label_to_category_id[int(label)]) if label_to_category_id is not None else int(label) + 1
            entry = {
                "image_id": image_id,
                "category_id": category,
                "bbox": [round(float(v), 3) for v in box],
                "score": round(float(score), 5),
            }
            if levels is not None:
                entry["level"] = int(levels[k])
            results.append(entry)
    return results


def _per_label_thresholds(score_thresh: float | Sequence[float], labels: np.ndarray) -> np.ndarray:
    """(K,) the score threshold of each detection: one for all, or one per class (indexed by label)."""
    if np.ndim(score_thresh) == 0:
        return np.full(len(labels), float(score_thresh))
    per_class = np.asarray(score_thresh, dtype=np.float64)
    if labels.size and labels.max() >= len(per_class):
        raise ValueError(f"score_thresh has {len(per_class)} per-class values but a label is {int(labels.max())}")
    return per_class[labels]


def _class_names(num_classes: int, class_names: Sequence[str] | None) -> list[str]:
    if num_classes <= 0:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    if class_names is None:
        return [f"class_{label}" for label in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(f"class_names has {len(class_names)} names but num_classes is {num_classes}")
    return [str(name) for name in class_names]


def evaluate_coco(gt: dict, results: list[dict], class_names: Sequence[str] | None = None, *,
                  levels: bool | None = None) -> dict:
    """Run COCO box evaluation of ``results`` against the ground-truth dict ``gt``, with LRP and levels.

    Args:
        gt: COCO ground-truth dict (``images``, ``annotations``, ``categories``).
        results: COCO results list; entries may carry ``"level"`` (pyramid level, 0 = P3).
        class_names: order and names of the classes in ``per_class`` / ``per_class_lrp``.
        levels: add the per-level table (:func:`umop.evaluation.level_table.level_table`); ``None``: when
            every result carries ``"level"``.

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl", "per_class": {name: AP},
        "oLRP", "oLRP_loc", "oLRP_FP", "oLRP_FN",
        "per_class_lrp": {name: {"oLRP", "loc", "FP", "FN", "threshold"}}[, "levels": {...}]}``.
        AP in 0..1, ``-1.0`` where there is no ground truth to measure. ``oLRP`` is the moLRP (mean over the
        classes with ground truth) of Oksuz et al. 2021 (:mod:`umop.evaluation.lrp`), its components the means
        over the classes where they are defined; per class, ``-1.0`` marks an undefined value (no ground
        truth; and loc, FP, threshold of a class without a true positive).
    """
    from faster_coco_eval import COCO, COCOeval_faster

    from .level_table import level_table
    from .lrp import LRP_KEYS, mean_over_classes, optimal_lrp
    from .matches import read_matches, reconstruct_evaluated_ids

    results = [dict(r) for r in results]
    if levels is None:
        levels = bool(results) and all("level" in r for r in results)
    elif levels and not all("level" in r for r in results):
        missing = next(i for i, r in enumerate(results) if "level" not in r)
        raise ValueError(f"levels=True but result {missing} has no 'level'")
    quiet = lambda *args, **kwargs: None  # noqa: E731
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(gt, print_function=quiet)
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=quiet)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [float(v) for v in evaluator.stats[:6]]
    metrics: dict[str, Any] = dict(zip(METRIC_NAMES, stats))
    # precision: [T (IoU thresholds), R (recall points), K (categories), A (area ranges), M (max dets)]
    precision = np.asarray(evaluator.eval["precision"])
    category_ids = list(evaluator.params.catIds)
    names_by_id = {c["id"]: c["name"] for c in gt["categories"]}
    per_class = {}
    for k, category_id in enumerate(category_ids):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        per_class[names_by_id[category_id]] = float(values.mean()) if values.size else -1.0

    # LRP (Oksuz et al. 2021) from COCO's own matches at IoU 0.5, area "all", 100 detections.
    matches = read_matches(evaluator)
    counted = ~matches.ignored
    lrp_by_name = {}
    for k, category_id in enumerate(matches.category_ids):
        rows = counted & (matches.category == k)
        lrp_by_name[names_by_id[category_id]] = optimal_lrp(matches.score[rows], matches.is_tp[rows],
                                                            matches.iou[rows], int(matches.num_gt[k]))
    metrics["oLRP"] = mean_over_classes([v["oLRP"] for v in lrp_by_name.values()])
    for key in ("loc", "FP", "FN"):
        metrics[f"oLRP_{key}"] = mean_over_classes([v[key] for v in lrp_by_name.values()])
    undefined = dict.fromkeys(LRP_KEYS, -1.0)
    per_class_lrp = {name: {key: (-1.0 if np.isnan(value) else value) for key, value in values.items()}
                     for name, values in lrp_by_name.items()}
    if class_names is not None:
        per_class = {str(name): per_class.get(str(name), -1.0) for name in class_names}
        per_class_lrp = {str(name): per_class_lrp.get(str(name), dict(undefined)) for name in class_names}
    metrics["per_class"] = per_class
    metrics["per_class_lrp"] = per_class_lrp

    if levels:
        det_ids = np.arange(1, len(results) + 1, dtype=np.int64)  # loadRes numbers the results 1..M
        levels_by_id = np.array([-1] + [int(r["level"]) for r in results], dtype=np.int64)
        row_ids = reconstruct_evaluated_ids(
            matches, det_ids, np.array([r["image_id"] for r in results], dtype=np.int64),
            np.array([r["category_id"] for r in results], dtype=np.int64),
            np.array([r["score"] for r in results], dtype=np.float64), int(evaluator.params.maxDets[-1]))
        annotations = gt["annotations"]
        metrics["levels"] = level_table(
            matches, row_ids, levels_by_id, np.array([a["id"] for a in annotations], dtype=np.int64),
            np.array([a["area"] for a in annotations], dtype=np.float64),
            np.array([int(a.get("iscrowd", 0)) for a in annotations], dtype=bool))
    return metrics


def lrp_thresholds(metrics: Mapping[str, Any], class_names: Sequence[str], default: float = 0.3) -> list[float]:
    """Per-class LRP-optimal score thresholds (Oksuz et al. 2021) from :func:`evaluate_coco`'s metrics.

    Classes without a threshold (no ground truth, or no true positive in the evaluation) get ``default``.
    Raises ``ValueError`` if the metrics hold no ``per_class_lrp`` (evaluated before LRP existed).
    """
    per_class = metrics.get("per_class_lrp")
    if not isinstance(per_class, Mapping):
        raise ValueError("the evaluation holds no 'per_class_lrp' (re-run `umop eval` to compute LRP)")
    thresholds = []
    for name in class_names:
        value = per_class.get(str(name), {}).get("threshold", -1.0)
        thresholds.append(float(value) if value is not None and value >= 0 else float(default))
    return thresholds


def evaluate_detections(
    detections: Sequence[Mapping[str, Any]],
    targets: Sequence[Mapping[str, Any]],
    num_classes: int,
    class_names: Sequence[str] | None = None,
) -> dict:
    """COCO box AP of ``detections`` against ``targets``, in memory.

    Args:
        detections: one dict per image: ``"boxes"`` (K, 4) xyxy absolute, ``"scores"`` (K,), ``"labels"`` (K,),
            optional ``"levels"`` (K,) pyramid level of each detection (0 = P3).
        targets: one dict per image (same order): ``"boxes"`` (N, 4) xyxy absolute, ``"labels"`` (N,).
        num_classes: number of classes (labels in ``[0, num_classes)``).
        class_names: optional names used as the keys of ``"per_class"``.

    Returns:
        :func:`evaluate_coco`'s dict: ``{"AP", "AP50", "AP75", "APs", "APm", "APl", "per_class": {name: AP},
        "oLRP", "oLRP_loc", "oLRP_FP", "oLRP_FN", "per_class_lrp"[, "levels"]}``; AP is in 0..1, and
        ``-1.0`` where nothing can be measured (no ground truth in that area range / class). ``"levels"``
        when every detection carries ``"levels"``.

    Example:
        >>> t = [{"boxes": [[0, 0, 10, 10]], "labels": [0]}]
        >>> evaluate_detections([{"boxes": [[0, 0, 10, 10]], "scores": [0.9], "labels": [0]}], t, 1)["AP"]
        1.0
    """
    if len(detections) != len(targets):
        raise ValueError(f"detections has {len(detections)} images but targets has {len(targets)}")
    names = _class_names(num_classes, class_names)
    gt = targets_to_coco_dict(targets, num_classes, names)
    for index, detection in enumerate(detections):
        labels = _as_numpy(detection.get("labels"), "detections['labels']", index)
        _check_labels(labels, num_classes, "detections['labels']", index)
    results = detections_to_coco_results(detections)
    return evaluate_coco(gt, results, names)
