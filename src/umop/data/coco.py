"""COCO json detection dataset (the native format of umop) and its record validation.

Rules applied to every annotation file (by :class:`CocoDetection` and by ``umop data check``):

* bad records are **skipped**, each announced once (:class:`~umop.data.records.BadRecordWarning`) plus a
  summary: malformed record, duplicate id (the first record with an id is kept), missing image, unreadable
  image / size mismatch (found when the image is decoded), annotation of an unknown image or category,
  zero/negative-size box, box entirely outside the image; annotations of a skipped image go with it;
* a box **partly** outside the image is **clipped** to it and kept (a "fixed" record); an overhang of at
  most :data:`CLIP_TOLERANCE` pixel is rounding noise and is clipped silently;
* ``iscrowd=1`` boxes are kept in :attr:`CocoDetection.coco` (COCO evaluation ignores them) but are not
  training targets; images without boxes are kept (targets with ``(0, 4)`` boxes).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torchvision import tv_tensors

from umop.data import records as rec
from umop.data.image_io import image_size, read_image_rgb

CLIP_TOLERANCE = 1.0  # pixels a box may exceed the image by before its clipping is reported

__all__ = ["CocoDetection", "CocoIndex", "collate_fn", "index_coco", "load_coco_json", "default_image_dir",
           "CLIP_TOLERANCE"]


def default_image_dir(coco: dict[str, Any], ann_file: str | Path) -> Path:
    """The image folder of a COCO json when none is given: the ``info.image_dir`` that ``umop data convert``
    records (absolute, or relative to the json's folder), else the json's own folder."""
    ann_file = Path(ann_file)
    info = coco.get("info") if isinstance(coco, dict) else None
    recorded = info.get("image_dir") if isinstance(info, dict) else None
    if isinstance(recorded, str) and recorded:
        return ann_file.parent / recorded  # an absolute path stays absolute
    return ann_file.parent


def load_coco_json(ann_file: str | Path) -> dict[str, Any]:
    """Read a COCO instances json file.

    Raises:
        FileNotFoundError: ``ann_file`` does not exist.
        ValueError: not valid json, or not a COCO detection file (message names the file and the problem).
    """
    ann_file = Path(ann_file)
    if ann_file.is_dir():
        raise FileNotFoundError(f"annotation file {ann_file} is a directory, expected a COCO json file")
    if not ann_file.is_file():
        raise FileNotFoundError(f"annotation file not found: {ann_file}")
    try:
        with ann_file.open("r", encoding="utf-8") as handle:
            coco = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{ann_file} is not valid json: {error}") from error
    _check_top_level(coco, str(ann_file))
    return coco


def _check_top_level(coco: Any, source: str) -> None:
    if not isinstance(coco, dict):
        raise ValueError(f"{source}: a COCO file must hold a json object, got {type(coco).__name__}")
    for key in ("images", "categories"):
        if not isinstance(coco.get(key), list):
            raise ValueError(f"{source}: a COCO file needs a list under {key!r}")
    if not isinstance(coco.get("annotations", []), list):
        raise ValueError(f"{source}: 'annotations' must be a list")


@dataclass
class CocoIndex:
    """Validated content of a COCO dict.

    Attributes:
        images: valid image records (file order), each with int ``width``/``height``.
        annotations: image id -> valid annotation records of that image (boxes clipped where needed;
            crowd annotations included).
        categories: valid category records sorted by id (label ``i`` is ``categories[i]``).
        bad_records: skipped records.
        fixed_records: repaired records (clipped boxes).
        source: name of the file (for messages).
    """

    images: list[dict[str, Any]]
    annotations: dict[int, list[dict[str, Any]]]
    categories: list[dict[str, Any]]
    bad_records: list[rec.BadRecord] = field(default_factory=list)
    fixed_records: list[rec.BadRecord] = field(default_factory=list)
    source: str = "<dict>"

    @property
    def num_annotations(self) -> int:
        """Number of valid annotations (crowd included)."""
        return sum(len(anns) for anns in self.annotations.values())

    def to_coco(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """A clean COCO dict with only the valid records (usable by COCO evaluation)."""
        coco = dict(extra or {})
        coco["images"] = [dict(image) for image in self.images]
        coco["annotations"] = [dict(ann) for image in self.images for ann in self.annotations.get(image["id"], [])]
        coco["categories"] = [dict(category) for category in self.categories]
        return coco


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def index_coco(
    coco: dict[str, Any],
    image_dir: str | Path | None,
    *,
    source: str = "<dict>",
    verify_files: bool = True,
) -> CocoIndex:
    """Validate a COCO dict record by record (see the module docstring for the rules).

    Args:
        coco: the parsed json.
        image_dir: folder the ``file_name`` of each image is relative to (needed when ``verify_files``).
        source: name used in messages (the json path).
        verify_files: check that every image file exists (and read width/height from its header when the
            record lacks them). Decoding is left to load time / ``check_dataset``.

    Raises:
        ValueError: the dict is not a COCO detection dict at all.
    """
    _check_top_level(coco, source)
    bad: list[rec.BadRecord] = []
    fixed: list[rec.BadRecord] = []
    image_dir = Path(image_dir) if image_dir is not None else None

    def report(kind: str, record: str, message: str, into: list[rec.BadRecord] = bad) -> None:
        into.append(rec.BadRecord(kind, source, record, message))

    # Categories.
    categories: dict[int, dict[str, Any]] = {}
    for position, category in enumerate(coco["categories"]):
        name = f"categories[{position}]"
        if not isinstance(category, dict) or not _is_int(category.get("id")) or not isinstance(category.get("name"), str):
            report(rec.MALFORMED, name, "a category needs an int 'id' and a str 'name'")
            continue
        if category["id"] in categories:
            report(rec.DUPLICATE_ID, f"category id={category['id']}", f"id already used by {categories[category['id']]['name']!r}")
            continue
        categories[category["id"]] = category

    # Images.
    images: dict[int, dict[str, Any]] = {}
    seen_image_ids: set[int] = set()
    for position, image in enumerate(coco["images"]):
        name = f"images[{position}]"
        if not isinstance(image, dict) or not _is_int(image.get("id")) or not isinstance(image.get("file_name"), str):
            report(rec.MALFORMED, name, "an image needs an int 'id' and a str 'file_name'")
            continue
        image_id = image["id"]
        name = f"image id={image_id} ({image['file_name']})"
        if image_id in seen_image_ids:
            report(rec.DUPLICATE_ID, name, "image id already used by an earlier image (the first is kept)")
            continue
        seen_image_ids.add(image_id)
        width, height = image.get("width"), image.get("height")
        has_size = width is not None or height is not None
        if has_size and not (_is_int(width) and _is_int(height) and width > 0 and height > 0):
            report(rec.MALFORMED, name, f"width/height must be positive ints, got {width!r}/{height!r}")
            continue
        image = dict(image)
        if verify_files:
            if image_dir is None:
                raise ValueError("image_dir is required when verify_files=True")
            path = image_dir / image["file_name"]
            if not path.is_file():
                report(rec.MISSING_IMAGE, name, f"file not found: {path}")
                continue
            if not has_size:
                try:
                    image["height"], image["width"] = image_size(path)
                except OSError as error:
                    report(rec.UNREADABLE_IMAGE, name, str(error))
                    continue
        elif not has_size:
            report(rec.MALFORMED, name, "no width/height (and files are not read)")
            continue
        images[image_id] = image

    # Annotations.
    annotations: dict[int, list[dict[str, Any]]] = {image_id: [] for image_id in images}
    seen_ann_ids: set[Any] = set()
    for position, ann in enumerate(coco.get("annotations", [])):
        name = f"annotations[{position}]"
        if not isinstance(ann, dict):
            report(rec.MALFORMED, name, "an annotation must be a json object")
            continue
        if "id" in ann:
            if not _is_int(ann["id"]):
                report(rec.MALFORMED, name, f"annotation id must be an int, got {ann['id']!r}")
                continue
            name = f"annotation id={ann['id']}"
            if ann["id"] in seen_ann_ids:
                report(rec.DUPLICATE_ID, name, "annotation id already used (the first is kept)")
                continue
            seen_ann_ids.add(ann["id"])
        bbox = ann.get("bbox")
        if not _is_int(ann.get("image_id")) or not _is_int(ann.get("category_id")):
            report(rec.MALFORMED, name, "an annotation needs int 'image_id' and 'category_id'")
            continue
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            report(rec.MALFORMED, name, f"bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}")
            continue
        image = images.get(ann["image_id"])
        if image is None:
            if ann["image_id"] not in seen_image_ids:
                report(rec.UNKNOWN_IMAGE, name, f"image_id {ann['image_id']} is not in 'images'")
            continue  # annotations of a skipped image are dropped with it (already reported)
        if ann["category_id"] not in categories:
            report(rec.UNKNOWN_CATEGORY, name, f"category_id {ann['category_id']} is not in 'categories'")
            continue
        x, y, w, h = (float(v) for v in bbox)
        if w <= 0 or h <= 0:
            report(rec.ZERO_SIZE_BOX, name, f"bbox {list(bbox)} has width or height <= 0")
            continue
        width, height = image["width"], image["height"]
        x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))
        if x1 <= x0 or y1 <= y0:
            report(rec.BOX_OUTSIDE_IMAGE, name, f"bbox {list(bbox)} lies outside the {width}x{height} image")
            continue
        ann = dict(ann)
        if (x0, y0, x1, y1) != (x, y, x + w, y + h):
            overhang = max(-x, -y, x + w - width, y + h - height)
            clipped = [x0, y0, x1 - x0, y1 - y0]
            if overhang > CLIP_TOLERANCE:
                report(
                    rec.BOX_CLIPPED,
                    name,
                    f"bbox {list(bbox)} exceeds the {width}x{height} image by {overhang:.1f}px, clipped to {clipped}",
                    into=fixed,
                )
            ann["bbox"] = clipped
        annotations[image["id"]].append(ann)

    return CocoIndex(
        images=list(images.values()),
        annotations=annotations,
        categories=sorted(categories.values(), key=lambda category: category["id"]),
        bad_records=bad,
        fixed_records=fixed,
        source=source,
    )


class CocoDetection(torch.utils.data.Dataset):
    """Detection dataset over a COCO instances json.

    Args:
        ann_file: path of the json (or an already loaded COCO dict).
        image_dir: folder that ``file_name`` is relative to; default: the json's recorded ``info.image_dir``
            (see :func:`default_image_dir`), else the json's folder.
        transforms: callable ``(image, target) -> (image, target)`` (e.g. :func:`umop.data.build_transforms`);
            it receives a ``tv_tensors.Image`` (uint8) and ``target["boxes"]`` as ``tv_tensors.BoundingBoxes``.
        remove_images_without_annotations: drop images that have no (non-crowd) box.
        warn: emit the bad-record warnings (one per record plus a summary).
        unreadable: what ``dataset[i]`` does when image ``i`` cannot be decoded: ``"substitute"`` (training:
            the next readable image is returned instead) or ``"skip"`` (evaluation / prediction: the sample
            ``(None, {"image_id", "file_name", "load_error"})`` is returned, so that every other image is
            evaluated exactly once and the failure is counted; :func:`collate_fn` passes it through).

    ``dataset[i]`` returns ``(image, target)``: image float ``[3, H, W]`` in 0..1; target ``{"boxes": (N, 4)
    float xyxy absolute, "labels": (N,) long in 0..K-1, "image_id": int, "orig_size": (h, w)}``.
    An image that cannot be decoded at load time is recorded in :attr:`load_failures` (with a warning) and,
    with ``unreadable="substitute"``, the next valid record is returned instead, so an epoch never crashes on
    one bad file; with ``unreadable="skip"`` a ``None`` image marks it. (With DataLoader workers, each worker
    keeps its own record of failures.)

    Attributes:
        class_names: category names, index = label.
        label_to_category_id: label -> COCO category id; ``category_id_to_label`` is the inverse.
        coco: clean COCO dict of the valid records (boxes clipped), for COCO evaluation.
        ann_file: the json path (None when built from a dict).
        bad_records / fixed_records: what was skipped / repaired when indexing the file.
        load_failures: images that failed to decode when loaded.
    """

    def __init__(
        self,
        ann_file: str | Path | dict[str, Any],
        image_dir: str | Path | None = None,
        transforms: Callable[..., Any] | None = None,
        *,
        remove_images_without_annotations: bool = False,
        warn: bool = True,
        unreadable: str = "substitute",
    ) -> None:
        if unreadable not in ("substitute", "skip"):
            raise ValueError(f"unreadable must be 'substitute' or 'skip', got {unreadable!r}")
        self.unreadable = unreadable
        if isinstance(ann_file, dict):
            raw, self.ann_file, source = ann_file, None, "<dict>"
            if image_dir is None:
                raise ValueError("image_dir is required when ann_file is a dict")
        else:
            self.ann_file = Path(ann_file)
            raw, source = load_coco_json(self.ann_file), str(self.ann_file)
        self.image_dir = Path(image_dir) if image_dir is not None else default_image_dir(raw, self.ann_file)  # type: ignore[arg-type]
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"image_dir not found: {self.image_dir} (annotations: {source})")
        self.transforms = transforms
        index = index_coco(raw, self.image_dir, source=source)
        self.bad_records = index.bad_records
        self.fixed_records = index.fixed_records
        self.load_failures: list[rec.BadRecord] = []
        self._source = source
        if warn:
            rec.warn_records(index.bad_records + index.fixed_records, source)

        self.categories = index.categories
        self.class_names: list[str] = [category["name"] for category in self.categories]
        self.label_to_category_id: list[int] = [category["id"] for category in self.categories]
        self.category_id_to_label: dict[int, int] = {cid: label for label, cid in enumerate(self.label_to_category_id)}
        self.coco = index.to_coco({key: raw[key] for key in ("info", "licenses") if key in raw})

        self._images: list[dict[str, Any]] = []
        self._boxes: list[list[list[float]]] = []
        self._labels: list[list[int]] = []
        for image in index.images:
            anns = [ann for ann in index.annotations[image["id"]] if not ann.get("iscrowd", 0)]
            if remove_images_without_annotations and not anns:
                continue
            self._images.append(image)
            self._boxes.append([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns])
            self._labels.append([self.category_id_to_label[a["category_id"]] for a in anns])
        self._failed: set[int] = set()

    @property
    def num_classes(self) -> int:
        """Number of categories (labels are ``0..num_classes-1``)."""
        return len(self.class_names)

    @property
    def image_ids(self) -> list[int]:
        """COCO image id of each dataset index."""
        return [image["id"] for image in self._images]

    def image_info(self, index: int) -> dict[str, Any]:
        """The COCO image record of a dataset index."""
        return self._images[index]

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} images")
        index %= len(self)
        if self.unreadable == "skip":
            return self._get_or_skip(index)
        for offset in range(len(self)):
            candidate = (index + offset) % len(self)
            if candidate in self._failed:
                continue
            try:
                image = self._read(candidate)
            except OSError as error:
                self._record_failure(candidate, rec.UNREADABLE_IMAGE, str(error))
                continue
            except ValueError as error:
                self._record_failure(candidate, rec.IMAGE_SIZE_MISMATCH, str(error))
                continue
            return self._make_sample(candidate, image)
        raise RuntimeError(f"{self._source}: none of the {len(self)} images could be read; see dataset.load_failures")

    def _get_or_skip(self, index: int) -> tuple[torch.Tensor | None, dict[str, Any]]:
        info = self._images[index]
        failed = {"image_id": int(info["id"]), "file_name": info["file_name"]}
        if index in self._failed:
            message = next((f.message for f in self.load_failures if f.record.startswith(f"image id={info['id']} ")),
                           "unreadable")
            return None, {**failed, "load_error": message}
        try:
            image = self._read(index)
        except (OSError, ValueError) as error:
            kind = rec.UNREADABLE_IMAGE if isinstance(error, OSError) else rec.IMAGE_SIZE_MISMATCH
            self._record_failure(index, kind, str(error), substitute=False)
            return None, {**failed, "load_error": str(error)}
        return self._make_sample(index, image)

    def _read(self, index: int) -> torch.Tensor:
        info = self._images[index]
        image = read_image_rgb(self.image_dir / info["file_name"])
        if tuple(image.shape[-2:]) != (info["height"], info["width"]):
            raise ValueError(
                f"decoded size {image.shape[-1]}x{image.shape[-2]} differs from the record's {info['width']}x{info['height']}"
            )
        return image

    def _record_failure(self, index: int, kind: str, message: str, substitute: bool = True) -> None:
        info = self._images[index]
        failure = rec.BadRecord(kind, self._source, f"image id={info['id']} ({info['file_name']})", message)
        self._failed.add(index)
        self.load_failures.append(failure)
        then = "using the next image instead" if substitute else "not evaluated (counted as a failed image)"
        warnings.warn(f"skipped at load time: {failure}; {then}", rec.BadRecordWarning, stacklevel=3)

    def _make_sample(self, index: int, image: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        info = self._images[index]
        height, width = info["height"], info["width"]
        boxes = torch.tensor(self._boxes[index], dtype=torch.float32).reshape(-1, 4)
        target: dict[str, Any] = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
            "labels": torch.tensor(self._labels[index], dtype=torch.int64),
            "image_id": int(info["id"]),
            "orig_size": (height, width),
        }
        image = tv_tensors.Image(image)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        image = image.as_subclass(torch.Tensor)
        if not image.is_floating_point():
            image = image.float().div_(255)
        target["boxes"] = target["boxes"].as_subclass(torch.Tensor).float()
        target["labels"] = target["labels"].as_subclass(torch.Tensor).long()
        return image, target

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self._source}, images={len(self)}, classes={self.num_classes}, "
            f"skipped={len(self.bad_records)}, clipped={len(self.fixed_records)})"
        )


def collate_fn(batch: Sequence[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Batch of ``(image, target)`` pairs -> ``(list of images, list of targets)`` (sizes may differ)."""
    images = [sample[0] for sample in batch]
    targets = [sample[1] for sample in batch]
    return images, targets
