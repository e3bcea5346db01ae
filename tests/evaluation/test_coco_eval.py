"""COCO evaluation against hand-worked cases (101-point interpolated AP, IoU 0.50:0.95)."""

import json

import pytest
import torch

from umop.evaluation import detections_to_coco_results, evaluate_detections

TARGETS = [
    {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 60.0, 60.0]]), "labels": torch.tensor([0, 1])},
    {"boxes": torch.tensor([[100.0, 100.0, 300.0, 300.0]]), "labels": torch.tensor([1])},
]


def _det(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor(scores, dtype=torch.float32), "labels": torch.tensor(labels)}


def test_perfect_detections_give_ap_one():
    detections = [{"boxes": t["boxes"], "scores": torch.ones(len(t["labels"])), "labels": t["labels"]}
                  for t in TARGETS]
    metrics = evaluate_detections(detections, TARGETS, num_classes=2, class_names=["cell", "ring"])
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        assert metrics[key] == pytest.approx(1.0), key
    assert metrics["per_class"] == {"cell": pytest.approx(1.0), "ring": pytest.approx(1.0)}


def test_half_recall_gives_51_of_101_points():
    # Class 1 has two ground-truth boxes; only one is found (score 0.9) -> precision 1 up to recall 0.5,
    # 0 beyond: 101-point AP = 51/101 at every IoU threshold.
    detections = [_det([[20, 20, 60, 60]], [0.9], [1]), _det([], [], [])]
    targets = [{"boxes": TARGETS[0]["boxes"][1:], "labels": TARGETS[0]["labels"][1:]}, TARGETS[1]]
    metrics = evaluate_detections(detections, targets, num_classes=2)
    assert metrics["AP"] == pytest.approx(51 / 101)
    assert metrics["per_class"]["class_1"] == pytest.approx(51 / 101)
    assert metrics["per_class"]["class_0"] == -1.0  # no ground truth of class 0: not measurable
    assert metrics["APm"] == pytest.approx(1.0)  # the found box is medium (40x40)
    assert metrics["APl"] == pytest.approx(0.0)  # the missed one is large (200x200)


def test_false_positive_ranked_first_halves_precision():
    # One GT; a wrong box scores higher than the right one -> precision 0.5 at recall 1 -> AP 0.5.
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 50.0, 50.0]]), "labels": torch.tensor([0])}]
    detections = [_det([[200, 200, 250, 250], [0, 0, 50, 50]], [0.9, 0.5], [0, 0])]
    assert evaluate_detections(detections, targets, num_classes=1)["AP"] == pytest.approx(0.5)


def test_localisation_quality_separates_ap50_and_ap75():
    # IoU of [0,0,10,10] vs [0,0,10,6.5] is 0.65: counted at IoU 0.50..0.65 (4 of 10 thresholds).
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([0])}]
    detections = [_det([[0, 0, 10, 6.5]], [0.9], [0])]
    metrics = evaluate_detections(detections, targets, num_classes=1)
    assert metrics["AP50"] == pytest.approx(1.0)
    assert metrics["AP75"] == pytest.approx(0.0)
    assert metrics["AP"] == pytest.approx(0.4)


def test_empty_detections_are_safe():
    detections = [_det([], [], []), _det([], [], [])]
    metrics = evaluate_detections(detections, TARGETS, num_classes=2)
    assert metrics["AP"] == 0.0
    assert set(metrics["per_class"].values()) == {0.0}


def test_wrong_class_scores_zero():
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 50.0, 50.0]]), "labels": torch.tensor([0])}]
    detections = [_det([[0, 0, 50, 50]], [0.9], [1])]
    assert evaluate_detections(detections, targets, num_classes=2)["per_class"]["class_0"] == 0.0


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="image 0"):
        evaluate_detections([_det([[0, 0, 1, 1]], [0.5], [5])], TARGETS[:1], num_classes=2)
    with pytest.raises(ValueError, match="detections has 1 .* targets has 2"):
        evaluate_detections([_det([], [], [])], TARGETS, num_classes=2)


def test_results_json_uses_category_mapping_and_xywh():
    detections = [_det([[10, 20, 30, 60]], [0.75], [1])]
    results = detections_to_coco_results(detections, image_ids=[42], label_to_category_id={0: 7, 1: 9})
    assert results == [{"image_id": 42, "category_id": 9, "bbox": [10.0, 20.0, 20.0, 40.0], "score": 0.75}]
    json.dumps(results)
