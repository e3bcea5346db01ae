"""Optimal LRP (Oksuz et al., TPAMI 2021) against cases worked by hand from the paper's definition:

    LRP(s) = (sum_TP (1 - IoU) / (1 - 0.5) + N_FP + N_FN) / (N_TP + N_FP + N_FN),  oLRP = min over s.
"""

import numpy as np
import pytest
import torch

from umop.evaluation import detections_to_coco_results, evaluate_detections, lrp_thresholds, optimal_lrp
from umop.evaluation.lrp import mean_over_classes

GT_A = [0.0, 0.0, 10.0, 10.0]
GT_B = [50.0, 50.0, 60.0, 60.0]


def _det(boxes, scores, labels, levels=None):
    out = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
           "scores": torch.tensor(scores, dtype=torch.float32), "labels": torch.tensor(labels, dtype=torch.long)}
    if levels is not None:
        out["levels"] = torch.tensor(levels, dtype=torch.long)
    return out


def _target(boxes, labels, crowd=None):
    out = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
           "labels": torch.tensor(labels, dtype=torch.long)}
    if crowd is not None:
        out["iscrowd"] = torch.tensor(crowd)
    return out


def _hand_case():
    # Image 0: class 0 has boxes A and B; class 1 has one box that nobody detects.
    #   d1 score .9 on A with IoU 0.8 (TP), d2 score .8 far away (FP), d3 score .7 on B with IoU 0.9 (TP).
    # Image 1: no ground truth; one class-0 detection, score .5 (FP). Class 2: no ground truth, no detection.
    targets = [_target([GT_A, GT_B, [200, 200, 260, 260]], [0, 0, 1]), _target([], [])]
    detections = [_det([[0, 0, 10, 8], [100, 100, 110, 110], [50, 50, 60, 59]], [0.9, 0.8, 0.7], [0, 0, 0],
                       levels=[0, 1, 2]),
                  _det([[5, 5, 20, 20]], [0.5], [0], levels=[1])]
    return detections, targets


def test_hand_worked_case():
    detections, targets = _hand_case()
    metrics = evaluate_detections(detections, targets, num_classes=3, class_names=["a", "b", "c"])
    # class 0, keeping the top 1, 2, 3, 4 detections (2 ground-truth boxes):
    #   (0.2/0.5 + 0 + 1) / 2 = 0.7;  (0.4 + 1 + 1) / 3 = 0.8;  ((0.2 + 0.1)/0.5 + 1 + 0) / 3 = 0.5333;
    #   (0.6 + 2 + 0) / 4 = 0.65  ->  oLRP 1.6/3 at threshold 0.7: loc (0.2 + 0.1)/2, FP 1/3, FN 0.
    a = metrics["per_class_lrp"]["a"]
    assert a["oLRP"] == pytest.approx(1.6 / 3)
    assert a["loc"] == pytest.approx(0.15)
    assert a["FP"] == pytest.approx(1 / 3)
    assert a["FN"] == pytest.approx(0.0)
    assert a["threshold"] == pytest.approx(0.7)
    # class 1: ground truth, no detection -> oLRP = FN = 1, the rest undefined (-1.0)
    assert metrics["per_class_lrp"]["b"] == {"oLRP": 1.0, "loc": -1.0, "FP": -1.0, "FN": 1.0, "threshold": -1.0}
    # class 2: no ground truth -> not measurable, and left out of the means
    assert set(metrics["per_class_lrp"]["c"].values()) == {-1.0}
    assert metrics["oLRP"] == pytest.approx((1.6 / 3 + 1.0) / 2)
    assert metrics["oLRP_loc"] == pytest.approx(0.15)  # only class 0 has a true positive
    assert metrics["oLRP_FP"] == pytest.approx(1 / 3)
    assert metrics["oLRP_FN"] == pytest.approx(0.5)


