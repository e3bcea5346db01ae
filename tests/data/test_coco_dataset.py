"""CocoDetection and check_dataset on a hand-made json holding every kind of bad record."""

from __future__ import annotations

import collections
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from umop.data import BadRecordWarning, CocoDetection, check_dataset, collate_fn

EXPECTED_BAD = {
    "malformed_record": 2,  # image without file_name, annotation with a text bbox
    "duplicate_id": 2,  # one image id, one annotation id
    "missing_image": 1,
    "unknown_image": 1,
    "unknown_category": 1,
    "zero_size_box": 2,  # zero width, negative height
    "box_outside_image": 1,
}


def _image(path: Path, width: int, height: int, value: int) -> dict:
    Image.fromarray(np.full((height, width, 3), value, dtype=np.uint8)).save(path)
    return {"file_name": path.name, "width": width, "height": height}


@pytest.fixture
def bad_coco(tmp_path: Path) -> Path:
    """Images 1-3 good (3 has no box), 4 unreadable (garbage bytes), plus one record of each bad kind."""
    images = [
        {"id": 1, **_image(tmp_path / "one.png", 40, 30, 10)},
        {"id": 2, **_image(tmp_path / "two.png", 50, 20, 20)},
        {"id": 3, **_image(tmp_path / "three.png", 16, 16, 30)},
        {"id": 4, "file_name": "broken.png", "width": 10, "height": 10},
        {"id": 5, "file_name": "absent.png", "width": 10, "height": 10},  # missing_image
        {"id": 1, "file_name": "two.png", "width": 50, "height": 20},  # duplicate_id
        {"id": 6, "width": 10, "height": 10},  # malformed: no file_name
    ]
    (tmp_path / "broken.png").write_bytes(b"this is not a png")
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 2, 10, 5], "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 9, "bbox": [30, 20, 20, 20]},  # partly outside: clipped
        {"id": 3, "image_id": 1, "category_id": 7, "bbox": [0, 0, 40, 30], "iscrowd": 1},  # crowd: ignored
        {"id": 4, "image_id": 2, "category_id": 9, "bbox": [5, 5, 10, 10]},
        {"id": 4, "image_id": 2, "category_id": 9, "bbox": [6, 6, 10, 10]},  # duplicate_id
        {"id": 5, "image_id": 2, "category_id": 9, "bbox": [5, 5, 0, 10]},  # zero_size_box
        {"id": 6, "image_id": 2, "category_id": 9, "bbox": [5, 5, 4, -1]},  # zero_size_box (negative)
        {"id": 7, "image_id": 2, "category_id": 9, "bbox": [60, 5, 4, 4]},  # box_outside_image
        {"id": 8, "image_id": 2, "category_id": 3, "bbox": [5, 5, 4, 4]},  # unknown_category
        {"id": 9, "image_id": 99, "category_id": 9, "bbox": [5, 5, 4, 4]},  # unknown_image
        {"id": 10, "image_id": 2, "category_id": 9, "bbox": "5 5 4 4"},  # malformed
        {"id": 11, "image_id": 4, "category_id": 7, "bbox": [1, 1, 4, 4]},  # on the unreadable image
        {"id": 12, "image_id": 5, "category_id": 7, "bbox": [1, 1, 4, 4]},  # on the missing image: dropped with it
    ]
    categories = [{"id": 9, "name": "nine"}, {"id": 7, "name": "seven"}]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def test_every_bad_record_is_warned_and_skipped(bad_coco: Path) -> None:
    with pytest.warns(BadRecordWarning) as caught:
        dataset = CocoDetection(bad_coco, bad_coco.parent)
    assert collections.Counter(r.kind for r in dataset.bad_records) == EXPECTED_BAD
    assert [r.kind for r in dataset.fixed_records] == ["box_clipped"]
    messages = [str(w.message) for w in caught]
    assert len(messages) == sum(EXPECTED_BAD.values()) + 1 + 1  # one each, the clipped box, the summary
    assert "annotation id=9" in " ".join(messages) and "absent.png" in " ".join(messages)
    assert "skipped 10 bad record(s)" in messages[-1]

    # labels follow the sorted category ids: 7 -> 0, 9 -> 1
    assert dataset.class_names == ["seven", "nine"] and dataset.label_to_category_id == [7, 9]
    assert dataset.image_ids == [1, 2, 3, 4]
    image, target = dataset[0]
    assert image.dtype == torch.float32 and image.shape == (3, 30, 40)
    assert torch.allclose(image, torch.full_like(image, 10 / 255))
    torch.testing.assert_close(target["boxes"], torch.tensor([[1.0, 2.0, 11.0, 7.0], [30.0, 20.0, 40.0, 30.0]]))
    assert target["labels"].tolist() == [0, 1] and target["image_id"] == 1 and target["orig_size"] == (30, 40)
    empty = dataset[2][1]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    # the clean dict keeps the crowd box (for evaluation) and the clipped box
    assert sorted(a["id"] for a in dataset.coco["annotations"]) == [1, 2, 3, 4, 11]


