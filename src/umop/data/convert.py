"""Converters between Pascal VOC xml, YOLO txt and COCO json (the native format).

Conventions:

* COCO category ids are ``1..K`` in class order. YOLO: the order of the classes file (line i = class i).
  VOC: ``class_names`` when given, else the sorted set of names found (BCCD sorted:
  ``["Platelets", "RBC", "WBC"]``; pass ``["RBC", "WBC", "Platelets"]`` to get the order of the README).
* VOC pixel indices are 1-based and inclusive: ``(xmin, ymin, xmax, ymax)`` becomes the continuous box
  ``[xmin - 1, ymin - 1, xmax, ymax]`` (the Detectron2 convention), and back. An object with
  ``xmax <= xmin`` or ``ymax <= ymin`` (a click without a drag) is a zero-size box and is skipped.
  ``difficult`` / ``truncated`` / ``pose`` are kept as extra annotation keys (for the round trip).
* YOLO: ``class cx cy w h`` normalised; boxes become absolute with the image's size.
* Bad records are skipped and partly-outside boxes clipped with the same rules as
  :func:`umop.data.coco.index_coco`; each is warned once, and all are listed under
  ``coco["info"]["conversion_issues"]`` of the returned dict, so nothing is lost silently.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from umop.data import records as rec
from umop.data.coco import CLIP_TOLERANCE
from umop.data.image_io import IMAGE_EXTENSIONS, find_image, image_size

__all__ = [
    "coco_to_voc",
    "coco_to_yolo",
    "read_class_names",
    "save_coco_json",
    "voc_to_coco",
    "yolo_to_coco",
]


def read_class_names(classes: str | Path | Sequence[str]) -> list[str]:
    """Class names from a list, a text file (one name a line), or a YOLO ``data.yaml`` (``names``).

    Raises:
        FileNotFoundError / ValueError: naming the file when it is missing, empty or has duplicates.
    """
    if not isinstance(classes, (str, Path)):
        names = [str(name).strip() for name in classes]
        source = "class_names"
    else:
        path = Path(classes)
        if not path.is_file():
            raise FileNotFoundError(f"classes file not found: {path}")
        source = str(path)
        if path.suffix.lower() in (".yaml", ".yml"):
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            raw = data.get("names") if isinstance(data, dict) else None
            if isinstance(raw, dict):
                raw = [raw[key] for key in sorted(raw, key=int)]
            if not isinstance(raw, list):
                raise ValueError(f"{path}: a YOLO yaml needs a 'names' list or {{index: name}} mapping")
            names = [str(name).strip() for name in raw]
        else:
            names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names or any(not name for name in names):
        raise ValueError(f"{source}: class names must be non-empty, got {names!r}")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"{source}: duplicate class names {duplicates}")
    return names


def save_coco_json(coco: dict[str, Any], path: str | Path) -> Path:
    """Write a COCO dict as json (atomically: temp file + rename) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        json.dump(coco, handle)
    os.replace(temporary, path)
    return path


def _categories(names: Sequence[str]) -> list[dict[str, Any]]:
    return [{"id": index + 1, "name": name, "supercategory": "none"} for index, name in enumerate(names)]


def _clip_box(
    x0: float, y0: float, x1: float, y1: float, width: int, height: int, source: str, record: str, issues: list[rec.BadRecord]
) -> list[float] | None:
    """COCO ``[x, y, w, h]`` of a xyxy box clipped to the image, or None (issue recorded) when unusable."""
    if x1 <= x0 or y1 <= y0:
        issues.append(rec.BadRecord(rec.ZERO_SIZE_BOX, source, record, f"box {[x0, y0, x1, y1]} has zero or negative size"))
        return None
    cx0, cy0, cx1, cy1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height))
    if cx1 <= cx0 or cy1 <= cy0:
        issues.append(rec.BadRecord(rec.BOX_OUTSIDE_IMAGE, source, record, f"box {[x0, y0, x1, y1]} is outside the {width}x{height} image"))
        return None
    overhang = max(-x0, -y0, x1 - width, y1 - height)
    if overhang > CLIP_TOLERANCE:
        issues.append(
            rec.BadRecord(rec.BOX_CLIPPED, source, record, f"box {[x0, y0, x1, y1]} exceeds the {width}x{height} image by {overhang:.1f}px, clipped")
        )
    return [cx0, cy0, cx1 - cx0, cy1 - cy0]


