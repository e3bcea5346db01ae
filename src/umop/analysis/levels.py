"""Level imbalance: positive anchors/points per FPN level under a detector's assigner (UMOP Fig. 2).

An assignment-only pass: every image is resized as at test time (shorter side ``min_size``, longer side
at most ``max_size``), padded to a multiple of 32, and handed with its boxes to the detector's
``assign_targets`` (geometry only: no network forward, no weights). For each image and level P3..P7 it
records the number of positive anchors/points and the number of all anchors/points. UMOP (Wu et al. 2021,
Sec. 3.1, Fig. 2) observes that the positive share grows with the level: P7 is the most likely to get
positives, so one focal-loss setting cannot suit every level.
"""
from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from umop.analysis.coco import CocoIndex, ImageRecord
from umop.data.transforms import ResizeShorterSide
from umop.structures.levels import level_index_for

VALID_DETECTORS: tuple[str, ...] = ("retinanet", "atss", "fcos", "vfnet")
LEVELS: tuple[int, ...] = (3, 4, 5, 6, 7)
CSV_COLUMNS: tuple[str, ...] = ("detector", "image_id", "level", "num_positive", "num_total", "width", "height")
SIZE_DIVISOR = 32

AssignFn = Callable[[tuple[int, int], list[dict[str, torch.Tensor]]], Any]
"""``(image_size=(H_pad, W_pad), targets) -> AssignResult`` (see docs/ARCHITECTURE.md)."""


def check_detector_name(name: str) -> str:
    """Return ``name`` lower-cased, or raise ``ValueError`` listing the valid detector names."""
    normalised = str(name).lower()
    if normalised not in VALID_DETECTORS:
        raise ValueError(f"unknown detector {name!r} (--detector); valid: {', '.join(VALID_DETECTORS)}")
    return normalised


