"""`umop` end to end on a tiny synthetic set: train one short epoch -> eval -> predict (PNG + results json)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from umop.cli import main
from umop.data import make_tiny_synthetic_dataset

TINY = ["model.backbone=resnet18", "model.options.fpn_channels=64", "model.options.score_thresh=0.0",
        "data.synthetic.enabled=false",
        "data.min_size=64", "data.max_size=64", "batch_size=4", "solver.epochs=1", "solver.warmup_iters=1",
        "log.every=1", "log.progress_bar=false", "log.tensorboard=false", "seed=0"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    train = make_tiny_synthetic_dataset(root / "train", num_images=8, seed=0)
    val = make_tiny_synthetic_dataset(root / "val", num_images=4, seed=1)
    return [f"data.train_ann={train}", f"data.train_images={train.parent}",
            f"data.val_ann={val}", f"data.val_images={val.parent}"], val


def test_train_eval_predict_end_to_end(tmp_path, tiny_data, capsys):
    data, val_ann = tiny_data
    run_dir = tmp_path / "run"
    assert main(["train", "configs/demo_synthetic.yaml", "--out", str(run_dir), "--set", *TINY, *data]) == 0
    checkpoint = run_dir / "checkpoints" / "last.pt"
    assert checkpoint.is_file() and (run_dir / "checkpoints" / "epoch_1.pt").is_file()
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records] == [1, 2]
    assert len(records[0]["level/positive_ratio"]) == 5 and len(records[0]["level/gamma_ad"]) == 5  # PFL stats
    evaluations = json.loads((run_dir / "eval.json").read_text())
    assert evaluations[-1]["epoch"] == 1 and len(evaluations[-1]["per_class"]) == 3
    assert "run folder" in capsys.readouterr().out

    eval_out = tmp_path / "eval.json"
    results_out = tmp_path / "results.json"
    assert main(["eval", "demo_synthetic", str(checkpoint), "--set", *TINY, *data,
                 "--out", str(eval_out), "--results", str(results_out), "--levels",
                 "--plots", str(tmp_path / "plots")]) == 0
    metrics = json.loads(eval_out.read_text())
    assert metrics["AP"] == pytest.approx(evaluations[-1]["AP"])  # same weights, same data, same number
    assert metrics["oLRP"] == pytest.approx(evaluations[-1]["oLRP"]) and 0 <= metrics["oLRP"] <= 1
    assert set(metrics["per_class_lrp"]) == set(metrics["per_class"])
    assert metrics["num_images"] == 4
    printed = capsys.readouterr().out
    assert "AP50" in printed and "class" in printed and "moLRP" in printed
    assert ("found small" in printed) == ("levels" in metrics)  # the detector reports levels (issue 9) or not
    for name in ("pr_curves", "f1_confidence", "confusion_matrix"):
        assert (tmp_path / "plots" / f"{name}.png").is_file() and (tmp_path / "plots" / f"{name}.csv").is_file()
    val_ids = {image["id"] for image in json.loads(val_ann.read_text())["images"]}
    assert all(r["image_id"] in val_ids for r in json.loads(results_out.read_text()))

    images = sorted((val_ann.parent / "images").glob("*.png"))[:2]
    out = tmp_path / "pred"
    assert main(["predict", "demo_synthetic", str(checkpoint), *map(str, images), "--out", str(out),
                 "--score-thresh", "0.0", "--set", *TINY, *data]) == 0
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == [p.name for p in images]
    for png, original in zip(pngs, images):  # 64 px inputs are drawn 6x enlarged (shorter side >= 384)
        assert Image.open(png).size == tuple(6 * side for side in Image.open(original).size)
    results = json.loads((out / "results.json").read_text())
    assert results and {"image_id", "category_id", "bbox", "score"} <= set(results[0])
    assert {r["image_id"] for r in results} <= {1, 2}

    # per-class LRP-optimal thresholds, read from the run's eval.json (no CHECKPOINT.eval.json here)
    assert main(["predict", "demo_synthetic", str(checkpoint), *map(str, images), "--out", str(tmp_path / "lrp"),
                 "--score-thresh", "lrp", "--set", *TINY, *data]) == 0
    assert "LRP-optimal threshold of each class from" in capsys.readouterr().out


def test_resume_auto_continues_and_unknown_key_fails(tmp_path, tiny_data, capsys):
    data, _ = tiny_data
    run_dir = tmp_path / "run"
    args = ["train", "demo_synthetic", "--out", str(run_dir), "--set", *TINY, *data, "data.val_ann=",
            "solver.max_iters_per_epoch=1"]
    assert main(args) == 0
    assert main(args + ["solver.epochs=2", "--resume", "auto"]) == 0
    assert "resumed from" in capsys.readouterr().out
    records = [json.loads(line)["iter"] for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert records == [1, 2]

    assert main(["train", "demo_synthetic", "--set", "solver.lrr=0.1"]) == 2
    assert "unknown config key 'solver.lrr' (did you mean 'solver.lr'?)" in capsys.readouterr().err


def test_bad_inputs_give_clear_errors(tmp_path, capsys):
    assert main(["train", "atss_pfll"]) == 2
    assert "did you mean atss_pfl" in capsys.readouterr().err.lower()
    assert main(["eval", "demo_synthetic", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["predict", "demo_synthetic", "x.pt", "a.png", "--out", str(tmp_path), "--score-thresh", "best"])
    assert "must be a number or 'lrp'" in capsys.readouterr().err


def test_subcommands_are_registered(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = capsys.readouterr().out
    for command in ("train", "eval", "predict", "demo", "data", "analyze", "study"):
        assert command in help_text


def test_a_subcommand_whose_module_fails_to_import_says_why(monkeypatch, capsys):
    import importlib

    real_import = importlib.import_module

    def failing_import(name, *args, **kwargs):
        if name == "umop.analysis.cli":
            raise ImportError("matplotlib is missing")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", failing_import)
    assert main(["analyze"]) == 2
    assert "umop analyze is unavailable: matplotlib is missing" in capsys.readouterr().err
