"""`umop data split`: a fixed train/val split by sorted file name."""

from __future__ import annotations

import json

import pytest

from umop.cli import main
from umop.data.split import split_coco


def _coco(names):
    return {"images": [{"id": i + 1, "file_name": name} for i, name in enumerate(names)],
            "annotations": [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [0, 0, 2, 2]}
                            for i in range(len(names))] + [{"id": 99, "image_id": 2, "category_id": 2,
                                                            "bbox": [1, 1, 2, 2]}],
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}


def test_split_by_name_keeps_annotations_with_their_images():
    train, val = split_coco(_coco(["c.jpg", "a.jpg", "d.jpg", "b.jpg"]), num_val=1)
    assert [i["file_name"] for i in train["images"]] == ["a.jpg", "b.jpg", "c.jpg"]
    assert [i["file_name"] for i in val["images"]] == ["d.jpg"]
    assert sorted(a["id"] for a in train["annotations"]) == [1, 2, 4, 99]
    assert [a["id"] for a in val["annotations"]] == [3]
    assert train["categories"] == val["categories"] and val["info"]["split"]["part"] == "val"
    with pytest.raises(ValueError, match="--val must be between 1 and 3"):
        split_coco(_coco(["a", "b", "c", "d"]), num_val=4)


def test_split_command_writes_both_files(tmp_path, capsys):
    source = tmp_path / "set.json"
    source.write_text(json.dumps(_coco([f"{i:03d}.jpg" for i in range(8)])))
    assert main(["data", "split", str(source), "--val", "2"]) == 0
    assert len(json.loads((tmp_path / "set_train.json").read_text())["images"]) == 6
    val = json.loads((tmp_path / "set_val.json").read_text())
    assert [i["file_name"] for i in val["images"]] == ["006.jpg", "007.jpg"]
    assert main(["data", "split", str(source), "--val", "0"]) == 2
