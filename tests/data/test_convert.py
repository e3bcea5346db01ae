"""Converters: YOLO -> COCO -> YOLO and VOC -> COCO -> VOC round trips, bad records, class order."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from umop.data import BadRecordWarning, coco_to_voc, coco_to_yolo, read_class_names, voc_to_coco, yolo_to_coco

CLASSES = ["cat", "dog", "bird"]


def _write_image(path: Path, width: int, height: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), 90, dtype=np.uint8)).save(path)


def _read_yolo(path: Path) -> list[list[float]]:
    if not path.is_file():
        return []
    return [[float(value) for value in line.split()] for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def yolo_dataset(tmp_path: Path) -> Path:
    """images/train + labels/train + classes.txt with random boxes, one image without a label file."""
    rng = np.random.default_rng(3)
    root = tmp_path / "yolo"
    (root / "labels" / "train").mkdir(parents=True)
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    for index, (width, height) in enumerate([(64, 48), (100, 80), (33, 77), (50, 50)]):
        _write_image(root / "images" / "train" / f"im{index}.jpg", width, height)
        if index == 3:
            continue  # no label file: an image without boxes
        lines = []
        for _ in range(index + 2):
            w, h = rng.uniform(0.05, 0.5, size=2)
            cx, cy = rng.uniform(w / 2, 1 - w / 2), rng.uniform(h / 2, 1 - h / 2)
            lines.append(f"{rng.integers(3)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
        (root / "labels" / "train" / f"im{index}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_yolo_coco_yolo_round_trip(yolo_dataset: Path, tmp_path: Path) -> None:
    coco = yolo_to_coco(yolo_dataset / "images" / "train")
    assert [c["name"] for c in coco["categories"]] == CLASSES
    assert [c["id"] for c in coco["categories"]] == [1, 2, 3]
    assert len(coco["images"]) == 4
    assert len(coco["annotations"]) == 2 + 3 + 4
    assert coco["info"]["conversion_issues"] == []
    image = next(im for im in coco["images"] if im["file_name"] == "im1.jpg")
    assert (image["width"], image["height"]) == (100, 80)

    out = tmp_path / "back"
    coco_to_yolo(coco, out, classes_file=out / "classes.txt")
    assert read_class_names(out / "classes.txt") == CLASSES
    for index in range(4):
        original = _read_yolo(yolo_dataset / "labels" / "train" / f"im{index}.txt")
        again = _read_yolo(out / f"im{index}.txt")
        assert len(original) == len(again)
        np.testing.assert_allclose(np.array(again).reshape(-1, 5), np.array(original).reshape(-1, 5), atol=2e-6)


def test_yolo_absolute_boxes(yolo_dataset: Path) -> None:
    labels = yolo_dataset / "labels" / "train"
    (labels / "im0.txt").write_text("2 0.5 0.25 0.5 0.25\n")
    coco = yolo_to_coco(yolo_dataset / "images" / "train", labels, yolo_dataset / "classes.txt")
    ann = next(a for a in coco["annotations"] if a["image_id"] == 1)
    assert ann["category_id"] == 3
    # 64x48 image: cx=32, cy=12, w=32, h=12 -> x=16, y=6
    assert ann["bbox"] == pytest.approx([16.0, 6.0, 32.0, 12.0])


def test_yolo_bad_records_are_reported(yolo_dataset: Path) -> None:
    labels = yolo_dataset / "labels" / "train"
    (labels / "im0.txt").write_text(
        "0 0.5 0.5 0.2 0.2\n"  # good
        "7 0.5 0.5 0.2 0.2\n"  # unknown class
        "1 0.5 0.5\n"  # malformed
        "1 0.5 0.5 0.0 0.2\n"  # zero size
        "1 1.5 1.5 0.2 0.2\n"  # outside
        "1 0.95 0.5 0.3 0.2\n"  # partly outside -> clipped
    )
    (labels / "ghost.txt").write_text("0 0.5 0.5 0.1 0.1\n")  # no image
    with pytest.warns(BadRecordWarning) as caught:
        coco = yolo_to_coco(yolo_dataset / "images" / "train")
    kinds = sorted(issue["kind"] for issue in coco["info"]["conversion_issues"])
    assert kinds == sorted(
        ["unknown_category", "malformed_record", "zero_size_box", "box_outside_image", "box_clipped", "orphan_label_file"]
    )
    messages = " ".join(str(w.message) for w in caught)
    assert "ghost.txt" in messages and "line 2" in messages
    first = [a for a in coco["annotations"] if a["image_id"] == 1]
    assert len(first) == 2  # the good box and the clipped one
    clipped = first[1]["bbox"]
    assert clipped[0] + clipped[2] == pytest.approx(64.0)


def test_yolo_missing_classes_file_is_named(tmp_path: Path) -> None:
    _write_image(tmp_path / "images" / "a.png", 10, 10)
    (tmp_path / "labels").mkdir()
    with pytest.raises(FileNotFoundError, match="classes"):
        yolo_to_coco(tmp_path / "images")


VOC_XML = """<annotation>
  <folder>JPEGImages</folder>
  <filename>{name}.jpg</filename>
  <size><width>{width}</width><height>{height}</height><depth>3</depth></size>
  {objects}
