"""Dataset analyses of the survey "Imbalance Problems in Object Detection" (Oksuz et al., TPAMI 2020).

* class imbalance (Fig. 5): objects per class, and foreground anchors per class under a detector's assigner;
* scale imbalance (Fig. 7): distributions of box width, height and area relative to the image;
* IoU distribution of the positive anchors (Fig. 12);
* spatial imbalance, object location (Fig. 13): heatmap of normalised box centres.

Each analysis writes a PNG and a CSV into the output directory.
"""
from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from umop.analysis import levels, plots
from umop.analysis.coco import CocoIndex
from umop.analysis.levels import AssignFn, assign_images, check_detector_name

IOU_BINS = np.round(np.linspace(0.0, 1.0, 21), 2)
LOCATION_BINS = 20


@dataclass
class ObjectTable:
    """One entry per box: geometry relative to its image (``(N,)`` arrays)."""

    image_id: np.ndarray
    label: np.ndarray
    relative_width: np.ndarray
    relative_height: np.ndarray
    relative_area: np.ndarray
    center_x: np.ndarray
    center_y: np.ndarray


def object_table(index: CocoIndex) -> ObjectTable:
    """Relative width ``w/W``, height ``h/H``, area ``wh/(WH)`` and normalised centre of every box."""
    columns: dict[str, list[np.ndarray]] = {key: [] for key in ObjectTable.__dataclass_fields__}
    for record in index.images:
        boxes = record.boxes
        width = (boxes[:, 2] - boxes[:, 0]) / record.width
        height = (boxes[:, 3] - boxes[:, 1]) / record.height
        columns["image_id"].append(np.full(len(boxes), record.image_id, dtype=np.int64))
        columns["label"].append(record.labels)
        columns["relative_width"].append(width)
        columns["relative_height"].append(height)
        columns["relative_area"].append(width * height)
        columns["center_x"].append((boxes[:, 0] + boxes[:, 2]) / 2 / record.width)
        columns["center_y"].append((boxes[:, 1] + boxes[:, 3]) / 2 / record.height)
    return ObjectTable(**{key: np.concatenate(values) if values else np.zeros(0)
                          for key, values in columns.items()})


@dataclass
class AnchorSummary:
    """Per detector: positive anchors/points per class and the IoUs of all positives."""

    positives_per_class: np.ndarray
    positive_ious: np.ndarray


def anchor_summary(index: CocoIndex, assign_fn: AssignFn, *, min_size: int, max_size: int,
                   detector: str) -> AnchorSummary:
    """Assign the whole dataset once and collect class counts and IoUs of the positive anchors."""
    per_class = np.zeros(index.num_classes, dtype=np.int64)
    ious: list[np.ndarray] = []
    for item in assign_images(index, assign_fn, min_size=min_size, max_size=max_size, detector=detector):
        per_class += np.bincount(item.positive_labels, minlength=index.num_classes)[: index.num_classes]
        ious.append(item.positive_ious)
    return AnchorSummary(per_class, np.concatenate(ious) if ious else np.zeros(0, dtype=np.float32))


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def class_imbalance(index: CocoIndex, table: ObjectTable, anchors: dict[str, AnchorSummary],
                    out_dir: Path) -> list[Path]:
    """Survey Fig. 5: objects per class and foreground anchors per class, classes sorted by object count."""
    objects = np.bincount(table.label.astype(np.int64), minlength=index.num_classes)
    order = np.argsort(-objects, kind="stable")
    header = ["class", "category_id", "num_objects"] + [f"positive_anchors_{name}" for name in anchors]
    rows = [[index.class_names[i], index.category_ids[i], int(objects[i])]
            + [int(summary.positives_per_class[i]) for summary in anchors.values()] for i in order]
    csv_path = _write_csv(out_dir / "class_imbalance.csv", header, rows)

    names = [index.class_names[i] for i in order]
    num_panels = 1 + bool(anchors)
    figure, axes = plots.new_figure(num_panels, columns=1,
                                    panel_size=(max(7.0, 0.16 * len(names) + 2.0), 3.4))
    positions = np.arange(len(names))
    axes[0].bar(positions, objects[order], color="#4c72b0", label="objects (ground-truth boxes)")
    axes[0].set_ylabel("objects per class")
    axes[0].set_title("Class imbalance: objects per class (survey Fig. 5)", fontsize=11)
    if anchors:
        width = 0.8 / len(anchors)
        for k, (name, summary) in enumerate(anchors.items()):
            axes[1].bar(positions - 0.4 + width * (k + 0.5), summary.positives_per_class[order], width=width,
                        color=plots.LEVEL_COLOURS[(k + 1) % len(plots.LEVEL_COLOURS)],
                        label=f"{name} positive anchors/points")
        axes[1].set_ylabel("foreground anchors per class")
        axes[1].set_title("Class imbalance under the assigner: foreground anchors/points per class", fontsize=11)
    font = 9 if len(names) <= 20 else 7
    for axis in axes:
        if objects.max(initial=0) > 0 and axis.get_ylim()[1] > 50 * max(1, np.median(objects[objects > 0])):
            axis.set_yscale("log")
        axis.set_xticks(positions, names, rotation=90, fontsize=font)
        axis.set_xlim(-0.7, len(names) - 0.3)
        axis.set_xlabel("class (sorted by number of objects)")
        axis.grid(axis="y", alpha=0.3)
        axis.legend(fontsize=8, loc="upper right")
    return [plots.save(figure, out_dir / "class_imbalance.png"), csv_path]


