"""What ``umop eval`` / ``umop predict`` do with the evaluation beyond AP: LRP and per-level tables as text,
plots and CSVs, and the LRP-optimal per-class thresholds read back from an evaluation json.

Kept here (not in the CLI) so that the commands stay a few lines and other front ends can reuse them.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .coco import detections_to_coco_results, lrp_thresholds, targets_to_coco_dict

__all__ = ["format_lrp", "format_level_table", "write_eval_outputs", "find_lrp_thresholds"]


def format_lrp(metrics: Mapping[str, Any]) -> str:
    """moLRP with its components, and the per-class oLRP table with the LRP-optimal thresholds."""
    if "oLRP" not in metrics:
        return ""
    lines = [f"moLRP {metrics['oLRP']:.3f}  (loc {metrics['oLRP_loc']:.3f}, FP {metrics['oLRP_FP']:.3f}, "
             f"FN {metrics['oLRP_FN']:.3f}; lower is better, Oksuz et al. 2021, IoU 0.5)"]
    per_class = metrics.get("per_class_lrp") or {}
    if per_class:
        width = max(8, *(len(name) for name in per_class))
        lines.append(f"{'class':<{width}}  oLRP    loc     FP      FN      threshold")
        for name, values in per_class.items():
            cells = "  ".join(f"{values[key]:6.3f}" if values[key] >= 0 else "     -"
                              for key in ("oLRP", "loc", "FP", "FN", "threshold"))
            lines.append(f"{name:<{width}}  {cells}")
    return "\n".join(lines)


def format_level_table(metrics: Mapping[str, Any]) -> str:
    """The per-level table: TP, mean IoU of the TPs, FP per level, and for each size range the share of its
    objects found by each level (columns sum to the recall of that size)."""
    table = metrics.get("levels")
    if not table:
        return ("no per-level table: the detections carry no 'levels' (the detector must report the pyramid "
                "level of each detection)")
    sizes = list(table["recall_by_size"])
    header = f"{'level':<7}{'TP':>8}{'mean IoU':>10}{'FP':>8}" + "".join(f"{'found ' + s:>14}" for s in sizes)
    lines = [header]
    for level, values in table["per_level"].items():
        iou = f"{values['mean_iou']:.3f}" if values["mean_iou"] >= 0 else "-"
        shares = "".join(f"{table['recall_by_size'][s]['found_by'][level]:>14.3f}"
                         if table["recall_by_size"][s]["num_gt"] else f"{'-':>14}" for s in sizes)
        lines.append(f"{level:<7}{values['num_tp']:>8}{iou:>10}{values['num_fp']:>8}{shares}")
    recall = "".join(f"{table['recall_by_size'][s]['recall']:>14.3f}" if table["recall_by_size"][s]["num_gt"]
                     else f"{'-':>14}" for s in sizes)
    counts = "".join(f"{table['recall_by_size'][s]['num_gt']:>14}" for s in sizes)
    lines.append(f"{'recall':<33}{recall}")
    lines.append(f"{'objects':<33}{counts}")
    lines.append("(IoU 0.5, COCO matching; sizes by box area: small < 32², medium < 96², large)")
    return "\n".join(lines)


def write_eval_outputs(detections: Sequence[Mapping[str, Any]], targets: Sequence[Mapping[str, Any]],
                       metrics: Mapping[str, Any], out_dir: str | Path, *, num_classes: int,
                       class_names: Sequence[str] | None = None, score_thresh: float = 0.3) -> list[Path]:
    """``umop eval --plots DIR``: PR / F1-confidence curves and confusion matrix (PNG + CSV,
    :func:`umop.evaluation.plots.write_eval_plots`) and the LRP / per-level tables (``lrp.csv``, ``levels.csv``)
    of ``metrics``; also ``metrics.json`` (the metrics) so that ``umop analyze report --eval DIR`` can read it.

    ``detections`` / ``targets`` as for :func:`umop.evaluation.evaluate_detections`.
    """
    from .plots import write_eval_plots, write_metric_tables

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gt = targets_to_coco_dict(targets, num_classes, class_names)
    results = detections_to_coco_results(detections)
    written = write_eval_plots(gt, results, out_dir, score_thresh=score_thresh)
    written += write_metric_tables(metrics, out_dir)
    path = out_dir / "metrics.json"
    path.write_text(json.dumps(dict(metrics), indent=1))
    written.append(path)
    return written


def find_lrp_thresholds(checkpoint: str | Path, class_names: Sequence[str], default: float = 0.3,
                        eval_json: str | Path | None = None) -> tuple[list[float], Path]:
    """Per-class LRP-optimal score thresholds for ``umop predict --score-thresh lrp``.

    Read from ``eval_json`` if given, else from ``CHECKPOINT.eval.json`` (written by ``umop eval``), else from
    the last evaluation of the run (``RUN_DIR/eval.json`` for ``RUN_DIR/checkpoints/CHECKPOINT``). Classes
    without a threshold get ``default``. Returns ``(thresholds, the json read)``.
    """
    checkpoint = Path(checkpoint)
    candidates = [Path(eval_json)] if eval_json is not None else [
        checkpoint.with_suffix(".eval.json"), checkpoint.parent.parent / "eval.json"]
    if eval_json is not None and not Path(eval_json).is_file():
        raise ValueError(f"--eval-json {eval_json}: file not found")
    for path in candidates:
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from error
        record = data[-1] if isinstance(data, list) and data else data
        if isinstance(record, Mapping) and "per_class_lrp" in record:
            return lrp_thresholds(record, class_names, default), path
    raise ValueError(f"--score-thresh lrp needs an evaluation with LRP: none of {', '.join(map(str, candidates))} "
                     "holds 'per_class_lrp' (run `umop eval` on the checkpoint first)")
