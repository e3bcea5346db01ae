"""Precision-recall and F1-confidence curves, confusion matrix (with background), LRP and per-level tables,
as PNG and CSV, for ``umop eval --plots DIR`` and ``umop analyze report --eval DIR``.

The curves and the confusion matrix come from ``faster-coco-eval``'s own extras (``faster_coco_eval.extra``):
``Curves(..., iou_tresh=0.5, useCats=True).build_curve`` (COCO's interpolated precision at 101 recall points
and the score reached there, per class, IoU 0.5, all detections) and
``PreviewResults(..., iou_tresh=0.5, useCats=False, min_score=s).compute_confusion_matrix`` (class-agnostic
COCO matching at IoU 0.5 of the detections scoring >= s; a detection matched to a box of another class
counts as confusion). Only the drawing and the F1 / mean-over-classes arithmetic are umop's.
"""
from __future__ import annotations

import contextlib
import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_eval_plots", "write_metric_tables", "confusion_with_background", "EVAL_FILES"]

EVAL_FILES = ("pr_curves", "f1_confidence", "confusion_matrix")
CONFIDENCES = np.linspace(0.0, 1.0, 101)


def _coco_pair(gt: dict, results: list[dict]):
    from faster_coco_eval import COCO

    quiet = lambda *args, **kwargs: None  # noqa: E731
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(gt, print_function=quiet)
        coco_dt = coco_gt.loadRes([dict(r) for r in results])
    return coco_gt, coco_dt


@contextlib.contextmanager
def _quiet_logger(name: str):
    """Silence a library logger's warnings (faster-coco-eval logs one per class without ground truth)."""
    import logging

    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def class_curves(gt: dict, results: list[dict]) -> dict[str, dict[str, np.ndarray]]:
    """Per class name: ``{"recall", "precision", "score"}`` (each (R,)) at IoU 0.5, from faster-coco-eval.

    Classes without ground truth are left out (faster-coco-eval skips them).
    """
    from faster_coco_eval.extra import Curves

    coco_gt, coco_dt = _coco_pair(gt, results)
    names = {c["id"]: c["name"] for c in gt["categories"]}
    with contextlib.redirect_stdout(io.StringIO()), _quiet_logger("faster_coco_eval"):
        curves = Curves(coco_gt, coco_dt, iouType="bbox", iou_tresh=0.5, useCats=True).build_curve("category_id")
    return {names[c["category_id"]]: {"recall": np.asarray(c["recall_list"], dtype=np.float64),
                                      "precision": np.asarray(c["precision_list"], dtype=np.float64),
                                      "score": np.asarray(c["scores"], dtype=np.float64)} for c in curves}


def f1_by_confidence(curve: Mapping[str, np.ndarray], confidences: np.ndarray = CONFIDENCES) -> np.ndarray:
    """(C,) F1 = 2PR / (P + R) of one class' curve at each confidence (the curve point with the highest F1 among
    those reached at a score >= the confidence; 0 where none is)."""
    precision, recall, score = curve["precision"], curve["recall"], curve["score"]
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    reached = (score > 0) & (precision > 0)  # faster-coco-eval gives score 0 past the last detection
    reached_f1 = np.where(reached[None, :] & (score[None, :] >= confidences[:, None]), f1[None, :], 0.0)
    return reached_f1.max(axis=1) if reached_f1.size else np.zeros(len(confidences))


