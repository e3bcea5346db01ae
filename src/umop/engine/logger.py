"""Training logs: ``RUN_DIR/log.jsonl`` (one JSON object per logged iteration) and TensorBoard scalars.

The record layout is the "Training log contract" of ``docs/ARCHITECTURE.md``: scalar losses, ``lr``, and
per-level lists under ``level/...`` (``num_positive``, ``num_anchors``, ``positive_ratio``, and under PFL
``gamma_ad``, ``alpha_ad``), optionally ``objective/grad_norm/<loss>``.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import torch

__all__ = ["RunLogger", "level_statistics", "truncate_log"]


def level_statistics(stats: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    """Per-level log entries from a detector's ``stats`` dict (tensors of shape (L,)).

    ``positive_ratio = num_positive / num_anchors`` per level is added when both counts are present.
    """
    out: dict[str, list[float]] = {}
    for key, value in stats.items():
        if isinstance(value, torch.Tensor) and value.ndim == 1:
            out[f"level/{key}"] = [float(v) for v in value.detach().float().cpu()]
    if "level/num_positive" in out and "level/num_anchors" in out:
        out["level/positive_ratio"] = [p / a if a > 0 else 0.0
                                       for p, a in zip(out["level/num_positive"], out["level/num_anchors"])]
    return out


def truncate_log(path: Path, max_iteration: int) -> None:
    """Drop records with ``iter > max_iteration`` (written by a run that was killed after its last checkpoint)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("iter", 0) <= max_iteration:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a line cut by the kill
    path.write_text("".join(line + "\n" for line in kept))


class RunLogger:
    """Append JSON lines to ``RUN_DIR/log.jsonl`` and scalars to ``RUN_DIR/tb`` (if tensorboard is installed)."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "log.jsonl"
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(log_dir=str(self.run_dir / "tb"))
            except (ImportError, ModuleNotFoundError):
                warnings.warn("tensorboard is not installed: TensorBoard logging is off "
                              "(pip install 'umop[tensorboard]')", stacklevel=2)

    def log(self, record: dict[str, Any]) -> None:
        """Write one record (must hold ``"iter"``); lists are logged to TensorBoard as ``key/P<level>``."""
        with self.path.open("a") as stream:
            stream.write(json.dumps(record, allow_nan=True) + "\n")
        if self.writer is None:
            return
        step = int(record["iter"])
        for key, value in record.items():
            if key in ("iter", "epoch"):
                continue
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(key, value, step)
            elif isinstance(value, list):
                for level, item in enumerate(value):
                    self.writer.add_scalar(f"{key}/P{level + 3}", item, step)

    def log_eval(self, metrics: dict[str, Any], epoch: int, iteration: int) -> None:
        """Append an evaluation to ``RUN_DIR/eval.json`` (a JSON list, one object per evaluation)."""
        path = self.run_dir / "eval.json"
        history = json.loads(path.read_text()) if path.is_file() else []
        history = [entry for entry in history if entry.get("epoch", 0) < epoch]  # a re-run epoch replaces
        history.append({"epoch": epoch, "iter": iteration, **metrics})
        path.write_text(json.dumps(history, indent=1))
        if self.writer is not None:
            for key, value in metrics.items():
                if isinstance(value, float) and value >= 0:
                    self.writer.add_scalar(f"eval/{key}", value, iteration)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
