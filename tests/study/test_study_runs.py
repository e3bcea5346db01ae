"""`umop study` end to end with real training subprocesses on a tiny synthetic set: a 2 x 2 study is
stopped (SIGTERM to the study process) mid-way and continued without re-running finished cells; a failing
cell is reported and the other cells still run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from umop.cli import main
from umop.data import make_tiny_synthetic_dataset

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY = ["data.synthetic.enabled=false", "model.options.fpn_channels=32", "data.min_size=64", "data.max_size=64",
        "batch_size=4", "solver.epochs=2", "solver.steps=[]", "solver.warmup_iters=1", "eval.every=1",
        "log.every=1", "log.tensorboard=false", "workers=0", "checkpoint.keep_last=1"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    train = make_tiny_synthetic_dataset(root / "train", num_images=8, seed=0)
    val = make_tiny_synthetic_dataset(root / "val", num_images=4, seed=1)
    return [f"data.train_ann={train}", f"data.train_images={train.parent}",
            f"data.val_ann={val}", f"data.val_images={val.parent}"]


def _environment() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


def _wait_for(condition, process: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the study ended (code {process.returncode}) before the expected state:\n"
                                 f"{process.stdout.read() if process.stdout else ''}")
        if time.time() > deadline:
            process.kill()
            raise AssertionError("timed out waiting for the study")
        time.sleep(0.1)


@pytest.mark.slow
def test_study_is_stopped_and_continued_without_rerunning_finished_cells(tmp_path, tiny_data, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)  # the cells run `python -m umop.cli` from the working directory
    out = tmp_path / "study"
    command = [sys.executable, "-m", "umop.cli", "study", "demo_synthetic", "--vary", "cls_loss=focal,pfl",
               "--seeds", "0,1", "--out", str(out), "--set", *TINY, *tiny_data]
    first = subprocess.Popen(command, env=_environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    finished_cell, interrupted_cell = out / "focal" / "seed0", out / "focal" / "seed1"
    # stop the study once the second cell has checkpointed its first epoch (and not finished)
    _wait_for(lambda: (finished_cell / "summary.json").is_file()
              and (interrupted_cell / "checkpoints" / "last.pt").is_file(), first)
    first.send_signal(signal.SIGTERM)
    output = first.communicate(timeout=120)[0]
    assert first.returncode == 143, output
    assert "study stopped during focal/seed1" in output
    assert not (interrupted_cell / "summary.json").is_file()
    attempts = [json.loads(line) for line in (interrupted_cell / "study_attempts.jsonl").read_text().splitlines()]
    assert attempts[-1]["stopped"] is True  # the training subprocess was stopped with the study
    partial = json.loads((out / "study.json").read_text())
    assert partial["counts"] == {"finished": 1, "partial": 1, "pending": 2, "failed": 0}
    finished_summary = (finished_cell / "summary.json").read_text()
    finished_mtime = (finished_cell / "summary.json").stat().st_mtime_ns

    second = subprocess.run([sys.executable, "-m", "umop.cli", "study", str(out / "study.yaml")],
                            env=_environment(), capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "4 cells (1 finished, 3 to run)" in second.stdout
    assert "focal/seed1: resuming" in second.stdout
    assert "focal/seed0" not in second.stdout  # finished cells are not run again
    assert (finished_cell / "summary.json").stat().st_mtime_ns == finished_mtime
    assert (finished_cell / "summary.json").read_text() == finished_summary
    assert len((finished_cell / "study_attempts.jsonl").read_text().splitlines()) == 1
    assert "resumed from" in (interrupted_cell / "stdout.log").read_text()
    record = json.loads((out / "study.json").read_text())
    assert record["counts"]["finished"] == 4
    assert {c["variant"] for c in record["cells"]} == {"focal", "pfl"}
    assert set(record["differences"]["pfl"]) >= {"AP", "AP50"}
    for cell in record["cells"]:  # each cell is an ordinary run folder with its evaluations
        run_dir = Path(cell["run_dir"])
        assert (run_dir / "checkpoints" / "last.pt").is_file()
        assert [e["epoch"] for e in json.loads((run_dir / "eval.json").read_text())] == [1, 2]
        assert cell["metrics"]["AP"] == json.loads((run_dir / "summary.json").read_text())["eval"]["AP"]
    assert "pfl minus focal: AP" in (out / "study.md").read_text()
    assert (out / "study.html").is_file() and (out / "figures" / "gamma_ad.png").is_file()

    # every finished cell evaluated again under other test settings: nothing trains, 4 evaluations
    third = subprocess.run([sys.executable, "-m", "umop.cli", "study", str(out / "study.yaml"), "--eval-set",
                            "model.options.score_thresh=0", "--eval-name", "score0"],
                           env=_environment(), capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stdout + third.stderr
    assert "4 cells (4 finished, 0 to run)" in third.stdout and third.stdout.count("evaluating again") == 4
    assert (finished_cell / "summary.json").read_text() == finished_summary
    record = json.loads((out / "study.json").read_text())
    for cell in record["cells"]:
        again = json.loads((Path(cell["run_dir"]) / "eval_score0.json").read_text())
        assert cell["extra_metrics"]["AP"] == again["AP"]
        assert again["AP"] >= cell["metrics"]["AP"] - 1e-9  # a lower threshold only adds lower-ranked detections
    assert record["extra_evaluation"]["missing"] == [] and "AP" in record["extra_evaluation"]["differences"]["pfl"]
    assert "## Evaluated again with `model.options.score_thresh=0` (score0)" in (out / "study.md").read_text()

    # the BENCHMARKS rows of this study, with the columns of the extra evaluation
    rows = _script("study_rows").rows(record, "AP")
    assert rows[0].count("score0") == 3  # AP, its difference, oLRP
    assert f"{100 * record['summary']['pfl']['AP']['mean']:.1f}" in rows[3]
    assert f"{100 * record['extra_evaluation']['summary']['pfl']['AP']['mean']:.1f}" in rows[3]


def _script(name: str):
    """A benchmarks/ script as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_a_failing_cell_is_reported_and_the_others_still_run(tmp_path, tiny_data, monkeypatch, capsys):
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setenv("PYTHONPATH", _environment()["PYTHONPATH"])
    out = tmp_path / "study"
    # model.options are free-form (checked by the detector, not the config): "oops" fails inside the cell
    code = main(["study", "demo_synthetic", "--vary", "model.options.fpn_channels=oops,32", "--seeds", "0",
                 "--out", str(out), "--set", *[o for o in TINY if "fpn_channels" not in o], *tiny_data])
    assert code == 1
    record = json.loads((out / "study.json").read_text())
    status = {c["variant"]: c for c in record["cells"]}
    assert status["oops"]["status"] == "failed" and status["32"]["status"] == "finished"
    tail = status["oops"]["failure"]["stderr_tail"]
    assert "Error" in tail and status["oops"]["failure"]["returncode"] != 0
    markdown = (out / "study.md").read_text()
    assert "oops/seed0 failed (exit code" in markdown and tail.strip().splitlines()[-1] in markdown
    assert "1 failed" in markdown