</annotation>"""
VOC_OBJECT = """<object><name>{cls}</name><pose>Unspecified</pose><truncated>{trunc}</truncated>
  <difficult>{diff}</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"""


def _write_voc(root: Path, name: str, size: tuple[int, int], objects: list[tuple], xml_size: tuple[int, int] | None = None) -> None:
    width, height = size
    xml_width, xml_height = xml_size or size
    _write_image(root / "JPEGImages" / f"{name}.jpg", width, height)
    body = "".join(
        VOC_OBJECT.format(cls=c, x0=x0, y0=y0, x1=x1, y1=y1, trunc=t, diff=d) for c, x0, y0, x1, y1, t, d in objects
    )
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "Annotations" / f"{name}.xml").write_text(VOC_XML.format(name=name, width=xml_width, height=xml_height, objects=body))


def _parse_voc(path: Path) -> tuple[str, tuple[int, int], list[tuple]]:
    root = ET.parse(path).getroot()
    objects = []
    for obj in root.findall("object"):
        box = obj.find("bndbox")
        objects.append(
            (obj.findtext("name"),)
            + tuple(int(box.findtext(tag)) for tag in ("xmin", "ymin", "xmax", "ymax"))
            + (int(obj.findtext("truncated")), int(obj.findtext("difficult")))
        )
    size = (int(root.findtext("size/width")), int(root.findtext("size/height")))
    return root.findtext("filename"), size, objects


@pytest.fixture
def voc_dataset(tmp_path: Path) -> Path:
    root = tmp_path / "VOC"
    _write_voc(root, "a", (60, 40), [("dog", 1, 1, 60, 40, 1, 0), ("cat", 10, 5, 20, 30, 0, 1)])
    _write_voc(root, "b", (30, 50), [("cat", 3, 4, 5, 6, 0, 0)])
    _write_voc(root, "c", (20, 20), [])
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "train.txt").write_text("a\nc\n")
    return root


def test_voc_coco_voc_round_trip(voc_dataset: Path, tmp_path: Path) -> None:
    coco = voc_to_coco(voc_dataset)
    assert [c["name"] for c in coco["categories"]] == ["cat", "dog"]  # sorted by default
    assert coco["info"]["conversion_issues"] == []
    first = [a for a in coco["annotations"] if a["image_id"] == 1]
    # 1-based inclusive pixels (1, 1, 60, 40) cover the whole 60x40 image
    assert first[0]["bbox"] == [0.0, 0.0, 60.0, 40.0]
    assert first[1]["bbox"] == [9.0, 4.0, 11.0, 26.0]
    written = coco_to_voc(coco, tmp_path / "back")
    assert sorted(path.name for path in written) == ["a.xml", "b.xml", "c.xml"]
    for name in "abc":
        assert _parse_voc(tmp_path / "back" / f"{name}.xml") == _parse_voc(voc_dataset / "Annotations" / f"{name}.xml")


def test_voc_split_and_class_order(voc_dataset: Path) -> None:
    coco = voc_to_coco(voc_dataset / "Annotations", voc_dataset / "JPEGImages", split_file="train", class_names=["dog", "cat"])
    assert [im["file_name"] for im in coco["images"]] == ["a.jpg", "c.jpg"]
    assert [c["name"] for c in coco["categories"]] == ["dog", "cat"]
    assert [a["category_id"] for a in coco["annotations"]] == [1, 2]


def test_voc_bad_records(voc_dataset: Path) -> None:
    _write_voc(
        voc_dataset,
        "d",
        (40, 30),
        [("cat", 5, 5, 5, 5, 0, 0), ("cow", 1, 1, 9, 9, 0, 0), ("dog", 50, 50, 60, 60, 0, 0), ("dog", 30, 20, 45, 35, 0, 0)],
        xml_size=(400, 300),
    )
    (voc_dataset / "Annotations" / "e.xml").write_text("<annotation><filename>e.jpg</filename>")  # broken xml
    _write_voc(voc_dataset, "f", (10, 10), [("cat", 1, 1, 5, 5, 0, 0)])
    (voc_dataset / "JPEGImages" / "f.jpg").unlink()  # missing image
    with pytest.warns(BadRecordWarning):
        coco = voc_to_coco(voc_dataset, class_names=["cat", "dog"])
    kinds = sorted(issue["kind"] for issue in coco["info"]["conversion_issues"])
    assert kinds == sorted(
        ["zero_size_box", "unknown_category", "box_outside_image", "box_clipped", "size_corrected", "malformed_record", "missing_image"]
    )
    image_d = next(im for im in coco["images"] if im["file_name"] == "d.jpg")
    assert (image_d["width"], image_d["height"]) == (40, 30)  # size from the image file, not the xml
    kept = [a for a in coco["annotations"] if a["image_id"] == image_d["id"]]
    assert [a["bbox"] for a in kept] == [[29.0, 19.0, 11.0, 11.0]]  # clipped to 40x30


def test_read_class_names_errors(tmp_path: Path) -> None:
    (tmp_path / "dup.txt").write_text("a\nb\na\n")
    with pytest.raises(ValueError, match="dup.txt.*duplicate"):
        read_class_names(tmp_path / "dup.txt")
    (tmp_path / "data.yaml").write_text("names: {0: person, 1: car}\n")
    assert read_class_names(tmp_path / "data.yaml") == ["person", "car"]
