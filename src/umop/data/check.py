"""``check_dataset``: list every bad record of a COCO json + image folder, with counts per kind."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from pathlib import Path

from umop.data import records as rec
from umop.data.coco import default_image_dir, index_coco, load_coco_json
from umop.data.image_io import read_image_rgb

__all__ = ["CheckReport", "check_dataset"]


@dataclass
class CheckReport:
    """Result of :func:`check_dataset`.

    Attributes:
        ann_file / image_dir: what was checked.
        num_images / num_annotations / num_categories: records in the file.
        num_valid_images: images that pass every check (including decoding when it was done).
        num_valid_boxes: non-crowd boxes usable for training (on valid images, clipped where needed).
        num_crowd: valid ``iscrowd`` boxes (kept for evaluation, not trained on).
        num_images_without_boxes: valid images with no usable box.
        boxes_per_class: class name -> usable boxes.
        bad_records: every skipped record; fixed_records: every repaired (clipped) box.
    """

    ann_file: Path
    image_dir: Path
    num_images: int
    num_annotations: int
    num_categories: int
    num_valid_images: int
    num_valid_boxes: int
    num_crowd: int
    num_images_without_boxes: int
    boxes_per_class: dict[str, int]
    bad_records: list[rec.BadRecord] = field(default_factory=list)
    fixed_records: list[rec.BadRecord] = field(default_factory=list)
    images_decoded: bool = True

    @property
    def ok(self) -> bool:
        """True when no record is bad (repaired records do not count)."""
        return not self.bad_records

    def counts(self) -> dict[str, int]:
        """Bad-record count per kind."""
        return rec.count_by_kind(self.bad_records)

    def format(self, max_listed: int | None = None) -> str:
        """Multi-line text report: summary, counts per kind, then every record (up to ``max_listed``)."""
        lines = [
            f"annotations: {self.ann_file}",
            f"images dir : {self.image_dir}" + ("" if self.images_decoded else "  (files checked for existence only)"),
            f"images     : {self.num_images} in file, {self.num_valid_images} valid, "
            f"{self.num_images_without_boxes} valid without boxes",
            f"boxes      : {self.num_annotations} in file, {self.num_valid_boxes} usable, {self.num_crowd} crowd (ignored)",
            f"categories : {self.num_categories}",
        ]
        if self.boxes_per_class:
            width = max(len(name) for name in self.boxes_per_class)
            lines.append("boxes per class:")
            lines += [f"  {name:<{width}}  {count}" for name, count in self.boxes_per_class.items() if count]
            empty = [name for name, count in self.boxes_per_class.items() if not count]
            if empty:
                lines.append(f"  classes without boxes ({len(empty)}): {', '.join(empty)}")
        for title, records in (("bad records (skipped)", self.bad_records), ("repaired records (boxes clipped)", self.fixed_records)):
            lines.append(f"{title}: {len(records)}")
            for kind, count in rec.count_by_kind(records).items():
                lines.append(f"  {kind:<22} {count}")
            shown = records if max_listed is None else records[:max_listed]
            lines += [f"  - {record.record}: {record.kind}: {record.message}" for record in shown]
            if len(shown) < len(records):
                lines.append(f"  ... {len(records) - len(shown)} more")
        lines.append("OK: no bad record" if self.ok else f"FOUND {len(self.bad_records)} bad record(s)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def check_dataset(ann_file: str | Path, image_dir: str | Path | None = None, *, decode_images: bool = True) -> CheckReport:
    """Check a COCO json against its image folder and report every bad record.

    Args:
        ann_file: COCO instances json.
        image_dir: folder that ``file_name`` is relative to (default: the json's recorded ``info.image_dir``,
            else the json's folder).
        decode_images: decode every image (finds unreadable files and size mismatches); False only checks
            that the files exist.

    Raises:
        FileNotFoundError / ValueError: the json or the folder is missing, or the json is not COCO at all.
    """
    ann_file = Path(ann_file)
    coco = load_coco_json(ann_file)
    image_dir = Path(image_dir) if image_dir is not None else default_image_dir(coco, ann_file)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder not found: {image_dir}")
    index = index_coco(coco, image_dir, source=str(ann_file))
    bad = list(index.bad_records)
    valid_images = []
    for image in index.images:
        if decode_images:
            name = f"image id={image['id']} ({image['file_name']})"
            try:
                decoded = read_image_rgb(image_dir / image["file_name"])
            except OSError as error:
                bad.append(rec.BadRecord(rec.UNREADABLE_IMAGE, str(ann_file), name, str(error)))
                continue
            if tuple(decoded.shape[-2:]) != (image["height"], image["width"]):
                bad.append(
                    rec.BadRecord(
                        rec.IMAGE_SIZE_MISMATCH,
                        str(ann_file),
                        name,
                        f"decoded {decoded.shape[-1]}x{decoded.shape[-2]}, record says {image['width']}x{image['height']}",
                    )
                )
                continue
        valid_images.append(image)
    names = {category["id"]: category["name"] for category in index.categories}
    per_class: collections.Counter[str] = collections.Counter()
    num_crowd = without_boxes = 0
    for image in valid_images:
        anns = index.annotations[image["id"]]
        crowd = sum(1 for ann in anns if ann.get("iscrowd", 0))
        num_crowd += crowd
        without_boxes += len(anns) == crowd
        per_class.update(names[ann["category_id"]] for ann in anns if not ann.get("iscrowd", 0))
    return CheckReport(
        ann_file=ann_file,
        image_dir=image_dir,
        num_images=len(coco["images"]),
        num_annotations=len(coco.get("annotations", [])),
        num_categories=len(coco["categories"]),
        num_valid_images=len(valid_images),
        num_valid_boxes=sum(per_class.values()),
        num_crowd=num_crowd,
        num_images_without_boxes=without_boxes,
        boxes_per_class={category["name"]: per_class.get(category["name"], 0) for category in index.categories},
        bad_records=bad,
        fixed_records=list(index.fixed_records),
        images_decoded=decode_images,
    )
