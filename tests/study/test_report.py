"""`umop study` reports from hand-made cell folders (no training): statistics, study.md == study.json,
the time-cap note, key checks, the dry run."""

from __future__ import annotations

import json
import re

import pytest

from umop.cli import main
from umop.engine.config import load_config, save_config
from umop.study.runner import (StudySpec, check_cells, parse_vary, plan_cells, resolve_key, run_study,
                               variant_names)

AP = {("focal", 0): 0.28, ("focal", 1): 0.31, ("focal", 2): 0.30,
      ("pfl", 0): 0.30, ("pfl", 1): 0.34, ("pfl", 2): 0.29}


def _fake_cell(spec: StudySpec, cell, ap: float, stopped_early: bool = False, epochs: int = 4) -> None:
    """A finished run folder as the trainer leaves it (config.yaml, eval.json, summary.json)."""
    cell.run_dir.mkdir(parents=True)
    config = load_config(spec.config, ["log.progress_bar=false", *spec.overrides, *cell.overrides,
                                       f"output_dir={cell.run_dir}"])
    save_config(config, cell.run_dir / "config.yaml")
    history = [{"epoch": epoch, "iter": 10 * epoch, "AP": ap * epoch / 4, "AP50": 0.6, "AP75": 0.2, "APs": -1.0,
                "APm": 0.25, "APl": 0.4, "per_class": {"a": ap + 0.01, "b": ap - 0.01}, "num_images": 4,
                "num_failed_images": 0, "oLRP": 1 - ap, "per_class_lrp": {"a": {"oLRP": 0.9, "FP": 0.2}}}
               for epoch in range(1, epochs + 1)]
    (cell.run_dir / "eval.json").write_text(json.dumps(history))
    (cell.run_dir / "summary.json").write_text(json.dumps(
        {"run_dir": str(cell.run_dir), "epochs": epochs, "iterations": 10 * epochs, "stopped_early": stopped_early,
         "train_seconds": 12.0 + cell.seed, "eval": history[-1]}))
    (cell.run_dir / "study_attempts.jsonl").write_text(json.dumps({"seconds": 20.0, "returncode": 0}) + "\n")


@pytest.fixture
def fake_study(tmp_path):
    spec = StudySpec("demo_synthetic", [parse_vary("cls_loss=focal,pfl")], [0, 1, 2], str(tmp_path / "study"),
                     ["solver.epochs=4"])
    _variants, cells = plan_cells(spec)
    for cell in cells:
        _fake_cell(spec, cell, AP[(cell.variant, cell.seed)], stopped_early=(cell.variant, cell.seed) == ("pfl", 2))
    return spec, cells


def test_keys_and_variant_names():
    assert resolve_key("cls_loss") == "model.cls_loss"
    assert resolve_key("epochs") == "solver.epochs"
    assert resolve_key("detector") == "model.name"
    assert resolve_key("model.options.delta") == "model.options.delta"
    assert parse_vary("data.min_size=[64,96],128") == ("data.min_size", ["[64,96]", "128"])
    with pytest.raises(ValueError, match="did you mean 'model.cls_loss'"):
        parse_vary("model.cls_los=focal,pfl")
    names = variant_names([("model.name", ["atss", "retinanet"]), ("model.cls_loss", ["focal", "pfl"])])
    assert [name for name, _ in names] == ["atss_focal", "atss_pfl", "retinanet_focal", "retinanet_pfl"]
    assert names[1][1] == ["model.name=atss", "model.cls_loss=pfl"]


def test_mistyped_keys_fail_before_any_training(tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["study", "demo_synthetic", "--vary", "model.cls_los=focal,pfl", "--seeds", "0,1",
                 "--out", str(out)]) == 2
    assert "model.cls_loss" in capsys.readouterr().err
    assert main(["study", "demo_synthetic", "--vary", "cls_loss=focal,pfl", "--seeds", "0,1", "--out", str(out),
                 "--set", "solver.lrr=0.1"]) == 2
    assert "solver.lr" in capsys.readouterr().err
    assert main(["study", "demo_synthetic", "--vary", "solver.epochs=1,two", "--seeds", "0", "--out", str(out)]) == 2
    assert "solver.epochs" in capsys.readouterr().err
    assert not out.exists()  # nothing was trained or even created