def test_crowd_box_and_its_detection_are_ignored():
    # A detection on a crowd box is neither TP nor FP (COCO), so the class' oLRP is that of the other boxes.
    targets = [_target([GT_A, [100, 100, 150, 150]], [0, 0], crowd=[0, 1])]
    detections = [_det([[0, 0, 10, 8], [100, 100, 150, 150]], [0.6, 0.9], [0, 0])]
    lrp = evaluate_detections(detections, targets, num_classes=1)["per_class_lrp"]["class_0"]
    assert lrp["oLRP"] == pytest.approx(0.4)  # (0.2/0.5 + 0 + 0) / 1
    assert lrp["FP"] == 0.0 and lrp["threshold"] == pytest.approx(0.6)


def test_detection_without_true_positive_gives_one():
    targets = [_target([GT_A], [0])]
    detections = [_det([[30, 30, 40, 40], [0, 0, 10, 4]], [0.9, 0.8], [0, 0])]  # IoU 0 and 0.4 < 0.5
    lrp = evaluate_detections(detections, targets, num_classes=1)["per_class_lrp"]["class_0"]
    assert lrp == {"oLRP": 1.0, "loc": -1.0, "FP": -1.0, "FN": 1.0, "threshold": -1.0}


def test_perfect_detector_is_zero_and_empty_detector_is_one_per_class():
    generator = torch.Generator().manual_seed(0)
    targets = []
    for _ in range(4):
        xy = torch.rand(5, 2, generator=generator) * 200
        wh = 8 + torch.rand(5, 2, generator=generator) * 100
        boxes = torch.cat([xy, xy + wh], 1).round()  # whole pixels: the results json keeps 3 decimals
        targets.append(_target(boxes.tolist(), torch.randint(0, 3, (5,), generator=generator).tolist()))
    perfect = [{"boxes": t["boxes"], "scores": torch.linspace(0.9, 0.5, len(t["labels"])), "labels": t["labels"]}
               for t in targets]
    metrics = evaluate_detections(perfect, targets, num_classes=3)
    assert metrics["oLRP"] == pytest.approx(0.0, abs=1e-6)
    for values in metrics["per_class_lrp"].values():
        assert values["oLRP"] == pytest.approx(0.0, abs=1e-6) and values["FN"] == 0.0 and values["FP"] == 0.0
    empty = [_det([], [], []) for _ in targets]
    metrics = evaluate_detections(empty, targets, num_classes=3)
    assert metrics["oLRP"] == 1.0 and metrics["oLRP_FN"] == 1.0
    assert {values["oLRP"] for values in metrics["per_class_lrp"].values()} == {1.0}
    assert metrics["oLRP_loc"] == -1.0 and metrics["oLRP_FP"] == -1.0  # undefined in every class


def test_optimal_lrp_equals_the_definition_on_random_data():
    rng = np.random.default_rng(0)
    for _ in range(20):
        num_dets, num_gt = int(rng.integers(1, 30)), int(rng.integers(1, 12))
        scores = rng.random(num_dets)
        is_tp = rng.random(num_dets) < 0.5
        order = np.argsort(-scores)
        is_tp[order[np.cumsum(is_tp[order]) > num_gt]] = False  # at most num_gt true positives
        ious = rng.uniform(0.5, 1.0, num_dets)
        best = (np.inf, None)
        for threshold in np.sort(scores)[::-1]:  # the paper: keep the detections scoring >= threshold
            kept = scores >= threshold
            tp, fp = int((is_tp & kept).sum()), int((~is_tp & kept).sum())
            loc = float((1 - ious[is_tp & kept]).sum())
            lrp = (loc / 0.5 + fp + num_gt - tp) / (tp + fp + num_gt - tp)
            if lrp < best[0] - 1e-12:
                best = (lrp, (loc / tp if tp else np.nan, fp / (tp + fp), (num_gt - tp) / num_gt, threshold))
        result = optimal_lrp(scores, is_tp, ious, num_gt)
        if not is_tp.any():
            assert result["oLRP"] == 1.0
            continue
        assert result["oLRP"] == pytest.approx(best[0])
        assert [result["loc"], result["FP"], result["FN"], result["threshold"]] == pytest.approx(list(best[1]))


