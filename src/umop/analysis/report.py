"""One self-contained HTML page that gathers the analyses (PNGs embedded as base64).

The PNGs and CSVs are also copied beside the page, for papers and notebooks.
"""
from __future__ import annotations

import base64
import html
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from umop.analysis.levels import (LEVELS, highest_level_has_highest_share, mean_positive_ratios, positive_ratios,
                                  read_level_csv)
from umop.analysis.plots import plot_level_imbalance
from umop.analysis.run import analyze_run, read_run_log

CAPTIONS: dict[str, str] = {
    "level_imbalance.png": (
        "Level imbalance (UMOP Fig. 2). For each detector, the box plots give the per-image share of positive "
        "anchors/points on each pyramid level P3..P7 (num_positive / num_total), and the red dots joined by a "
        "dotted line their means. Look for: means that grow with the level, i.e. P7 gets the largest share of "
        "positives. Such a spread means one focal-loss setting cannot suit every level, which is what "
        "Progressive Focal Loss adapts to."),
    "class_imbalance.png": (
        "Class imbalance (survey Fig. 5). Top: ground-truth boxes per class, sorted. Bottom: positive "
        "(foreground) anchors/points per class under the detector's assigner. Look for: a long tail, and "
        "classes whose share of anchors is smaller than their share of objects (small objects get fewer "
        "anchors), which foreground-foreground class imbalance methods target."),
    "scale_imbalance.png": (
        "Scale imbalance (survey Fig. 7). Distributions of box width, height (relative to the image) and area "
        "(relative to the image area, log axis; red lines: COCO's small/medium/large limits of 32² and 96² px for the "
        "median image size). Look for: a mass of small objects, which few pyramid levels serve."),
    "iou_distribution.png": (
        "IoU distribution of positive anchors (survey Fig. 12). For each detector, the fraction of positive "
        "anchors per IoU bin with their matched box. Look for: most positives close to the IoU threshold and "
        "few of high IoU (a regression-side imbalance that IoU-balanced sampling and loss weighting address). "
        "Point-based FCOS reports no anchor IoU."),
    "location_heatmap.png": (
        "Object location (survey Fig. 13). Heatmap of the box centres in normalised image coordinates "
        "(x right, y down). Look for: a concentration at the image centre, i.e. spatial imbalance."),
    "run_levels.png": (
        "Training run. Loss curves, and per level P3..P7 the positive ratio, gamma_ad and alpha_ad of "
        "Progressive Focal Loss over iterations (UMOP Fig. 3). Look for: gamma_ad large early and falling as "
        "a level converges; the dashed line marks the focal loss' fixed gamma = 2."),
    "objective_imbalance.png": (
        "Objective imbalance (survey Fig. 14). Classification vs regression losses and the L2 norm of their "
        "gradients at the shared FPN features. Look for: one objective's gradient dominating the other by "
        "an order of magnitude (ratio far from 1), which loss-weighting methods correct."),
    "pr_curves.png": (
        "Precision-recall per class at IoU 0.5 (COCO's interpolated precision at 101 recall points, computed by "
        "faster-coco-eval); the black curve is the mean over classes, whose area is AP50. Look for: classes whose "
        "curve ends at low recall (missed objects) or drops early (confident false positives)."),
    "f1_confidence.png": (
        "F1 against the score threshold per class (IoU 0.5); black: mean over classes, with its best threshold. "
        "Look for: classes whose best threshold differs from the others; the LRP table gives each class' "
        "LRP-optimal threshold (used by `umop predict --score-thresh lrp`)."),
    "confusion_matrix.png": (
        "Confusion matrix with background at IoU 0.5 (faster-coco-eval, class-agnostic COCO matching of the "
        "detections above the score threshold in the title). Rows: true class; columns: predicted class. Last row: "
        "detections matching no object (false positives); last column: objects no detection matched (misses). "
        "Look for: off-diagonal cells (confused classes) and which of the background row or column dominates."),
}
# The objective-imbalance figure of a run whose log holds no gradient norms shows the losses only.
OBJECTIVE_LOSSES_ONLY_CAPTION = (
    "Objective imbalance (survey Fig. 14), losses only. Classification vs regression losses; this run logged no "
    "gradient norms at the FPN features (they are logged every log.objective_every iterations: the run was "
    "shorter, or it was 0). Look for: one loss term dominating the total.")
DATASET_FILES = ("class_imbalance", "scale_imbalance", "iou_distribution", "location_heatmap")
DATASET_CSVS = ("class_imbalance.csv", "objects.csv", "iou_distribution.csv", "location_heatmap.csv")


@dataclass
class Section:
    """One section of the page: a title, an optional HTML table and the figures with captions."""

    title: str
    figures: list[Path]
    table_html: str = ""
    captions: dict[str, str] = field(default_factory=dict)  # per file name, replacing CAPTIONS


