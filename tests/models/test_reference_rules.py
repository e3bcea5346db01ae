"""Issue 9: the rules in which umop's detectors follow their references (mmdetection 3.3 for ATSS / FCOS /
VFNet and RetinaNet's losses; torchvision for RetinaNet's anchors and matching), on hand-built cases.

1. per-image valid flags of the priors (two images of different sizes: nothing comes from the padding);
2. VFNet priors at ``i * stride``; 3. VFNet reg_denoms (test_vfnet.py);
4. avg_factor ``sum_i max(pos_i, 1)`` (RetinaNet, ATSS) vs ``max(sum_i pos_i, 1)`` (FCOS, VFNet);
5. each detector's test_cfg; 6. zero-area detections dropped;
7. score threshold / pre-NMS top-k on sigmoid(cls) alone, centerness multiplied afterwards;
and the ``"levels"`` of the detections.
"""
from __future__ import annotations

import math

import pytest
import torch

from umop.assigners import pad_targets
from umop.assigners.atss import ATSSAssigner
from umop.assigners.common import AssignResult
from umop.assigners.max_iou import MaxIoUAssigner
from umop.losses import CLS_LOSSES
from umop.models import build_detector
from umop.models.anchors import AnchorGenerator, PointGenerator, retinanet_anchor_generator

LEVEL_SIZES_64 = [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]  # a 64 x 64 batch, strides 8..128


def logit(p: float) -> float:
    return math.log(p / (1 - p))


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: build_detector(name, 2, backbone="resnet18", fpn_channels=32, **options)
            for name, options in [("retinanet", {"head_num_convs": 1}), ("atss", {"num_convs": 1}),
                                  ("fcos", {"num_convs": 1}), ("vfnet", {"num_convs": 1})]}


# ---------------------------------------------------------------- 1. valid flags
def test_valid_flags_hand_worked():
    """Batch padded to 128 x 192; image 1 is 100 x 70 -> its own /32 padding is 128 x 96. mmdetection's rule:
    row r, column c of level l valid when r < min(ceil(h / s), H_l) and c < min(ceil(w / s), W_l)."""
    generator = PointGenerator()
    feature_sizes = [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]
    flags = generator.valid_flags(feature_sizes, [(128, 192), (128, 96)])
    _, counts = generator(feature_sizes)
    assert flags.shape == (2, sum(counts)) and flags.dtype == torch.bool
    assert flags[0].all()
    per_level = [int(f.sum()) for f in flags[1].split(counts)]
    # ceil(96 / s) columns: 12, 6, 3, 2 (of 3), 1 (of 2); ceil(128 / s) rows: all
    assert per_level == [16 * 12, 8 * 6, 4 * 3, 2 * 2, 1 * 1]
    p3 = flags[1, :counts[0]].view(16, 24)
    assert p3[:, :12].all() and not p3[:, 12:].any()
    # anchors: every anchor of a valid location is valid (9 per location for RetinaNet)
    anchor_flags = retinanet_anchor_generator().valid_flags(feature_sizes, [(128, 96)])
    assert torch.equal(anchor_flags[0], flags[1].repeat_interleave(9))
    # the size is rounded up per level: a 40-pixel padded height covers ceil(40 / 32) = 2 rows of P5
    assert PointGenerator().valid_flags(feature_sizes, [(40, 192)])[0, 16 * 24 + 8 * 12:][:24].sum() == 2 * 6


def test_max_iou_invalid_anchors_take_no_part():
    """The best anchor of the gt is invalid: it is ignored, and the low-quality rescue goes to the best valid
    anchor instead (mmdetection assigns the valid anchors only)."""
    anchors = torch.tensor([[0.0, 0, 10, 10], [0, 0, 14, 14], [20, 20, 30, 30], [100, 100, 110, 110]])
    gt = pad_targets([{"boxes": torch.tensor([[0.0, 0, 9, 9]]), "labels": torch.tensor([1])}])
    assigner = MaxIoUAssigner(3)
    everything = assigner(anchors, [4], gt)
    assert everything.labels.tolist() == [[1, -1, 3, 3]]  # IoU 81/100 -> positive, 81/196 = 0.41 -> ignored
    valid = torch.tensor([[False, True, True, False]])
    result = assigner(anchors, [4], gt, prior_valid=valid)
    # anchor 1 is now the gt's best (valid) anchor -> rescued; the invalid anchors 0 and 3 are ignored
    assert result.labels.tolist() == [[-1, 1, 3, -1]]
    assert result.prior_valid is valid
    gt_small = pad_targets([{"boxes": torch.tensor([[1.0, 1, 4, 4]]), "labels": torch.tensor([0])}])
    rescued = assigner(anchors, [4], gt_small, prior_valid=torch.tensor([[False, True, True, True]]))
    assert rescued.labels.tolist() == [[-1, 0, 3, 3]]  # IoU 9/196 with anchor 1: the best valid one