def scale_imbalance(index: CocoIndex, table: ObjectTable, out_dir: Path) -> list[Path]:
    """Survey Fig. 7: distributions of relative width, height and area of the boxes."""
    rows = [[int(table.image_id[i]), index.class_names[int(table.label[i])], f"{table.relative_width[i]:.6g}",
             f"{table.relative_height[i]:.6g}", f"{table.relative_area[i]:.6g}", f"{table.center_x[i]:.6g}",
             f"{table.center_y[i]:.6g}"] for i in range(len(table.label))]
    csv_path = _write_csv(out_dir / "objects.csv", ["image_id", "class", "relative_width", "relative_height",
                                                    "relative_area", "center_x", "center_y"], rows)
    figure, axes = plots.new_figure(3, columns=3, panel_size=(4.4, 3.4))
    linear_bins = np.linspace(0, 1, 21)
    for axis, values, label in ((axes[0], table.relative_width, "relative width  w / W"),
                                (axes[1], table.relative_height, "relative height  h / H")):
        axis.hist(values, bins=linear_bins, color="#4c72b0", weights=_fractions(values), label="boxes")
        axis.set_xlabel(label)
    area_bins = np.logspace(-5, 0, 26)
    area = np.clip(table.relative_area, 1e-5, 1.0)
    axes[2].hist(area, bins=area_bins, color="#4c72b0", weights=_fractions(area), label="boxes")
    axes[2].set_xscale("log")
    axes[2].set_xlabel("relative area  w·h / (W·H)")
    # COCO's small / medium / large limits (32^2 and 96^2 px) relative to the median image area.
    median_area = float(np.median([record.width * record.height for record in index.images]))
    for threshold, style in ((32 ** 2, "--"), (96 ** 2, ":")):
        axes[2].axvline(threshold / median_area, color="#d62728", linestyle=style, linewidth=1.4,
                        label=f"{int(threshold ** 0.5)}² px (COCO size limit)")
    for axis, title in zip(axes, ("width", "height", "area")):
        axis.set_ylabel("fraction of boxes")
        axis.set_title(f"Scale imbalance: relative {title}", fontsize=11)
        axis.grid(alpha=0.3)
        axis.set_ylim(0, axis.get_ylim()[1] * 1.3)  # head-room for the legend
        axis.legend(fontsize=8, loc="upper right")
    figure.suptitle(f"Box sizes relative to the image, {len(table.label)} boxes (survey Fig. 7)", fontsize=11)
    return [plots.save(figure, out_dir / "scale_imbalance.png"), csv_path]


def _fractions(values: np.ndarray) -> np.ndarray:
    return np.full(len(values), 1.0 / max(len(values), 1))