def _figure_html(path: Path, captions: dict[str, str] | None = None) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    caption = (captions or {}).get(path.name) or CAPTIONS.get(path.name, path.stem.replace("_", " "))
    return (f'<figure><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'
            f'<figcaption><b>{html.escape(path.name)}</b>: {html.escape(caption)}</figcaption></figure>')


def _levels_table(means: dict[str, dict[int, float]]) -> str:
    head = "".join(f"<th>P{level}</th>" for level in LEVELS)
    rows = []
    for detector, per_level in means.items():
        cells = "".join(f"<td>{per_level[level]:.3e}</td>" for level in LEVELS)
        verdict = "yes" if highest_level_has_highest_share(per_level) else "no"
        rows.append(f"<tr><td>{html.escape(detector)}</td>{cells}<td>{verdict}</td></tr>")
    return (f"<table><tr><th>detector</th>{head}<th>P7 has the highest share?</th></tr>{''.join(rows)}"
            "</table><p class=note>Mean over images of num_positive / num_total per level.</p>")


def _copy(source: Path, out_dir: Path) -> Path:
    target = out_dir / source.name
    if source.resolve() != target.resolve():
        shutil.copyfile(source, target)
    return target


def levels_section(levels_dir: Path, out_dir: Path) -> Section:
    """Level imbalance from ``levels_dir/level_stats.csv`` (the plot is redrawn from the CSV)."""
    if not levels_dir.is_dir():
        raise ValueError(f"levels directory {levels_dir} does not exist (--levels)")
    rows = read_level_csv(levels_dir / "level_stats.csv")
    if not rows:
        raise ValueError(f"{levels_dir / 'level_stats.csv'} has no rows (--levels)")
    _copy(levels_dir / "level_stats.csv", out_dir)
    figure = plot_level_imbalance(positive_ratios(rows), out_dir / "level_imbalance.png")
    return Section("Level imbalance (UMOP)", [figure], _levels_table(mean_positive_ratios(rows)))


def dataset_section(dataset_dir: Path, out_dir: Path) -> Section:
    """The survey's dataset analyses found in ``dataset_dir``."""
    if not dataset_dir.is_dir():
        raise ValueError(f"dataset analysis directory {dataset_dir} does not exist (--dataset)")
    figures = [_copy(dataset_dir / f"{name}.png", out_dir) for name in DATASET_FILES
               if (dataset_dir / f"{name}.png").is_file()]
    if not figures:
        raise ValueError(f"{dataset_dir} holds none of {', '.join(n + '.png' for n in DATASET_FILES)} "
                         "(--dataset: run `umop analyze dataset` first)")
    for name in DATASET_CSVS:
        if (dataset_dir / name).is_file():
            _copy(dataset_dir / name, out_dir)
    return Section("Dataset imbalance (survey)", figures)


def run_section(run_dir: Path, out_dir: Path) -> Section:
    """Training-run plots, drawn from ``run_dir/log.jsonl`` into ``out_dir``."""
    written = analyze_run(run_dir, out_dir)
    captions = {} if read_run_log(run_dir).grad_norm_keys else {"objective_imbalance.png": OBJECTIVE_LOSSES_ONLY_CAPTION}
    return Section(f"Training run {run_dir.name}", [path for path in written if path.suffix == ".png"], captions=captions)


def _number(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if value is not None and value >= 0 else "-"


def _lrp_table(metrics: dict) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td>"
        + "".join(f"<td>{_number(values[key])}</td>" for key in ("oLRP", "loc", "FP", "FN", "threshold")) + "</tr>"
        for name, values in metrics.get("per_class_lrp", {}).items())
    mean = "".join(f"<td><b>{_number(metrics[key])}</b></td>" for key in ("oLRP", "oLRP_loc", "oLRP_FP", "oLRP_FN"))
    ap = "".join(f"{key} {_number(metrics[key])} " for key in ("AP", "AP50", "AP75") if key in metrics)
    return ("<table><tr><th>class</th><th>oLRP</th><th>loc</th><th>FP</th><th>FN</th><th>LRP-optimal threshold"
            f"</th></tr>{rows}<tr><td><b>mean (moLRP)</b></td>{mean}<td></td></tr></table>"
            "<p class=note>Optimal LRP error (Oksuz et al., TPAMI 2021), IoU 0.5, lower is better: oLRP is the "
            "lowest LRP over score thresholds, split into localisation (mean 1 - IoU of the true positives), "
            "false-positive and false-negative rates at that threshold. A class with ground truth but no true "
            f"positive has oLRP 1; '-' = undefined. COCO: {ap}</p>")


