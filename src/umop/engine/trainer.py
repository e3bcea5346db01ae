"""The training loop: SGD/AdamW, warmup + step decay, AMP, DDP, atomic checkpoints, exact resume.

Example::

    from umop.engine import Trainer, load_config
    trainer = Trainer(load_config("atss_pfl", ["data.train_ann=train.json", "data.train_images=images"]))
    summary = trainer.train()
"""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from .amp import resolve_amp
from .builders import (EpochSeededDataset, build_dataset, build_eval_loader, build_model, build_train_loader,
                       prepare_synthetic_data)
from .checkpoint import (get_rng_states, link_checkpoint, load_checkpoint, load_model_state, save_checkpoint,
                         seed_everything, set_rng_states)
from .config import Config, ConfigError, config_to_dict, save_config
from .hooks import LogHook, log_hooks_for, registered_log_hooks
from .distributed import all_reduce_sum, barrier, get_world_size, init_distributed, is_distributed, is_main_process
from .inference import evaluate_model
from .logger import RunLogger, level_statistics, truncate_log
from .meters import IterationTimer, format_eta, memory_mb
from .schedule import WarmupStepLR, build_optimizer

__all__ = ["Trainer", "NonFiniteLossError", "RunExistsError", "TrainingInterrupted", "format_metrics"]

RUN_FILES = ("log.jsonl", "eval.json", "summary.json", "config.yaml")  # files of a run (cleared by overwrite)
RUN_FOLDERS = ("checkpoints", "tb", "analysis")


class NonFiniteLossError(FloatingPointError):
    """Raised after ``solver.max_nonfinite`` consecutive iterations with a NaN/inf loss."""