def _finish(images: list[dict], annotations: list[dict], names: Sequence[str], issues: list[rec.BadRecord], what: str, source: str) -> dict[str, Any]:
    rec.warn_records(issues, source, what=what, stacklevel=4)
    return {
        "info": {
            "description": f"converted by umop from {what}: {source}",
            "conversion_issues": [
                {"kind": issue.kind, "source": issue.source, "record": issue.record, "message": issue.message} for issue in issues
            ],
        },
        "images": images,
        "annotations": annotations,
        "categories": _categories(names),
    }


# ----------------------------------------------------------------------------------------------- VOC


def _resolve_voc_dirs(voc_root_or_ann_dir: Path, image_dir: str | Path | None) -> tuple[Path, Path, Path | None]:
    if (voc_root_or_ann_dir / "Annotations").is_dir():
        root, ann_dir = voc_root_or_ann_dir, voc_root_or_ann_dir / "Annotations"
    else:
        root, ann_dir = voc_root_or_ann_dir.parent, voc_root_or_ann_dir
    if not ann_dir.is_dir() or not any(ann_dir.glob("*.xml")):
        raise FileNotFoundError(f"{voc_root_or_ann_dir.resolve()} is not a VOC folder: expected Annotations/*.xml "
                                f"in it, or .xml files in it")
    resolved_images = Path(image_dir) if image_dir is not None else root / "JPEGImages"
    if not resolved_images.is_dir():
        raise FileNotFoundError(f"VOC image folder not found: {resolved_images} (pass image_dir / --images)")
    return ann_dir, resolved_images, root