def test_atss_valid_anchors_equal_assignment_of_the_valid_subset():
    """mmdetection passes ATSS only the valid anchors (fewer candidates per level where a level has fewer
    than topk). The batched masked assignment equals the assignment of each image's valid anchors alone."""
    generator = AnchorGenerator([(32.0,), (64.0,)], [(1.0,), (1.0,)], strides=(8, 16), round_base=False)
    priors, counts = generator([(12, 12), (6, 6)])
    flags = generator.valid_flags([(12, 12), (6, 6)], [(96, 96), (64, 32)])
    targets = [{"boxes": torch.tensor([[10.0, 8.0, 50.0, 40.0], [40.0, 50.0, 90.0, 94.0]]),
                "labels": torch.tensor([0, 1])},
               {"boxes": torch.tensor([[2.0, 20.0, 30.0, 60.0]]), "labels": torch.tensor([2])}]
    assigner = ATSSAssigner(3, topk=9)
    result = assigner(priors, counts, pad_targets(targets), prior_valid=flags)
    level = torch.repeat_interleave(torch.arange(2), torch.tensor(counts))
    for image, target in enumerate(targets):
        inside = flags[image]
        sub_counts = [int((level[inside] == index).sum()) for index in range(2)]
        alone = assigner(priors[inside], sub_counts, pad_targets([target]))
        assert torch.equal(result.labels[image, inside], alone.labels[0]), image
        assert torch.equal(result.matched_gt[image, inside], alone.matched_gt[0])
        assert (result.labels[image, ~inside] == -1).all()
    assert sub_counts == [4 * 8, 2 * 4] and result.positive_mask[1].any()  # image 1: 32 and 8 valid anchors


@pytest.mark.parametrize("name, cls_loss, padding_matters", [
    ("retinanet", "focal", False), ("atss", "pfl", False), ("vfnet", "pfl_mean", False),
    ("fcos", "focal", True),        # mmdetection's FCOSHead has no valid flags
    ("vfnet", "varifocal", True),   # mmdetection's VFNetHead gives the varifocal loss no label weights
])
def test_no_loss_and_no_statistic_from_the_padding(models, name, cls_loss, padding_matters):
    """Two images, 64 x 64 and 64 x 32: the classification logits at the priors in image 1's padding do not
    change any loss (detectors with valid flags), and ``num_anchors`` counts the valid priors only."""
    model = models[name]
    model.cls_loss = CLS_LOSSES.build(cls_loss)
    try:
        targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 44.0]]), "labels": torch.tensor([1])},
                   {"boxes": torch.tensor([[4.0, 10.0, 28.0, 50.0]]), "labels": torch.tensor([0])}]
        result = model.assign_targets((64, 64), targets, image_sizes=[(64, 64), (64, 32)])
        priors, counts = model.prior_generator(LEVEL_SIZES_64)
        per_location = 9 if name == "retinanet" else 1
        if name == "fcos":
            assert result.prior_valid is None
        else:
            padding = ~result.prior_valid
            assert padding[1].sum() == per_location * (32 + 8 + 2) and not padding[0].any()
            assert (result.labels[padding] == -1).all()
        generator = torch.Generator().manual_seed(0)
        num = len(priors)
        outputs = {"cls_logits": torch.randn(2, num, 2, generator=generator),
                   "bbox_regression": torch.rand(2, num, 4, generator=generator) + 1.0}
        if name in ("atss", "fcos"):
            outputs["centerness"] = torch.randn(2, num, generator=generator)
        if name == "vfnet":
            outputs["bbox_init"] = outputs["bbox_regression"] * 1.1
        gt = pad_targets(targets)
        losses = model.compute_losses(outputs, priors, result, gt)
        # image 1's right half: columns >= 32 px, i.e. the priors whose centre x >= 32
        centres_x = (priors[:, 0] + priors[:, 2]) / 2
        right = torch.zeros(2, num, dtype=torch.bool)
        right[1] = centres_x >= 32
        changed = dict(outputs, cls_logits=torch.where(right[..., None], torch.full_like(outputs["cls_logits"], 3.0),
                                                       outputs["cls_logits"]))
        losses_changed = model.compute_losses(changed, priors, result, gt)
        same = torch.equal(losses["loss_cls"], losses_changed["loss_cls"])
        assert same != padding_matters
        stats = losses["stats"]
        if name == "fcos":
            assert stats["num_anchors"].tolist() == [2 * c for c in counts]
        else:
            valid_priors = [per_location * (64 + 32), per_location * (16 + 8), per_location * (4 + 2),
                            2 * per_location, 2 * per_location]
            # num_anchors = the priors of weight > 0: valid and not ignored (RetinaNet's IoU in [0.4, 0.5))
            assigned = [int(part.sum()) for part in result.valid_mask.sum(0).split(counts)]
            assert stats["num_anchors"].tolist() == assigned
            assert all(a <= v for a, v in zip(assigned, valid_priors))
            if name != "retinanet":  # no ignored priors under ATSS: every valid prior counts
                assert assigned == valid_priors
        assert stats["num_positive"].sum() == result.positive_mask.sum()
    finally:
        model.cls_loss = CLS_LOSSES.build("varifocal" if name == "vfnet" else "focal")


