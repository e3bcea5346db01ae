"""FCOS assigner: hand-worked cases (centre sampling, scale ranges, min-area) and a per-point loop reference."""
import math

import pytest
import torch

from umop.assigners import pad_targets
from umop.assigners.fcos import FCOSAssigner, fcos_centerness


def grid_points(stride: int, n: int) -> torch.Tensor:
    """n x n points ((i + 0.5) * stride), row-major, as (A, 2)."""
    c = (torch.arange(n, dtype=torch.float32) + 0.5) * stride
    cy, cx = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([cx.reshape(-1), cy.reshape(-1)], dim=1)


def positives_xy(result, points, b=0):
    return {tuple(points[i].tolist()) for i in result.positive_mask[b].nonzero().flatten().tolist()}


def one_level(**kwargs):
    return FCOSAssigner(num_classes=3, strides=(8,), regress_ranges=((-1, 64),), **kwargs)


def test_centre_sampling_hand_worked():
    # Points 4, 12, ..., 60 (stride 8). GT [0, 0, 40, 40], centre (20, 20); centre region radius
    # 1.5 * 8 = 12 -> [8, 8, 32, 32]: strictly inside are x, y in {12, 20, 28} -> 9 points.
    points = grid_points(8, 8)
    gt = pad_targets([{"boxes": torch.tensor([[0.0, 0.0, 40.0, 40.0]]), "labels": torch.tensor([1])}])
    result = one_level()(points, [64], gt)
    assert positives_xy(result, points) == {(x, y) for x in (12.0, 20.0, 28.0) for y in (12.0, 20.0, 28.0)}
    assert (result.labels[0][result.positive_mask[0]] == 1).all()
    assert (result.labels[0][~result.positive_mask[0]] == 3).all()
    # centerness of (12, 12): l = t = 12, r = b = 28 -> sqrt((12/28)^2) = 12/28
    i = 1 * 8 + 1
    torch.testing.assert_close(result.extras["centerness"][0, i], torch.tensor(12 / 28))
    torch.testing.assert_close(result.extras["bbox_targets"][0, i], torch.tensor([0.0, 0.0, 40.0, 40.0]))
    # without centre sampling: every point strictly inside the box: 4..36 -> 5 x 5
    result = one_level(center_sampling=False)(points, [64], gt)
    assert positives_xy(result, points) == {(float(x), float(y)) for x in range(4, 40, 8) for y in range(4, 40, 8)}


def test_centre_region_clipped_to_small_gt():
    # GT [10, 10, 22, 14] (12 x 4): centre region [4, 0, 28, 24] clipped to the gt itself; points strictly
    # inside: x in (10, 22) -> 12, 20; y in (10, 14) -> 12.
    points = grid_points(8, 8)
    gt = pad_targets([{"boxes": torch.tensor([[10.0, 10.0, 22.0, 14.0]]), "labels": torch.tensor([0])}])
    assert positives_xy(one_level()(points, [64], gt), points) == {(12.0, 12.0), (20.0, 12.0)}


def test_scale_ranges_pick_level():
    # Two levels: stride 8 with range [-1, 64], stride 16 with range [64, inf). A 150 x 150 box centred at
    # (77, 77): its level-0 centre region (65, 89) holds points 68, 76, 84, whose max distance to the box sides
    # is >= 152 - 84 = 68 > 64 -> no level-0 positive.
    p0, p1 = grid_points(8, 24), grid_points(16, 12)
    points = torch.cat([p0, p1])
    assigner = FCOSAssigner(num_classes=1, strides=(8, 16), regress_ranges=((-1, 64), (64, math.inf)))
    gt = pad_targets([{"boxes": torch.tensor([[2.0, 2.0, 152.0, 152.0]]), "labels": torch.tensor([0])}])
    result = assigner(points, [576, 144], gt)
    assert not result.positive_mask[0, :576].any()
    # level 1 centre region: radius 24 around (77, 77) -> (53, 101): points 56, 72, 88 -> 3 x 3
    assert positives_xy(result, points) == {(x, y) for x in (56.0, 72.0, 88.0) for y in (56.0, 72.0, 88.0)}
    # a small box is kept on level 0 (max distance <= 64) and gets nothing on level 1 (< 64)
    gt = pad_targets([{"boxes": torch.tensor([[0.0, 0.0, 20.0, 20.0]]), "labels": torch.tensor([0])}])
    result = assigner(points, [576, 144], gt)
    assert result.positive_mask[0, :576].any() and not result.positive_mask[0, 576:].any()