def _read_split(split_file: str | Path, root: Path | None) -> list[str]:
    path = Path(split_file)
    if not path.is_file() and root is not None and (root / "ImageSets" / "Main" / f"{split_file}.txt").is_file():
        path = root / "ImageSets" / "Main" / f"{split_file}.txt"
    if not path.is_file():
        where = f" (nor {root / 'ImageSets' / 'Main' / f'{split_file}.txt'})" if root is not None else ""
        raise FileNotFoundError(f"split file not found: {split_file}{where}")
    return [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _number(element: ET.Element | None, tag: str) -> float:
    text = element.findtext(tag) if element is not None else None
    if text is None:
        raise ValueError(f"missing <{tag}>")
    return float(text.strip())


def voc_to_coco(
    voc_root_or_ann_dir: str | Path,
    image_dir: str | Path | None = None,
    split_file: str | Path | None = None,
    class_names: Sequence[str] | str | Path | None = None,
) -> dict[str, Any]:
    """Convert a Pascal VOC dataset to a COCO dict.

    Args:
        voc_root_or_ann_dir: a VOC root (holding ``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/``) or the
            folder of xml files itself.
        image_dir: image folder (default ``ROOT/JPEGImages``); COCO ``file_name`` is relative to it.
        split_file: list of image ids (one a line); a bare name such as ``"train"`` means
            ``ROOT/ImageSets/Main/train.txt``. Default: every xml file.
        class_names: class order (list, or a file as in :func:`read_class_names`); objects of other classes
            are skipped as ``unknown_category``. Default: sorted names found.

    Image sizes are read from the image files (the xml ``<size>`` is checked against them).
    """
    ann_dir, images_dir, root = _resolve_voc_dirs(Path(voc_root_or_ann_dir), image_dir)
    if split_file is not None:
        stems = _read_split(split_file, root)
        xml_files = [ann_dir / f"{stem}.xml" for stem in stems]
    else:
        xml_files = sorted(ann_dir.glob("*.xml"))
    issues: list[rec.BadRecord] = []
    parsed: list[tuple[Path, Path, int, int, list[tuple[str, ET.Element]]]] = []
    for xml_file in xml_files:
        source = str(xml_file)
        if not xml_file.is_file():
            issues.append(rec.BadRecord(rec.MALFORMED, source, "xml file", "listed in the split file but not found"))
            continue
        try:
            root_element = ET.parse(xml_file).getroot()
        except ET.ParseError as error:
            issues.append(rec.BadRecord(rec.MALFORMED, source, "xml file", f"cannot parse: {error}"))
            continue
        filename = (root_element.findtext("filename") or "").strip() or xml_file.stem
        image_path = find_image(images_dir, filename) or find_image(images_dir, xml_file.stem)
        if image_path is None:
            issues.append(rec.BadRecord(rec.MISSING_IMAGE, source, f"image {filename}", f"not found in {images_dir}"))
            continue
        try:
            height, width = image_size(image_path)
        except OSError as error:
            issues.append(rec.BadRecord(rec.UNREADABLE_IMAGE, source, f"image {filename}", str(error)))
            continue
        size = root_element.find("size")
        try:
            xml_size = (int(_number(size, "height")), int(_number(size, "width")))
        except ValueError:
            xml_size = None
        if xml_size is not None and xml_size != (0, 0) and xml_size != (height, width):
            issues.append(
                rec.BadRecord(rec.SIZE_CORRECTED, source, "size", f"xml says {xml_size[1]}x{xml_size[0]}, image is {width}x{height}; using the image")
            )
        objects = [((obj.findtext("name") or "").strip(), obj) for obj in root_element.findall("object")]
        parsed.append((xml_file, image_path, height, width, objects))

    if class_names is None:
        names = sorted({name for *_, objects in parsed for name, _ in objects if name})
    else:
        names = read_class_names(class_names)
    category_ids = {name: index + 1 for index, name in enumerate(names)}

    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id, (xml_file, image_path, height, width, objects) in enumerate(parsed, start=1):
        source = str(xml_file)
        images.append(
            {"id": image_id, "file_name": image_path.relative_to(images_dir).as_posix(), "width": width, "height": height}
        )
        for position, (name, obj) in enumerate(objects):
            record = f"object {position} ({name or '?'})"
            if name not in category_ids:
                issues.append(rec.BadRecord(rec.UNKNOWN_CATEGORY, source, record, f"class {name!r} is not in {names}"))
                continue
            bndbox = obj.find("bndbox")
            try:
                xmin, ymin, xmax, ymax = (_number(bndbox, tag) for tag in ("xmin", "ymin", "xmax", "ymax"))
            except ValueError as error:
                issues.append(rec.BadRecord(rec.MALFORMED, source, record, f"bad <bndbox>: {error}"))
                continue
            if xmax <= xmin or ymax <= ymin:
                issues.append(
                    rec.BadRecord(rec.ZERO_SIZE_BOX, source, record, f"xmin,ymin,xmax,ymax = {xmin:g},{ymin:g},{xmax:g},{ymax:g} has no extent")
                )
                continue
            bbox = _clip_box(xmin - 1, ymin - 1, xmax, ymax, width, height, source, record, issues)
            if bbox is None:
                continue
            annotation = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": category_ids[name],
                "bbox": bbox,
                "area": bbox[2] * bbox[3],
                "iscrowd": 0,
            }
            for tag in ("difficult", "truncated"):
                text = obj.findtext(tag)
                if text is not None and text.strip().lstrip("-").isdigit():
                    annotation[tag] = int(text.strip())
            pose = obj.findtext("pose")
            if pose is not None:
                annotation["pose"] = pose.strip()
            annotations.append(annotation)
    return _finish(images, annotations, names, issues, "Pascal VOC", str(ann_dir))


