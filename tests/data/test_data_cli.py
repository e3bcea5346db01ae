"""``umop data`` subcommands through ``umop.data.cli.register`` on a local argparse parser."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from umop.data import CocoDetection, make_tiny_synthetic_dataset
from umop.data.cli import register


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="umop")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    return args.func(args)


@pytest.fixture
def yolo_root(tmp_path: Path) -> Path:
    root = tmp_path / "yolo"
    for split, count in (("train", 3), ("val", 1)):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for index in range(count):
            Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(root / "images" / split / f"{split}{index}.png")
            (root / "labels" / split / f"{split}{index}.txt").write_text("1 0.5 0.5 0.5 0.5\n")
    (root / "classes.txt").write_text("a\nb\n")
    return root


def test_convert_yolo_then_check(yolo_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "train.json"
    assert _run("data", "convert", "--from", "yolo", str(yolo_root), "--split-file", "train", "--out", str(out)) == 0
    coco = json.loads(out.read_text())
    assert len(coco["images"]) == 3 and len(coco["annotations"]) == 3
    assert "wrote" in capsys.readouterr().out
    assert _run("data", "check", str(out), "--images", str(yolo_root / "images" / "train")) == 0
    assert "OK: no bad record" in capsys.readouterr().out
    dataset = CocoDetection(out, yolo_root / "images" / "train")
    assert dataset[0][1]["boxes"].tolist() == [[7.5, 5.0, 22.5, 15.0]] and dataset.class_names == ["a", "b"]


def test_convert_yolo_ambiguous_split_is_an_error(yolo_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run("data", "convert", "--from", "yolo", str(yolo_root), "--out", str(tmp_path / "x.json")) == 2
    assert "--split-file" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_convert_voc_with_class_list(tmp_path: Path) -> None:
    root = tmp_path / "VOC"
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    Image.fromarray(np.zeros((10, 12, 3), dtype=np.uint8)).save(root / "JPEGImages" / "x.jpg")
    (root / "Annotations" / "x.xml").write_text(
        "<annotation><filename>x.jpg</filename><size><width>12</width><height>10</height></size>"
        "<object><name>b</name><bndbox><xmin>2</xmin><ymin>2</ymin><xmax>6</xmax><ymax>8</ymax></bndbox></object>"
        "</annotation>"
    )
    out = tmp_path / "voc.json"
    assert _run("data", "convert", "--from", "voc", str(root), "--classes", "b,a", "--out", str(out)) == 0
    coco = json.loads(out.read_text())
    assert [c["name"] for c in coco["categories"]] == ["b", "a"]
    assert coco["annotations"][0]["bbox"] == [1.0, 1.0, 5.0, 7.0]


def test_check_exit_code_one_on_bad_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ann_file = make_tiny_synthetic_dataset(tmp_path / "syn")
    coco = json.loads(ann_file.read_text())
    coco["annotations"][0]["bbox"][2] = 0  # zero_size_box
    coco["images"][1]["file_name"] = "images/nope.png"  # missing_image
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(coco))
    assert _run("data", "check", str(bad), "--images", str(ann_file.parent)) == 1
    out = capsys.readouterr().out
    assert "zero_size_box" in out and "missing_image" in out and "FOUND 2 bad record(s)" in out
    assert _run("data", "check", str(tmp_path / "absent.json")) == 2
    assert "absent.json" in capsys.readouterr().err


def test_synth_subcommand(tmp_path: Path) -> None:
    assert _run("data", "synth", str(tmp_path / "s"), "--num-images", "3", "--image-size", "32", "48", "--num-classes", "2") == 0
    coco = json.loads((tmp_path / "s" / "annotations.json").read_text())
    assert len(coco["images"]) == 3 and (coco["images"][0]["height"], coco["images"][0]["width"]) == (32, 48)


def test_convert_records_the_image_folder_so_images_need_not_be_repeated(yolo_root: Path, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "elsewhere" / "train.json"
    assert _run("data", "convert", "--from", "yolo", str(yolo_root), "--split-file", "train", "--out", str(out)) == 0
    recorded = json.loads(out.read_text())["info"]["image_dir"]
    assert not Path(recorded).is_absolute()  # relative to the json: the pair can be moved together
    assert (out.parent / recorded).resolve() == (yolo_root / "images" / "train").resolve()
    capsys.readouterr()
    assert _run("data", "check", str(out)) == 0  # no --images
    assert "OK: no bad record" in capsys.readouterr().out
    assert len(CocoDetection(out)) == 3  # no image_dir
    from umop.analysis.coco import load_coco

    assert len(load_coco(out).images) == 3
