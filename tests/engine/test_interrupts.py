"""A run a user can trust: SIGTERM / SIGINT sent to a real training process, then ``resume="auto"``.

The child process trains the toy detector (tests/engine/toy.py) with slowed-down iterations / evaluation so
that the signal lands where the test wants it (mid-epoch, or during an evaluation); the resumed run must give
the same losses as an uninterrupted one. Also: checkpoint.every_iters, keep_last, best.pt, the refusal to
start a fresh run over an existing one, and the message when nothing was saved.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from toy import ToyDataset, ToyDetector

from umop.engine import RunExistsError, Trainer, config_from_dict, load_checkpoint
from umop.engine.checkpoint import link_checkpoint, save_checkpoint

ENGINE_TESTS = Path(__file__).resolve().parent
SRC = ENGINE_TESTS.parent.parent / "src"

CHILD = r"""
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import torch
from toy import ToyDataset, ToyDetector
from umop.engine import Trainer, TrainingInterrupted, config_from_dict

run_dir, slow = Path(sys.argv[2]), sys.argv[3]
config = config_from_dict({
    "model": {"num_classes": 2},
    "solver": {"lr": 0.05, "epochs": 3, "steps": [2], "warmup_iters": 3, "grad_clip": 10.0},
    "log": {"every": 1, "tensorboard": False, "progress_bar": False},
    "batch_size": 2, "workers": 0, "seed": 3, "device": "cpu", "output_dir": str(run_dir)})
torch.manual_seed(123)
trainer = Trainer(config, model=ToyDetector(), train_dataset=ToyDataset(8),
                  val_dataset=ToyDataset(4, seed=1, flip=False))
if slow == "steps":
    step = trainer.train_step
    def slow_step(images, targets):
        record = step(images, targets)
        time.sleep(0.25)
        return record
    trainer.train_step = slow_step
else:
    evaluate = trainer.evaluate
    def slow_evaluate():
        (run_dir / "evaluating").write_text(str(trainer.epoch))
        time.sleep(60)
        return evaluate()
    trainer.evaluate = slow_evaluate
try:
    trainer.train()
except TrainingInterrupted as stop:
    print(f"interrupted: {stop}", flush=True)
    sys.exit(130)
