"""Survey dataset analyses, training-run plots, HTML report and the `umop analyze` CLI."""
from __future__ import annotations

import argparse
import base64
import csv
import json
import math
import re

import numpy as np
import pytest
from PIL import Image

from umop.analysis import cli as analysis_cli
from umop.analysis.coco import load_coco
from umop.analysis.dataset import analyze_dataset, object_table
from umop.analysis.levels import LevelRow, write_level_csv
from umop.analysis.report import write_report
from umop.analysis.run import analyze_run, read_run_log

MAX_PNG_BYTES = 300_000


def _read_csv(path):
    with path.open() as handle:
        return list(csv.DictReader(handle))


def _check_png(path):
    assert path.is_file() and 0 < path.stat().st_size < MAX_PNG_BYTES
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) >= 300


def _write_log(run_dir, iterations=30, grad_norms=True):
    """A synthetic PFL run: gamma_ad falls from 2 + 2(l+1)/5 towards 2 (faster on low levels)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / "log.jsonl").open("w") as stream:
        for step in range(iterations):
            gamma = [2 + 2 * (level + 1) / 5 * math.exp(-step / (3 + 2 * level)) for level in range(5)]
            record = {"epoch": step // 10, "iter": step * 10, "lr": 0.01, "loss": 2.0 / (1 + step),
                      "loss_cls": 1.2 / (1 + step), "loss_box": 0.8 / (1 + step),
                      "level/num_positive": [4, 8, 6, 3, 2], "level/num_anchors": [4096, 1024, 256, 64, 16],
                      "level/positive_ratio": [4 / 4096, 8 / 1024, 6 / 256, 3 / 64, 2 / 16],
                      "level/gamma_ad": gamma, "level/alpha_ad": [0.5 / g for g in gamma]}
            if grad_norms:
                record.update({"objective/grad_norm/loss_cls": 0.3 / (1 + step),
                               "objective/grad_norm/loss_box": 0.1})
            stream.write(json.dumps(record) + "\n")
        stream.write('{"epoch": 3, "iter": 99')  # the last line of a killed run, cut short


def test_dataset_analyses_write_pngs_and_csvs_with_the_right_numbers(tmp_path, write_coco, fake_assigner_factory):
    ann_file, image_dir = write_coco([
        (1, 200, 100, [(0, 0, 100, 50, 1), (150, 50, 50, 50, 1)]),
        (2, 400, 400, [(100, 100, 200, 200, 2)]),
        (3, 64, 64, []),
    ])
    index = load_coco(ann_file, image_dir)
    table = object_table(index)
    np.testing.assert_allclose(table.relative_width, [0.5, 0.25, 0.5])
    np.testing.assert_allclose(table.relative_height, [0.5, 0.5, 0.5])
    np.testing.assert_allclose(table.relative_area, [0.25, 0.125, 0.25])
    np.testing.assert_allclose(table.center_x, [0.25, 0.875, 0.5])
    np.testing.assert_allclose(table.center_y, [0.25, 0.75, 0.5])

    written = analyze_dataset(index, tmp_path / "ds", ["atss", "retinanet"], assigner_factory=fake_assigner_factory)
    names = {path.name for path in written}
    assert names == {"class_imbalance.png", "class_imbalance.csv", "scale_imbalance.png", "objects.csv",
                     "iou_distribution.png", "iou_distribution.csv", "location_heatmap.png",
                     "location_heatmap.csv"}
    for path in written:
        if path.suffix == ".png":
            _check_png(path)
    classes = _read_csv(tmp_path / "ds" / "class_imbalance.csv")
    assert [(row["class"], row["num_objects"]) for row in classes] == [("cat", "2"), ("dog", "1")]
    assert int(classes[0]["positive_anchors_atss"]) > 0 and int(classes[1]["positive_anchors_atss"]) > 0
    ious = _read_csv(tmp_path / "ds" / "iou_distribution.csv")
    positives = sum(int(row["num_positive"]) for row in ious if row["detector"] == "atss")
    assert positives == int(classes[0]["positive_anchors_atss"]) + int(classes[1]["positive_anchors_atss"])
    assert all(float(row["iou_low"]) >= 0.5 for row in ious if int(row["num_positive"]) > 0)  # IoU >= 0.5 rule
    heat = _read_csv(tmp_path / "ds" / "location_heatmap.csv")
    assert sum(int(row["num_objects"]) for row in heat) == 3
    assert len(_read_csv(tmp_path / "ds" / "objects.csv")) == 3


def test_run_log_is_read_and_plotted(tmp_path):
    run_dir = tmp_path / "run"
    _write_log(run_dir)
    log = read_run_log(run_dir)
    assert len(log.iterations) == 30  # the cut last line is skipped
    assert log.levels["level/gamma_ad"].shape == (30, 5)
    assert log.levels["level/gamma_ad"][0, 4] > log.levels["level/gamma_ad"][-1, 4] > 2.0
    assert log.grad_norm_keys == ["objective/grad_norm/loss_cls", "objective/grad_norm/loss_box"]
    written = analyze_run(run_dir)
    assert [path.name for path in written] == ["run_levels.png", "objective_imbalance.png", "run_stats.csv"]
    for path in written[:2]:
        _check_png(path)
    rows = _read_csv(written[2])
    assert len(rows) == 30 and float(rows[0]["level/gamma_ad/P7"]) == pytest.approx(4.0)


def test_run_without_pfl_or_grad_norms_still_plots_losses(tmp_path):
    run_dir = tmp_path / "plain"
    run_dir.mkdir()
    (run_dir / "log.jsonl").write_text("".join(json.dumps({"iter": i, "loss": 1.0 / (i + 1), "loss_cls": 0.5})
                                               + "\n" for i in range(5)))
    assert [path.name for path in analyze_run(run_dir, tmp_path / "out")] == ["run_levels.png", "run_stats.csv"]


def test_run_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_run_log(tmp_path / "absent")
    with pytest.raises(ValueError, match="log.jsonl does not exist"):
        read_run_log(tmp_path)
    (tmp_path / "log.jsonl").write_text("")
    with pytest.raises(ValueError, match="empty"):
        read_run_log(tmp_path)
    (tmp_path / "log.jsonl").write_text('{"iter": 1}\n{oops\n{"iter": 2}\n')
    with pytest.raises(ValueError, match=r"log.jsonl:2 is not valid JSON"):
        read_run_log(tmp_path)


def test_report_embeds_every_png_and_copies_files_beside_it(tmp_path, write_coco, fake_assigner_factory):
    levels_dir = tmp_path / "levels"
    rows = [LevelRow(detector, image_id, level, positives, 100, 640, 480)
            for detector in ("retinanet", "atss") for image_id in (1, 2)
            for level, positives in zip(range(3, 8), (0, 1, 2, 3, 9 if detector == "atss" else 1))]
    write_level_csv(rows, levels_dir / "level_stats.csv")
    ann_file, image_dir = write_coco([(1, 200, 100, [(0, 0, 100, 50, 1)])])
    analyze_dataset(load_coco(ann_file, image_dir), tmp_path / "ds", assigner_factory=fake_assigner_factory)
    _write_log(tmp_path / "run")

    out = write_report(tmp_path / "report" / "report.html", levels_dir=levels_dir, dataset_dir=tmp_path / "ds",
                       run_dir=tmp_path / "run")
    page = out.read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 7  # levels, 4 dataset analyses, 2 run plots
    assert all(base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n" for data in images)
    assert "UMOP Fig. 2" in page and "survey Fig. 14" in page
    assert page.count("Look for:") == 7  # every figure has a caption saying what to look for
    # The P7 verdict table: atss has P7 = 0.09 > others -> yes; retinanet P7 = 0.01 < P6 = 0.03 -> no.
    assert re.search(r"<td>atss</td>(<td>[^<]+</td>){5}<td>yes</td>", page)
    assert re.search(r"<td>retinanet</td>(<td>[^<]+</td>){5}<td>no</td>", page)
    beside = {path.name for path in out.parent.iterdir()}
    assert {"level_imbalance.png", "level_stats.csv", "class_imbalance.png", "objects.csv", "run_levels.png",
            "run_stats.csv"} <= beside
    with pytest.raises(ValueError, match="nothing to report"):
        write_report(tmp_path / "r.html")
    with pytest.raises(ValueError, match="--levels"):
        write_report(tmp_path / "r.html", levels_dir=tmp_path / "missing")


def _parser():
    parser = argparse.ArgumentParser(prog="umop")
    analysis_cli.register(parser.add_subparsers(dest="command"))
    return parser


def _run_cli(*argv):
    args = _parser().parse_args(["analyze", *map(str, argv)])
    return args.func(args)


def test_cli_levels_dataset_run_report(tmp_path, write_coco, monkeypatch, capsys, fake_assigner_factory):
    monkeypatch.setattr("umop.analysis.levels.build_assigner", fake_assigner_factory)
    ann_file, image_dir = write_coco([(1, 640, 480, [(100, 100, 300, 300, 1)]), (2, 640, 480, [])])

    assert _run_cli("levels", "--detector", "retinanet", "--detector", "atss", "--data", ann_file,
                    "--images", image_dir, "--out", tmp_path / "lv") == 0
    output = capsys.readouterr().out
    assert "P7 highest" in output and "retinanet" in output
    header = (tmp_path / "lv" / "level_stats.csv").read_text().splitlines()[0]
    assert header == "detector,image_id,level,num_positive,num_total,width,height"
    _check_png(tmp_path / "lv" / "level_imbalance.png")

    assert _run_cli("dataset", ann_file, "--images", image_dir, "--out", tmp_path / "ds") == 0
    _write_log(tmp_path / "run")
    assert _run_cli("run", tmp_path / "run") == 0
    assert (tmp_path / "run" / "analysis" / "run_levels.png").is_file()
    assert _run_cli("report", "--levels", tmp_path / "lv", "--dataset", tmp_path / "ds", "--run",
                    tmp_path / "run", "--out", tmp_path / "report.html") == 0
    assert (tmp_path / "report.html").stat().st_size > 10_000


def test_cli_bad_input_exits_2_with_a_clear_message(tmp_path, write_coco, capsys):
    ann_file, image_dir = write_coco([(1, 640, 480, [])])
    assert _run_cli("levels", "--detector", "yolov8", "--data", ann_file, "--images", image_dir,
                    "--out", tmp_path / "o") == 2
    message = capsys.readouterr().err
    assert "yolov8" in message and "retinanet, atss, fcos, vfnet" in message
    assert _run_cli("levels", "--data", ann_file, "--images", tmp_path / "no_images", "--out", tmp_path / "o") == 2
    assert "no_images does not exist" in capsys.readouterr().err
    empty_file, _ = write_coco([], name="empty.json")
    assert _run_cli("dataset", empty_file, "--images", image_dir, "--out", tmp_path / "o") == 2
    assert "empty.json lists no images" in capsys.readouterr().err
    assert _run_cli("run", tmp_path / "no_run") == 2
    assert _run_cli("report", "--out", tmp_path / "r.html") == 2
    assert "nothing to report" in capsys.readouterr().err


def test_objective_caption_matches_what_is_plotted(tmp_path):
    from umop.analysis.report import CAPTIONS, OBJECTIVE_LOSSES_ONLY_CAPTION

    pages = {}
    for grad_norms in (True, False):
        run_dir = tmp_path / f"run_{grad_norms}"
        _write_log(run_dir, iterations=12, grad_norms=grad_norms)
        pages[grad_norms] = write_report(tmp_path / f"r_{grad_norms}" / "r.html", run_dir=run_dir).read_text()
    assert "L2 norm of their gradients" in CAPTIONS["objective_imbalance.png"]
    assert CAPTIONS["objective_imbalance.png"][:60] in pages[True]
    assert "losses only" in OBJECTIVE_LOSSES_ONLY_CAPTION and "log.objective_every" in OBJECTIVE_LOSSES_ONLY_CAPTION
    assert OBJECTIVE_LOSSES_ONLY_CAPTION[:60] in pages[False]
    assert "L2 norm of their gradients" not in pages[False]