def test_training_forward_uses_each_images_own_size(models):
    """Through ``forward``: 64 x 64 and 64 x 32 images -> level statistics of the valid anchors only."""
    model = models["atss"].train()
    torch.manual_seed(0)
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 32)]
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 44.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[4.0, 10.0, 28.0, 50.0]]), "labels": torch.tensor([0])}]
    stats = model(images, targets)["stats"]
    assert stats["num_anchors"].tolist() == [64 + 32, 16 + 8, 4 + 2, 2, 2]


# ---------------------------------------------------------------- 2. VFNet priors
def test_vfnet_priors_at_multiples_of_the_stride(models):
    priors, counts = models["vfnet"].prior_generator([(2, 3), (1, 2), (1, 1), (1, 1), (1, 1)])
    centres = (priors[:, :2] + priors[:, 2:]) / 2
    expected_p3 = torch.tensor([[0.0, 0], [8, 0], [16, 0], [0, 8], [8, 8], [16, 8]])
    torch.testing.assert_close(centres[:6], expected_p3)
    torch.testing.assert_close(priors[0], torch.tensor([-32.0, -32.0, 32.0, 32.0]))  # 8 * stride square
    torch.testing.assert_close(centres[6:8], torch.tensor([[0.0, 0], [16, 0]]))
    # the box origin of the distance regression is the same point
    box = models["vfnet"].box_coder.decode(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), priors[4:5])
    torch.testing.assert_close(box, torch.tensor([[7.0, 6.0, 11.0, 12.0]]))


# ---------------------------------------------------------------- 4. normaliser
@pytest.mark.parametrize("name, expected", [("retinanet", 4.0), ("atss", 4.0), ("fcos", 3.0), ("vfnet", 3.0)])
def test_avg_factor_with_a_background_only_image(models, name, expected):
    """Image 0 has 3 positives, image 1 none: sum_i max(pos_i, 1) = 4 (mmdetection AnchorHead / ATSSHead);
    max(sum_i pos_i, 1) = 3 (FCOSHead / VFNetHead)."""
    labels = torch.full((2, 10), 2)
    labels[0, :3] = torch.tensor([0, 1, 0])
    result = AssignResult(labels, torch.full((2, 10), -1), torch.zeros(2, 10), [10], 2)
    avg_factor = models[name].avg_factor(result.positive_mask)
    assert avg_factor.item() == expected
    empty = AssignResult(torch.full((3, 10), 2), torch.full((3, 10), -1), torch.zeros(3, 10), [10], 2)
    assert models[name].avg_factor(empty.positive_mask).item() == (3.0 if expected == 4.0 else 1.0)


def test_retinanet_box_loss_divided_by_the_per_image_avg_factor(models):
    """L1 box loss with every positive's deltas off by 0.5 in dx, image 1 background-only:
    loss = 0.5 * P / (max(P, 1) + max(0, 1)) = 0.5 * P / (P + 1)."""
    model = models["retinanet"]
    priors, counts = model.prior_generator(LEVEL_SIZES_64)
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 50.0, 44.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    result = model.assign_targets((64, 64), targets)
    num_positive = int(result.positive_mask.sum())
    assert num_positive >= 2 and not result.positive_mask[1].any()
    deltas = model.box_coder.encode(targets[0]["boxes"].expand(len(priors), 4), priors).expand(2, -1, -1).clone()
    deltas[..., 0] += 0.5
    outputs = {"cls_logits": torch.zeros(2, len(priors), 2), "bbox_regression": deltas}
    losses = model.compute_losses(outputs, priors, result, pad_targets(targets))
    assert losses["loss_box"].item() == pytest.approx(0.5 * num_positive / (num_positive + 1), rel=1e-5)


# ---------------------------------------------------------------- 5. test_cfg
@pytest.mark.parametrize("name, nms", [("retinanet", 0.5), ("atss", 0.6), ("fcos", 0.5), ("vfnet", 0.6)])
def test_inference_settings_of_each_reference(models, name, nms):
    model = models[name]
    assert (model.score_thresh, model.nms_thresh, model.topk_candidates, model.detections_per_img) == (
        0.05, nms, 1000, 100)
    assert build_detector(name, 2, backbone="resnet18", fpn_channels=32, nms_thresh=0.3).nms_thresh == 0.3