"""


def toy_config(run_dir: Path, **sections):
    data = {
        "model": {"num_classes": 2},
        "solver": {"lr": 0.05, "epochs": 3, "steps": [2], "warmup_iters": 3, "grad_clip": 10.0},
        "log": {"every": 1, "tensorboard": False, "progress_bar": False},
        "batch_size": 2, "workers": 0, "seed": 3, "device": "cpu", "output_dir": str(run_dir),
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return config_from_dict(data)


def make_trainer(config, resume=None, overwrite=False):
    torch.manual_seed(123)
    return Trainer(config, resume=resume, overwrite=overwrite, model=ToyDetector(), train_dataset=ToyDataset(8),
                   val_dataset=ToyDataset(4, seed=1, flip=False))


def read_log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Losses (per iteration) and evaluations of an uninterrupted 3-epoch run."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    make_trainer(toy_config(run_dir)).train()
    return read_log(run_dir), json.loads((run_dir / "eval.json").read_text())


def start_child(tmp_path: Path, slow: str) -> tuple[subprocess.Popen, Path]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, str(script), str(ENGINE_TESTS), str(run_dir), slow],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return child, run_dir


def wait_for(condition, child: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if child.poll() is not None:
            raise AssertionError(f"child exited early ({child.returncode}): {child.communicate()}")
        if time.monotonic() > deadline:
            child.kill()
            raise AssertionError("timed out waiting for the child")
        time.sleep(0.05)


def log_length(run_dir: Path) -> int:
    path = run_dir / "log.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def assert_same_run(run_dir: Path, reference) -> None:
    log_ref, eval_ref = reference
    log = read_log(run_dir)
    assert [r["iter"] for r in log] == list(range(1, 13))
    assert [r["loss"] for r in log] == pytest.approx([r["loss"] for r in log_ref], abs=1e-6)
    assert [r["lr"] for r in log] == pytest.approx([r["lr"] for r in log_ref])
    evaluations = json.loads((run_dir / "eval.json").read_text())
    assert [e["epoch"] for e in evaluations] == [1, 2, 3]
    assert [e["AP"] for e in evaluations] == pytest.approx([e["AP"] for e in eval_ref], abs=1e-9)


def test_sigterm_mid_epoch_and_sigint_during_evaluation_then_resume(tmp_path, reference):
    """Two real training processes (started together to share the start-up time): SIGTERM mid-epoch 2 and
    SIGINT during the evaluation of epoch 1; each run resumed with resume="auto" equals the reference."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    mid_epoch, mid_dir = start_child(tmp_path / "a", "steps")
    in_eval, eval_dir = start_child(tmp_path / "b", "eval")

    wait_for(lambda: log_length(mid_dir) >= 6, mid_epoch)  # in epoch 2 (4 iterations per epoch)
    mid_epoch.send_signal(signal.SIGTERM)
    wait_for(lambda: (eval_dir / "evaluating").is_file(), in_eval)  # the evaluation of epoch 1 has begun
    in_eval.send_signal(signal.SIGINT)
    out, err = mid_epoch.communicate(timeout=120)
    assert mid_epoch.returncode == 130, err
    out_eval, err_eval = in_eval.communicate(timeout=120)
    assert in_eval.returncode == 130, err_eval

    # SIGTERM mid-epoch: a mid-epoch checkpoint (iteration, sampler position, RNG), then an exact resume.
    checkpoint = load_checkpoint(mid_dir / "checkpoints" / "last.pt")
    stopped_at = checkpoint["iteration"]
    assert 6 <= stopped_at < 12
    assert checkpoint["epoch_step"] == stopped_at - 4 * checkpoint["epoch"]
    assert f"SIGTERM: saved a checkpoint after iteration {stopped_at}" in out and "--resume auto" in out
    resumed = make_trainer(toy_config(mid_dir), resume="auto")
    assert (resumed.iteration, resumed.epoch_step) == (stopped_at, checkpoint["epoch_step"])
    resumed.train()
    assert len(resumed.loss_history) == 12 - stopped_at
    assert_same_run(mid_dir, reference)

    # SIGINT during an evaluation: the epoch was checkpointed before it; the resume evaluates it first.
    assert "SIGINT during the evaluation of epoch 1: its checkpoint was saved before the evaluation" in out_eval
    checkpoint = load_checkpoint(eval_dir / "checkpoints" / "last.pt")
    assert (checkpoint["epoch"], checkpoint["epoch_step"], checkpoint["iteration"]) == (1, 0, 4)
    assert not (eval_dir / "eval.json").exists()
    resumed = make_trainer(toy_config(eval_dir), resume="auto")
    resumed.train()
    assert len(resumed.loss_history) == 8
    assert_same_run(eval_dir, reference)


def test_every_iters_checkpoint_resumes_exactly(tmp_path, reference):
    config = toy_config(tmp_path / "run", checkpoint={"every_iters": 3})
    killed = make_trainer(config)
    original_step = killed.train_step

    def step_then_die(images, targets):
        if killed.iteration == 7:  # a crash (no signal): the iteration-6 checkpoint is what remains
            raise RuntimeError("power cut")
        return original_step(images, targets)

    killed.train_step = step_then_die
    with pytest.raises(RuntimeError, match="power cut"):
        killed.train()
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert (checkpoint["epoch"], checkpoint["epoch_step"], checkpoint["iteration"]) == (1, 2, 6)
    resumed = make_trainer(config, resume="auto")
    resumed.train()
    assert_same_run(tmp_path / "run", reference)


def test_keep_last_and_best_checkpoint(tmp_path, reference):
    trainer = make_trainer(toy_config(tmp_path / "run", checkpoint={"keep_last": 2}))
    trainer.train()
    folder = trainer.checkpoint_dir
    assert sorted(p.name for p in folder.glob("*.pt")) == ["best.pt", "epoch_2.pt", "epoch_3.pt", "last.pt"]
    evaluations = json.loads((trainer.run_dir / "eval.json").read_text())
    best_epoch = max(evaluations, key=lambda e: e["AP"])["epoch"]  # the first of equal values
    best = json.loads((folder / "best.json").read_text())
    assert (best["metric"], best["epoch"]) == ("AP", best_epoch)
    assert best["value"] == pytest.approx(max(e["AP"] for e in evaluations))
    best_state = load_checkpoint(folder / "best.pt")
    assert best_state["epoch"] == best_epoch
    if best_epoch >= 2:  # the same weights as that epoch's own file
        epoch_state = load_checkpoint(folder / f"epoch_{best_epoch}.pt")
        for key, value in best_state["model"].items():
            torch.testing.assert_close(value, epoch_state["model"][key], rtol=0, atol=0)
        assert os.path.samefile(folder / "best.pt", folder / f"epoch_{best_epoch}.pt")
    # epoch_N.pt and best.pt are second names of a last.pt, not copies: one file on disk per saved epoch
    assert os.path.samefile(folder / "last.pt", folder / "epoch_3.pt")
    assert not os.path.samefile(folder / "epoch_2.pt", folder / "epoch_3.pt")
    assert load_checkpoint(folder / "epoch_2.pt")["epoch"] == 2  # a later save of last.pt left it as it was