def confusion_with_background(gt: dict, results: list[dict], score_thresh: float = 0.3) -> tuple[np.ndarray, list[str]]:
    """(K+1, K+1) counts: row = true class (last row "background": unmatched detections), column = predicted
    class (last column "background": missed boxes), from faster-coco-eval's ``compute_confusion_matrix``.

    Returns the matrix and its K+1 labels (class names in category-id order, then ``"background"``).
    """
    from faster_coco_eval.extra import PreviewResults

    coco_gt, coco_dt = _coco_pair(gt, results)
    with contextlib.redirect_stdout(io.StringIO()):
        preview = PreviewResults(coco_gt, coco_dt, iouType="bbox", iou_tresh=0.5, useCats=False,
                                 min_score=score_thresh)
        matrix = np.asarray(preview.compute_confusion_matrix(), dtype=np.float64)  # (K, K + 2): ..., FP, FN
    num_classes = matrix.shape[0]
    out = np.zeros((num_classes + 1, num_classes + 1))
    out[:num_classes, :num_classes] = matrix[:, :num_classes]
    out[num_classes, :num_classes] = matrix[:, num_classes]  # detections of class k matching nothing
    out[:num_classes, num_classes] = matrix[:, num_classes + 1]  # boxes of class k that nothing matched
    labels = [coco_gt.cats[c]["name"] for c in coco_gt.cats] + ["background"]
    return out, labels


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_eval_plots(gt: dict, results: list[dict], out_dir: str | Path, *, score_thresh: float = 0.3,
                     title: str | None = None) -> list[Path]:
    """Write ``pr_curves``, ``f1_confidence`` and ``confusion_matrix`` as ``.png`` and ``.csv`` in ``out_dir``.

    ``pr_curves.csv``: class, recall, precision, score (class "all": the mean over classes of the precision at
    each recall point, whose area is AP50). ``f1_confidence.csv``: class, confidence, f1 ("all": mean over
    classes). ``confusion_matrix.csv``: true class (rows) x predicted class (columns), background last, for the
    detections scoring >= ``score_thresh``.
    """
    from umop.analysis.plots import new_figure, save

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    curves = class_curves(gt, results)
    if curves:
        recall = next(iter(curves.values()))["recall"]
        mean_precision = np.mean([np.interp(recall, c["recall"], c["precision"]) for c in curves.values()], axis=0)
    else:
        recall, mean_precision = np.linspace(0, 1, 101), np.zeros(101)
    f1 = {name: f1_by_confidence(curve) for name, curve in curves.items()}
    mean_f1 = np.mean(list(f1.values()), axis=0) if f1 else np.zeros(len(CONFIDENCES))

    rows = [[name, f"{r:.4f}", f"{p:.6f}", f"{s:.6f}"] for name, c in curves.items()
            for r, p, s in zip(c["recall"], c["precision"], c["score"])]
    rows += [["all", f"{r:.4f}", f"{p:.6f}", ""] for r, p in zip(recall, mean_precision)]
    written.append(_write_csv(out_dir / "pr_curves.csv", ["class", "recall", "precision", "score"], rows))
    rows = [[name, f"{c:.2f}", f"{v:.6f}"] for name, values in {**f1, "all": mean_f1}.items()
            for c, v in zip(CONFIDENCES, values)]
    written.append(_write_csv(out_dir / "f1_confidence.csv", ["class", "confidence", "f1"], rows))

    many = len(curves) > 12  # beyond a dozen classes, draw them thin and grey and keep the legend for "all"
    best = int(np.argmax(mean_f1))
    panels = (("pr_curves.png", "recall", "precision", "Precision-recall per class (IoU 0.5)",
               {name: (c["recall"], c["precision"]) for name, c in curves.items()},
               (recall, mean_precision, f"all classes (AP50 {np.mean(mean_precision):.3f})")),
              ("f1_confidence.png", "confidence (score threshold)", "F1", "F1-confidence per class (IoU 0.5)",
               {name: (CONFIDENCES, values) for name, values in f1.items()},
               (CONFIDENCES, mean_f1, f"all classes (best {mean_f1[best]:.2f} at {CONFIDENCES[best]:.2f})")))
    for file_name, xlabel, ylabel, panel_title, series, (x_all, y_all, label_all) in panels:
        figure, (axis,) = new_figure(1, panel_size=(6.0, 4.6))
        for name, (x, y) in series.items():
            style = {"color": "#bbbbbb", "linewidth": 0.6} if many else {"linewidth": 1.2, "label": name}
            axis.plot(x, y, **style)
        axis.plot(x_all, y_all, color="#111111", linewidth=2.4, label=label_all)
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1.02)
        axis.set_xlabel(xlabel)
        axis.set_ylabel(ylabel)
        axis.set_title(f"{title}: {panel_title}" if title else panel_title, fontsize=11)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8, loc="lower left")
        written.append(save(figure, out_dir / file_name))

    matrix, labels = confusion_with_background(gt, results, score_thresh)
    written.append(_write_csv(out_dir / "confusion_matrix.csv", ["true \\ predicted", *labels],
                              [[label, *(int(v) for v in row)] for label, row in zip(labels, matrix)]))
    size = min(14.0, 2.5 + 0.45 * len(labels))
    figure, (axis,) = new_figure(1, panel_size=(size + 1.0, size))
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
    image = axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    if len(labels) <= 30:
        for (row, column), value in np.ndenumerate(matrix):
            if value:
                axis.text(column, row, f"{int(value)}", ha="center", va="center", fontsize=7,
                          color="white" if shares[row, column] > 0.6 else "black")
    axis.set_xticks(range(len(labels)), labels, rotation=90, fontsize=8)
    axis.set_yticks(range(len(labels)), labels, fontsize=8)
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    axis.set_title(f"Confusion matrix, IoU 0.5, score >= {score_thresh:g}\n(numbers: counts; colour: share of the row)",
                   fontsize=10)
    figure.colorbar(image, ax=axis, shrink=0.8)
    written.append(save(figure, out_dir / "confusion_matrix.png"))
    return written


def write_metric_tables(metrics: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """``lrp.csv`` (per class oLRP, loc, FP, FN, threshold, and the mean) and, when the metrics hold the
    per-level table, ``levels.csv`` (per level: TP, mean IoU, FP, and the share of each size's objects it found)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if "per_class_lrp" in metrics:
        rows = [[name, *(f"{v[k]:.4f}" for k in ("oLRP", "loc", "FP", "FN", "threshold"))]
                for name, v in metrics["per_class_lrp"].items()]
        rows.append(["mean (moLRP)", *(f"{metrics[k]:.4f}" for k in ("oLRP", "oLRP_loc", "oLRP_FP", "oLRP_FN")), ""])
        written.append(_write_csv(out_dir / "lrp.csv", ["class", "oLRP", "loc", "FP", "FN", "threshold"], rows))
    if "levels" in metrics:
        table = metrics["levels"]
        sizes = list(table["recall_by_size"])
        rows = [[level, values["num_tp"], f"{values['mean_iou']:.4f}", values["num_fp"],
                 *(f"{table['recall_by_size'][s]['found_by'][level]:.4f}" for s in sizes)]
                for level, values in table["per_level"].items()]
        rows.append(["recall", "", "", "", *(f"{table['recall_by_size'][s]['recall']:.4f}" for s in sizes)])
        rows.append(["num_gt", "", "", "", *(table["recall_by_size"][s]["num_gt"] for s in sizes)])
        written.append(_write_csv(out_dir / "levels.csv", ["level", "num_tp", "mean_iou", "num_fp",
                                                           *(f"found_{s}" for s in sizes)], rows))
    return written
