"""The training loop: SGD/AdamW, warmup + step decay, AMP, DDP, atomic checkpoints, exact resume.

Example::

    from umop.engine import Trainer, load_config
    trainer = Trainer(load_config("atss_pfl", ["data.train_ann=train.json", "data.train_images=images"]))
    summary = trainer.train()
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import Dataset

from .builders import (EpochSeededDataset, build_dataset, build_eval_loader, build_model, build_train_loader,
                       prepare_synthetic_data)
from .checkpoint import get_rng_states, load_checkpoint, save_checkpoint, seed_everything, set_rng_states
from .config import Config, ConfigError, config_to_dict, save_config
from .distributed import all_reduce_sum, barrier, get_world_size, init_distributed, is_distributed, is_main_process
from .inference import evaluate_model
from .logger import RunLogger, level_statistics, truncate_log
from .schedule import WarmupStepLR, build_optimizer

__all__ = ["Trainer", "NonFiniteLossError", "format_metrics"]


class LogHook(Protocol):
    """Adds entries to a ``log.jsonl`` record every ``every`` iterations: ``hook(model, images, targets) ->
    {key: float}`` (e.g. :class:`umop.analysis.objective.ObjectiveLogHook`; the engine imports no analysis)."""

    every: int

    def __call__(self, model: nn.Module, images: list[torch.Tensor],
                 targets: list[dict[str, Any]]) -> dict[str, float]: ...


class NonFiniteLossError(FloatingPointError):
    """Raised after ``solver.max_nonfinite`` consecutive iterations with a NaN/inf loss."""


def _to_device(targets: Sequence[dict[str, Any]], device: torch.device) -> list[dict[str, Any]]:
    return [{k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
            for t in targets]


def format_metrics(metrics: dict[str, Any]) -> str:
    """A small text table of COCO metrics and per-class AP (in percent; '-' where not measurable)."""
    def pct(value: float) -> str:
        return f"{100 * value:5.1f}" if value >= 0 else "    -"

    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    lines = ["  ".join(f"{k:>5}" for k in keys), "  ".join(pct(metrics[k]) for k in keys)]
    per_class = metrics.get("per_class", {})
    if per_class:
        width = max(len(name) for name in per_class)
        lines.append("")
        lines.append(f"{'class':<{width}}     AP")
        lines.extend(f"{name:<{width}}  {pct(ap)}" for name, ap in per_class.items())
    return "\n".join(lines)


class Trainer:
    """Train a detector described by a :class:`Config`.

    Args:
        config: the run's configuration.
        run_dir: output folder (default ``config.output_dir``).
        resume: ``None`` (fresh run), ``"auto"`` (``RUN_DIR/checkpoints/last.pt`` if it exists) or a path.
        model, train_dataset, val_dataset: ready-made objects instead of building them from the config
            (tests, notebooks); the model must follow the detector contract of ``docs/ARCHITECTURE.md``.

    The run folder receives ``config.yaml``, ``log.jsonl``, ``eval.json``, ``tb/`` and
    ``checkpoints/{last,epoch_N}.pt``. Under ``torchrun`` every process runs a Trainer; only rank 0 writes.
    """

    def __init__(self, config: Config, run_dir: str | Path | None = None, resume: str | Path | None = None,
                 *, model: nn.Module | None = None, train_dataset: Dataset | None = None,
                 val_dataset: Dataset | None = None, log_hooks: Sequence[LogHook] = ()) -> None:
        self.config = config
        self.log_hooks = list(log_hooks)
        if config.log.objective_every > 0 and not self.log_hooks:
            warnings.warn("log.objective_every is set but no log hook was given: pass "
                          "log_hooks=umop.analysis.objective.objective_log_hooks(every) (the CLI does)", stacklevel=2)
        self.run_dir = Path(run_dir or config.output_dir or Path("runs") / (config.name or "run"))
        self.device = init_distributed(config.device)
        self.is_main = is_main_process()
        seed_everything(config.seed)

        if train_dataset is None:
            prepare_synthetic_data(config, self.run_dir)
            train_dataset = build_dataset(config.data, train=True)
        if val_dataset is None and config.data.val_ann:
            val_dataset = build_dataset(config.data, train=False)
        self.class_names = list(getattr(train_dataset, "class_names", []) or
                                [f"class_{i}" for i in range(config.model.num_classes)])
        self.label_to_category_id = list(getattr(train_dataset, "label_to_category_id", []) or
                                         range(1, len(self.class_names) + 1))
        if len(self.class_names) != config.model.num_classes:
            raise ConfigError(f"config key 'model.num_classes' is {config.model.num_classes} but the training data "
                              f"has {len(self.class_names)} classes ({', '.join(self.class_names[:10])}); "
                              f"use --set model.num_classes={len(self.class_names)}")
        self.train_dataset = EpochSeededDataset(train_dataset, config.seed)
        self.val_dataset = val_dataset
        self.train_loader, self.train_sampler = build_train_loader(self.train_dataset, config)
        self.val_loader = build_eval_loader(val_dataset, config) if val_dataset is not None else None

        self.model = (model if model is not None else build_model(config.model)).to(self.device)
        self.ddp_model: nn.Module = self.model
        if is_distributed():
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)

        solver = config.solver
        self.lr = config.learning_rate
        self.optimizer = build_optimizer(self.model, solver, self.lr)
        self.iters_per_epoch = len(self.train_loader)
        if solver.max_iters_per_epoch > 0:
            self.iters_per_epoch = min(self.iters_per_epoch, solver.max_iters_per_epoch)
        self.scheduler = WarmupStepLR(self.optimizer, [s * self.iters_per_epoch for s in solver.steps],
                                      gamma=solver.gamma, warmup_iters=solver.warmup_iters,
                                      warmup_ratio=solver.warmup_ratio)
        self.use_amp = solver.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)

        self.epoch = 0  # completed epochs
        self.iteration = 0  # completed iterations (optimiser steps, skipped ones included)
        self.nonfinite_total = 0
        self.nonfinite_consecutive = 0
        self.loss_history: list[float] = []  # total loss of every iteration run by this Trainer
        self.last_metrics: dict[str, Any] | None = None
        self.stopped_early = False  # the solver.max_train_seconds budget ran out
        self._deadline = float("inf")
        self.logger: RunLogger | None = None

        resume_path = self._resume_path(resume)
        if resume_path is not None:
            self.load(resume_path)

    # ------------------------------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def _resume_path(self, resume: str | Path | None) -> Path | None:
        if resume is None or resume == "":
            return None
        if str(resume) == "auto":
            path = self.checkpoint_dir / "last.pt"
            if not path.is_file():
                if self.is_main:
                    print(f"--resume auto: no checkpoint at {path}, starting a new run")
                return None
            return path
        return Path(resume)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run exactly."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "iteration": self.iteration,
            "nonfinite_total": self.nonfinite_total,
            "rng": get_rng_states(),
            "config": config_to_dict(self.config),
            "class_names": self.class_names,
            "label_to_category_id": self.label_to_category_id,
        }

    def save(self) -> Path | None:
        """Write ``checkpoints/epoch_N.pt`` and ``checkpoints/last.pt`` atomically (rank 0 only)."""
        if not self.is_main:
            return None
        state = self.state_dict()
        save_checkpoint(state, self.checkpoint_dir / f"epoch_{self.epoch}.pt")
        return save_checkpoint(state, self.checkpoint_dir / "last.pt")

    def load(self, path: str | Path) -> None:
        """Restore a checkpoint written by :meth:`save` (model, optimiser, scheduler, RNG, counters)."""
        checkpoint = load_checkpoint(path, map_location=self.device)
        try:
            self.model.load_state_dict(checkpoint["model"])
        except RuntimeError as error:
            raise ValueError(f"checkpoint '{path}' does not match the model of this config: {error}") from error
        for key in ("optimizer", "scheduler", "epoch", "iteration"):
            if key not in checkpoint:
                raise ValueError(f"checkpoint '{path}' has no '{key}': it holds weights only and cannot be resumed")
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        if "scaler" in checkpoint:
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.epoch = int(checkpoint["epoch"])
        self.iteration = int(checkpoint["iteration"])
        self.nonfinite_total = int(checkpoint.get("nonfinite_total", 0))
        if "rng" in checkpoint:
            set_rng_states(checkpoint["rng"])
        if self.is_main:
            print(f"resumed from {path}: epoch {self.epoch}, iteration {self.iteration}")

    # --------------------------------------------------------------------------------------------- training
    def train(self) -> dict[str, Any]:
        """Run the remaining epochs; return a summary (run dir, iterations, last evaluation)."""
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.config, self.run_dir / "config.yaml")
            truncate_log(self.run_dir / "log.jsonl", self.iteration)
            self.logger = RunLogger(self.run_dir, tensorboard=self.config.log.tensorboard)
        start = time.perf_counter()
        if self.config.solver.max_train_seconds > 0:
            self._deadline = start + self.config.solver.max_train_seconds
        try:
            for epoch in range(self.epoch, self.config.solver.epochs):
                self.train_one_epoch(epoch)
                self.epoch = epoch + 1
                last = self.epoch == self.config.solver.epochs or self.stopped_early
                every = self.config.eval.every
                if self.val_loader is not None and (last or (every > 0 and self.epoch % every == 0)):
                    self.last_metrics = self.evaluate()
                self.save()
                barrier()
                if self.stopped_early:
                    if self.is_main:
                        print(f"time budget solver.max_train_seconds={self.config.solver.max_train_seconds:g} "
                              f"reached: stopped after iteration {self.iteration} (epoch {self.epoch}, partial)")
                    break
        finally:
            if self.logger is not None:
                self.logger.close()
        summary = {
            "run_dir": str(self.run_dir),
            "epochs": self.epoch,
            "iterations": self.iteration,
            "nonfinite_skipped": self.nonfinite_total,
            "stopped_early": self.stopped_early,
            "train_seconds": round(time.perf_counter() - start, 1),
            "eval": self.last_metrics,
        }
        if self.is_main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        return summary

    def train_one_epoch(self, epoch: int) -> None:
        """One pass over (at most ``solver.max_iters_per_epoch`` batches of) the training data."""
        from tqdm import tqdm

        config = self.config
        self.ddp_model.train()
        self.train_sampler.set_epoch(epoch)
        self.train_dataset.set_epoch(epoch)
        self.train_loader.generator.manual_seed(config.seed + epoch)  # worker seeds depend on the epoch only
        total_iters = config.solver.epochs * self.iters_per_epoch
        progress = tqdm(total=self.iters_per_epoch, desc=f"epoch {epoch + 1}/{config.solver.epochs}",
                        disable=not (self.is_main and config.log.progress_bar), dynamic_ncols=True, leave=True)
        started, done = time.perf_counter(), 0
        for step, (images, targets) in enumerate(self.train_loader):
            if step >= self.iters_per_epoch:
                break
            images = [image.to(self.device, non_blocking=True) for image in images]
            targets = _to_device(targets, self.device)
            record = self.train_step(images, targets)
            self.iteration += 1
            done += 1
            if self.iteration % config.log.every == 0 or step == 0:
                self._log(epoch, record, images, targets)
            seconds_per_iter = (time.perf_counter() - started) / done
            eta = seconds_per_iter * (total_iters - self.iteration)
            progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                                 eta=time.strftime("%H:%M:%S", time.gmtime(eta)), refresh=False)
            progress.update()
            if self._out_of_time():
                self.stopped_early = True
                break
        progress.close()

    def _out_of_time(self) -> bool:
        """True once the ``solver.max_train_seconds`` budget is spent (agreed by all ranks)."""
        if self._deadline == float("inf"):
            return False
        late = torch.tensor([float(time.perf_counter() > self._deadline)], device=self.device)
        return bool(all_reduce_sum(late).item() > 0)

    def train_step(self, images: list[torch.Tensor], targets: list[dict[str, Any]]) -> dict[str, Any]:
        """Forward, backward and (unless the loss is not finite) an optimiser step; returns the log record."""
        solver = self.config.solver
        lr = self.optimizer.param_groups[0]["lr"]
        with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.use_amp):
            outputs = self.ddp_model(images, targets)
        stats = outputs.get("stats", {})
        losses = {k: v for k, v in outputs.items() if k.startswith("loss_")}
        if not losses:
            raise ValueError(f"the model returned no 'loss_*' entries in training mode (keys: {sorted(outputs)})")
        loss = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        # Backward always runs (DDP needs every rank to take part); a non-finite step is then discarded.
        self.scaler.scale(loss).backward()
        finite = torch.isfinite(loss.detach()).float()
        grad_norm = None
        if solver.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), solver.grad_clip)
            finite = finite * torch.isfinite(grad_norm).float()
        all_finite = bool(all_reduce_sum(finite.reshape(1)).item() == get_world_size())
        loss_value = float(loss.detach())
        if all_finite:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.nonfinite_consecutive = 0
        else:
            self.optimizer.zero_grad(set_to_none=True)
            if self.use_amp:
                self.scaler.update()
            self.nonfinite_total += 1
            self.nonfinite_consecutive += 1
            if self.is_main:
                warnings.warn(f"iteration {self.iteration + 1}: non-finite loss "
                              f"({ {k: float(v.detach()) for k, v in losses.items()} }), step skipped "
                              f"({self.nonfinite_consecutive} in a row, {self.nonfinite_total} in total)",
                              RuntimeWarning, stacklevel=2)
            if self.nonfinite_consecutive >= solver.max_nonfinite:
                raise NonFiniteLossError(
                    f"the loss was not finite for {self.nonfinite_consecutive} consecutive iterations (up to "
                    f"iteration {self.iteration + 1}): training diverged. Lower solver.lr (now {self.lr:g}), "
                    f"set solver.grad_clip, or check the data with `umop data check`.")
        with warnings.catch_warnings():  # a skipped first step makes torch warn about the call order
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
            self.scheduler.step()
        self.loss_history.append(loss_value)
        record: dict[str, Any] = {"lr": lr, "loss": loss_value}
        record.update({k: float(v.detach()) for k, v in losses.items()})
        if grad_norm is not None:
            record["grad_norm"] = float(grad_norm)
        record["stats"] = stats
        return record

    def _log(self, epoch: int, record: dict[str, Any], images: list[torch.Tensor],
             targets: list[dict[str, Any]]) -> None:
        stats = record.pop("stats", {}) or {}
        entry: dict[str, Any] = {"epoch": epoch, "iter": self.iteration}
        scalars = {k: v for k, v in record.items()}
        if is_distributed():  # mean losses over ranks, summed per-level counts
            keys = sorted(scalars)
            reduced = all_reduce_sum(torch.tensor([scalars[k] for k in keys], dtype=torch.float64,
                                                  device=self.device)) / get_world_size()
            scalars = dict(zip(keys, reduced.tolist()))
            stats = {k: all_reduce_sum(v.detach().to(self.device, torch.float64)) /
                     (1 if k.startswith("num_") else get_world_size())
                     for k, v in stats.items() if isinstance(v, torch.Tensor)}
        entry.update(scalars)
        entry.update(level_statistics(stats))
        for hook in self.log_hooks:
            if self.iteration % hook.every == 0:
                entry.update(hook(self.model, images, targets))
                self.model.train()
        if self.logger is not None:
            self.logger.log(entry)

    # ------------------------------------------------------------------------------------------- evaluation
    def evaluate(self) -> dict[str, Any]:
        """COCO AP on the validation set; rank 0 prints the table and appends to ``eval.json``."""
        if self.val_loader is None:
            raise ConfigError("no validation data: set data.val_ann and data.val_images")
        metrics = evaluate_model(self.model, self.val_loader, self.device, len(self.class_names),
                                 self.class_names, progress=self.is_main and self.config.log.progress_bar)
        self.model.train()
        if self.is_main:
            print(f"epoch {self.epoch} evaluation ({metrics['num_images']} images):\n{format_metrics(metrics)}")
            if self.logger is not None:
                self.logger.log_eval(metrics, self.epoch, self.iteration)
        return metrics
