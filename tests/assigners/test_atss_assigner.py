"""ATSS assigner: hand-worked cases and a per-gt loop reference (mmdetection's ATSSAssigner, written plainly)."""
import statistics

import pytest
import torch

from umop.assigners import PaddedTargets, pad_targets
from umop.assigners.atss import ATSSAssigner


def grid_anchors(size: int, stride: int, n: int, offset: float = 0.5) -> torch.Tensor:
    """n x n square anchors of side `size`, centres ((i + offset) * stride), row-major."""
    c = (torch.arange(n, dtype=torch.float32) + offset) * stride
    cy, cx = torch.meshgrid(c, c, indexing="ij")
    centres = torch.stack([cx.reshape(-1), cy.reshape(-1)], dim=1)
    return torch.cat([centres - size / 2, centres + size / 2], dim=1)


def index_of(cx: float, cy: float, stride: int, n: int, start: int = 0) -> int:
    return start + int(cy // stride) * n + int(cx // stride)


def iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_single_gt_hand_worked():
    # 5x5 anchors of side 16, centres 4, 12, ..., 36. GT [8, 8, 32, 32], centre (20, 20).
    # The 9 closest anchors are the 3x3 block around (20, 20): IoUs 256/576 (centre), 192/640 (4 edges),
    # 144/688 (4 corners); threshold = mean + std of these 9 values.
    anchors = grid_anchors(16, 8, 5)
    gt = pad_targets([{"boxes": torch.tensor([[8.0, 8.0, 32.0, 32.0]]), "labels": torch.tensor([2])}])
    ious = [256 / 576] + [192 / 640] * 4 + [144 / 688] * 4
    threshold = statistics.mean(ious) + statistics.stdev(ious)
    assert 192 / 640 < threshold < 256 / 576  # only the centre anchor passes
    result = ATSSAssigner(num_classes=3)(anchors, [25], gt)
    centre = index_of(20, 20, 8, 5)
    expected = torch.full((1, 25), 3)
    expected[0, centre] = 2
    assert torch.equal(result.labels, expected)
    assert result.matched_gt[0, centre] == 0 and (result.matched_gt[0, torch.arange(25) != centre] == -1).all()
    torch.testing.assert_close(result.ious[0, centre], torch.tensor(256 / 576))
    assert result.num_anchors_per_level == [25]


def test_centre_outside_gt_is_rejected():
    # A thin GT [18, 0, 22, 40] (centre (20, 20)): anchors at x = 12 or 28 have centres outside it,
    # so only the anchors of column x = 20 can be positive even if their IoU passes the threshold.
    anchors = grid_anchors(16, 8, 5)
    gt = pad_targets([{"boxes": torch.tensor([[18.0, 0.0, 22.0, 40.0]]), "labels": torch.tensor([0])}])
    result = ATSSAssigner(num_classes=1)(anchors, [25], gt)
    positive = result.positive_mask[0].nonzero().flatten().tolist()
    assert positive  # something is assigned
    centres_x = ((anchors[:, 0] + anchors[:, 2]) / 2)[positive]
    assert torch.all(centres_x == 20)
    # and the same candidates without the inside test would include anchors of IoU above threshold elsewhere:
    box = [18.0, 0.0, 22.0, 40.0]
    cand = [index_of(x, y, 8, 5) for x in (12, 20, 28) for y in (12, 20, 28)]
    cand_ious = [iou(anchors[i].tolist(), box) for i in cand]
    thr = statistics.mean(cand_ious) + statistics.stdev(cand_ious)
    passing = {i for i, v in zip(cand, cand_ious) if v >= thr}
    assert set(positive) == {i for i in passing if ((anchors[i, 0] + anchors[i, 2]) / 2) == 20}


def test_two_levels_large_gt_goes_to_coarse_level():
    # Level 0: 8x8 anchors side 16 (stride 8); level 1: 4x4 anchors side 32 (stride 16). A 64x64 gt
    # centred at (32, 32) matches the big anchors much better; candidates: 9 per level (K = 18).
    a0, a1 = grid_anchors(16, 8, 8), grid_anchors(32, 16, 4)
    anchors = torch.cat([a0, a1])
    box = [0.0, 0.0, 64.0, 64.0]
    gt = pad_targets([{"boxes": torch.tensor([box]), "labels": torch.tensor([1])}])
    result = ATSSAssigner(num_classes=2)(anchors, [64, 16], gt)
    positive = set(result.positive_mask[0].nonzero().flatten().tolist())
    # hand computation of the rule on the candidates
    centre = torch.tensor([32.0, 32.0])
    cand = []
    for start, level in ((0, a0), (64, a1)):
        d = (((level[:, :2] + level[:, 2:]) / 2 - centre) ** 2).sum(1)
        cand += (d.argsort(stable=True)[:9] + start).tolist()
    cand_ious = [iou(anchors[i].tolist(), box) for i in cand]
    thr = statistics.mean(cand_ious) + statistics.stdev(cand_ious)
    expected = {i for i, v in zip(cand, cand_ious) if v >= thr}
    assert positive == expected
    assert all(i >= 64 for i in positive)  # all on the coarse level
    # the 4 coarse anchors centred at (24|40, 24|40) lie inside the gt with IoU 32*32 / (64*64) = 0.25
    assert positive == {index_of(x, y, 16, 4, start=64) for x in (24, 40) for y in (24, 40)}


def test_anchor_shared_by_two_gts_takes_max_iou():
    anchors = grid_anchors(16, 8, 5)
    # gt0 hugs the centre anchor [12, 12, 28, 28] exactly (IoU 1); gt1 is bigger and also centred at (20, 20)
    gt = pad_targets([{"boxes": torch.tensor([[12.0, 12.0, 28.0, 28.0], [6.0, 6.0, 34.0, 34.0]]),
                       "labels": torch.tensor([0, 1])}])
    result = ATSSAssigner(num_classes=2)(anchors, [25], gt)
    centre = index_of(20, 20, 8, 5)
    assert result.matched_gt[0, centre] == 0 and result.labels[0, centre] == 0
    torch.testing.assert_close(result.ious[0, centre], torch.tensor(1.0))


def test_padding_and_empty_images():
    anchors = grid_anchors(16, 8, 5)
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 32.0, 32.0]]), "labels": torch.tensor([0])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    result = ATSSAssigner(num_classes=1)(anchors, [25], pad_targets(targets))
    assert result.positive_mask[0].sum() == 1
    assert not result.positive_mask[1].any() and (result.labels[1] == 1).all() and (result.matched_gt[1] == -1).all()