def test_report_statistics_and_markdown_agree_with_json(fake_study, capsys):
    spec, cells = fake_study
    record = run_study(spec)  # every cell is finished: nothing trains, the reports are written
    out = spec.out
    saved = json.loads(open(f"{out}/study.json").read())
    assert saved["counts"]["finished"] == 6 and saved["baseline"] == "focal"
    difference = saved["differences"]["pfl"]["AP"]
    assert difference["mean"] == pytest.approx(0.013333, abs=1e-6)  # the hand case of test_stats
    assert difference["ci"] == pytest.approx([-0.038384, 0.065050], abs=2e-5)
    assert "APs" not in saved["metrics"]  # -1 (not measurable) is not averaged
    assert "num_failed_images" not in saved["metrics"] and "oLRP/a" in saved["metrics"]
    assert saved["differences"]["pfl"]["oLRP"]["mean"] == pytest.approx(-0.013333, abs=1e-6)
    markdown = open(f"{out}/study.md").read()
    # every mean +- std of the first table is the json's, rounded
    table = markdown.split("## Mean")[1].split("\n\n")[1].splitlines()
    header = [h.strip() for h in table[0].strip("|").split("|")]
    for line in table[2:]:
        row = [c.strip() for c in line.strip("|").split("|")]
        variant = row[0].replace(" (baseline)", "")
        for column, text in zip(header[2:-1], row[2:-1]):
            mean, std = map(float, re.findall(r"-?\d+\.\d", text))
            entry = saved["summary"][variant][column]
            assert (mean, std) == (round(100 * entry["mean"], 1), round(100 * entry["std"], 1))
    assert "## Per-class oLRP (lower is better)" in markdown
    assert "pfl minus focal: AP +1.3 points (paired over 3 seeds, 95% interval -3.8 to +6.5)" in markdown
    assert "The interval contains 0" in markdown
    assert "1 of 6 cells were stopped early by `solver.max_train_seconds`" in markdown  # the time cap is told
    convergence = saved["convergence"]["pfl"]["75%"]
    assert convergence["epochs"] == ["3/4"] and convergence["mean"] == pytest.approx(0.31 * 3 / 4)
    html = open(f"{out}/study.html").read()
    assert html.count("data:image/png;base64") >= 2 and "pfl minus focal" in html
    assert record["counts"] == saved["counts"]


def test_dry_run_lists_cells_and_estimates_time(fake_study, capsys):
    spec, cells = fake_study
    extended = StudySpec(spec.config, spec.vary, [0, 1, 2, 3], spec.out, spec.overrides)  # one more seed
    assert run_study(extended, dry_run=True)["remaining"] == 2
    text = capsys.readouterr().out
    assert "8 cells, 6 finished" in text and "pending   pfl/seed3" in text and "python -m umop.cli train" in text
    assert "estimated time for the 2 remaining cells: 0 min 40 s" in text


def test_a_finished_cell_run_with_other_settings_is_refused(fake_study):
    spec, cells = fake_study
    changed = StudySpec(spec.config, spec.vary, spec.seeds, spec.out, ["solver.epochs=5"])
    with pytest.raises(ValueError, match="solver.epochs=4"):
        check_cells(changed, plan_cells(changed)[1])
    logging_only = StudySpec(spec.config, spec.vary, spec.seeds, spec.out, ["solver.epochs=4", "log.every=3"])
    check_cells(logging_only, plan_cells(logging_only)[1])  # logging does not change the trained model


def test_eval_set_evaluation_is_compared_and_missing_cells_are_named(fake_study, capsys):
    """``--eval-set``: the cells' ``eval_<name>.json`` (written here by hand; a cell without a checkpoint and
    without the file is named, not evaluated) make their own table with paired differences."""
    spec, cells = fake_study
    again = {("focal", 0): 0.30, ("focal", 1): 0.32, ("focal", 2): 0.31, ("pfl", 0): 0.34, ("pfl", 1): 0.37}
    for cell in cells:
        if (cell.variant, cell.seed) in again:
            ap = again[(cell.variant, cell.seed)]
            (cell.run_dir / "eval_score0.json").write_text(json.dumps({"AP": ap, "AP50": 0.7, "oLRP": 1 - ap}))
    with_eval = StudySpec(spec.config, spec.vary, spec.seeds, spec.out, spec.overrides,
                          eval_overrides=["model.options.score_thresh=0"], eval_name="score0")
    record = run_study(with_eval)
    assert "evaluating again" not in capsys.readouterr().out  # no checkpoint to evaluate: nothing runs
    extra = json.loads(open(f"{spec.out}/study.json").read())["extra_evaluation"]
    assert extra == record["extra_evaluation"]
    assert extra["set"] == ["model.options.score_thresh=0"] and extra["missing"] == ["pfl/seed2"]
    difference = extra["differences"]["pfl"]["AP"]  # seeds 0 and 1: +0.04, +0.05
    assert difference["n"] == 2 and difference["mean"] == pytest.approx(0.045)
    half_width = 12.7062 * 0.0070711 / 2 ** 0.5  # t(0.975, 1) * sd / sqrt(2)
    assert difference["ci"] == pytest.approx([0.045 - half_width, 0.045 + half_width], abs=1e-4)
    assert extra["summary"]["focal"]["AP"]["mean"] == pytest.approx(0.31)
    assert record["differences"]["pfl"]["AP"]["n"] == 3  # the study's own comparison is unchanged
    markdown = open(f"{spec.out}/study.md").read()
    section = markdown.split("## Evaluated again with `model.options.score_thresh=0` (score0)")[1].split("\n## ")[0]
    assert "| pfl | 2/3 | 35.5 ± 2.1 | 70.0 ± 0.0 | 64.5 ± 2.1 | +4.5 [-1.9, +10.9] | -4.5 [-10.9, +1.9] |" in section
    assert "pfl minus focal: AP (score0) +4.5 points (paired over 2 seeds" in section
    assert "Not evaluated (no checkpoints/last.pt, or its evaluation failed): pfl/seed2." in section
    assert "eval_name: score0" in open(f"{spec.out}/study.yaml").read()  # `umop study OUT/study.yaml` keeps it


