"""Fast COCO-json reader for the analyses: image sizes and boxes only, no image decoding.

The analyses need geometry, not pixels, so they read the annotation file with the ``json`` module (much
faster than building a dataset of decoded images). Image sizes come from the json's ``width``/``height``;
only when those are missing is the image header read with PIL (which does not decode the pixels).
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class ImageRecord:
    """One image of a COCO json: original size and its boxes.

    Attributes:
        image_id: COCO image id.
        file_name: path relative to the image directory.
        width, height: original image size in pixels.
        boxes: ``(N, 4)`` float64 absolute ``xyxy`` boxes in original pixels.
        labels: ``(N,)`` int64 contiguous labels ``0..num_classes-1``.
    """

    image_id: int
    file_name: str
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray


@dataclass
class CocoIndex:
    """Images and categories of one COCO json, with contiguous labels sorted by category id."""

    ann_file: Path
    image_dir: Path
    images: list[ImageRecord]
    category_ids: list[int]
    class_names: list[str]
    num_skipped_boxes: int = 0
    missing_files: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)


def _read_json(ann_file: Path) -> dict:
    if not ann_file.is_file():
        raise ValueError(f"annotation file {ann_file} does not exist")
    try:
        data = json.loads(ann_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"annotation file {ann_file} is not valid JSON: {error}") from error
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"annotation file {ann_file} is not a COCO detection json (no 'images' list)")
    return data


def _image_size(record: dict, image_dir: Path, ann_file: Path) -> tuple[int, int]:
    """(width, height) from the json record, else from the image header."""
    width, height = record.get("width"), record.get("height")
    if isinstance(width, (int, float)) and isinstance(height, (int, float)) and width > 0 and height > 0:
        return int(width), int(height)
    path = image_dir / str(record.get("file_name", ""))
    if not path.is_file():
        raise ValueError(f"{ann_file}: image id {record.get('id')} has no width/height and its file "
                         f"{path} does not exist")
    from PIL import Image

    with Image.open(path) as image:
        return image.size


def load_coco(ann_file: str | Path, image_dir: str | Path | None = None) -> CocoIndex:
    """Read a COCO detection json into a :class:`CocoIndex`.

    Boxes with zero or negative size and ``iscrowd`` boxes are skipped (as in training), with one warning
    giving the count. Images listed in the json but absent from ``image_dir`` only produce a warning: the
    analyses need their sizes, not their pixels.

    Raises:
        ValueError: the json is missing/invalid or lists no images, ``image_dir`` does not exist, or an
            annotation names an unknown image or category.
    """
    ann_file = Path(ann_file)
    data = _read_json(ann_file)
    if image_dir is None:  # the folder `umop data convert` recorded, else the json's folder
        from umop.data.coco import default_image_dir

        image_dir = default_image_dir(data, ann_file)
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise ValueError(f"image directory {image_dir} does not exist (--images)")
    if not data["images"]:
        raise ValueError(f"annotation file {ann_file} lists no images: nothing to analyse")
    categories = sorted(data.get("categories") or [], key=lambda category: category["id"])
    category_ids = [int(category["id"]) for category in categories]
    class_names = [str(category.get("name", category["id"])) for category in categories]
    label_of = {category_id: label for label, category_id in enumerate(category_ids)}

    boxes_of: dict[int, list[list[float]]] = {}
    labels_of: dict[int, list[int]] = {}
    image_ids = {record.get("id") for record in data["images"]}
    skipped = 0
    for annotation in data.get("annotations") or []:
        image_id = annotation.get("image_id")
        if image_id not in image_ids:
            raise ValueError(f"{ann_file}: annotation {annotation.get('id')} refers to unknown image id "
                             f"{image_id}")
        if annotation.get("category_id") not in label_of:
            raise ValueError(f"{ann_file}: annotation {annotation.get('id')} has unknown category_id "
                             f"{annotation.get('category_id')}")
        x, y, w, h = (float(value) for value in annotation["bbox"])
        if annotation.get("iscrowd", 0) or w <= 0 or h <= 0:
            skipped += 1
            continue
        boxes_of.setdefault(image_id, []).append([x, y, x + w, y + h])
        labels_of.setdefault(image_id, []).append(label_of[annotation["category_id"]])
    if skipped:
        warnings.warn(f"{ann_file}: skipped {skipped} crowd or zero/negative-size boxes", stacklevel=2)

    images, missing = [], []
    for record in data["images"]:
        image_id = record.get("id")
        file_name = str(record.get("file_name", ""))
        if not (image_dir / file_name).is_file():
            missing.append(file_name)
        width, height = _image_size(record, image_dir, ann_file)
        images.append(ImageRecord(
            image_id=int(image_id), file_name=file_name, width=width, height=height,
            boxes=np.asarray(boxes_of.get(image_id, []), dtype=np.float64).reshape(-1, 4),
            labels=np.asarray(labels_of.get(image_id, []), dtype=np.int64)))
    if missing:
        warnings.warn(f"{len(missing)} of {len(images)} images of {ann_file} are not in {image_dir} "
                      f"(first: {missing[0]}); their sizes are taken from the json", stacklevel=2)
    return CocoIndex(ann_file=ann_file, image_dir=image_dir, images=images, category_ids=category_ids,
                     class_names=class_names, num_skipped_boxes=skipped, missing_files=missing)