def test_unreadable_image_does_not_stop_an_epoch(bad_coco: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadRecordWarning)
        dataset = CocoDetection(bad_coco, bad_coco.parent)
    loader = DataLoader(dataset, batch_size=2, collate_fn=collate_fn, shuffle=False)
    with pytest.warns(BadRecordWarning, match="broken.png"):
        batches = list(loader)
    images, targets = zip(*batches)
    image_ids = [t["image_id"] for batch in targets for t in batch]
    assert image_ids == [1, 2, 3, 1]  # index 3 (unreadable) is replaced by the next valid record
    assert all(isinstance(batch, list) and len(batch) == 2 for batch in images)
    assert [(f.kind, f.record) for f in dataset.load_failures] == [("unreadable_image", "image id=4 (broken.png)")]
    dataset[3]  # a known failure is skipped without a new warning
    assert len(dataset.load_failures) == 1


def test_check_dataset_lists_every_record(bad_coco: Path) -> None:
    report = check_dataset(bad_coco, bad_coco.parent)
    expected = dict(EXPECTED_BAD, unreadable_image=1)
    assert report.counts() == expected
    assert not report.ok
    assert report.num_images == 7 and report.num_valid_images == 3 and report.num_images_without_boxes == 1
    assert report.num_valid_boxes == 3 and report.num_crowd == 1
    assert report.boxes_per_class == {"nine": 2, "seven": 1}
    text = report.format()
    for record in report.bad_records:
        assert record.record in text
    assert "unreadable_image" in text and "FOUND 11 bad record(s)" in text
    shallow = check_dataset(bad_coco, bad_coco.parent, decode_images=False)
    assert "unreadable_image" not in shallow.counts() and shallow.num_valid_images == 4


def test_missing_width_height_read_from_file(tmp_path: Path) -> None:
    _image(tmp_path / "a.png", 21, 13, 0)
    coco = {"images": [{"id": 3, "file_name": "a.png"}], "annotations": [], "categories": [{"id": 1, "name": "x"}]}
    dataset = CocoDetection(coco, tmp_path)
    assert dataset.coco["images"][0]["width"] == 21 and dataset[0][0].shape == (3, 13, 21)


def test_size_mismatch_found_at_load_time(tmp_path: Path) -> None:
    images = [{"id": 1, **_image(tmp_path / "a.png", 8, 8, 0)}, {"id": 2, **_image(tmp_path / "b.png", 8, 8, 0)}]
    images[0]["width"] = 9
    coco = {"images": images, "annotations": [], "categories": [{"id": 1, "name": "x"}]}
    dataset = CocoDetection(coco, tmp_path)
    with pytest.warns(BadRecordWarning, match="image_size_mismatch"):
        assert dataset[0][1]["image_id"] == 2


@pytest.mark.parametrize(
    ("content", "match"),
    [("{not json", "bad.json is not valid json"), ("[]", "json object"), ('{"images": []}', "'categories'")],
)
def test_unusable_files_raise_naming_the_file(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        CocoDetection(path, tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        CocoDetection(tmp_path / "missing.json", tmp_path)


def test_all_images_unreadable_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"junk")
    coco = {"images": [{"id": 1, "file_name": "x.png", "width": 4, "height": 4}], "categories": [{"id": 1, "name": "a"}]}
    dataset = CocoDetection(coco, tmp_path)
    with pytest.warns(BadRecordWarning), pytest.raises(RuntimeError, match="none of the 1 images could be read"):
        dataset[0]


def test_transforms_are_applied_to_image_and_boxes(tmp_path: Path) -> None:
    from umop.data import build_transforms, make_tiny_synthetic_dataset

    ann_file = make_tiny_synthetic_dataset(tmp_path)
    plain = CocoDetection(ann_file)
    resized = CocoDetection(ann_file, transforms=build_transforms(train=False, min_size=32, max_size=100))
    for index in range(len(plain)):
        (image, target), (small, small_target) = plain[index], resized[index]
        assert small.shape == (3, 32, 32) and small.dtype == torch.float32
        assert small_target["orig_size"] == (64, 64) and small_target["image_id"] == target["image_id"]
        kept = small_target["labels"].tolist()
        assert len(kept) <= len(target["labels"])
        if len(kept) == len(target["labels"]):  # no box fell under 1 px: exact halving
            torch.testing.assert_close(small_target["boxes"], target["boxes"] / 2)
