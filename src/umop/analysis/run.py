"""Plots of a training run over iterations, from ``RUN_DIR/log.jsonl`` (format: docs/ARCHITECTURE.md).

* ``run_levels.png``: loss curves, and per level P3..P7 the positive ratio, ``gamma_ad`` (UMOP Fig. 3:
  large early, falling as the level converges) and ``alpha_ad`` (PFL runs only);
* ``objective_imbalance.png``: classification vs regression loss and the L2 norms of their gradients at the
  shared FPN features (survey Fig. 14), when the log holds ``objective/grad_norm/...``;
* ``run_stats.csv``: the logged series flattened to one column per scalar / per level, for notebooks.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from umop.analysis import plots

LEVEL_KEYS: tuple[tuple[str, str, str], ...] = (
    ("level/positive_ratio", "Positive ratio per level", "num_positive / num_anchors"),
    ("level/gamma_ad", "gamma_ad per level (UMOP Fig. 3)", "gamma_ad"),
    ("level/alpha_ad", "alpha_ad per level", "alpha_ad"),
)
GRAD_PREFIX = "objective/grad_norm/"


@dataclass
class RunLog:
    """The records of one ``log.jsonl``, as arrays over logged iterations."""

    path: Path
    iterations: np.ndarray
    scalars: dict[str, np.ndarray] = field(default_factory=dict)
    levels: dict[str, np.ndarray] = field(default_factory=dict)  # key -> (T, L), NaN where absent

    @property
    def loss_keys(self) -> list[str]:
        return [key for key in self.scalars if key == "loss" or key.startswith("loss_")]

    @property
    def grad_norm_keys(self) -> list[str]:
        return [key for key in self.scalars if key.startswith(GRAD_PREFIX)]


def _number(value: object) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def read_run_log(run_dir: str | Path) -> RunLog:
    """Read ``RUN_DIR/log.jsonl``; blank lines and a last line cut by a kill are skipped.

    Raises:
        ValueError: ``run_dir`` or its ``log.jsonl`` is missing, a (non-final) line is not JSON, a record has
            no ``iter``, or the log is empty.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"run directory {run_dir} does not exist (RUN_DIR)")
    path = run_dir / "log.jsonl"
    if not path.is_file():
        raise ValueError(f"{path} does not exist: is {run_dir} a training run directory?")
    lines = [(number, line) for number, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    records = []
    for position, (number, line) in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if position == len(lines) - 1 and records:
                break  # the last line of a killed run may be cut short
            raise ValueError(f"{path}:{number} is not valid JSON: {error}") from error
        if not isinstance(record, dict) or "iter" not in record:
            raise ValueError(f"{path}:{number}: record has no 'iter' field")
        records.append(record)
    if not records:
        raise ValueError(f"{path} is empty: no logged iteration to plot")
    records.sort(key=lambda record: record["iter"])

    scalar_keys = list(dict.fromkeys(key for record in records for key, value in record.items()
                                     if key not in ("iter", "epoch") and isinstance(value, (int, float))
                                     and not isinstance(value, bool)))
    level_keys = list(dict.fromkeys(key for record in records for key, value in record.items()
                                    if isinstance(value, list)))
    scalars = {key: np.array([_number(record.get(key)) for record in records]) for key in scalar_keys}
    levels = {}
    for key in level_keys:
        width = max(len(record[key]) for record in records if isinstance(record.get(key), list))
        table = np.full((len(records), width), np.nan)
        for row, record in enumerate(records):
            values = record.get(key)
            if isinstance(values, list):
                table[row, :len(values)] = [_number(value) for value in values]
        levels[key] = table
    return RunLog(path, np.array([float(record["iter"]) for record in records]), scalars, levels)


def _level_series(table: np.ndarray) -> dict[str, np.ndarray]:
    return {f"P{level + 3}": table[:, level] for level in range(table.shape[1])}


def _positive(values: np.ndarray) -> bool:
    finite = values[np.isfinite(values)]
    return finite.size > 0 and bool(np.all(finite > 0))


def plot_run_levels(log: RunLog, path: str | Path) -> Path | None:
    """Loss curves next to the per-level positive ratio, gamma_ad and alpha_ad over iterations."""
    panels = []
    if log.loss_keys:
        panels.append(("loss", "Loss curves", "loss", {key: log.scalars[key] for key in log.loss_keys}))
    for key, title, ylabel in LEVEL_KEYS:
        if key in log.levels and np.isfinite(log.levels[key]).any():
            panels.append((key, title, ylabel, _level_series(log.levels[key])))
    if not panels:
        return None
    figure, axes = plots.new_figure(len(panels), columns=min(len(panels), 2), panel_size=(5.6, 3.8))
    for axis, (key, title, ylabel, series) in zip(axes, panels):
        log_y = key in ("loss", "level/positive_ratio") and all(_positive(v) for v in series.values())
        plots.plot_lines(axis, log.iterations, series, title=title, ylabel=ylabel, log_y=log_y)
        if key == "level/gamma_ad":
            axis.axhline(2.0, color="#555555", linestyle="--", linewidth=1)
            axis.text(log.iterations[0], 2.0, " focal loss gamma = 2", va="bottom", fontsize=8, color="#555555")
    figure.suptitle(f"Training run {log.path.parent.name}: losses and per-level statistics", fontsize=12)
    return plots.save(figure, path)


def _is_regression(key: str) -> bool:
    return any(word in key for word in ("box", "reg", "bbox", "iou"))


def plot_objective_imbalance(log: RunLog, path: str | Path) -> Path | None:
    """Survey Fig. 14: classification vs regression loss, and their gradient norms at the shared features."""
    loss_terms = [key for key in log.loss_keys if key != "loss"]
    grads = log.grad_norm_keys
    if not grads and not ({"loss_cls"} <= set(loss_terms) and any(_is_regression(k) for k in loss_terms)):
        return None
    panels = [("Loss terms", "loss value", {key: log.scalars[key] for key in loss_terms})]
    if grads:
        panels.append(("Gradient norm at the FPN features", "||d loss / d features||_2",
                       {key[len(GRAD_PREFIX):]: log.scalars[key] for key in grads}))
        cls_key = f"{GRAD_PREFIX}loss_cls"
        regression = [key for key in grads if _is_regression(key)]
        if cls_key in log.scalars and regression:
            ratio = {f"loss_cls / {key[len(GRAD_PREFIX):]}":
                     log.scalars[cls_key] / np.where(log.scalars[key] > 0, log.scalars[key], np.nan)
                     for key in regression}
            panels.append(("Gradient-norm ratio classification / regression", "ratio", ratio))
    width = 5.0 if len(panels) > 1 else 7.5  # room for the figure title over a single panel
    figure, axes = plots.new_figure(len(panels), columns=len(panels), panel_size=(width, 3.8))
    for axis, (title, ylabel, series) in zip(axes, panels):
        plots.plot_lines(axis, log.iterations, series, title=title, ylabel=ylabel,
                         log_y=all(_positive(v) for v in series.values()))
        if title.startswith("Gradient-norm ratio"):
            axis.axhline(1.0, color="#555555", linestyle="--", linewidth=1)
    figure.suptitle("Objective imbalance: classification vs regression (survey Fig. 14)", fontsize=12)
    return plots.save(figure, path)


def write_run_csv(log: RunLog, path: str | Path) -> Path:
    """``run_stats.csv``: ``iter`` then every scalar, then ``<key>/P<level>`` for the per-level series."""
    columns = {"iter": log.iterations, **log.scalars}
    for key, table in log.levels.items():
        columns.update({f"{key}/P{level + 3}": table[:, level] for level in range(table.shape[1])})
    path = Path(path)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in range(len(log.iterations)):
            writer.writerow(["" if math.isnan(values[row]) else f"{values[row]:.8g}" for values in columns.values()])
    return path


def analyze_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write the run plots and ``run_stats.csv`` into ``out_dir`` (default ``RUN_DIR/analysis``)."""
    log = read_run_log(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else Path(run_dir) / "analysis"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [plot_run_levels(log, out_dir / "run_levels.png"),
               plot_objective_imbalance(log, out_dir / "objective_imbalance.png"),
               write_run_csv(log, out_dir / "run_stats.csv")]
    return [path for path in written if path is not None]
