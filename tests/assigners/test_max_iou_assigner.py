"""Max-IoU assigner (RetinaNet): hand-worked cases and parity with torchvision's Matcher."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection._utils import Matcher
from torchvision.ops import box_iou

from umop.assigners import MaxIoUAssigner, box_iou_batched, pad_targets, validate_targets

NUM_CLASSES = 3

# gt 0 = [0, 0, 10, 10] (label 1); gt 1 = [100, 100, 104, 104] (label 2, area 16: too small for 0.5 IoU).
GT = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 104.0, 104.0]]), "labels": torch.tensor([1, 2])}]
ANCHORS = torch.tensor([
    [0.0, 0.0, 10.0, 10.0],      # 0: IoU 1 with gt 0 -> positive, class 1
    [0.0, 0.0, 10.0, 20.0],      # 1: IoU 100/200 = 0.5 -> positive (>= 0.5)
    [0.0, 0.0, 10.0, 22.5],      # 2: IoU 100/225 = 0.444 -> ignored (between 0.4 and 0.5)
    [0.0, 0.0, 10.0, 30.0],      # 3: IoU 100/300 = 0.333 -> background
    [50.0, 50.0, 60.0, 60.0],    # 4: IoU 0 -> background
    [100.0, 100.0, 110.0, 110.0],  # 5: IoU 16/100 = 0.16 with gt 1: its best anchor -> rescued, class 2
    [98.0, 98.0, 108.0, 108.0],  # 6: IoU 16/100 = 0.16, a tie -> rescued too
    [100.0, 100.0, 120.0, 120.0],  # 7: IoU 16/400 = 0.04 -> background
])


def _assign(low_quality: bool = True, targets=GT, anchors=ANCHORS):
    assigner = MaxIoUAssigner(NUM_CLASSES, 0.5, 0.4, low_quality_matches=low_quality)
    return assigner(anchors, [anchors.shape[0]], pad_targets(targets))


def test_hand_worked_case():
    result = _assign()
    bg, ignore = NUM_CLASSES, -1
    assert result.labels.tolist() == [[1, 1, ignore, bg, bg, 2, 2, bg]]
    assert result.matched_gt.tolist() == [[0, 0, -1, -1, -1, 1, 1, -1]]
    assert torch.allclose(result.ious, torch.tensor([[1.0, 0.5, 0, 0, 0, 0.16, 0.16, 0]]))
    assert result.positive_mask.sum() == 4
    assert result.valid_mask.tolist() == [[True, True, False, True, True, True, True, True]]


def test_without_low_quality_matches_small_gt_gets_nothing():
    result = _assign(low_quality=False)
    assert result.labels[0, 5:].tolist() == [NUM_CLASSES] * 3
    assert result.labels[0, :2].tolist() == [1, 1]


def test_rescue_keeps_the_anchor_best_gt():
    """torchvision semantics: a rescued anchor is matched to its own best gt, not the rescuing one."""
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 18.0], [0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([0, 1])}]
    anchors = torch.tensor([[0.0, 0.0, 10.0, 40.0], [50.0, 50.0, 60.0, 60.0]])
    # IoU of anchor 0: gt0 180/400 = 0.45, gt1 100/400 = 0.25; anchor 1 overlaps nothing. Anchor 0 is the best
    # anchor of both gts; rescued by gt1 (the later one), it still goes to its own best gt 0 (label 0).
    result = _assign(targets=targets, anchors=anchors)
    assert result.labels.tolist() == [[0, NUM_CLASSES]]
    assert result.matched_gt.tolist() == [[0, -1]]
    assert torch.allclose(result.ious, torch.tensor([[0.45, 0.0]]))


def test_batch_with_padding_and_empty_image():
    targets = [GT[0], {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    result = _assign(targets=targets)
    assert result.labels.shape == (2, ANCHORS.shape[0])
    assert result.labels[0].tolist() == _assign().labels[0].tolist()
    assert (result.labels[1] == NUM_CLASSES).all()
    assert (result.matched_gt[1] == -1).all()
    assert (result.ious[1] == 0).all()


def test_matches_torchvision_matcher_on_random_boxes():
    generator = torch.Generator().manual_seed(0)

    def random_boxes(n, size):
        xy = torch.rand(n, 2, generator=generator) * 200
        wh = torch.rand(n, 2, generator=generator) * size + 4
        return torch.cat([xy, xy + wh], dim=1)

    anchors = random_boxes(3000, 80)
    targets = [{"boxes": random_boxes(n, 60), "labels": torch.randint(0, NUM_CLASSES, (n,), generator=generator)}
               for n in (7, 1, 15)]
    result = _assign(targets=targets, anchors=anchors)
    matcher = Matcher(0.5, 0.4, allow_low_quality_matches=True)
    for index, target in enumerate(targets):
        matches = matcher(box_iou(target["boxes"], anchors))
        expected = torch.where(matches >= 0, target["labels"][matches.clamp(min=0)], torch.full_like(matches, NUM_CLASSES))
        expected = torch.where(matches == Matcher.BETWEEN_THRESHOLDS, torch.full_like(matches, -1), expected)
        assert torch.equal(result.labels[index], expected)
        assert torch.equal(result.matched_gt[index], torch.where(matches >= 0, matches, torch.full_like(matches, -1)))


def test_box_iou_batched_equals_torchvision():
    anchors = torch.tensor([[0.0, 0, 10, 10], [5, 5, 25, 15], [30, 30, 40, 50]])
    gt = torch.tensor([[[0.0, 0, 10, 10], [4, 4, 20, 20]], [[35, 35, 45, 45], [0, 0, 1, 1]]])
    ious = box_iou_batched(anchors, gt)
    assert ious.shape == (2, 3, 2)
    for b in range(2):
        assert torch.allclose(ious[b], box_iou(anchors, gt[b]))


def test_pad_targets_shapes_and_mask():
    targets = [{"boxes": torch.ones(2, 4) * torch.tensor([0, 0, 1, 1.0]), "labels": torch.tensor([0, 1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    boxes, labels, mask = pad_targets(targets)
    assert boxes.shape == (2, 2, 4) and labels.shape == (2, 2)
    assert mask.tolist() == [[True, True], [False, False]]
    assert labels[1].tolist() == [-1, -1]
    empty = pad_targets([targets[1]])
    assert empty.boxes.shape == (1, 1, 4) and not empty.mask.any()


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"boxes": torch.tensor([[5.0, 5, 5, 9]]), "labels": torch.tensor([0])}, r"targets\[1\].*zero or negative size"),
        ({"boxes": torch.tensor([[5.0, 9, 8, 3]]), "labels": torch.tensor([0])}, r"targets\[1\].*zero or negative size"),
        ({"boxes": torch.tensor([[0.0, 0, 5, 5]]), "labels": torch.tensor([3])}, r"targets\[1\].*label 3 outside \[0, 3\)"),
        ({"boxes": torch.tensor([[0.0, 0, 5, 5]]), "labels": torch.tensor([-1])}, r"targets\[1\].*label -1"),
        ({"boxes": torch.tensor([[0.0, float("nan"), 5, 5]]), "labels": torch.tensor([0])}, r"targets\[1\].*NaN"),
        ({"boxes": torch.zeros(1, 5), "labels": torch.tensor([0])}, r"targets\[1\]\['boxes'\]"),
        ({"boxes": torch.tensor([[0.0, 0, 5, 5]]), "labels": torch.tensor([0.0])}, r"targets\[1\]\['labels'\].*integer"),
    ],
)
def test_validate_targets_names_the_image(bad, message):
    good = {"boxes": torch.tensor([[0.0, 0, 5, 5]]), "labels": torch.tensor([2])}
    with pytest.raises(ValueError, match=message):
        validate_targets([good, bad], NUM_CLASSES)


def test_validate_accepts_empty_images():
    validate_targets([{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}], NUM_CLASSES)


def test_max_ious_cover_the_negatives():
    """max_ious (what IoU-balanced sampling bins the negatives by) is each anchor's best IoU with any gt,
    also where the anchor is background or ignored; ious stays 0 there."""
    result = _assign()
    expected = box_iou(ANCHORS, GT[0]["boxes"]).amax(dim=1)
    torch.testing.assert_close(result.max_ious[0], expected)
    assert result.max_ious[0, 3] == pytest.approx(1 / 3) and result.ious[0, 3] == 0  # a background anchor
