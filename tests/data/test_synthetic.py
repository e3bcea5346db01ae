"""Synthetic generator: determinism, class imbalance ratio, object sizes, learnable colour per class."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from umop.data import CocoDetection, check_dataset, make_synthetic_dataset, make_tiny_synthetic_dataset
from umop.data.synthetic import COLOURS, class_frequencies, synthetic_class_names


def _files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_same_seed_same_bytes_other_seed_other_data(tmp_path: Path) -> None:
    first = make_tiny_synthetic_dataset(tmp_path / "a", seed=5)
    second = make_tiny_synthetic_dataset(tmp_path / "b", seed=5)
    third = make_tiny_synthetic_dataset(tmp_path / "c", seed=6)
    assert first.name == "annotations.json"
    assert _files(first.parent) == _files(second.parent)
    assert json.loads(first.read_text())["annotations"] != json.loads(third.read_text())["annotations"]


@pytest.mark.parametrize(("num_classes", "imbalance"), [(4, 10.0), (6, 1.0)])
def test_class_imbalance_ratio(tmp_path: Path, num_classes: int, imbalance: float) -> None:
    ann_file = make_synthetic_dataset(
        tmp_path, num_images=60, image_size=48, num_classes=num_classes, class_imbalance=imbalance,
        min_object_size=4, objects_per_image=(2, 6), seed=1,
    )  # fmt: skip
    coco = json.loads(ann_file.read_text())
    counts = collections.Counter(a["category_id"] for a in coco["annotations"])
    per_class = np.array([counts[c + 1] for c in range(num_classes)])
    total = per_class.sum()
    expected = class_frequencies(num_classes, imbalance) * total
    assert np.all(np.abs(per_class - expected) <= 1.0)  # exact allotment, up to rounding
    assert per_class[0] / per_class[-1] == pytest.approx(imbalance, rel=2 * num_classes / per_class[-1])
    assert np.all(np.diff(per_class) <= 1)  # non-increasing up to rounding


def test_object_sizes_span_the_range_and_fit_the_image(tmp_path: Path) -> None:
    ann_file = make_synthetic_dataset(tmp_path, num_images=40, image_size=(128, 160), num_classes=3, seed=2)
    coco = json.loads(ann_file.read_text())
    assert {(im["height"], im["width"]) for im in coco["images"]} == {(128, 160)}
    sides = []
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        assert x >= 0 and y >= 0 and x + w <= 160 and y + h <= 128
        assert min(w, h) >= 4
        sides.append(np.sqrt(w * h))
    assert min(sides) < 8 and max(sides) > 0.5 * 128  # from a few pixels to most of the image
    report = check_dataset(ann_file)
    assert report.ok and not report.fixed_records


def test_class_is_tied_to_colour(tmp_path: Path) -> None:
    """The centre pixel of each large, unoccluded object has its class colour (so the task is learnable)."""
    ann_file = make_synthetic_dataset(tmp_path, num_images=20, image_size=96, num_classes=6, objects_per_image=(1, 1), seed=4)
    coco = json.loads(ann_file.read_text())
    names = synthetic_class_names(6)
    assert len(set(names)) == 6
    checked = 0
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        if min(w, h) < 12:
            continue
        image = np.asarray(Image.open(tmp_path / coco["images"][ann["image_id"] - 1]["file_name"]).convert("RGB"))
        pixel = image[int(y + h * 0.6), int(x + w / 2)].astype(int)  # 0.6: inside the triangle too
        colour = np.array(COLOURS[names[ann["category_id"] - 1].split("_")[0]])
        assert np.abs(pixel - colour).max() <= 20, (ann, pixel, colour)
        checked += 1
    assert checked >= 5


def test_tiny_set_loads_in_the_dataset(tmp_path: Path) -> None:
    dataset = CocoDetection(make_tiny_synthetic_dataset(tmp_path))
    assert len(dataset) == 8 and dataset.num_classes == 3
    image, target = dataset[0]
    assert image.shape == (3, 64, 64) and len(target["boxes"]) >= 1


def test_bad_arguments_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="class_imbalance"):
        make_synthetic_dataset(tmp_path, class_imbalance=0.5)
    with pytest.raises(ValueError, match="num_classes"):
        make_synthetic_dataset(tmp_path, num_classes=100)
    with pytest.raises(ValueError, match="min_object_size"):
        make_synthetic_dataset(tmp_path, image_size=32, min_object_size=40)