def test_mean_over_classes_skips_undefined():
    assert mean_over_classes([0.5, float("nan"), -1.0, 0.7]) == pytest.approx(0.6)
    assert mean_over_classes([float("nan"), -1.0]) == -1.0
    with pytest.raises(ValueError, match="num_gt"):
        optimal_lrp(np.ones(1), np.ones(1, bool), np.ones(1), -1)


def test_lrp_thresholds_fall_back_where_undefined():
    detections, targets = _hand_case()
    metrics = evaluate_detections(detections, targets, num_classes=3, class_names=["a", "b", "c"])
    assert lrp_thresholds(metrics, ["a", "b", "c"], default=0.3) == pytest.approx([0.7, 0.3, 0.3])
    with pytest.raises(ValueError, match="per_class_lrp"):
        lrp_thresholds({"AP": 0.5}, ["a"])
    # per-class thresholds filter the results json by label
    results = detections_to_coco_results(detections, score_thresh=[0.75, 0.3, 0.3])
    assert [r["score"] for r in results] == pytest.approx([0.9, 0.8])


def test_level_table_counts_by_level_and_size():
    detections, targets = _hand_case()
    metrics = evaluate_detections(detections, targets, num_classes=3)
    table = metrics["levels"]["per_level"]
    assert table["P3"] == {"num_tp": 1, "mean_iou": pytest.approx(0.8), "num_fp": 0}
    assert table["P4"] == {"num_tp": 0, "mean_iou": -1.0, "num_fp": 2}  # d2, and the detection of image 1
    assert table["P5"] == {"num_tp": 1, "mean_iou": pytest.approx(0.9), "num_fp": 0}
    assert set(table) == {"P3", "P4", "P5", "P6", "P7"}
    sizes = metrics["levels"]["recall_by_size"]
    # A and B are small (100 px²) and found by P3 and P5; the class-1 box (3600 px²) is medium and missed.
    assert sizes["small"]["num_gt"] == 2 and sizes["small"]["recall"] == 1.0
    assert sizes["small"]["found_by"] == {"P3": 0.5, "P4": 0.0, "P5": 0.5, "P6": 0.0, "P7": 0.0}
    assert sizes["medium"] == {"num_gt": 1, "recall": 0.0, "found_by": dict.fromkeys(table, 0.0)}
    assert sizes["large"]["recall"] == -1.0
    assert sizes["all"]["recall"] == pytest.approx(2 / 3)
    assert "levels" not in evaluate_detections([{k: v for k, v in d.items() if k != "levels"} for d in detections],
                                               targets, num_classes=3)


def test_level_table_follows_coco_top_100_and_score_ties():
    # 120 detections on one image and class: 60 score 0.9 (indices 60..119), then 60 tied at 0.5. COCO keeps the
    # first 100 by (score, then input order): indices 60..119 and 0..39. B is detected at index 39 (kept, the
    # 100th) and again at 40 (dropped), A at index 70.
    targets = [_target([GT_A, GT_B], [0, 0])]
    scores = [0.5] * 60 + [0.9] * 60
    boxes = [[300.0 + i, 300.0, 310.0 + i, 310.0] for i in range(120)]
    boxes[70], boxes[39], boxes[40] = GT_A, GT_B, GT_B
    levels = [i % 5 for i in range(120)]
    metrics = evaluate_detections([_det(boxes, scores, [0] * 120, levels=levels)], targets, num_classes=1)
    table = metrics["levels"]["per_level"]
    assert {name: v["num_tp"] for name, v in table.items()} == {"P3": 1, "P4": 0, "P5": 0, "P6": 0, "P7": 1}
    assert sum(v["num_fp"] for v in table.values()) == 98
    assert table["P4"]["num_fp"] == 20  # kept indices with i % 5 == 1: 1, 6, .., 36 and 61, .., 116
    assert metrics["levels"]["recall_by_size"]["small"]["recall"] == 1.0


def test_results_keep_the_level():
    results = detections_to_coco_results([_det([[0, 0, 5, 5]], [0.5], [0], levels=[3])])
    assert results[0]["level"] == 3
    with pytest.raises(ValueError, match="levels"):
        detections_to_coco_results([{**_det([[0, 0, 5, 5]], [0.5], [0]), "levels": torch.tensor([1, 2])}])