class RunExistsError(ValueError):
    """A fresh run was asked for in a folder that already holds one (a log or checkpoints)."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT / SIGTERM stopped :meth:`Trainer.train`; ``checkpoint`` is what was saved (None: nothing).

    The message says truthfully what was saved and how to continue.
    """

    def __init__(self, signal_name: str, checkpoint: Path | None, message: str) -> None:
        super().__init__(message)
        self.signal_name = signal_name
        self.checkpoint = checkpoint
        self.message = message

    def __str__(self) -> str:
        return self.message


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
        resume: ``None`` (fresh run), ``"auto"`` (``RUN_DIR/checkpoints/last.pt`` if it exists, else a fresh
            run) or a path. A fresh run into a folder that already holds a run (``log.jsonl`` or
            checkpoints) raises :class:`RunExistsError` unless ``overwrite``.
        overwrite: start over in an existing run folder: its log, evaluations, checkpoints and TensorBoard
            events are deleted first (``data/`` of the synthetic dataset is kept).
        model, train_dataset, val_dataset: ready-made objects instead of building them from the config
            (tests, notebooks); the model must follow the detector contract of ``docs/ARCHITECTURE.md``.

    The run folder receives ``config.yaml``, ``log.jsonl``, ``eval.json``, ``tb/`` and
    ``checkpoints/{last,best,epoch_N}.pt``. Under ``torchrun`` every process runs a Trainer; only rank 0
    writes. Each epoch's checkpoint is written *before* its evaluation; SIGINT / SIGTERM during training save
    a mid-epoch ``last.pt`` after the current iteration (resumed exactly: iteration, sampler position, RNG)
    and raise :class:`TrainingInterrupted`.
    """

    def __init__(self, config: Config, run_dir: str | Path | None = None, resume: str | Path | None = None,
                 *, model: nn.Module | None = None, train_dataset: Dataset | None = None,
                 val_dataset: Dataset | None = None, overwrite: bool = False,
                 log_hooks: Sequence[LogHook] | None = None) -> None:
        self.config = config
        # log hooks: given, else those registered for this config (umop.analysis registers "objective")
        self.log_hooks = list(log_hooks) if log_hooks is not None else log_hooks_for(config)
        if config.log.objective_every > 0 and log_hooks is None and "objective" not in registered_log_hooks():
            warnings.warn("log.objective_every is set but no 'objective' log hook is registered: import "
                          "umop.analysis (the umop CLI does) or pass log_hooks=", stacklevel=2)
        self.run_dir = Path(run_dir or config.output_dir or Path("runs") / (config.name or "run"))
        self.device = init_distributed(config.device)
        self.is_main = is_main_process()
        if resume is None or resume == "":
            self._prepare_fresh_run_dir(overwrite)
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
        self.amp = resolve_amp(solver.amp, solver.amp_dtype, self.device, warn=self.is_main)
        self.use_amp = self.amp.enabled
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp.use_scaler)  # fp16 only
        self.timer = IterationTimer()
        self._bar_meters: dict[str, str] = {}

        self.epoch = 0  # completed epochs
        self.epoch_step = 0  # completed iterations of epoch ``self.epoch`` (a mid-epoch checkpoint)
        self.iteration = 0  # completed iterations (optimiser steps, skipped ones included)
        self.nonfinite_total = 0
        self.nonfinite_consecutive = 0
        self.loss_history: list[float] = []  # total loss of every iteration run by this Trainer
        self.last_metrics: dict[str, Any] | None = None
        self.stopped_early = False  # the solver.max_train_seconds budget ran out
        self._deadline = float("inf")
        self.logger: RunLogger | None = None
        self.best_value: float | None = None  # best checkpoint.best_metric so far (best.pt)
        self._phase = "setup"  # setup | train | eval: what a SIGINT / SIGTERM interrupts
        self._stop_signal: str | None = None

        resume_path = self._resume_path(resume)
        if resume_path is not None:
            self.load(resume_path)

    # ------------------------------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def has_run(self) -> bool:
        """True when the run folder already holds a run: a ``log.jsonl`` or a checkpoint."""
        return (self.run_dir / "log.jsonl").is_file() or any(self.checkpoint_dir.glob("*.pt"))

    def _prepare_fresh_run_dir(self, overwrite: bool) -> None:
        """Refuse to start a fresh run over an existing one, or clear it when ``overwrite``."""
        exists = self.has_run()
        if exists and not overwrite:
            raise RunExistsError(
                f"run folder '{self.run_dir}' already holds a run (log.jsonl / checkpoints): continue it with "
                f"--resume auto, start over with --overwrite (deletes its log, evaluations and checkpoints), "
                f"or pick another folder with --out")
        if exists and self.is_main:
            for name in RUN_FILES:
                (self.run_dir / name).unlink(missing_ok=True)
            for name in RUN_FOLDERS:
                shutil.rmtree(self.run_dir / name, ignore_errors=True)
            print(f"--overwrite: cleared the previous run in {self.run_dir}")
        barrier()  # on every rank (another rank may look after rank 0 has cleared the folder)

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
            "epoch_step": self.epoch_step,
            "iteration": self.iteration,
            "nonfinite_total": self.nonfinite_total,
            "rng": get_rng_states(),
            "config": config_to_dict(self.config),
            "class_names": self.class_names,
            "label_to_category_id": self.label_to_category_id,
        }

    def save(self, epoch_file: bool = True) -> Path | None:
        """Write ``checkpoints/last.pt`` (and ``epoch_N.pt`` unless mid-epoch) atomically (rank 0 only).

        Only the newest ``checkpoint.keep_last`` ``epoch_N.pt`` files are kept (0 = all).
        """
        if not self.is_main:
            return None
        state = self.state_dict()
        path = save_checkpoint(state, self.checkpoint_dir / "last.pt")
        if epoch_file and self.epoch_step == 0:
            link_checkpoint(path, self.checkpoint_dir / f"epoch_{self.epoch}.pt")
            self._prune_epoch_checkpoints()
        return path

    def _prune_epoch_checkpoints(self) -> None:
        keep = self.config.checkpoint.keep_last
        if keep <= 0:
            return
        numbered = []
        for path in self.checkpoint_dir.glob("epoch_*.pt"):
            suffix = path.stem.removeprefix("epoch_")
            if suffix.isdigit():
                numbered.append((int(suffix), path))
        for _, path in sorted(numbered)[:-keep]:
            path.unlink(missing_ok=True)

    def _update_best(self, metrics: dict[str, Any]) -> None:
        """Link ``best.pt`` to ``last.pt`` (saved just before this evaluation) when the metric improved."""
        key = self.config.checkpoint.best_metric
        if not key or not self.is_main:
            return
        value = metrics.get(key)
        if not isinstance(value, (int, float)):
            warnings.warn(f"config key 'checkpoint.best_metric': the evaluation has no metric {key!r}; "
                          f"no best.pt", stacklevel=2)
            return
        if self.best_value is not None and value <= self.best_value:
            return
        self.best_value = float(value)
        link_checkpoint(self.checkpoint_dir / "last.pt", self.checkpoint_dir / "best.pt")
        (self.checkpoint_dir / "best.json").write_text(json.dumps(
            {"metric": key, "value": value, "epoch": self.epoch, "iter": self.iteration}, indent=1))

    def load(self, path: str | Path) -> None:
        """Restore a checkpoint written by :meth:`save` (model, optimiser, scheduler, RNG, counters)."""
        checkpoint = load_checkpoint(path, map_location=self.device)
        load_model_state(self.model, checkpoint["model"], f"checkpoint '{path}' (--resume)")
        for key in ("optimizer", "scheduler", "epoch", "iteration"):
            if key not in checkpoint:
                raise ValueError(f"checkpoint '{path}' has no '{key}': it holds weights only and cannot be resumed")
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        if "scaler" in checkpoint:
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.epoch = int(checkpoint["epoch"])
        self.epoch_step = int(checkpoint.get("epoch_step", 0))
        self.iteration = int(checkpoint["iteration"])
        self.nonfinite_total = int(checkpoint.get("nonfinite_total", 0))
        if "rng" in checkpoint:
            set_rng_states(checkpoint["rng"])
        if self.is_main:
            where = f" (+{self.epoch_step} iterations of epoch {self.epoch + 1})" if self.epoch_step else ""
            print(f"resumed from {path}: epoch {self.epoch}{where}, iteration {self.iteration}")

    # --------------------------------------------------------------------------------------------- training
    def train(self) -> dict[str, Any]:
        """Run the remaining epochs; return a summary (run dir, iterations, last evaluation).

        Raises:
            TrainingInterrupted: SIGINT / SIGTERM arrived (its message says what was saved).
        """
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.config, self.run_dir / "config.yaml")
            truncate_log(self.run_dir / "log.jsonl", self.iteration)
            self.logger = RunLogger(self.run_dir, tensorboard=self.config.log.tensorboard)
        self.best_value = self._best_so_far()
        start = time.perf_counter()
        if self.config.solver.max_train_seconds > 0:
            self._deadline = start + self.config.solver.max_train_seconds
        previous_handlers = self._install_signal_handlers()
        try:
            if self._evaluation_pending():  # a kill during the evaluation of the checkpointed epoch
                self._evaluate_checkpointed_epoch()
            for epoch in range(self.epoch, self.config.solver.epochs):
                self._phase = "train"
                self.train_one_epoch(epoch)
                self._phase = "setup"
                self.epoch = epoch + 1
                self.epoch_step = 0
                self._phase = "save"  # a signal now is handled once the checkpoint is complete
                saved = self.save()  # before the evaluation: a kill during it loses nothing
                barrier()
                self._phase = "setup"
                if self._should_stop():
                    raise self._interrupted(self._stop_signal or "SIGTERM", saved if self.is_main else None)
                if self._evaluation_due(self.epoch):
                    self._evaluate_checkpointed_epoch()
                if self.stopped_early:
                    if self.is_main:
                        print(f"time budget solver.max_train_seconds={self.config.solver.max_train_seconds:g} "
                              f"reached: stopped after iteration {self.iteration} (epoch {self.epoch}, partial)")
                    break
        finally:
            self._phase = "setup"
            self._restore_signal_handlers(previous_handlers)
            if self.logger is not None:
                self.logger.close()
        summary = {
            "run_dir": str(self.run_dir),
            "epochs": self.epoch,
            "iterations": self.iteration,
            "nonfinite_skipped": self.nonfinite_total,
            "stopped_early": self.stopped_early,
            "train_seconds": round(time.perf_counter() - start, 1),
            "iterations_per_second": (round(self.timer.iterations_per_second, 4)  # training iterations only
                                      if self.timer.total_iterations else None),
            "amp": self.amp.name,
            "eval": self.last_metrics,
        }
        if self.is_main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        return summary

    def _evaluation_due(self, epoch: int) -> bool:
        """Whether the checkpoint of (completed) ``epoch`` is evaluated: every ``eval.every`` and the last."""
        if self.val_loader is None or epoch == 0:
            return False
        every = self.config.eval.every
        return epoch == self.config.solver.epochs or self.stopped_early or (every > 0 and epoch % every == 0)

    def _evaluation_pending(self) -> bool:
        """A resumed end-of-epoch checkpoint whose due evaluation is missing from ``eval.json``."""
        if self.epoch_step != 0 or not self._evaluation_due(self.epoch):
            return False
        path = self.run_dir / "eval.json"
        try:
            history = json.loads(path.read_text()) if path.is_file() else []
        except json.JSONDecodeError:
            history = []
        pending = not any(entry.get("epoch") == self.epoch for entry in history)
        flags = torch.tensor([float(pending)], device=self.device)  # rank 0 reads the file for everyone
        if is_distributed():
            flags = flags if self.is_main else torch.zeros_like(flags)
            flags = all_reduce_sum(flags)
        return bool(flags.item() > 0)

    def _evaluate_checkpointed_epoch(self) -> None:
        self._phase = "eval"
        self.last_metrics = self.evaluate()
        self._update_best(self.last_metrics)
        self._phase = "setup"
        barrier()

    def _best_so_far(self) -> float | None:
        """Highest ``checkpoint.best_metric`` in ``eval.json`` up to the resumed epoch (None: none yet)."""
        key, path = self.config.checkpoint.best_metric, self.run_dir / "eval.json"
        if not key or not path.is_file() or self.epoch == 0:
            return None
        try:
            values = [entry[key] for entry in json.loads(path.read_text())
                      if entry.get("epoch", 0) <= self.epoch and isinstance(entry.get(key), (int, float))]
        except (json.JSONDecodeError, AttributeError):
            return None
        return max(values) if values else None

    # ------------------------------------------------------------------------------------------------ signals
    def _install_signal_handlers(self) -> dict[int, Any]:
        """SIGINT / SIGTERM stop training cleanly (main thread only; the previous handlers are returned)."""
        self._stop_signal = None
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._on_signal)
        return previous

    @staticmethod
    def _restore_signal_handlers(previous: dict[int, Any]) -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

    def _on_signal(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self._phase in ("train", "save") and self._stop_signal is None:
            self._stop_signal = name  # finish the current iteration / checkpoint, then save and stop
            return
        raise self._interrupted(name, saved=None)

    def _interrupted(self, name: str, saved: Path | None) -> TrainingInterrupted:
        """The exception (and its truthful message) for a stop by signal ``name``."""
        last = self.checkpoint_dir / "last.pt"
        if saved is not None:
            where = (f"epoch {self.epoch + 1}, {self.epoch_step} of {self.iters_per_epoch} iterations"
                     if self.epoch_step else f"end of epoch {self.epoch}")
            message = (f"{name}: saved a checkpoint after iteration {self.iteration} ({where}) to {saved}; "
                       f"continue with --resume auto (same losses as an uninterrupted run)")
        elif self._phase == "eval" and last.is_file():
            message = (f"{name} during the evaluation of epoch {self.epoch}: its checkpoint was saved before "
                       f"the evaluation ({last}); --resume auto evaluates it and continues")
        elif last.is_file() and self.iteration > 0:
            message = (f"{name}: nothing new was saved; the latest checkpoint is {last} (iteration "
                       f"{self.iteration}); continue with --resume auto")
        else:
            message = f"{name}: nothing was saved (no checkpoint yet); a new run starts from scratch"
        return TrainingInterrupted(name, saved, message)

    def _should_stop(self) -> bool:
        """A stop signal arrived (on any rank: agreed by all)."""
        flag = self._stop_signal is not None
        if is_distributed():
            flag = bool(all_reduce_sum(torch.tensor([float(flag)], device=self.device)).item() > 0)
            if flag and self._stop_signal is None:
                self._stop_signal = "SIGTERM"
        return flag

    def train_one_epoch(self, epoch: int) -> None:
        """One pass over (at most ``solver.max_iters_per_epoch`` batches of) the training data.

        Starts at iteration ``self.epoch_step`` of the epoch (a resumed mid-epoch checkpoint): the sampler
        skips the batches already trained on, so the rest of the epoch sees the same batches as an
        uninterrupted run.
        """
        from tqdm import tqdm

        config = self.config
        self.ddp_model.train()
        self.train_sampler.set_epoch(epoch)
        self.train_dataset.set_epoch(epoch)
        first_step = self.epoch_step
        self.train_sampler.set_start(first_step * self.train_loader.batch_size)
        self.train_loader.generator.manual_seed(config.seed + epoch)  # worker seeds depend on the epoch only
        total_iters = config.solver.epochs * self.iters_per_epoch
        progress = tqdm(total=self.iters_per_epoch, initial=first_step,
                        desc=f"epoch {epoch + 1}/{config.solver.epochs}",
                        disable=not (self.is_main and config.log.progress_bar), dynamic_ncols=True, leave=True)
        self.timer.restart()
        every_iters = config.checkpoint.every_iters
        objective_every = config.log.objective_every
        try:
            for step, (images, targets) in enumerate(self.train_loader, start=first_step):
                if step >= self.iters_per_epoch:
                    break
                self.timer.data_ready()
                images = [image.to(self.device, non_blocking=True) for image in images]
                targets = _to_device(targets, self.device)
                record = self.train_step(images, targets)
                self.iteration += 1
                self.epoch_step = step + 1
                self.timer.step_done()
                eta = self.timer.eta(total_iters - self.iteration)
                if self._deadline != float("inf"):  # solver.max_train_seconds stops the run earlier
                    eta = min(eta, max(0.0, self._deadline - time.perf_counter()))
                if (self.iteration % config.log.every == 0 or step == first_step
                        or objective_every > 0 and self.iteration % objective_every == 0):
                    meters = {**self.timer.window(), "eta": round(eta, 3),
                              "memory": round(memory_mb(self.device), 1)}
                    self._bar_meters = {"time": f"{meters['time']:.3f}", "data": f"{meters['data_time']:.3f}",
                                        "mem": f"{meters['memory']:.0f}M"}
                    record.update(meters)
                    self._log(epoch, record, images, targets)
                progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", **self._bar_meters,
                                     eta=format_eta(eta), refresh=False)
                progress.update()
                last_step = self.epoch_step == self.iters_per_epoch
                if self._should_stop():
                    if last_step:  # the epoch is complete: an ordinary end-of-epoch checkpoint
                        self.epoch, self.epoch_step = epoch + 1, 0
                        saved = self.save()
                        self.epoch, self.epoch_step = epoch, self.iters_per_epoch
                    else:
                        saved = self.save(epoch_file=False)
                    raise self._interrupted(self._stop_signal or "SIGTERM", saved if self.is_main else None)
                if self._out_of_time():
                    self.stopped_early = True
                    break
                if every_iters > 0 and self.iteration % every_iters == 0 and not last_step:
                    self.save(epoch_file=False)
                    self.timer.restart()  # checkpoint time is not iteration time
        finally:
            self.train_sampler.set_start(0)
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
        with self.amp.autocast():
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
            if not self.amp.use_scaler:  # fp16: the GradScaler skips an overflowing step and lowers its scale
                finite = finite * torch.isfinite(grad_norm).float()
        all_finite = bool(all_reduce_sum(finite.reshape(1)).item() == get_world_size())
        loss_value = float(loss.detach())
        if all_finite:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.nonfinite_consecutive = 0
        else:
            self.optimizer.zero_grad(set_to_none=True)
            if self.amp.use_scaler:
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
            if hook.enabled and self.iteration % hook.every == 0:
                entry.update(self._run_log_hook(hook, images, targets))
        if self.logger is not None:
            self.logger.log(entry)

    def _run_log_hook(self, hook: LogHook, images: list[torch.Tensor], targets: list[dict[str, Any]]
                      ) -> dict[str, float]:
        """One log hook's entries (e.g. the per-loss gradient norms of ``log.objective_every``), without touching
        the RNG; a hook that cannot run on this model (ValueError) or runs out of CUDA memory is switched off
        with a warning."""
        states = get_rng_states()
        try:
            return hook(self.model, images, targets)
        except (ValueError, torch.cuda.OutOfMemoryError) as error:
            hook.enabled = False
            if isinstance(error, torch.cuda.OutOfMemoryError):
                torch.cuda.empty_cache()
            if self.is_main:
                warnings.warn(f"log hook {hook.name!r}: not available for this model ({error}); not logged",
                              stacklevel=2)
            return {}
        finally:
            set_rng_states(states)
            self.model.train()

    # ------------------------------------------------------------------------------------------- evaluation
    def evaluate(self) -> dict[str, Any]:
        """COCO AP on the validation set; rank 0 prints the table and appends to ``eval.json``."""
        if self.val_loader is None:
            raise ConfigError("no validation data: set data.val_ann and data.val_images")
        states = get_rng_states()  # evaluating must not change the training's random streams (exact resume)
        try:
            metrics = evaluate_model(self.model, self.val_loader, self.device, len(self.class_names),
                                     self.class_names, progress=self.is_main and self.config.log.progress_bar)
        finally:
            set_rng_states(states)
        self.model.train()
        if self.is_main:
            failed = metrics.get("num_failed_images", 0)
            unreadable = f"; {failed} unreadable, not evaluated: see eval.json 'failed_images'" if failed else ""
            print(f"epoch {self.epoch} evaluation ({metrics['num_images']} images{unreadable}):\n"
                  f"{format_metrics(metrics)}")
            if self.logger is not None:
                self.logger.log_eval(metrics, self.epoch, self.iteration)
        return metrics