def test_link_checkpoint_is_a_second_name_or_a_copy_where_links_fail(tmp_path, monkeypatch):
    source = save_checkpoint({"epoch": 1}, tmp_path / "last.pt")
    link_checkpoint(source, tmp_path / "epoch_1.pt")
    link_checkpoint(source, tmp_path / "epoch_1.pt")  # again (a resumed run re-evaluating): nothing left over
    assert os.path.samefile(source, tmp_path / "epoch_1.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_1.pt", "last.pt"]
    save_checkpoint({"epoch": 2}, source)  # a new file under the old name
    assert load_checkpoint(tmp_path / "epoch_1.pt")["epoch"] == 1 and load_checkpoint(source)["epoch"] == 2

    def refuse(*args):
        raise PermissionError("no hard links on this file system")
    monkeypatch.setattr(os, "link", refuse)
    link_checkpoint(source, tmp_path / "epoch_1.pt")  # replaces the old epoch_1.pt with a copy
    assert not os.path.samefile(source, tmp_path / "epoch_1.pt")
    assert load_checkpoint(tmp_path / "epoch_1.pt")["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_1.pt", "last.pt"]  # no temporary file left


def test_a_full_disk_is_one_clear_error_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import errno

    import umop.engine.checkpoint as checkpoint_module
    path = save_checkpoint({"epoch": 1}, tmp_path / "last.pt")

    def save_until_the_disk_fills(state, stream):  # what torch.save does: its zip writer hides the OSError
        stream.write(b"x" * 1000)
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 77161984 vs 77161876")
    monkeypatch.setattr(checkpoint_module.torch, "save", save_until_the_disk_fills)
    with pytest.raises(OSError, match=r"cannot write checkpoint '.*last.pt': no space left on device "
                                      r"\(0 MB written .*MB free now; the previous one is intact\)") as raised:
        save_checkpoint({"epoch": 2}, path)
    assert raised.value.errno == errno.ENOSPC
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1

    def fail_otherwise(state, stream):
        raise RuntimeError("boom")
    monkeypatch.setattr(checkpoint_module.torch, "save", fail_otherwise)
    with pytest.raises(RuntimeError, match="boom"):  # other failures are not relabelled
        save_checkpoint({"epoch": 2}, path)


def test_fresh_run_into_an_existing_run_folder(tmp_path):
    config = toy_config(tmp_path / "run", solver={"epochs": 1})
    make_trainer(config).train()
    log_before = (tmp_path / "run" / "log.jsonl").read_text()
    with pytest.raises(RunExistsError, match="--resume auto.*--overwrite"):
        make_trainer(config)
    assert (tmp_path / "run" / "log.jsonl").read_text() == log_before  # untouched
    (tmp_path / "run" / "checkpoints" / "epoch_7.pt").write_bytes(b"stale")
    make_trainer(config, overwrite=True).train()
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("*.pt")) == ["best.pt", "epoch_1.pt",
                                                                                        "last.pt"]
    assert [r["iter"] for r in read_log(tmp_path / "run")] == [1, 2, 3, 4]


def test_resume_auto_without_checkpoint_starts_fresh_and_says_when_nothing_was_saved(tmp_path, capsys):
    trainer = make_trainer(toy_config(tmp_path / "run"), resume="auto")
    assert "no checkpoint" in capsys.readouterr().out and trainer.iteration == 0
    message = str(trainer._interrupted("SIGTERM", saved=None))
    assert message == "SIGTERM: nothing was saved (no checkpoint yet); a new run starts from scratch"