def _format_number(value: float) -> str:
    return str(int(round(value))) if abs(value - round(value)) < 1e-6 else f"{value:.6g}"


def coco_to_voc(coco: dict[str, Any], ann_dir: str | Path, *, folder: str = "JPEGImages") -> list[Path]:
    """Write one Pascal VOC xml per COCO image into ``ann_dir`` (inverse of :func:`voc_to_coco`).

    Crowd annotations are skipped. Returns the written paths.
    """
    ann_dir = Path(ann_dir)
    ann_dir.mkdir(parents=True, exist_ok=True)
    names = {category["id"]: category["name"] for category in coco["categories"]}
    by_image: dict[int, list[dict[str, Any]]] = {image["id"]: [] for image in coco["images"]}
    for ann in coco.get("annotations", []):
        if not ann.get("iscrowd", 0) and ann["image_id"] in by_image:
            by_image[ann["image_id"]].append(ann)
    written: list[Path] = []
    for image in coco["images"]:
        root = ET.Element("annotation")
        ET.SubElement(root, "folder").text = folder
        ET.SubElement(root, "filename").text = image["file_name"]
        size = ET.SubElement(root, "size")
        ET.SubElement(size, "width").text = str(image["width"])
        ET.SubElement(size, "height").text = str(image["height"])
        ET.SubElement(size, "depth").text = "3"
        ET.SubElement(root, "segmented").text = "0"
        for ann in by_image[image["id"]]:
            obj = ET.SubElement(root, "object")
            ET.SubElement(obj, "name").text = names[ann["category_id"]]
            ET.SubElement(obj, "pose").text = str(ann.get("pose", "Unspecified"))
            ET.SubElement(obj, "truncated").text = str(ann.get("truncated", 0))
            ET.SubElement(obj, "difficult").text = str(ann.get("difficult", 0))
            x, y, w, h = ann["bbox"]
            bndbox = ET.SubElement(obj, "bndbox")
            for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), (x + 1, y + 1, x + w, y + h)):
                ET.SubElement(bndbox, tag).text = _format_number(value)
        ET.indent(root, space="\t")
        path = ann_dir / (Path(image["file_name"]).stem + ".xml")
        ET.ElementTree(root).write(path, encoding="utf-8")
        written.append(path)
    return written


# ---------------------------------------------------------------------------------------------- YOLO


def yolo_labels_dir(images_dir: Path) -> Path:
    """Ultralytics rule: the labels folder is the images folder with its last ``images`` part -> ``labels``."""
    parts = list(images_dir.parts)
    for position in range(len(parts) - 1, -1, -1):
        if parts[position] == "images":
            parts[position] = "labels"
            return Path(*parts)
    return images_dir.parent / "labels"


