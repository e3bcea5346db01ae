"""Trainer: exact resume after a kill, non-finite loss handling, schedule, logs and checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from toy import ToyDataset, ToyDetector

from umop.engine import NonFiniteLossError, Trainer, config_from_dict, load_checkpoint
from umop.engine.schedule import WarmupStepLR


def toy_config(tmp_path, **solver) -> "Config":  # noqa: F821
    return config_from_dict({
        "model": {"num_classes": 2},
        "solver": {"lr": 0.05, "epochs": 3, "steps": [2], "warmup_iters": 3, "grad_clip": 10.0, **solver},
        "log": {"every": 1, "tensorboard": False, "progress_bar": False},
        "batch_size": 2, "workers": 0, "seed": 3, "device": "cpu", "output_dir": str(tmp_path / "run"),
    })


def make_trainer(config, resume=None):
    torch.manual_seed(123)  # a different init than the run's: resuming must not depend on it
    return Trainer(config, resume=resume, model=ToyDetector(), train_dataset=ToyDataset(8),
                   val_dataset=ToyDataset(4, seed=1, flip=False))


def read_log(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_killed_and_resumed_run_matches_uninterrupted_run(tmp_path):
    reference = make_trainer(toy_config(tmp_path / "a"))
    reference.train()
    assert len(reference.loss_history) == 3 * 4

    killed = make_trainer(toy_config(tmp_path / "b"))
    original_step = killed.train_step

    def step_then_die(images, targets):
        if killed.iteration == 6:  # killed in the middle of epoch 2, after the epoch-1 checkpoint
            raise KeyboardInterrupt
        return original_step(images, targets)

    killed.train_step = step_then_die
    with pytest.raises(KeyboardInterrupt):
        killed.train()
    assert (killed.run_dir / "checkpoints" / "epoch_1.pt").is_file()
    assert not (killed.run_dir / "checkpoints" / "epoch_2.pt").exists()

    resumed = make_trainer(toy_config(tmp_path / "b"), resume="auto")
    assert (resumed.epoch, resumed.iteration) == (1, 4)
    resumed.train()

    torch.testing.assert_close(torch.tensor(killed.loss_history[:4] + resumed.loss_history),
                               torch.tensor(reference.loss_history), rtol=0, atol=1e-6)
    for p_ref, p_res in zip(reference.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(p_ref, p_res, rtol=0, atol=1e-6)
    # the log of the resumed run has no duplicate iterations from the killed attempt and matches the reference
    log_ref, log_res = read_log(reference.run_dir), read_log(resumed.run_dir)
    assert [r["iter"] for r in log_res] == list(range(1, 13))
    assert [r["loss"] for r in log_res] == pytest.approx([r["loss"] for r in log_ref], abs=1e-6)
    assert [r["lr"] for r in log_res] == pytest.approx([r["lr"] for r in log_ref])


def test_checkpoint_contents_and_logs(tmp_path):
    trainer = make_trainer(toy_config(tmp_path, epochs=2))
    summary = trainer.train()
    run_dir = trainer.run_dir
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    for key in ("model", "optimizer", "scheduler", "rng", "epoch", "iteration", "config", "class_names"):
        assert key in checkpoint, key
    assert (checkpoint["epoch"], checkpoint["iteration"]) == (2, 8)
    assert set(checkpoint["rng"]) >= {"python", "numpy", "torch"}
    assert checkpoint["config"]["solver"]["lr"] == 0.05
    assert not list((run_dir / "checkpoints").glob("*.tmp"))  # atomic writes leave no temporary files
    assert (run_dir / "config.yaml").is_file()

    records = read_log(run_dir)
    first = records[0]
    assert first["level/num_anchors"] == [128.0, 32.0]
    assert first["level/positive_ratio"] == pytest.approx([2 / 128, 1 / 32])
    assert {"epoch", "iter", "lr", "loss", "loss_cls", "loss_box"} <= set(first)
    assert first["loss"] == pytest.approx(first["loss_cls"] + first["loss_box"], rel=1e-5)

    evaluations = json.loads((run_dir / "eval.json").read_text())
    assert [e["epoch"] for e in evaluations] == [1, 2]
    assert set(evaluations[-1]["per_class"]) == {"red", "green"}
    assert summary["eval"]["AP"] == evaluations[-1]["AP"]


def test_warmup_and_step_schedule():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.01)
    scheduler = WarmupStepLR(optimizer, milestones=[10, 15], gamma=0.1, warmup_iters=5, warmup_ratio=0.001)
    lrs = []
    for _ in range(20):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.01 * 0.001)
    assert lrs[1] == pytest.approx(0.01 * (1 - 0.999 * 0.8))  # linear ramp
    assert lrs[5:10] == pytest.approx([0.01] * 5)
    assert lrs[10:15] == pytest.approx([0.001] * 5)
    assert lrs[15:] == pytest.approx([0.0001] * 5)


class NaNAfter(ToyDetector):
    """Returns a NaN loss from the ``start``-th training call on, ``count`` times."""

    def __init__(self, start: int, count: int) -> None:
        super().__init__()
        self.calls, self.start, self.count = 0, start, count

    def forward(self, images, targets=None):
        out = super().forward(images, targets)
        if self.training:
            self.calls += 1
            if self.start <= self.calls < self.start + self.count:
                out["loss_cls"] = out["loss_cls"] * float("nan")
        return out


def test_nonfinite_loss_skips_the_step(tmp_path):
    model = NaNAfter(start=2, count=2)
    trainer = Trainer(toy_config(tmp_path, epochs=1), model=model, train_dataset=ToyDataset(8))
    before = {}

    original = trainer.train_step

    def spy(images, targets):
        before[trainer.iteration] = [p.detach().clone() for p in trainer.model.parameters()]
        return original(images, targets)

    trainer.train_step = spy
    with pytest.warns(RuntimeWarning, match="non-finite loss"):
        trainer.train()
    assert trainer.nonfinite_total == 2
    after_skips = [p.detach() for p in trainer.model.parameters()]
    # iterations 2 and 3 (0-based 1, 2) were skipped: parameters at the start of iteration 3 equal those of 1
    for p1, p3 in zip(before[1], before[3]):
        assert torch.equal(p1, p3)
    assert any(not torch.equal(p0, p1) for p0, p1 in zip(before[0], before[1]))  # normal steps do update
    assert all(torch.isfinite(p).all() for p in after_skips)
    assert trainer.loss_history[1] != trainer.loss_history[1]  # NaN recorded, not hidden


def test_persistent_nonfinite_loss_stops_with_clear_error(tmp_path):
    model = NaNAfter(start=1, count=10_000)
    trainer = Trainer(toy_config(tmp_path, epochs=2, max_nonfinite=5), model=model, train_dataset=ToyDataset(8))
    with pytest.warns(RuntimeWarning), pytest.raises(NonFiniteLossError, match="5 consecutive"):
        trainer.train()
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_wrong_num_classes_is_reported(tmp_path):
    config = toy_config(tmp_path)
    config.model.num_classes = 5
    with pytest.raises(ValueError, match="model.num_classes"):
        Trainer(config, model=ToyDetector(), train_dataset=ToyDataset(4))


def test_bad_resume_path_is_named(tmp_path):
    with pytest.raises(ValueError, match="missing.pt"):
        make_trainer(toy_config(tmp_path), resume=tmp_path / "missing.pt")


def test_time_budget_stops_checkpoints_and_evaluates(tmp_path):
    trainer = make_trainer(toy_config(tmp_path, epochs=3, max_train_seconds=1e-6))
    summary = trainer.train()
    assert summary["stopped_early"] and summary["iterations"] == 1 and summary["epochs"] == 1
    assert summary["eval"] is not None  # the partial model is still evaluated
    assert load_checkpoint(trainer.run_dir / "checkpoints" / "last.pt")["iteration"] == 1


def test_objective_gradient_norms_are_logged_when_enabled(tmp_path):
    config = toy_config(tmp_path, epochs=1)
    config.log.objective_every = 2
    trainer = make_trainer(config)
    trainer.train()
    records = read_log(trainer.run_dir)
    with_norms = [r["iter"] for r in records if "objective/grad_norm/loss_cls" in r]
    assert with_norms == [2, 4]
    assert all(r["objective/grad_norm/loss_box"] > 0 for r in records if r["iter"] in with_norms)