def iou_distribution(anchors: dict[str, AnchorSummary], out_dir: Path) -> list[Path]:
    """Survey Fig. 12: histogram of the IoU of every positive anchor with its matched box, per detector.

    Point-based assigners (FCOS) may report no IoU (all zeros); they are listed in the CSV and marked in the
    plot's legend as "IoU not reported".
    """
    rows, figure_series = [], {}
    for name, summary in anchors.items():
        counts, _ = np.histogram(summary.positive_ious, bins=IOU_BINS)
        rows.extend([name, f"{low:.2f}", f"{high:.2f}", int(count)]
                    for low, high, count in zip(IOU_BINS[:-1], IOU_BINS[1:], counts))
        figure_series[name] = summary.positive_ious
    csv_path = _write_csv(out_dir / "iou_distribution.csv", ["detector", "iou_low", "iou_high",
                                                             "num_positive"], rows)
    figure, axes = plots.new_figure(1, panel_size=(6.4, 3.8))
    axis = axes[0]
    for k, (name, ious) in enumerate(figure_series.items()):
        colour = plots.LEVEL_COLOURS[k % len(plots.LEVEL_COLOURS)]
        if ious.size == 0 or not np.any(ious > 0):
            axis.plot([], [], color=colour, label=f"{name}: IoU not reported ({ious.size} positives)")
            continue
        axis.hist(ious, bins=IOU_BINS, histtype="step", linewidth=2, color=colour,
                  weights=np.full(ious.size, 1.0 / ious.size),
                  label=f"{name} ({ious.size} positives, mean IoU {ious.mean():.2f})")
    axis.set_xlabel("IoU of a positive anchor with its matched box")
    axis.set_ylabel("fraction of positives")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, axis.get_ylim()[1] * 1.25)  # head-room for the legend
    axis.set_title("IoU distribution of positive anchors (survey Fig. 12)", fontsize=11)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="upper left")
    return [plots.save(figure, out_dir / "iou_distribution.png"), csv_path]


def location_heatmap(table: ObjectTable, out_dir: Path, bins: int = LOCATION_BINS) -> list[Path]:
    """Survey Fig. 13: 2-D histogram of the normalised box centres (x right, y down, as in the image)."""
    counts, x_edges, y_edges = np.histogram2d(np.clip(table.center_x, 0, 1), np.clip(table.center_y, 0, 1),
                                              bins=bins, range=[[0, 1], [0, 1]])
    rows = [[f"{x_edges[i]:.3f}", f"{x_edges[i + 1]:.3f}", f"{y_edges[j]:.3f}", f"{y_edges[j + 1]:.3f}",
             int(counts[i, j])] for j in range(bins) for i in range(bins)]
    csv_path = _write_csv(out_dir / "location_heatmap.csv", ["x_low", "x_high", "y_low", "y_high",
                                                             "num_objects"], rows)
    figure, axes = plots.new_figure(1, panel_size=(5.2, 4.4))
    axis = axes[0]
    image = axis.imshow(counts.T, origin="upper", extent=(0, 1, 1, 0), cmap="viridis", interpolation="nearest")
    figure.colorbar(image, ax=axis, label="objects per cell")
    axis.set_xlabel("normalised centre x  (cx / W)")
    axis.set_ylabel("normalised centre y  (cy / H)")
    axis.set_title(f"Object location (survey Fig. 13)\nnormalised centres of {len(table.label)} boxes", fontsize=11)
    return [plots.save(figure, out_dir / "location_heatmap.png"), csv_path]


def analyze_dataset(index: CocoIndex, out_dir: str | Path, detectors: Sequence[str] = ("atss",), *,
                    min_size: int = 800, max_size: int = 1333,
                    assigner_factory: Callable[[str, int], AssignFn] | None = None) -> list[Path]:
    """Run the four survey analyses and return the written PNG and CSV paths.

    ``assigner_factory(detector, num_classes) -> assign_fn`` defaults to ``levels.build_assigner``.
    """
    assigner_factory = assigner_factory or levels.build_assigner
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(dict.fromkeys(check_detector_name(name) for name in detectors))
    table = object_table(index)
    anchors = {name: anchor_summary(index, assigner_factory(name, index.num_classes), min_size=min_size,
                                    max_size=max_size, detector=name) for name in names}
    written = class_imbalance(index, table, anchors, out_dir)
    written += scale_imbalance(index, table, out_dir)
    if anchors:
        written += iou_distribution(anchors, out_dir)
    written += location_heatmap(table, out_dir)
    return written