def test_eval_set_is_checked_before_anything_runs(fake_study, capsys):
    spec, _cells = fake_study
    study_file = f"{spec.out}/study.yaml"
    run_study(spec)
    assert main(["study", study_file, "--eval-set", "model.options.score_thresh=0", "solver.lrr=1"]) == 2
    assert "--eval-set" in (err := capsys.readouterr().err) and "solver.lr" in err
    assert main(["study", study_file, "--eval-name", "score0"]) == 2
    assert "--eval-name 'score0' needs --eval-set" in capsys.readouterr().err
    assert main(["study", study_file, "--eval-set", "model.options.score_thresh=0", "--dry-run"]) == 0
    assert "eval_score_thresh-0.json" not in capsys.readouterr().out  # finished cells without checkpoints


def test_ap_curves_mark_means_over_fewer_seeds(tmp_path):
    """A cell stopped early by the time cap (pfl seed 2, after epoch 2 of 4) leaves the later means: the curve
    data says which epochs are means over fewer seeds, and where the stopped cell's last evaluation is."""
    from umop.study.report import ap_curves

    spec = StudySpec("demo_synthetic", [parse_vary("cls_loss=focal,pfl")], [0, 1, 2], str(tmp_path / "study"),
                     ["solver.epochs=4"])
    _variants, cells = plan_cells(spec)
    for cell in cells:
        stopped = (cell.variant, cell.seed) == ("pfl", 2)
        _fake_cell(spec, cell, AP[(cell.variant, cell.seed)], stopped_early=stopped, epochs=2 if stopped else 4)
    record = run_study(spec)
    curves = ap_curves(record)
    assert curves["focal"]["finished"] == 3 and curves["focal"]["stopped"] == []
    assert [len(curves["focal"]["per_epoch"][e]) for e in (1, 2, 3, 4)] == [3, 3, 3, 3]
    pfl = curves["pfl"]
    assert pfl["planned"] == 4 and pfl["finished"] == 3
    assert [len(pfl["per_epoch"][e]) for e in (1, 2, 3, 4)] == [3, 3, 2, 2]
    assert pfl["stopped"] == [(2, pytest.approx(AP[("pfl", 2)] * 2 / 4))]
    assert (tmp_path / "study" / "figures" / "ap_vs_epoch.png").is_file()


def test_the_same_command_on_a_study_file_twice_gives_the_same_study(fake_study, capsys):
    spec, _cells = fake_study
    run_study(spec)
    study_file = f"{spec.out}/study.yaml"
    for _ in range(2):  # --vary / --set replace the file's entries for their keys instead of adding to them
        assert main(["study", study_file, "--vary", "cls_loss=focal,pfl", "--set", "solver.epochs=4",
                     "--dry-run"]) == 0
        assert "6 cells, 6 finished" in capsys.readouterr().out
        run_study(StudySpec(spec.config, spec.vary, spec.seeds, spec.out, spec.overrides))  # rewrites study.yaml
    assert parse_vary("model.cls_loss_options.delta=0.25,0.5")[0] == "model.cls_loss_options.delta"  # as --set
    with pytest.raises(ValueError, match="a value is repeated"):
        parse_vary("model.cls_loss_options.delta=0.5,0.50")  # the same number as YAML


