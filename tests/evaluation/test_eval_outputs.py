"""Curves, confusion matrix, tables and report section of an evaluation, on the hand-worked LRP case."""

import csv
import json

import pytest

from umop.analysis.report import write_report
from umop.evaluation import evaluate_detections
from umop.evaluation.outputs import find_lrp_thresholds, format_level_table, format_lrp, write_eval_outputs

from test_lrp import _hand_case  # pytest puts this folder on sys.path

NAMES = ["a", "b", "c"]


def _rows(path):
    with path.open() as handle:
        return list(csv.reader(handle))


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    detections, targets = _hand_case()
    metrics = evaluate_detections(detections, targets, num_classes=3, class_names=NAMES)
    out = tmp_path_factory.mktemp("eval")
    paths = write_eval_outputs(detections, targets, metrics, out, num_classes=3, class_names=NAMES,
                               score_thresh=0.3)
    return out, paths, metrics


def test_curves_and_confusion_numbers(written):
    out, paths, _ = written
    for name in ("pr_curves", "f1_confidence", "confusion_matrix"):
        assert out / f"{name}.png" in paths and out / f"{name}.csv" in paths
    # class a: precision 1 up to recall 0.5 (d1), then 2/3 at recall 1 (d1, d2 false, d3)
    pr = {(row[0], row[1]): float(row[2]) for row in _rows(out / "pr_curves.csv")[1:]}
    assert pr[("a", "0.5000")] == pytest.approx(1.0) and pr[("a", "1.0000")] == pytest.approx(2 / 3)
    assert pr[("all", "1.0000")] == pytest.approx(1 / 3)  # mean with class b (no detection: precision 0)
    f1 = {(row[0], row[1]): float(row[2]) for row in _rows(out / "f1_confidence.csv")[1:]}
    assert f1[("a", "0.00")] == pytest.approx(0.8)  # P 2/3, R 1
    assert f1[("a", "0.75")] == pytest.approx(2 / 3)  # only d1 (0.9) kept: P 1, R 0.5
    # rows: true class, columns: predicted; A and B found as a; d2 and image 1's detection are background;
    # b's box is missed (background column)
    matrix = {row[0]: [int(v) for v in row[1:]] for row in _rows(out / "confusion_matrix.csv")[1:]}
    assert matrix == {"a": [2, 0, 0, 0], "b": [0, 0, 0, 1], "c": [0, 0, 0, 0], "background": [2, 0, 0, 0]}


def test_tables_text_and_report(written, tmp_path):
    out, _, metrics = written
    lrp = {row[0]: row[1:] for row in _rows(out / "lrp.csv")[1:]}
    assert float(lrp["a"][0]) == pytest.approx(1.6 / 3, abs=1e-4) and float(lrp["a"][4]) == pytest.approx(0.7)
    levels = {row[0]: row[1:] for row in _rows(out / "levels.csv")[1:]}
    assert levels["P3"][:3] == ["1", "0.8000", "0"] and levels["P4"][2] == "2"
    assert "moLRP 0.767" in format_lrp(metrics) and "threshold" in format_lrp(metrics)
    text = format_level_table(metrics)
    assert "found small" in text and text.splitlines()[1].startswith("P3")
    assert "no per-level table" in format_level_table({"AP": 0.1})
    page = write_report(tmp_path / "report.html", eval_dir=out)
    content = page.read_text()
    assert "Optimal LRP per class" in content and "Detections per pyramid level" in content
    assert content.count("<figure>") == 3 and (tmp_path / "confusion_matrix.csv").is_file()
    with pytest.raises(ValueError, match="metrics.json"):
        write_report(tmp_path / "r.html", eval_dir=tmp_path)


def test_lrp_thresholds_are_found_beside_the_checkpoint_or_in_the_run(written, tmp_path):
    _, _, metrics = written
    checkpoint = tmp_path / "run" / "checkpoints" / "last.pt"
    checkpoint.parent.mkdir(parents=True)
    with pytest.raises(ValueError, match="run `umop eval`"):
        find_lrp_thresholds(checkpoint, NAMES)
    (tmp_path / "run" / "eval.json").write_text(json.dumps([{"AP": 0.0}, metrics]))  # the run's last evaluation
    thresholds, source = find_lrp_thresholds(checkpoint, NAMES, default=0.25)
    assert thresholds == pytest.approx([0.7, 0.25, 0.25]) and source.name == "eval.json"
    checkpoint.with_suffix(".eval.json").write_text(json.dumps({**metrics, "per_class_lrp": {
        "a": {**metrics["per_class_lrp"]["a"], "threshold": 0.5}}}))
    assert find_lrp_thresholds(checkpoint, NAMES)[0] == pytest.approx([0.5, 0.3, 0.3])  # beside it: preferred
