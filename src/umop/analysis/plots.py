"""Matplotlib figures of the analyses, drawn without pyplot (no GUI backend is touched).

Every function takes plain numbers, returns the path of a PNG it wrote, and keeps labels readable:
one panel per quantity, titles above, axis labels with units, a legend wherever several series share axes.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator

DPI = 100
LEVEL_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")


def new_figure(num_panels: int, *, columns: int | None = None, panel_size: tuple[float, float] = (4.6, 3.6)
               ) -> tuple[Figure, list]:
    """A figure with ``num_panels`` axes on a grid (at most 4 columns unless ``columns`` is given)."""
    columns = columns or min(num_panels, 4)
    rows = int(np.ceil(num_panels / columns))
    figure = Figure(figsize=(panel_size[0] * columns, panel_size[1] * rows), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = [figure.add_subplot(rows, columns, i + 1) for i in range(num_panels)]
    return figure, axes


def save(figure: Figure, path: str | Path) -> Path:
    """Write ``figure`` as PNG (parents created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    return path


def plot_level_imbalance(ratios: Mapping[str, Mapping[int, np.ndarray]], path: str | Path,
                         title: str | None = None) -> Path:
    """UMOP Fig. 2: per detector, box plots of per-image positive ratio per level, means as dotted dots.

    Args:
        ratios: ``{detector: {level: per-image num_positive / num_total}}``.
        path: output PNG.
        title: optional figure title (e.g. the dataset name).
    """
    if not ratios:
        raise ValueError("no level statistics to plot")
    figure, axes = new_figure(len(ratios), columns=min(len(ratios), 2), panel_size=(5.2, 3.8))
    for axis, (detector, per_level) in zip(axes, ratios.items()):
        levels = sorted(per_level)
        data = [np.asarray(per_level[level], dtype=np.float64) for level in levels]
        positions = np.arange(1, len(levels) + 1)
        axis.boxplot(data, positions=positions, widths=0.55, patch_artist=True,
                     boxprops={"facecolor": "#c6dbef", "edgecolor": "#2b5d8a"},
                     medianprops={"color": "#2b5d8a"}, whiskerprops={"color": "#2b5d8a"},
                     capprops={"color": "#2b5d8a"},
                     flierprops={"marker": ".", "markersize": 3, "markerfacecolor": "#999999",
                                 "markeredgecolor": "#999999"})
        means = [float(values.mean()) if values.size else 0.0 for values in data]
        axis.plot(positions, means, linestyle=":", color="#d62728", marker="o", markersize=6, linewidth=1.6)
        axis.set_xticks(positions, [f"P{level}" for level in levels])
        axis.set_title(detector, fontsize=12)
        axis.set_xlabel("pyramid level")
        axis.set_ylabel("positive ratio per image")
        axis.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        axis.grid(axis="y", alpha=0.3)
    handles = [Patch(facecolor="#c6dbef", edgecolor="#2b5d8a", label="per-image ratio (box: quartiles)"),
               Line2D([], [], linestyle=":", color="#d62728", marker="o", label="mean over images")]
    figure.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=9, frameon=False)
    figure.suptitle(title or "Positive anchors/points per level: num_positive / num_total (UMOP Fig. 2)",
                    fontsize=12)
    return save(figure, path)


def plot_lines(axis, x: Sequence[float], series: Mapping[str, Sequence[float]], *, title: str, ylabel: str,
               xlabel: str = "iteration", log_y: bool = False) -> None:
    """Draw several named series on one axis with a legend."""
    for i, (name, values) in enumerate(series.items()):
        axis.plot(x, values, label=name, color=LEVEL_COLOURS[i % len(LEVEL_COLOURS)], linewidth=1.4)
    if len(x) > 1:  # the same iteration range on every panel, even where a series starts later
        axis.set_xlim(float(np.min(x)), float(np.max(x)))
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_title(title, fontsize=11)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    values = np.concatenate([np.asarray(v, dtype=np.float64) for v in series.values()]) if series else np.zeros(0)
    values = values[np.isfinite(values) & (values > 0)]
    if log_y and values.size and values.max() / values.min() > 20:  # log only when it spans > ~1.3 decades
        axis.set_yscale("log")
        plain = FuncFormatter(lambda value, _position: f"{value:g}")
        axis.yaxis.set_major_formatter(plain)
        axis.yaxis.set_minor_formatter(FuncFormatter(
            lambda value, _position: f"{value:g}" if f"{value:.1e}"[0] in "25" else ""))
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="best")