def test_study_file_set_as_one_string(tmp_path):
    from umop.study.runner import load_study_file

    path = tmp_path / "s.yaml"
    path.write_text("config: demo_synthetic\nvary: {cls_loss: [focal, pfl]}\nseeds: [0]\nout: o\n"
                    "set: solver.epochs=2\neval_set: model.options.score_thresh=0\n")
    spec = load_study_file(path)
    assert spec.overrides == ["solver.epochs=2"] and spec.eval_overrides == ["model.options.score_thresh=0"]
    path.write_text("config: demo_synthetic\nvary: {cls_loss: [focal]}\nseeds: [0]\nout: o\nset: 3\n")
    with pytest.raises(ValueError, match=r"study file .*'set' / 'eval_set' must be a list"):
        load_study_file(path)


def test_an_eval_name_is_not_reused_for_other_settings(fake_study):
    spec, _cells = fake_study
    first = StudySpec(spec.config, spec.vary, spec.seeds, spec.out, spec.overrides,
                      eval_overrides=["model.options.score_thresh=0"], eval_name="low")
    run_study(first)
    run_study(first)  # the same settings again: fine
    other = StudySpec(spec.config, spec.vary, spec.seeds, spec.out, spec.overrides,
                      eval_overrides=["model.options.score_thresh=0.01"], eval_name="low")
    with pytest.raises(ValueError, match="--eval-name 'low' was used with --eval-set model.options.score_thresh=0 "):
        run_study(other)


def test_train_time_leaves_out_resumed_cells(fake_study):
    spec, cells = fake_study
    resumed = next(c for c in cells if (c.variant, c.seed) == ("pfl", 0))
    with (resumed.run_dir / "study_attempts.jsonl").open("a") as stream:  # a second attempt: its summary times it
        stream.write(json.dumps({"seconds": 3.0, "returncode": 0}) + "\n")
    record = run_study(spec)
    assert record["summary"]["pfl"]["train_seconds"]["by_seed"] == {"1": 13.0, "2": 14.0}
    assert record["summary"]["focal"]["train_seconds"]["n"] == 3
    assert "| pfl | 0 | finished (resumed) | 30.0 | 4/4 | 40 | 12 (last attempt) |" in open(f"{spec.out}/study.md").read()


def test_comparison_sentences_say_only_what_the_interval_shows():
    from umop.study.report import comparison_sentence
    assert comparison_sentence("pfl", "focal", None) == (
        "pfl vs focal: no seed has AP for both yet (a cell counts once it has finished with an evaluation), "
        "so there is no difference to report.")
    one_pair = {"mean": 0.02, "n": 1, "ci": [None, None], "excludes_zero": False}
    assert "one pair gives no interval" in comparison_sentence("pfl", "focal", one_pair)
    above = {"mean": 0.02, "n": 3, "ci": [0.005, 0.035], "excludes_zero": True}
    assert comparison_sentence("pfl", "focal", above) == (
        "pfl minus focal: AP +2.0 points (paired over 3 seeds, 95% interval +0.5 to +3.5). "
        "The interval lies entirely above 0: 0 is outside it.")
    around = {"mean": -0.001, "n": 3, "ci": [-0.008, 0.006], "excludes_zero": False}
    assert comparison_sentence("pfl", "focal", around, "AP (score0)").endswith(
        "The interval contains 0: these runs do not show a difference.")


def test_a_study_file_run_from_another_folder_is_refused_before_training_again(tmp_path, monkeypatch, capsys):
    start = tmp_path / "project"
    (start / "runs").mkdir(parents=True)
    monkeypatch.chdir(start)
    spec = StudySpec("demo_synthetic", [parse_vary("cls_loss=focal,pfl")], [0], "runs/s", ["solver.epochs=4"])
    for cell in plan_cells(spec)[1]:
        _fake_cell(spec, cell, AP[(cell.variant, cell.seed)])
    run_study(spec)
    assert main(["study", "runs/s/study.yaml", "--dry-run"]) == 0  # from the folder it was started from
    capsys.readouterr()
    monkeypatch.chdir(start / "runs")
    assert main(["study", "s/study.yaml", "--dry-run"]) == 2
    error = capsys.readouterr().err
    assert (f"study file s/study.yaml: its out 'runs/s' is {start / 'runs' / 'runs' / 's'} from this working "
            f"directory, not the study's own folder {start / 'runs' / 's'}; running it here would train every "
            f"cell again (run it from {start}, where its relative config and --set paths hold too, or give --out "
            f"{start / 'runs' / 's'})") in error
    assert not (start / "runs" / "runs").exists()
    assert main(["study", "s/study.yaml", "--out", "s", "--dry-run"]) == 0  # an explicit --out is taken as is
    assert "2 cells, 2 finished" in capsys.readouterr().out