def test_ambiguous_point_takes_min_area_gt():
    points = grid_points(8, 8)
    # big [0, 0, 48, 48] (centre 24) and small [14, 14, 34, 34] (centre 24): the centre regions overlap;
    # points in both go to the small box.
    gt = pad_targets([{"boxes": torch.tensor([[0.0, 0.0, 48.0, 48.0], [14.0, 14.0, 34.0, 34.0]]),
                       "labels": torch.tensor([0, 2])}])
    result = one_level()(points, [64], gt)
    # big: region [12, 12, 36, 36] -> x, y in {20, 28}; small: region [14, 14, 34, 34] -> {20, 28}
    both = {(x, y) for x in (20.0, 28.0) for y in (20.0, 28.0)}
    assert positives_xy(result, points) == both
    for i in result.positive_mask[0].nonzero().flatten().tolist():
        assert result.matched_gt[0, i] == 1 and result.labels[0, i] == 2


def reference_fcos(points, strides, ranges, counts, boxes, labels, num_classes, radius=1.5):
    """mmdetection's FCOSHead._get_target_single, point by point."""
    out_labels, out_gt = [], []
    level = sum(([l] * c for l, c in enumerate(counts)), [])
    for (x, y), l in zip(points.tolist(), level):
        best, best_j = math.inf, -1
        for j, b in enumerate(boxes.tolist()):
            dist = (x - b[0], y - b[1], b[2] - x, b[3] - y)
            cx, cy, r = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2, strides[l] * radius
            region = (max(cx - r, b[0]), max(cy - r, b[1]), min(cx + r, b[2]), min(cy + r, b[3]))
            inside = min(x - region[0], y - region[1], region[2] - x, region[3] - y) > 0
            in_range = ranges[l][0] <= max(dist) <= ranges[l][1]
            area = (b[2] - b[0]) * (b[3] - b[1])
            if inside and in_range and area < best:
                best, best_j = area, j
        out_gt.append(best_j)
        out_labels.append(num_classes if best_j < 0 else int(labels[best_j]))
    return torch.tensor(out_labels), torch.tensor(out_gt)


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_per_point_reference(seed):
    g = torch.Generator().manual_seed(seed)
    strides, ranges = (8, 16, 32), ((-1, 32), (32, 64), (64, math.inf))
    points = torch.cat([grid_points(8, 12), grid_points(16, 6), grid_points(32, 3)])
    counts = [144, 36, 9]
    targets = []
    for n in (4, 0, 6):
        xy = torch.rand(n, 2, generator=g) * 60
        wh = torch.rand(n, 2, generator=g) * 80 + 4
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(0, 5, (n,), generator=g)})
    result = FCOSAssigner(num_classes=5, strides=strides, regress_ranges=ranges)(points, counts, pad_targets(targets))
    for b, t in enumerate(targets):
        ref_labels, ref_gt = reference_fcos(points, strides, ranges, counts, t["boxes"], t["labels"], 5)
        assert torch.equal(result.labels[b], ref_labels), b
        assert torch.equal(result.matched_gt[b], ref_gt), b
    assert result.positive_mask[0].any() and result.positive_mask[2].any() and not result.positive_mask[1].any()
    # zero-size box priors [x, y, x, y] (PointGenerator format) give the same result
    boxes4 = torch.cat([points, points], 1)
    again = FCOSAssigner(num_classes=5, strides=strides, regress_ranges=ranges)(boxes4, counts, pad_targets(targets))
    assert torch.equal(again.labels, result.labels)


def test_centerness_formula():
    d = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0]])
    torch.testing.assert_close(fcos_centerness(d), torch.tensor([math.sqrt(1 / 3 * 2 / 4), 1.0]))


def test_bad_input():
    points = grid_points(8, 4)
    gt = pad_targets([{"boxes": torch.tensor([[0.0, 0.0, 8.0, 8.0]]), "labels": torch.tensor([0])}])
    with pytest.raises(ValueError, match="num_points_per_level"):
        one_level()(points, [15], gt)
    with pytest.raises(ValueError, match="levels"):
        one_level()(points, [8, 8], gt)
    with pytest.raises(ValueError, match="points"):
        one_level()(points[:, :1], [16], gt)
    with pytest.raises(ValueError, match="regress_ranges"):
        FCOSAssigner(num_classes=1, strides=(8, 16), regress_ranges=((-1, 64),))
