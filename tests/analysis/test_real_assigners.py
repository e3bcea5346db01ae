"""Level counts under the real assigners of umop.models, on hand-made annotations counted by hand.

Only geometry is involved: the detectors are built with a random ResNet-18 and their forward never runs.
"""
from __future__ import annotations

import pytest
import torch

from umop.analysis.coco import load_coco
from umop.analysis.levels import build_assigner, level_statistics


def _positives(rows, image_id):
    return [row.num_positive for row in sorted(rows, key=lambda row: row.level) if row.image_id == image_id]


def _totals(rows, image_id):
    return [row.num_total for row in sorted(rows, key=lambda row: row.level) if row.image_id == image_id]


def test_retinanet_box_that_only_p7_anchors_match(write_coco):
    """RetinaNet max-IoU (pos >= 0.5): a 644x644 box that only P7 anchors match, counted by hand.

    Image 768x768 (min_size 768: no resize; already a multiple of 32). P7: stride 128, 6x6 centres at
    0, 128, ..., 640, 9 anchors each: sizes 512, 645, 812 (half sizes rounded: widths 512, 644, 812) x
    ratios h/w 0.5, 1, 2 (elongated: 724x362, 912x456, 1148x574). GT [62, 62, 706, 706] = the square
    644 anchor centred at (384, 384). IoU = inter / (area_a + 414736 - inter):
      * centre (384, 384), all 9 anchors: square 644 -> 1.0; square 512 -> 262144/414736 = 0.632; square 812
        -> 414736/659344 = 0.629; elongated 912x456 -> 644*456 / (414736 + 415872 - 293664) = 0.547 (x2);
        724x362 -> 0.525 (x2); 1148x574 -> 0.525 (x2)                                          -> 9
      * the 4 centres shifted by 128 along one axis: square 644 -> 644*516/497168 = 0.668; square 812
        -> 0.562; square 512 -> 0.516; the 3 anchors elongated along the shift -> 0.547, 0.525, 0.525;
        the 3 elongated across it -> <= 0.43                                                    -> 4 x 6 = 24
      * the 4 centres shifted by 256 along one axis: only the 1148x574 anchor along the shift -> 0.520
                                                                                                -> 4 x 1 = 4
      * the 4 diagonal centres (+-128, +-128): only the square 812 -> 0.504                    -> 4 x 1 = 4
    Total P7 = 41. P6 anchors are at most 406 wide: 406^2 / 644^2 = 0.397 < 0.5, so P3..P6 get none (the
    low-quality rescue adds nothing: the best anchor already has IoU 1).
    Totals 9 * (768 / stride)^2 = 82944, 20736, 5184, 1296, 324.
    """
    ann_file, image_dir = write_coco([(1, 768, 768, [(62, 62, 644, 644, 1)]), (2, 768, 768, [])])
    rows = level_statistics(load_coco(ann_file, image_dir), ["retinanet"], min_size=768, max_size=1333)
    assert _positives(rows, 1) == [0, 0, 0, 0, 41]
    assert _positives(rows, 2) == [0, 0, 0, 0, 0]
    assert _totals(rows, 1) == _totals(rows, 2) == [82944, 20736, 5184, 1296, 324]


@pytest.mark.parametrize("detector", ["atss", "vfnet"])
def test_atss_assignment_of_a_small_box_counted_by_hand(write_coco, detector):
    """ATSS (and VFNet, which assigns with ATSS): one square anchor of side 8*stride per location.

    Image 512x512. GT [96, 96, 160, 160] (64x64, centre (128, 128), a grid point of every level). The 9
    candidates per level are the 3x3 block of centres around (128, 128). P3 (64-wide anchors): IoU 1 at
    the centre, 56*64 / (8192 - 3584) = 0.778 for the 4 axis neighbours, 56^2 / (8192 - 3136) = 0.620 for
    the 4 diagonal ones. P4..P7 anchors (128..1024 wide) contain the box: IoU 4096 / side^2 = 0.25,
    0.0625, 0.0156, 0.0039 (9 each). Over the 45 candidates mean = 0.213, std = 0.28, so the threshold is
    about 0.49: the 9 P3 candidates (centres inside the box) are positive, nothing else.
    Totals (512 / stride)^2 = 4096, 1024, 256, 64, 16.
    """
    ann_file, image_dir = write_coco([(1, 512, 512, [(96, 96, 64, 64, 2)])])
    rows = level_statistics(load_coco(ann_file, image_dir), [detector], min_size=512, max_size=1333)
    assert _positives(rows, 1) == [9, 0, 0, 0, 0]
    assert _totals(rows, 1) == [4096, 1024, 256, 64, 16]


def test_fcos_assignment_of_a_small_box_counted_by_hand(write_coco):
    """FCOS: points at (i + 0.5) * stride, centre sampling radius 1.5 strides, scale ranges.

    Image 512x512, GT [98, 98, 162, 162] (centre (130, 130)). P3 points 4 + 8k: |x - 130| < 12 holds for
    x = 124, 132, 140 (116 is 14 away): 3 x 3 = 9 points; their largest regression distance is at most
    162 - 124 = 38 <= 64, inside P3's range. Every point of the box has a largest distance < 64, below
    the lower limit of P4..P7 (64, 128, 256, 512). So P3 = 9, the rest 0.
    """
    ann_file, image_dir = write_coco([(1, 512, 512, [(98, 98, 64, 64, 1)])])
    rows = level_statistics(load_coco(ann_file, image_dir), ["fcos"], min_size=512, max_size=1333)
    assert _positives(rows, 1) == [9, 0, 0, 0, 0]
    assert _totals(rows, 1) == [4096, 1024, 256, 64, 16]


def test_real_assigners_accept_images_without_boxes():
    """An image of background only: every anchor/point is background, none positive."""
    for detector in ("retinanet", "atss", "fcos", "vfnet"):
        assign = build_assigner(detector, num_classes=2)
        result = assign((64, 96), [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}])
        assert result.labels.shape == (1, sum(result.num_anchors_per_level))
        assert not ((result.labels >= 0) & (result.labels < 2)).any()
