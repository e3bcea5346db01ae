"""A fixed, documented train/val split of a COCO json (for sets without an official split, e.g. coco128).

``split_coco(coco, num_val=32, by="name")`` sorts the images by ``file_name``; the last ``num_val`` are the
validation set, the others the training set. Every annotation follows its image; both files keep all the
categories (same class order). ``info.split`` records how the files were made.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["split_coco", "SPLIT_ORDERS"]

SPLIT_ORDERS = ("name",)


def split_coco(coco: dict[str, Any], num_val: int, by: str = "name") -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a COCO dict into ``(train, val)``: images sorted by ``by`` (``"name"`` = ``file_name``), the last
    ``num_val`` to val.

    Raises:
        ValueError: ``num_val`` not in ``1 .. number of images - 1``, an unknown ``by``, or images without
            ``file_name`` / ``id``.
    """
    if by not in SPLIT_ORDERS:
        raise ValueError(f"--by must be one of {', '.join(SPLIT_ORDERS)}, got {by!r}")
    images = coco.get("images")
    if not isinstance(images, list) or not images:
        raise ValueError("the COCO json has no 'images'")
    if not 1 <= num_val < len(images):
        raise ValueError(f"--val must be between 1 and {len(images) - 1} (the json has {len(images)} images), "
                         f"got {num_val}")
    for position, image in enumerate(images):
        if not isinstance(image, dict) or "file_name" not in image or "id" not in image:
            raise ValueError(f"images[{position}] has no 'file_name' or 'id'")
    ordered = sorted(images, key=lambda image: str(image["file_name"]))
    parts = {"train": ordered[: len(ordered) - num_val], "val": ordered[len(ordered) - num_val:]}
    out = []
    for name, part in parts.items():
        ids = {image["id"] for image in part}
        split = {key: copy.deepcopy(value) for key, value in coco.items() if key not in ("images", "annotations")}
        split["info"] = {**dict(coco.get("info") or {}),
                         "split": {"part": name, "by": by, "num_val": num_val, "num_images": len(part),
                                   "rule": "images sorted by file_name; the last num_val are val"}}
        split["images"] = copy.deepcopy(part)
        split["annotations"] = [copy.deepcopy(a) for a in coco.get("annotations", []) if a.get("image_id") in ids]
        out.append(split)
    return out[0], out[1]
