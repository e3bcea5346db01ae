"""Level statistics (UMOP Fig. 2): resize rule, counting, CSV, bad input, hand-counted assignments."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from umop.analysis.coco import load_coco
from umop.data.transforms import build_transforms
from umop.analysis.levels import (CSV_COLUMNS, VALID_DETECTORS, check_detector_name, highest_level_has_highest_share,
                                  level_statistics, mean_positive_ratios, padded_size, read_level_csv,
                                  resized_size, write_level_csv)


@pytest.mark.parametrize("width,height", [(640, 480), (480, 640), (2000, 500), (800, 800), (333, 1000)])
def test_resized_size_equals_the_data_pipeline(width, height):
    image = torch.zeros(3, height, width)
    target = {"boxes": tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(height, width)),
              "labels": torch.zeros(0, dtype=torch.long)}
    expected_height, expected_width = build_transforms(False, 800, 1333)(image, target)[0].shape[-2:]
    assert resized_size(width, height, 800, 1333) == (expected_width, expected_height)


def test_resized_size_hand_worked():
    # scale 800/480: 640 * 5/3 = 1066.67 -> 1067 (rounded, as the data pipeline; torchvision truncates to 1066)
    assert resized_size(640, 480) == (1067, 800)
    # the long side binds: scale 1333/2000, 500 * 0.6665 = 333.25 -> 333
    assert resized_size(2000, 500) == (1333, 333)


def test_padded_size_rounds_up_to_32():
    assert padded_size(1066, 800) == (800, 1088)
    assert padded_size(1, 33) == (64, 32)


def test_fake_assigner_counts_by_hand(write_coco, fake_assigner_factory):
    """Fake assigner: one square anchor of side 4*stride per cell, centres at (i + 0.5) * stride.

    Image 1024x1024 (min_size = max_size = 1024: no resize, no padding). GT 512x512 at [192, 192, 704, 704]
    equals the P7 anchor of cell (3, 3) (centre 448): IoU 1. The 4 P7 anchors shifted by 128 along one
    axis overlap 384 x 512: IoU = 196608 / (2 * 262144 - 196608) = 0.6 -> positive; diagonal neighbours
    384 x 384: 0.39, shifts of 256: 0.33 -> not. P6 anchors are 256 wide: IoU <= 0.25. So P7 = 5, rest 0.
    The second image has no boxes: zeros. Totals: (1024 / stride)^2 = 16384, 4096, 1024, 256, 64.
    """
    ann_file, image_dir = write_coco([(7, 1024, 1024, [(192, 192, 512, 512, 2)]), (8, 1024, 1024, [])])
    rows = level_statistics(load_coco(ann_file, image_dir), ["retinanet"], min_size=1024, max_size=1024,
                            assigner_factory=fake_assigner_factory)
    by_image = {(row.image_id, row.level): row for row in rows}
    assert [by_image[7, level].num_positive for level in range(3, 8)] == [0, 0, 0, 0, 5]
    assert [by_image[8, level].num_positive for level in range(3, 8)] == [0, 0, 0, 0, 0]
    assert [by_image[8, level].num_total for level in range(3, 8)] == [16384, 4096, 1024, 256, 64]
    assert all((row.width, row.height) == (1024, 1024) for row in rows)
    means = mean_positive_ratios(rows)["retinanet"]
    assert means[7] == pytest.approx((5 / 64 + 0) / 2)
    assert highest_level_has_highest_share(means)


def test_boxes_follow_the_resize(write_coco, fake_assigner_factory):
    """A 320x240 image is resized by 800/240: its boxes must be scaled by the same factor, and the
    assigner called with the padded size of the resized image."""
    ann_file, image_dir = write_coco([(1, 320, 240, [(0, 0, 96, 96, 1)])])
    factory_calls = []

    def factory(detector, num_classes):
        factory_calls.append(fake_assigner_factory(detector, num_classes))
        return factory_calls[-1]

    rows = level_statistics(load_coco(ann_file, image_dir), ["atss"], assigner_factory=factory)
    assert (rows[0].width, rows[0].height) == (1067, 800)
    assert factory_calls[0].calls == [(800, 1088)]
    # 96 px * 800/240 = a 320 px box [0, 320]^2. P6 anchors are 256 wide, centres 32 + 64k: the one centred
    # at (160, 160) lies inside it, IoU 65536 / 102400 = 0.64; its 4 axis neighbours overlap 224 x 256:
    # 57344 / 110592 = 0.52; diagonal ones 224 x 224: 0.43. P7 anchors (512 wide) reach 102400 / 262144
    # = 0.39 at best, P5 (128 wide) 16384 / 102400 = 0.16. So P6 = 5, the rest 0.
    assert {row.level: row.num_positive for row in rows} == {3: 0, 4: 0, 5: 0, 6: 5, 7: 0}


def test_csv_has_exactly_the_contract_columns_and_round_trips(tmp_path, write_coco, fake_assigner_factory):
    ann_file, image_dir = write_coco([(3, 640, 480, [(10, 10, 200, 150, 1)]), (4, 500, 500, [])])
    rows = level_statistics(load_coco(ann_file, image_dir), ["fcos", "vfnet"], assigner_factory=fake_assigner_factory)
    path = write_level_csv(rows, tmp_path / "out" / "level_stats.csv")
    with path.open() as handle:
        header = next(csv.reader(handle))
    assert tuple(header) == CSV_COLUMNS == ("detector", "image_id", "level", "num_positive", "num_total",
                                            "width", "height")
    assert read_level_csv(path) == rows
    assert len(rows) == 2 * 2 * 5
    assert {row.detector for row in rows} == {"fcos", "vfnet"}


def test_unknown_detector_lists_valid_names():
    with pytest.raises(ValueError) as error:
        check_detector_name("yolo")
    for name in VALID_DETECTORS:
        assert name in str(error.value)


def test_empty_dataset_and_missing_image_dir_are_clear_errors(tmp_path, write_coco):
    ann_file, image_dir = write_coco([])
    with pytest.raises(ValueError, match="lists no images"):
        load_coco(ann_file, image_dir)
    ann_file, _ = write_coco([(1, 10, 10, [])], name="one.json")
    with pytest.raises(ValueError, match="image directory .*missing_dir.* does not exist"):
        load_coco(ann_file, tmp_path / "missing_dir")
    with pytest.raises(ValueError, match="nope.json"):
        load_coco(tmp_path / "nope.json", tmp_path)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json is not valid json"):
        load_coco(tmp_path / "bad.json", tmp_path)


def test_dataset_without_boxes_gives_zeros_not_a_crash(write_coco, fake_assigner_factory):
    ann_file, image_dir = write_coco([(1, 64, 64, []), (2, 64, 48, [])])
    with pytest.warns(UserWarning, match="no boxes"):
        rows = level_statistics(load_coco(ann_file, image_dir), ["atss"], assigner_factory=fake_assigner_factory)
    assert len(rows) == 10 and all(row.num_positive == 0 and row.num_total > 0 for row in rows)
    assert not highest_level_has_highest_share(mean_positive_ratios(rows)["atss"])


def test_loader_skips_degenerate_and_crowd_boxes(tmp_path, write_coco):
    ann_file, image_dir = write_coco([(1, 100, 100, [(0, 0, 10, 10, 1), (5, 5, 0, 4, 2), (1, 1, 5, 5, 2)])])
    data = json.loads(ann_file.read_text())
    data["annotations"][2]["iscrowd"] = 1
    ann_file.write_text(json.dumps(data))
    with pytest.warns(UserWarning) as caught:
        index = load_coco(ann_file, image_dir)
    messages = " | ".join(str(w.message) for w in caught)
    assert "zero_size_box" in messages and "left out 1 crowd boxes" in messages
    assert index.num_skipped_boxes == 2
    np.testing.assert_array_equal(index.images[0].boxes, [[0, 0, 10, 10]])
    np.testing.assert_array_equal(index.images[0].labels, [0])


def test_sizes_missing_from_the_json_are_read_from_the_image_header(tmp_path, write_coco):
    ann_file, image_dir = write_coco([(1, 0, 0, [(1, 1, 5, 5, 1)]), (2, 30, 20, [])])
    data = json.loads(ann_file.read_text())
    del data["images"][0]["width"], data["images"][0]["height"]
    ann_file.write_text(json.dumps(data))
    Image.new("RGB", (48, 36)).save(image_dir / "1.jpg", format="PNG")
    (image_dir / "2.jpg").unlink()
    with pytest.warns(UserWarning, match="1 of 2 images .* are not in"):
        index = load_coco(ann_file, image_dir)
    assert [(record.width, record.height) for record in index.images] == [(48, 36), (30, 20)]
    assert index.missing_files == ["2.jpg"]
    (image_dir / "1.jpg").unlink()
    # as umop.data: a record without a size that cannot be read is skipped with a warning, not an error
    with pytest.warns(UserWarning, match="image id=1 .*no width/height"):
        index = load_coco(ann_file, image_dir)
    assert [record.image_id for record in index.images] == [2]
