"""The two real datasets of ../shared/data convert with the counts of its README (skip when absent)."""

from __future__ import annotations

import collections
import warnings
from pathlib import Path

import pytest
import torch

from umop.data import BadRecordWarning, CocoDetection, check_dataset, save_coco_json, voc_to_coco, yolo_to_coco

BCCD_ORDER = ["RBC", "WBC", "Platelets"]


@pytest.fixture(scope="module")
def bccd_root(shared_data_dir: Path) -> Path:
    return shared_data_dir / "bccd" / "BCCD"


def _convert_quietly(function, *args, **kwargs) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadRecordWarning)
        return function(*args, **kwargs)


def test_bccd_converts_with_readme_counts(bccd_root: Path) -> None:
    coco = _convert_quietly(voc_to_coco, bccd_root, class_names=BCCD_ORDER)
    issues = coco["info"]["conversion_issues"]
    # README: 364 images, 4,888 boxes; two of them are single-point clicks (xmin == xmax, ymin == ymax)
    assert [issue["kind"] for issue in issues] == ["zero_size_box", "zero_size_box"]
    assert sorted(Path(issue["source"]).name for issue in issues) == ["BloodImage_00338.xml", "BloodImage_00343.xml"]
    assert len(coco["images"]) == 364
    assert len(coco["annotations"]) == 4888 - 2
    per_class = collections.Counter(coco["categories"][a["category_id"] - 1]["name"] for a in coco["annotations"])
    assert per_class == {"RBC": 4155 - 2, "WBC": 372, "Platelets": 361}
    assert {(im["width"], im["height"]) for im in coco["images"]} == {(640, 480)}
    # default class order is sorted
    default = _convert_quietly(voc_to_coco, bccd_root)
    assert [c["name"] for c in default["categories"]] == ["Platelets", "RBC", "WBC"]


@pytest.mark.parametrize(("split", "num_images"), [("train", 205), ("val", 87), ("trainval", 292), ("test", 72)])
def test_bccd_official_splits(bccd_root: Path, split: str, num_images: int) -> None:
    coco = _convert_quietly(voc_to_coco, bccd_root, split_file=bccd_root / "ImageSets" / "Main" / f"{split}.txt")
    assert len(coco["images"]) == num_images


def test_bccd_dataset_agrees_with_the_xml(bccd_root: Path, tmp_path: Path, bccd_samples) -> None:
    coco = _convert_quietly(voc_to_coco, bccd_root, split_file="train", class_names=BCCD_ORDER)
    ann_file = save_coco_json(coco, tmp_path / "bccd_train.json")
    dataset = CocoDetection(ann_file, bccd_root / "JPEGImages")
    assert dataset.class_names == BCCD_ORDER and dataset.label_to_category_id == [1, 2, 3]
    report = check_dataset(ann_file, bccd_root / "JPEGImages", decode_images=False)
    assert report.ok and report.num_valid_boxes == len(coco["annotations"])
    reference = bccd_samples(n=2, split="train")  # read from the xml independently of umop.data
    for index, (ref_image, ref_target) in enumerate(reference):
        image, target = dataset[index]
        assert image.shape == ref_image.shape == (3, 480, 640)
        torch.testing.assert_close(image, ref_image, atol=2 / 255, rtol=0)
        assert torch.equal(target["labels"], ref_target["labels"])
        # VOC 1-based inclusive pixels: umop's box starts one pixel earlier, ends at the same place
        torch.testing.assert_close(target["boxes"], ref_target["boxes"] - torch.tensor([1.0, 1.0, 0.0, 0.0]))
        assert target["orig_size"] == (480, 640)


def test_coco128_converts_with_readme_counts(shared_data_dir: Path) -> None:
    root = shared_data_dir / "coco128"
    coco = _convert_quietly(yolo_to_coco, root / "images" / "train")
    # README: 128 images (2 without boxes), 929 boxes, 71 of 80 classes used, person 254.
    # Two label files (000000000656, 000000000659: 3 + 9 lines) have no image: reported, not converted.
    issues = coco["info"]["conversion_issues"]
    assert [issue["kind"] for issue in issues] == ["orphan_label_file"] * 2
    assert len(coco["images"]) == 128
    assert len(coco["annotations"]) == 929
    assert len(coco["categories"]) == 80 and coco["categories"][0]["name"] == "person"
    with_boxes = {a["image_id"] for a in coco["annotations"]}
    assert len(coco["images"]) - len(with_boxes) == 2
    per_class = collections.Counter(a["category_id"] for a in coco["annotations"])
    assert len(per_class) == 71 and per_class[1] == 254
    sizes = collections.Counter(
        "small" if a["area"] < 32**2 else "medium" if a["area"] < 96**2 else "large" for a in coco["annotations"]
    )
    assert sizes == {"small": 337, "medium": 281, "large": 311}
