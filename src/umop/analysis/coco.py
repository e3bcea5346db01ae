"""COCO-json reader for the analyses: image sizes and boxes only, no image decoding.

The analyses need geometry, not pixels. The json is read and validated by :mod:`umop.data.coco` (the same
rules as training: a bad record is skipped with a warning, a box overhanging the image is clipped); image
sizes come from the json's ``width``/``height``, or from the image header (PIL reads no pixels) where the
json lacks them. Images absent from ``image_dir`` are kept (their sizes are in the json) with one warning.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data import records as rec
from ..data.coco import default_image_dir, index_coco, load_coco_json
from ..data.image_io import image_size

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


def _with_header_sizes(images: list, image_dir: Path) -> tuple[list, list[str]]:
    """The image records with ``width``/``height`` read from the header where the json lacks them, and the
    file names absent from ``image_dir``."""
    out, missing = [], []
    for record in images:
        if isinstance(record, dict) and isinstance(record.get("file_name"), str):
            path = image_dir / record["file_name"]
            if not path.is_file():
                missing.append(record["file_name"])
            elif record.get("width") is None and record.get("height") is None:
                try:
                    height, width = image_size(path)
                    record = {**record, "width": width, "height": height}
                except OSError:
                    pass  # reported by index_coco as a record without a size
        out.append(record)
    return out, missing


def load_coco(ann_file: str | Path, image_dir: str | Path | None = None) -> CocoIndex:
    """Read a COCO detection json into a :class:`CocoIndex` with :func:`umop.data.coco.index_coco`.

    ``image_dir`` None: the folder ``umop data convert`` recorded in the json, else the json's folder
    (:func:`umop.data.coco.default_image_dir`).

    Bad records (zero-size boxes, unknown image or category ids, images without a size, ...) are skipped
    with :class:`umop.data.records.BadRecordWarning` warnings, as when training; ``iscrowd`` boxes are left
    out of the analyses (one warning with the count). Images listed in the json but absent from
    ``image_dir`` only produce a warning: the analyses need their sizes, not their pixels.

    Raises:
        ValueError: the json is missing/invalid or lists no (valid) images, or ``image_dir`` does not exist.
    """
    ann_file = Path(ann_file)
    try:
        data = load_coco_json(ann_file)
    except FileNotFoundError as error:
        raise ValueError(f"annotation file {ann_file} does not exist") from error
    image_dir = Path(image_dir) if image_dir is not None else default_image_dir(data, ann_file)
    if not image_dir.is_dir():
        raise ValueError(f"image directory {image_dir} does not exist (--images)")
    if not data["images"]:
        raise ValueError(f"annotation file {ann_file} lists no images: nothing to analyse")
    images, missing = _with_header_sizes(data["images"], image_dir)
    index = index_coco({**data, "images": images}, image_dir, source=str(ann_file), verify_files=False)
    rec.warn_records([*index.bad_records, *index.fixed_records], str(ann_file), what="analysing")
    if not index.images:
        raise ValueError(f"annotation file {ann_file} has no valid image: nothing to analyse")
    category_ids = [int(category["id"]) for category in index.categories]
    class_names = [str(category["name"]) for category in index.categories]
    label_of = {category_id: label for label, category_id in enumerate(category_ids)}

    records, crowd = [], 0
    for image in index.images:
        boxes, labels = [], []
        for annotation in index.annotations.get(image["id"], []):
            if annotation.get("iscrowd", 0):
                crowd += 1
                continue
            x, y, w, h = (float(value) for value in annotation["bbox"])
            boxes.append([x, y, x + w, y + h])
            labels.append(label_of[annotation["category_id"]])
        records.append(ImageRecord(
            image_id=int(image["id"]), file_name=image["file_name"], width=int(image["width"]),
            height=int(image["height"]), boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
            labels=np.asarray(labels, dtype=np.int64)))
    if crowd:
        warnings.warn(f"{ann_file}: left out {crowd} crowd boxes", stacklevel=2)
    if missing:
        warnings.warn(f"{len(missing)} of {len(data['images'])} images of {ann_file} are not in {image_dir} "
                      f"(first: {missing[0]}); their sizes are taken from the json", stacklevel=2)
    skipped = sum(1 for record in index.bad_records if record.kind == rec.ZERO_SIZE_BOX) + crowd
    return CocoIndex(ann_file=ann_file, image_dir=image_dir, images=records, category_ids=category_ids,
                     class_names=class_names, num_skipped_boxes=skipped, missing_files=missing)