def reference_atss(anchors, counts, boxes, labels, num_classes, topk=9):
    """mmdetection's ATSSAssigner.assign for one image, loop over gts (plain, slow)."""
    num_anchors = anchors.shape[0]
    out_labels = torch.full((num_anchors,), num_classes)
    out_gt = torch.full((num_anchors,), -1)
    if boxes.shape[0] == 0:
        return out_labels, out_gt
    overlaps = torch.zeros(num_anchors, boxes.shape[0])
    for j in range(boxes.shape[0]):
        for i in range(num_anchors):
            overlaps[i, j] = iou(anchors[i].tolist(), boxes[j].tolist())
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    best = torch.full((num_anchors,), -1e8)
    for j in range(boxes.shape[0]):
        gc = (boxes[j, :2] + boxes[j, 2:]) / 2
        cand = []
        start = 0
        for c in counts:
            d = ((centres[start:start + c] - gc) ** 2).sum(1).sqrt()
            cand += (d.topk(min(topk, c), largest=False).indices + start).tolist()
            start += c
        vals = overlaps[cand, j]
        thr = vals.mean() + vals.std()
        for i, v in zip(cand, vals.tolist()):
            x, y = centres[i].tolist()
            b = boxes[j].tolist()
            inside = min(x - b[0], y - b[1], b[2] - x, b[3] - y) > 0.01
            if v >= thr and inside and v > best[i]:
                best[i] = v
                out_gt[i] = j
                out_labels[i] = labels[j]
    return out_labels, out_gt


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_per_gt_reference_on_random_batches(seed):
    g = torch.Generator().manual_seed(seed)
    anchors = torch.cat([grid_anchors(32, 8, 8, 0.0), grid_anchors(64, 16, 4, 0.0), grid_anchors(128, 32, 2, 0.0)])
    counts = [64, 16, 4]
    targets = []
    for n in (3, 0, 5):
        xy = torch.rand(n, 2, generator=g) * 48
        wh = torch.rand(n, 2, generator=g) * 40 + 4
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(0, 4, (n,), generator=g)})
    result = ATSSAssigner(num_classes=4)(anchors, counts, pad_targets(targets))
    for b, t in enumerate(targets):
        ref_labels, ref_gt = reference_atss(anchors, counts, t["boxes"], t["labels"], 4)
        assert torch.equal(result.labels[b], ref_labels), b
        assert torch.equal(result.matched_gt[b], ref_gt), b
    assert result.positive_mask[0].any() and result.positive_mask[2].any()


def test_bad_input():
    anchors = grid_anchors(16, 8, 5)
    gt = pad_targets([{"boxes": torch.tensor([[8.0, 8.0, 32.0, 32.0]]), "labels": torch.tensor([0])}])
    with pytest.raises(ValueError, match="num_anchors_per_level"):
        ATSSAssigner(num_classes=1)(anchors, [20], gt)
    with pytest.raises(ValueError, match="anchors"):
        ATSSAssigner(num_classes=1)(anchors[:, :2], [25], gt)
    with pytest.raises(ValueError, match="topk"):
        ATSSAssigner(num_classes=1, topk=0)
    assert isinstance(gt, PaddedTargets)


def test_max_ious_cover_the_negatives_and_padding():
    from torchvision.ops import box_iou

    anchors = grid_anchors(16, 8, 5)
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 32.0, 32.0], [40.0, 40.0, 72.0, 60.0]]),
                "labels": torch.tensor([0, 0])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    result = ATSSAssigner(num_classes=1)(anchors, [25], pad_targets(targets))
    torch.testing.assert_close(result.max_ious[0], box_iou(anchors, targets[0]["boxes"]).amax(dim=1))
    negative = ~result.positive_mask[0] & (result.max_ious[0] > 0)
    assert negative.any() and (result.ious[0][negative] == 0).all()  # ious is 0 there, max_ious is not
    assert (result.max_ious[1] == 0).all()  # an image without gt (its padded gt rows do not count)