def yolo_to_coco(
    images_dir: str | Path,
    labels_dir: str | Path | None = None,
    classes_file: str | Path | Sequence[str] | None = None,
) -> dict[str, Any]:
    """Convert a YOLO txt dataset to a COCO dict.

    Args:
        images_dir: folder of images (every image file in it, sorted by name, becomes a COCO image).
        labels_dir: folder of ``<image stem>.txt`` files (default: the Ultralytics rule
            ``.../images/... -> .../labels/...``). An image without a label file has no boxes; a label file
            without an image is reported as ``orphan_label_file``.
        classes_file: class names (``classes.txt``, one a line, or ``data.yaml``); default: ``classes.txt``
            searched in the images folder and its two parents.
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"YOLO image folder not found: {images_dir}")
    labels_dir = Path(labels_dir) if labels_dir is not None else yolo_labels_dir(images_dir)
    if not labels_dir.is_dir():
        raise FileNotFoundError(f"YOLO label folder not found: {labels_dir} (pass labels_dir / --labels)")
    if classes_file is None:
        candidates = [folder / "classes.txt" for folder in (images_dir, images_dir.parent, images_dir.parent.parent)]
        classes_file = next((path for path in candidates if path.is_file()), None)
        if classes_file is None:
            raise FileNotFoundError(f"no classes.txt next to {images_dir}; pass classes_file / --classes")
    names = read_class_names(classes_file)

    image_paths = sorted(path for path in images_dir.iterdir() if path.suffix.lower() in IMAGE_EXTENSIONS)
    issues: list[rec.BadRecord] = []
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    stems = {path.stem for path in image_paths}
    for label_file in sorted(labels_dir.glob("*.txt")):
        if label_file.stem not in stems and label_file.name != "classes.txt":
            boxes = sum(1 for line in label_file.read_text(encoding="utf-8").splitlines() if line.strip())
            issues.append(rec.BadRecord(rec.ORPHAN_LABEL, str(label_file), "label file", f"no image {label_file.stem}.* in {images_dir} ({boxes} boxes skipped)"))
    for image_path in image_paths:
        try:
            height, width = image_size(image_path)
        except OSError as error:
            issues.append(rec.BadRecord(rec.UNREADABLE_IMAGE, str(image_path), "image", str(error)))
            continue
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": image_path.relative_to(images_dir).as_posix(), "width": width, "height": height})
        label_file = labels_dir / f"{image_path.stem}.txt"
        if not label_file.is_file():
            continue
        for line_number, line in enumerate(label_file.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            record = f"line {line_number}"
            fields = line.split()
            try:
                if len(fields) != 5:
                    raise ValueError(f"expected 5 fields 'class cx cy w h', got {len(fields)}")
                class_index = int(fields[0])
                cx, cy, w, h = (float(value) for value in fields[1:])
            except ValueError as error:
                issues.append(rec.BadRecord(rec.MALFORMED, str(label_file), record, f"{line.strip()!r}: {error}"))
                continue
            if not 0 <= class_index < len(names):
                issues.append(rec.BadRecord(rec.UNKNOWN_CATEGORY, str(label_file), record, f"class {class_index} not in 0..{len(names) - 1}"))
                continue
            x0, y0 = (cx - w / 2) * width, (cy - h / 2) * height
            x1, y1 = (cx + w / 2) * width, (cy + h / 2) * height
            bbox = _clip_box(x0, y0, x1, y1, width, height, str(label_file), record, issues)
            if bbox is None:
                continue
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": class_index + 1,
                    "bbox": bbox,
                    "area": bbox[2] * bbox[3],
                    "iscrowd": 0,
                }
            )
    return _finish(images, annotations, names, issues, "YOLO", str(labels_dir))


def coco_to_yolo(coco: dict[str, Any], labels_dir: str | Path, classes_file: str | Path | None = None) -> list[Path]:
    """Write YOLO label files (one per COCO image, empty when it has no box) and optionally ``classes.txt``.

    Class index = position of the category when sorted by id; crowd annotations are skipped.
    Returns the written label paths.
    """
    labels_dir = Path(labels_dir)
    labels_dir.mkdir(parents=True, exist_ok=True)
    categories = sorted(coco["categories"], key=lambda category: category["id"])
    class_index = {category["id"]: index for index, category in enumerate(categories)}
    if classes_file is not None:
        Path(classes_file).write_text("".join(f"{category['name']}\n" for category in categories), encoding="utf-8")
    lines: dict[int, list[str]] = {image["id"]: [] for image in coco["images"]}
    sizes = {image["id"]: (image["width"], image["height"]) for image in coco["images"]}
    for ann in coco.get("annotations", []):
        if ann.get("iscrowd", 0) or ann["image_id"] not in lines:
            continue
        width, height = sizes[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        lines[ann["image_id"]].append(
            f"{class_index[ann['category_id']]} {(x + w / 2) / width:.6f} {(y + h / 2) / height:.6f} {w / width:.6f} {h / height:.6f}\n"
        )
    written: list[Path] = []
    for image in coco["images"]:
        path = labels_dir / f"{Path(image['file_name']).stem}.txt"
        path.write_text("".join(lines[image["id"]]), encoding="utf-8")
        written.append(path)
    return written