def resized_size(width: int, height: int, min_size: int = 800, max_size: int = 1333) -> tuple[int, int]:
    """Test-time resize ``(new_width, new_height)``: shorter side ``min_size``, longer side <= ``max_size``.

    The data pipeline's rule (:meth:`umop.data.transforms.ResizeShorterSide.output_size`: one scale, sides
    rounded), so that the analysed sizes are the trained and evaluated ones (640x480 -> 1067x800).
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got width={width}, height={height}")
    new_height, new_width = ResizeShorterSide(min_size, max_size).output_size(height, width, min_size)
    return new_width, new_height


def padded_size(width: int, height: int, divisor: int = SIZE_DIVISOR) -> tuple[int, int]:
    """``(H_pad, W_pad)``: the size rounded up to a multiple of ``divisor`` (the model's padding)."""
    return (int(math.ceil(height / divisor) * divisor), int(math.ceil(width / divisor) * divisor))


@dataclass
class ImageAssignment:
    """Result of assigning one resized image.

    Attributes:
        image_id: COCO image id.
        width, height: resized, unpadded size.
        num_positive, num_total: ``(L,)`` int64 per level P3..P7.
        positive_labels: ``(P,)`` int64 class of every positive anchor/point.
        positive_ious: ``(P,)`` float32 IoU of every positive anchor/point with its matched box.
    """

    image_id: int
    width: int
    height: int
    num_positive: np.ndarray
    num_total: np.ndarray
    positive_labels: np.ndarray
    positive_ious: np.ndarray


def build_assigner(detector: str, num_classes: int) -> AssignFn:
    """The ``assign_targets`` of ``umop.build_detector(detector, ...)`` with a tiny random backbone.

    Assignment depends only on anchor geometry, so ResNet-18 without pretrained weights is enough and its
    forward is never run.
    """
    name = check_detector_name(detector)
    from umop.models import build_detector

    model = build_detector(name, num_classes=max(int(num_classes), 1), backbone="resnet18",
                           pretrained_backbone=False)
    model.eval()
    return model.assign_targets


def _image_targets(record: ImageRecord, new_width: int, new_height: int) -> list[dict[str, torch.Tensor]]:
    scale = np.array([new_width / record.width, new_height / record.height] * 2)
    boxes = torch.as_tensor(record.boxes * scale, dtype=torch.float32).reshape(-1, 4)
    return [{"boxes": boxes, "labels": torch.as_tensor(record.labels, dtype=torch.int64)}]


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch ops on one intra-op thread, restoring the previous setting afterwards.

    The assignment of one image is a chain of small, memory-bound element-wise ops (IoU of ~10^5 anchors
    with a few boxes): a second thread does not speed them up, and on a busy machine the threads' hand-offs
    cost 4-20x (measured on coco128 with RetinaNet's assigner: 3.5 s vs 16 s for 32 images under load).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def assign_images(index: CocoIndex, assign_fn: AssignFn, *, min_size: int = 800, max_size: int = 1333,
                  detector: str = "detector") -> Iterator[ImageAssignment]:
    """Assign every image of ``index`` (one image per batch) and yield its per-level counts.

    An image without boxes is assigned too and yields zero positives (its anchors still count).
    """
    num_classes = index.num_classes
    for record in index.images:
        new_width, new_height = resized_size(record.width, record.height, min_size, max_size)
        with torch.no_grad(), single_thread():
            result = assign_fn(padded_size(new_width, new_height), _image_targets(record, new_width, new_height))
            per_level = tuple(int(n) for n in result.num_anchors_per_level)
            if len(per_level) != len(LEVELS):
                raise ValueError(f"{detector}: assign_targets returned {len(per_level)} levels, expected "
                                 f"{len(LEVELS)} (P3..P7)")
            labels = result.labels[0]
            positive = (labels >= 0) & (labels < num_classes)
            level_index = level_index_for(per_level, labels.device)
            num_positive = torch.bincount(level_index[positive], minlength=len(LEVELS))
            ious = getattr(result, "ious", None)
            positive_ious = ious[0][positive].float() if ious is not None else torch.zeros(int(positive.sum()))
            item = ImageAssignment(
                image_id=record.image_id, width=new_width, height=new_height,
                num_positive=num_positive.numpy(), num_total=np.asarray(per_level, dtype=np.int64),
                positive_labels=labels[positive].numpy(), positive_ious=positive_ious.numpy())
        yield item


@dataclass
class LevelRow:
    """One row of ``level_stats.csv``."""

    detector: str
    image_id: int
    level: int
    num_positive: int
    num_total: int
    width: int
    height: int

    @property
    def positive_ratio(self) -> float:
        return self.num_positive / self.num_total if self.num_total else 0.0


def level_rows(detector: str, assignments: Iterator[ImageAssignment]) -> list[LevelRow]:
    """Flatten per-image assignments into one row per image and level."""
    rows = []
    for item in assignments:
        for level, positives, total in zip(LEVELS, item.num_positive, item.num_total):
            rows.append(LevelRow(detector, item.image_id, level, int(positives), int(total),
                                 item.width, item.height))
    return rows


def level_statistics(index: CocoIndex, detectors: Sequence[str], *, min_size: int = 800,
                     max_size: int = 1333,
                     assigner_factory: Callable[[str, int], AssignFn] | None = None) -> list[LevelRow]:
    """Per image and level counts for every detector (UMOP Fig. 2 data).

    ``assigner_factory(detector, num_classes) -> assign_fn`` defaults to :func:`build_assigner`.
    """
    assigner_factory = assigner_factory or build_assigner
    names = [check_detector_name(name) for name in detectors]
    if not names:
        raise ValueError("no detector given (--detector)")
    if not any(len(record.boxes) for record in index.images):
        warnings.warn(f"{index.ann_file} has no boxes: every positive count is zero", stacklevel=2)
    rows: list[LevelRow] = []
    for name in dict.fromkeys(names):
        assign_fn = assigner_factory(name, index.num_classes)
        rows.extend(level_rows(name, assign_images(index, assign_fn, min_size=min_size, max_size=max_size,
                                                   detector=name)))
    return rows


def write_level_csv(rows: Sequence[LevelRow], path: str | Path) -> Path:
    """Write ``level_stats.csv`` with exactly the columns of :data:`CSV_COLUMNS`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            writer.writerow([row.detector, row.image_id, row.level, row.num_positive, row.num_total,
                             row.width, row.height])
    return path


def read_level_csv(path: str | Path) -> list[LevelRow]:
    """Read a ``level_stats.csv`` written by :func:`write_level_csv`."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"level statistics file {path} does not exist")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
            raise ValueError(f"{path}: columns {reader.fieldnames} differ from {list(CSV_COLUMNS)}")
        return [LevelRow(record["detector"], int(record["image_id"]), int(record["level"]),
                         int(record["num_positive"]), int(record["num_total"]), int(record["width"]),
                         int(record["height"])) for record in reader]


def positive_ratios(rows: Sequence[LevelRow]) -> dict[str, dict[int, np.ndarray]]:
    """``{detector: {level: per-image num_positive/num_total}}`` in first-seen detector order."""
    table: dict[str, dict[int, list[float]]] = {}
    for row in rows:
        table.setdefault(row.detector, {level: [] for level in LEVELS}).setdefault(row.level, []).append(
            row.positive_ratio)
    return {name: {level: np.asarray(values, dtype=np.float64) for level, values in levels.items()}
            for name, levels in table.items()}


def mean_positive_ratios(rows: Sequence[LevelRow]) -> dict[str, dict[int, float]]:
    """``{detector: {level: mean over images of num_positive/num_total}}`` (the dots of UMOP Fig. 2)."""
    return {name: {level: float(values.mean()) if values.size else 0.0 for level, values in levels.items()}
            for name, levels in positive_ratios(rows).items()}


def highest_level_has_highest_share(means: dict[int, float]) -> bool:
    """The UMOP observation for one detector: P7 has the highest mean positive ratio of all levels."""
    top = max(LEVELS)
    return all(means[top] >= means[level] for level in LEVELS if level != top) and means[top] > 0