def _per_level_table(metrics: dict) -> str:
    table = metrics.get("levels")
    if not table:
        return ("<p class=note>No per-level table: the evaluated detections carry no pyramid level.</p>")
    sizes = list(table["recall_by_size"])
    head = "".join(f"<th>found {html.escape(size)}</th>" for size in sizes)
    rows = []
    for level, values in table["per_level"].items():
        shares = "".join(f"<td>{_number(table['recall_by_size'][s]['found_by'][level])}</td>" for s in sizes)
        rows.append(f"<tr><td>{html.escape(level)}</td><td>{values['num_tp']}</td>"
                    f"<td>{_number(values['mean_iou'])}</td><td>{values['num_fp']}</td>{shares}</tr>")
    recall = "".join(f"<td><b>{_number(table['recall_by_size'][s]['recall'])}</b></td>" for s in sizes)
    counts = "".join(f"<td>{table['recall_by_size'][s]['num_gt']}</td>" for s in sizes)
    return (f"<table><tr><th>level</th><th>TP</th><th>mean IoU of TP</th><th>FP</th>{head}</tr>{''.join(rows)}"
            f"<tr><td><b>recall</b></td><td></td><td></td><td></td>{recall}</tr>"
            f"<tr><td>objects</td><td></td><td></td><td></td>{counts}</tr></table>"
            "<p class=note>Which pyramid level produced the detections (COCO matching at IoU 0.5, 100 detections "
            "per image and class). Per level: true positives, their mean IoU, false positives; 'found SIZE': the "
            "share of the objects of that size (by box area: small &lt; 32², medium &lt; 96², large) that the "
            "level's detections found, summing to the recall of that size. Look for: where a remedy such as PFL "
            "moves the true positives, and the levels that produce mostly false positives.</p>")


def eval_section(eval_dir: Path, out_dir: Path) -> Section:
    """The evaluation written by ``umop eval --plots DIR``: curves, confusion matrix, LRP and per-level tables."""
    import json

    if not eval_dir.is_dir():
        raise ValueError(f"evaluation directory {eval_dir} does not exist (--eval)")
    metrics_path = eval_dir / "metrics.json"
    if not metrics_path.is_file():
        raise ValueError(f"{metrics_path} is missing (--eval: give the folder of `umop eval --plots DIR`)")
    try:
        metrics = json.loads(metrics_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{metrics_path} is not valid JSON: {error}") from error
    figures = [_copy(eval_dir / f"{name}.png", out_dir) for name in ("pr_curves", "f1_confidence",
                                                                     "confusion_matrix")
               if (eval_dir / f"{name}.png").is_file()]
    for name in ("pr_curves.csv", "f1_confidence.csv", "confusion_matrix.csv", "lrp.csv", "levels.csv"):
        if (eval_dir / name).is_file():
            _copy(eval_dir / name, out_dir)
    tables = ("<h3>Optimal LRP per class</h3>" + (_lrp_table(metrics) if "oLRP" in metrics else
                                                  "<p class=note>No LRP in these metrics.</p>")
              + "<h3>Detections per pyramid level</h3>" + _per_level_table(metrics))
    return Section("Evaluation (COCO matching at IoU 0.5)", figures, tables)


def write_report(out: str | Path, *, levels_dir: str | Path | None = None, dataset_dir: str | Path | None = None,
                 run_dir: str | Path | None = None, eval_dir: str | Path | None = None,
                 title: str = "umop imbalance report") -> Path:
    """Write the HTML page ``out`` (PNGs and CSVs beside it) and return its path."""
    if levels_dir is None and dataset_dir is None and run_dir is None and eval_dir is None:
        raise ValueError("nothing to report: give at least one of --levels, --dataset, --run, --eval")
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"--out {out} must be an .html file")
    out.parent.mkdir(parents=True, exist_ok=True)
    sections = []
    if levels_dir is not None:
        sections.append(levels_section(Path(levels_dir), out.parent))
    if dataset_dir is not None:
        sections.append(dataset_section(Path(dataset_dir), out.parent))
    if run_dir is not None:
        sections.append(run_section(Path(run_dir), out.parent))
    if eval_dir is not None:
        sections.append(eval_section(Path(eval_dir), out.parent))
    body = "".join(f"<section><h2>{html.escape(section.title)}</h2>{section.table_html}"
                   f"{''.join(_figure_html(path, section.captions) for path in section.figures)}</section>" for section in sections)
    out.write_text(
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
        "img{max-width:100%;border:1px solid #ddd}figure{margin:1.5em 0}figcaption{font-size:0.95em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
        "text-align:right}td:first-child{text-align:left}.note{font-size:0.9em;color:#555}"
        f"</style></head><body><h1>{html.escape(title)}</h1>"
        "<p>Generated by <code>umop analyze report</code>. The PNGs and CSVs of every plot are beside this "
        f"page.</p>{body}</body></html>\n")
    return out