# ---------------------------------------------------------------- 6., 7. and levels: post-processing
def _points_case(model, cls_probs, centerness_probs, distances):
    """Hand-built head outputs on 6 points: two on P3, one on each of P4..P7 (one class)."""
    priors = torch.tensor([[4.0, 4, 4, 4], [60, 4, 60, 4], [8, 8, 8, 8], [16, 16, 16, 16], [32, 32, 32, 32],
                           [64, 64, 64, 64]])
    counts = [2, 1, 1, 1, 1]
    outputs = {"cls_logits": torch.tensor([[[logit(p)] for p in cls_probs]]),
               "centerness": torch.tensor([[logit(p) for p in centerness_probs]]),
               "bbox_regression": torch.tensor([distances])}
    return model.postprocess(outputs, priors, counts, [(48, 48)])[0]


def test_centerness_is_applied_after_the_threshold(models):
    """FCOS: cls 0.95, centerness 0.007 is kept (the threshold sees sigmoid(cls) = 0.95 > 0.05), with score
    0.95 * 0.007 = 0.00665; ranking cls * centerness first would have dropped it."""
    detections = _points_case(models["fcos"], [0.95, 0.01, 0.01, 0.01, 0.01, 0.01], [0.007] + [0.5] * 5,
                              [[2.0, 2.0, 2.0, 2.0]] + [[1.0, 1.0, 1.0, 1.0]] * 5)
    assert detections["scores"].tolist() == pytest.approx([0.95 * 0.007], rel=1e-5)
    torch.testing.assert_close(detections["boxes"], torch.tensor([[2.0, 2.0, 6.0, 6.0]]))
    assert detections["levels"].tolist() == [0]


def test_atss_centerness_after_threshold_and_topk(models):
    """ATSS: the pre-NMS top-1 of P3 is chosen on sigmoid(cls) alone (0.95 beats 0.6 although
    0.95 * 0.007 < 0.6 * 0.9), then the score is multiplied by the centerness."""
    model = models["atss"]
    model.topk_candidates = 1
    try:
        priors = torch.tensor([[0.0, 0, 16, 16], [20, 20, 40, 40], [0, 0, 32, 32], [0, 0, 64, 64], [0, 0, 64, 64],
                               [0, 0, 64, 64]])
        counts = [2, 1, 1, 1, 1]
        outputs = {"cls_logits": torch.tensor([[[logit(0.95)], [logit(0.6)], [-9.0], [-9.0], [-9.0], [-9.0]]]),
                   "centerness": torch.tensor([[logit(0.007), logit(0.9), 0.0, 0.0, 0.0, 0.0]]),
                   "bbox_regression": torch.zeros(1, 6, 4)}
        detections = model.postprocess(outputs, priors, counts, [(64, 64)])[0]
    finally:
        model.topk_candidates = 1000
    assert detections["scores"].tolist() == pytest.approx([0.95 * 0.007], rel=1e-5)
    torch.testing.assert_close(detections["boxes"], torch.tensor([[0.0, 0, 16, 16]]))
    assert detections["levels"].tolist() == [0] and detections["labels"].tolist() == [0]


def test_zero_area_boxes_are_dropped_and_levels_reported(models):
    """FCOS points in a 48 x 48 image: the P3 point at x = 60 (score 0.9, the highest) has the box
    [58, 3, 62, 5], which clips to zero width and is dropped (mmdetection min_bbox_size = 0). The other five
    boxes overlap little (IoU < 0.5) and report the level of their point, in score order."""
    detections = _points_case(models["fcos"], [0.9, 0.95, 0.8, 0.7, 0.6, 0.5], [1 - 1e-6] * 6,
                              [[1.0, 1.0, 1.0, 1.0], [2.0, 1.0, 2.0, 1.0], [3.0, 3.0, 3.0, 3.0],
                               [8.0, 8.0, 8.0, 8.0], [16.0, 16.0, 12.0, 12.0], [100.0, 100.0, 1.0, 1.0]])
    assert detections["levels"].tolist() == [0, 1, 2, 3, 4]
    assert detections["levels"].dtype == torch.long
    torch.testing.assert_close(detections["boxes"], torch.tensor(
        [[3.0, 3, 5, 5], [5, 5, 11, 11], [8, 8, 24, 24], [16, 16, 44, 44], [0, 0, 48, 48]]))
    assert detections["scores"].tolist() == pytest.approx([0.9, 0.8, 0.7, 0.6, 0.5], rel=1e-5)
