"""The study's reports, rewritten after every cell: ``study.json`` (every metric of every cell, the per-variant
statistics), ``study.md`` (tables and one plain sentence per comparison) and ``study.html`` (the same tables
and the figures, embedded; the PNGs are also in ``OUT/figures/``).

Numbers in the tables are percentages (COCO AP x 100, oLRP x 100). The "difference" of a variant is paired
by seed: ``metric(variant, seed k) - metric(baseline, seed k)``, over the seeds both finished, with the
95% interval ``mean +- t(0.975, n - 1) * sd / sqrt(n)`` (:mod:`umop.study.stats`).
"""

from __future__ import annotations

import base64
import html
import json
import math
import warnings
from pathlib import Path
from typing import Any

from .stats import mean_std, paired_difference

__all__ = ["write_reports", "cell_metrics", "build_record", "render_markdown", "MAIN_METRICS"]

MAIN_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
_SKIP_KEYS = ("epoch", "iter", "num_images", "num_failed_images")
MAX_LEVEL_IMAGES = 300  # the level-imbalance figure assigns at most this many training images
ANALYSIS_SIZE = (800, 1333)  # the test size of UMOP Fig. 2 (COCO), drawn too when the training size is smaller


def cell_metrics(evaluation: dict[str, Any] | None) -> dict[str, float]:
    """Flat metrics of one evaluation: scalar keys as they are (AP, AP50, ..., oLRP...), dict-valued keys as
    ``key/name`` (``per_class`` becomes ``AP/<class>``, ``per_class_lrp``'s ``oLRP`` entries ``oLRP/<class>``).
    Values -1 (not measurable) and NaN are dropped."""
    out: dict[str, float] = {}
    for key, value in (evaluation or {}).items():
        if key in _SKIP_KEYS:
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if value >= 0 and math.isfinite(value):
                out[key] = float(value)
        elif isinstance(value, dict):
            prefix = "AP" if key == "per_class" else key
            for name, item in value.items():
                if key == "per_class_lrp" and isinstance(item, dict):
                    prefix, item = "oLRP", item.get("oLRP")
                if isinstance(item, (int, float)) and not isinstance(item, bool) and item >= 0 and math.isfinite(item):
                    out[f"{prefix}/{name}"] = float(item)
    return out


def _metric_order(keys: set[str]) -> list[str]:
    main = [k for k in MAIN_METRICS if k in keys]
    lrp = sorted(k for k in keys if "LRP" in k and "/" not in k)
    others = sorted(k for k in keys if "/" not in k and k not in main and k not in lrp)
    per_class = [k for k in sorted(keys) if k.startswith("AP/")]
    per_class_lrp = [k for k in sorted(keys) if k.startswith("oLRP/")]
    rest = sorted(k for k in keys if "/" in k and not k.startswith(("AP/", "oLRP/")))
    return main + lrp + others + per_class + per_class_lrp + rest


def _final_evaluation(state: dict[str, Any]) -> dict[str, Any] | None:
    summary = state.get("summary") or {}
    if summary.get("eval"):
        return summary["eval"]
    return state["evaluations"][-1] if state["evaluations"] else None


def _planned_epochs(state: dict[str, Any]) -> int | None:
    config = state.get("config") or {}
    epochs = (config.get("solver") or {}).get("epochs")
    return int(epochs) if isinstance(epochs, int) else None


def _nearest_epoch(history: dict[int, float], target: float) -> int | None:
    if not history:
        return None
    return min(history, key=lambda epoch: (abs(epoch - target), epoch))


def build_record(spec: Any, variants: list[str], cells: list[Any], states: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Everything the reports show, as one JSON-ready dict (the content of ``study.json``)."""
    baseline = spec.baseline or variants[0]
    cell_records = []
    for cell in cells:
        state = states[cell.name]
        summary = state.get("summary") or {}
        finished = state["status"] == "finished"
        history = {int(e["epoch"]): e for e in state["evaluations"] if isinstance(e, dict) and "epoch" in e}
        cell_records.append({
            "variant": cell.variant, "seed": cell.seed, "run_dir": str(cell.run_dir), "status": state["status"],
            "overrides": cell.overrides,
            "metrics": cell_metrics(_final_evaluation(state)) if finished else {},
            "extra_metrics": cell_metrics(state.get("extra_evaluation")) if finished else {},
            "eval_history": [{"epoch": epoch, **cell_metrics(entry)} for epoch, entry in sorted(history.items())],
            "planned_epochs": _planned_epochs(state),
            "epochs": summary.get("epochs"), "iterations": summary.get("iterations"),
            "train_seconds": summary.get("train_seconds"),
            "stopped_early": bool(summary.get("stopped_early")) if finished else None,
            "resumed": len(state["attempts"]) > 1,
            "wall_seconds": round(sum(float(a.get("seconds", 0)) for a in state["attempts"]), 1),
            "attempts": len(state["attempts"]),
            "failure": state.get("failure"),
        })

    finished_cells = [c for c in cell_records if c["status"] == "finished"]
    metrics, summary_table, differences = _compare(variants, baseline, finished_cells, "metrics")
    for variant in variants:  # a resumed cell's summary times its last attempt only: left out
        seconds = {c["seed"]: c["train_seconds"] for c in finished_cells
                   if c["variant"] == variant and c["train_seconds"] is not None and not c["resumed"]}
        if seconds:
            summary_table[variant]["train_seconds"] = _summary_entry(seconds)
    extra = None
    spec_dict = spec.to_dict()
    if spec_dict.get("eval_set"):
        extra_metrics, extra_summary, extra_differences = _compare(variants, baseline, finished_cells,
                                                                   "extra_metrics")
        extra = {"name": spec_dict["eval_name"], "set": spec_dict["eval_set"], "metrics": extra_metrics,
                 "summary": extra_summary, "differences": extra_differences,
                 "missing": [f"{c['variant']}/seed{c['seed']}" for c in finished_cells if not c["extra_metrics"]]}

    record = {
        "spec": spec_dict, "baseline": baseline, "variants": variants, "metrics": metrics,
        "cells": cell_records, "summary": summary_table, "differences": differences,
        "extra_evaluation": extra,
        "convergence": _convergence(variants, baseline, cell_records),
        "counts": {status: sum(c["status"] == status for c in cell_records)
                   for status in ("finished", "partial", "pending", "failed")},
    }
    return record


def _compare(variants: list[str], baseline: str, finished_cells: list[dict[str, Any]],
             field: str) -> tuple[list[str], dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """The metrics found in the cells' ``field`` (``metrics`` or ``extra_metrics``), per variant their mean ±
    sample sd over seeds (``{"mean", "std", "n", "by_seed"}``), and per other variant the paired difference
    to the baseline (``PairedDifference.to_dict()``)."""
    keys = set().union(*(c[field] for c in finished_cells)) if finished_cells else set()
    metrics = _metric_order(keys)
    by_variant: dict[str, dict[str, dict[int, float]]] = {v: {m: {} for m in metrics} for v in variants}
    for c in finished_cells:
        for metric, value in c[field].items():
            by_variant[c["variant"]][metric][c["seed"]] = value
    summary = {variant: {metric: _summary_entry(by_variant[variant][metric]) for metric in metrics
                         if by_variant[variant][metric]} for variant in variants}
    differences: dict[str, dict[str, Any]] = {}
    for variant in variants:
        if variant == baseline:
            continue
        differences[variant] = {}
        for metric in metrics:
            difference = paired_difference(by_variant[variant][metric], by_variant[baseline][metric])
            if difference is not None:
                differences[variant][metric] = difference.to_dict()
    return metrics, summary, differences


def _summary_entry(values: dict[int, float]) -> dict[str, Any]:
    """``{"mean", "std" (None for one value), "n", "by_seed"}`` of one variant's values by seed."""
    mean, std = mean_std(list(values.values()))
    return {"mean": mean, "std": None if math.isnan(std) else std, "n": len(values),
            "by_seed": {str(seed): value for seed, value in values.items()}}


def _seeds_finished(record: dict[str, Any]) -> dict[str, int]:
    """Finished cells per variant."""
    return {v: sum(c["status"] == "finished" for c in record["cells"] if c["variant"] == v) for v in record["variants"]}


def _convergence(variants: list[str], baseline: str, cells: list[dict[str, Any]]) -> dict[str, Any]:
    """AP at 50% and 75% of the schedule (the evaluated epoch nearest to it) of every variant, against the
    baseline's AP at 100%, paired by seed."""
    baseline_final = {c["seed"]: c["metrics"]["AP"] for c in cells
                      if c["variant"] == baseline and c["status"] == "finished" and "AP" in c["metrics"]}
    out: dict[str, Any] = {}
    for variant in variants:
        entry: dict[str, Any] = {}
        for fraction in (0.5, 0.75, 1.0):
            values, epochs = {}, set()
            for c in cells:
                if c["variant"] != variant or c["status"] != "finished" or not c["planned_epochs"]:
                    continue
                history = {e["epoch"]: e["AP"] for e in c["eval_history"] if "AP" in e}
                epoch = _nearest_epoch(history, fraction * c["planned_epochs"])
                if epoch is not None and (fraction < 1.0 or epoch == c["epochs"]):
                    values[c["seed"]] = history[epoch]
                    epochs.add(f"{epoch}/{c['planned_epochs']}")
            if not values:
                continue
            mean, std = mean_std(list(values.values()))
            difference = paired_difference(values, baseline_final)
            entry[f"{int(fraction * 100)}%"] = {
                "epochs": sorted(epochs), "mean": mean, "std": None if math.isnan(std) else std, "n": len(values),
                "minus_baseline_at_100%": difference.to_dict() if difference else None}
        out[variant] = entry
    return out


# ------------------------------------------------------------------------------------------ rendering

def _pct(value: float | None, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"


def mean_pm(entry: dict[str, Any] | None, scale: float = 100.0, digits: int = 1) -> str:
    """``"mean ± std"`` of a summary entry (``{"mean", "std"}``; no ``± std`` when it is None), "-" if none."""
    if not entry:
        return "-"
    text = f"{scale * entry['mean']:.{digits}f}"
    if entry.get("std") is not None:
        text += f" ± {scale * entry['std']:.{digits}f}"
    return text


def difference_text(entry: dict[str, Any] | None) -> str:
    """``"+d [low, high]"`` (percentage points) of a paired difference (``PairedDifference.to_dict()``);
    ``"+d (n=1)"`` without an interval; "-" if none."""
    if not entry:
        return "-"
    low, high = entry["ci"]
    if low is None:
        return f"{_pct(entry['mean'], True)} (n={entry['n']})"
    return f"{_pct(entry['mean'], True)} [{_pct(low, True)}, {_pct(high, True)}]"


def _label(metric: str) -> str:
    return metric.replace("AP/", "AP ").replace("/", " ")


def comparison_sentence(variant: str, baseline: str, entry: dict[str, Any] | None, metric: str = "AP") -> str:
    """One plain sentence: the paired difference, its 95% interval and whether 0 lies outside it."""
    if not entry:
        return (f"{variant} vs {baseline}: no seed has {metric} for both yet (a cell counts once it has finished "
                f"with an evaluation), so there is no difference to report.")
    mean = _pct(entry["mean"], True)
    seeds = f"{entry['n']} seed{'s' if entry['n'] != 1 else ''}"
    if entry["ci"][0] is None:
        return (f"{variant} minus {baseline}: {metric} {mean} points on {seeds}; one pair gives no interval, "
                f"so nothing can be said about the difference yet.")
    low, high = _pct(entry["ci"][0], True), _pct(entry["ci"][1], True)
    head = f"{variant} minus {baseline}: {metric} {mean} points (paired over {seeds}, 95% interval {low} to {high})."
    if entry["excludes_zero"]:
        side = "above" if entry["ci"][0] > 0 else "below"
        return head + f" The interval lies entirely {side} 0: 0 is outside it."
    return head + " The interval contains 0: these runs do not show a difference."


def _tables(record: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]], list[str]]]:
    """(title, header, rows, notes) of every table, shared by the Markdown and the HTML report."""
    variants, baseline, summary = record["variants"], record["baseline"], record["summary"]
    metrics = record["metrics"]
    scalar = [m for m in metrics if "/" not in m]
    per_class = [m for m in metrics if m.startswith("AP/")]
    seeds_done = _seeds_finished(record)
    seeds_all = {v: sum(1 for c in record["cells"] if c["variant"] == v) for v in variants}
    tables = []
    header = ["variant", "seeds", *[_label(m) for m in scalar], "train time (s)"]
    rows = [[f"{v}{' (baseline)' if v == baseline else ''}", f"{seeds_done[v]}/{seeds_all[v]}",
             *[mean_pm(summary[v].get(m)) for m in scalar], mean_pm(summary[v].get("train_seconds"), 1.0, 0)]
            for v in variants]
    notes = [comparison_sentence(v, baseline, record["differences"].get(v, {}).get("AP"))
             for v in variants if v != baseline]
    tables.append(("Mean ± standard deviation over seeds (percent)", header, rows, notes))
    if per_class:
        rows = [[v, *[mean_pm(summary[v].get(m)) for m in per_class]] for v in variants]
        tables.append(("Per-class AP, mean ± standard deviation over seeds", ["variant", *[m[3:] for m in per_class]],
                       rows, []))
    per_class_lrp = [m for m in metrics if m.startswith("oLRP/")]
    if per_class_lrp:
        rows = [[v, *[mean_pm(summary[v].get(m)) for m in per_class_lrp]] for v in variants]
        tables.append(("Per-class oLRP (lower is better), mean ± standard deviation over seeds",
                       ["variant", *[m[5:] for m in per_class_lrp]], rows, []))
    others = [v for v in variants if v != baseline]
    if others and metrics:
        shown = scalar + per_class
        rows = [[v, *[difference_text(record["differences"][v].get(m)) for m in shown]] for v in others]
        tables.append((f"Paired difference to the baseline ({baseline}), same seed: mean [95% interval]",
                       ["variant", *[_label(m) for m in shown]], rows,
                       ["Interval from the t distribution with n - 1 degrees of freedom (n = seeds that finished "
                        "for both); for oLRP lower is better."] if any("LRP" in m for m in shown) else
                       ["Interval from the t distribution with n - 1 degrees of freedom (n = seeds that finished "
                        "for both)."]))
    extra = record.get("extra_evaluation")
    if extra:
        tables.append(_extra_table(record, extra))
    convergence = record["convergence"]
    if any(convergence.values()):
        rows = []
        for v in variants:
            entry = convergence.get(v, {})
            row = [v]
            for fraction in ("50%", "75%", "100%"):
                item = entry.get(fraction)
                row.append("-" if not item else f"{mean_pm(item)} (epoch {', '.join(item['epochs'])})")
            for fraction in ("50%", "75%"):
                item = entry.get(fraction)
                row.append(difference_text(item.get("minus_baseline_at_100%")) if item else "-")
            rows.append(row)
        tables.append((f"Convergence: AP at 50% / 75% / 100% of the schedule (nearest evaluated epoch), and its "
                       f"paired difference to {baseline} at 100%",
                       ["variant", "AP at 50%", "AP at 75%", "AP at 100%", f"50% minus {baseline} 100%",
                        f"75% minus {baseline} 100%"], rows,
                       ["An epoch that was not evaluated cannot be shown: set eval.every=1 for the full curve."]))
    cells = record["cells"]
    rows = [[c["variant"], str(c["seed"]), c["status"] + (" (time cap)" if c["stopped_early"] else "")
             + (" (resumed)" if c["resumed"] and c["status"] == "finished" else ""),
             _pct(c["metrics"].get("AP")), f"{c['epochs'] if c['epochs'] is not None else '-'}"
             f"/{c['planned_epochs'] or '-'}", str(c["iterations"] if c["iterations"] is not None else "-"),
             "-" if c["train_seconds"] is None else f"{c['train_seconds']:.0f}" + (" (last attempt)" if c["resumed"] else ""),
             f"`{c['run_dir']}`"]
            for c in cells]
    tables.append(("Cells", ["variant", "seed", "status", "AP", "epochs", "iterations", "train s", "run folder"],
                   rows, []))
    return tables


def _extra_table(record: dict[str, Any], extra: dict[str, Any]) -> tuple[str, list[str], list[list[str]], list[str]]:
    """The ``--eval-set`` evaluation: per variant the main metrics and oLRP under those test settings, and the
    paired differences of AP (and oLRP) to the baseline."""
    variants, baseline, summary = record["variants"], record["baseline"], extra["summary"]
    shown = [m for m in extra["metrics"] if m in MAIN_METRICS or m == "oLRP"]
    compared = [m for m in ("AP", "oLRP") if m in extra["metrics"]]
    seeds_done = _seeds_finished(record)
    rows = [[f"{v}{' (baseline)' if v == baseline else ''}",
             f"{(summary[v].get('AP') or {}).get('n', 0)}/{seeds_done[v]}",
             *[mean_pm(summary[v].get(m)) for m in shown],
             *["-" if v == baseline else difference_text(extra["differences"][v].get(m)) for m in compared]]
            for v in variants]
    settings = " ".join(f"`{o}`" for o in extra["set"])
    notes = [comparison_sentence(v, baseline, extra["differences"].get(v, {}).get("AP"), f"AP ({extra['name']})")
             for v in variants if v != baseline] if extra["metrics"] else []
    notes.append(f"The same checkpoints (the last of each cell) evaluated again with {settings}: test settings "
                 f"only, the trained weights are the study's; each cell's `eval_{extra['name']}.json`. Seeds: cells "
                 f"evaluated / finished.")
    if extra["missing"]:
        notes.append(f"Not evaluated (no checkpoints/last.pt, or its evaluation failed): {', '.join(extra['missing'])}.")
    return (f"Evaluated again with {settings} ({extra['name']}), mean ± standard deviation over seeds (percent)",
            ["variant", "seeds", *[_label(m) for m in shown], *[f"{_label(m)} minus {baseline} [95% CI]"
                                                                 for m in compared]], rows, notes)


def _cap_notes(record: dict[str, Any]) -> list[str]:
    capped = [c for c in record["cells"] if c["stopped_early"]]
    if not capped:
        return []
    items = ", ".join(f"{c['variant']}/seed{c['seed']} (after iteration {c['iterations']}, epoch {c['epochs']} of "
                      f"{c['planned_epochs']})" for c in capped)
    return [f"**Time cap:** {len(capped)} of {len(record['cells'])} cells were stopped early by "
            f"`solver.max_train_seconds` and evaluated where they stopped: {items}. Their numbers come from a "
            f"shorter training than the config asks for."]


def _failure_notes(record: dict[str, Any]) -> list[tuple[str, str]]:
    return [(f"{c['variant']}/seed{c['seed']} failed (exit code {c['failure'].get('returncode')})",
             c["failure"].get("stderr_tail", "").strip())
            for c in record["cells"] if c["status"] == "failed" and c["failure"]]


def render_markdown(record: dict[str, Any]) -> str:
    spec = record["spec"]
    counts = record["counts"]
    lines = [f"# Study: {', '.join(spec['vary'])} on `{spec['config']}`", "",
             f"Seeds {', '.join(map(str, spec['seeds']))}; overrides for every cell: "
             f"{' '.join(f'`{o}`' for o in spec['set']) or 'none'}; baseline: **{record['baseline']}**. "
             f"Cells: {counts['finished']} finished, {counts['partial']} interrupted, {counts['pending']} pending, "
             f"{counts['failed']} failed.", ""]
    for title, header, rows, notes in _tables(record):
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines += [""] + [note + "\n" for note in notes]
    lines += [note + "\n" for note in _cap_notes(record)]
    for title, tail in _failure_notes(record):
        lines += [f"## {title}", "", "```", tail or "(no stderr)", "```", ""]
    lines.append("Continue or extend the study with the same command (finished cells are skipped).")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------- figures

_VARIANT_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                    "#bcbd22", "#17becf")  # matplotlib's tab10


def _variant_style(index: int) -> tuple[str, str]:
    """(colour, line style) of the index-th variant: ten colours, then the same colours dashed."""
    return _VARIANT_COLOURS[index % 10], ("-", "--", ":")[(index // 10) % 3]


def ap_curves(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """AP-vs-epoch data of every variant's finished cells: ``{variant: {"planned": epochs of the config,
    "per_epoch": {epoch: [AP of each seed evaluated there]}, "finished": number of finished cells,
    "stopped": [(epoch, AP) of the last evaluation of each cell stopped early by the time cap]}}``.
    An epoch with fewer APs than ``finished`` is a mean over fewer seeds (a stopped cell has no later epochs)."""
    curves = {}
    for variant in record["variants"]:
        curve: dict[str, Any] = {"planned": None, "per_epoch": {}, "finished": 0, "stopped": []}
        for c in record["cells"]:
            if c["variant"] != variant or c["status"] != "finished":
                continue
            curve["planned"] = curve["planned"] or c["planned_epochs"]
            curve["finished"] += 1
            history = [e for e in c["eval_history"] if "AP" in e]
            for e in history:
                curve["per_epoch"].setdefault(e["epoch"], []).append(e["AP"])
            if c["stopped_early"] and history:
                curve["stopped"].append((history[-1]["epoch"], history[-1]["AP"]))
        if curve["per_epoch"]:
            curves[variant] = curve
    return curves


def _figures(record: dict[str, Any], cells: list[Any], out: Path) -> list[tuple[str, Path, str]]:
    """Draw the figures into ``out/figures``; returns (title, path, caption) of each one drawn."""
    from ..analysis.plots import LEVEL_COLOURS, new_figure, save

    figures_dir = out / "figures"
    drawn = []
    variants, summary = record["variants"], record["summary"]
    shown = [m for m in ("AP", "AP50", "AP75") if any(m in summary[v] for v in variants)]
    if shown:
        figure, axes = new_figure(1, panel_size=(max(5.0, 1.6 * len(variants) * len(shown) / 2 + 2), 3.8))
        axis = axes[0]
        width = 0.8 / len(variants)
        for i, variant in enumerate(variants):
            for j, metric in enumerate(shown):
                entry = summary[variant].get(metric)
                if not entry:
                    continue
                x = j + (i - (len(variants) - 1) / 2) * width
                axis.bar(x, 100 * entry["mean"], width * 0.9, yerr=100 * (entry["std"] or 0.0), capsize=4,
                         color=_variant_style(i)[0], alpha=0.8, label=variant if j == 0 else None)
                seeds = list(entry["by_seed"].values())
                axis.plot([x] * len(seeds), [100 * s for s in seeds], "k.", markersize=5)
        axis.set_xticks(range(len(shown)), shown)
        axis.set_ylabel("percent")
        axis.set_title("Mean over seeds (bars), ± std (error bars), each seed (dots)", fontsize=11)
        axis.grid(axis="y", alpha=0.3)
        axis.legend(fontsize=9)
        drawn.append(("AP per variant", save(figure, figures_dir / "ap_bars.png"),
                      "Bar: mean over seeds; error bar: ± one sample standard deviation; dots: the seeds."))

    curves = ap_curves(record)
    if curves:
        figure, axes = new_figure(1, panel_size=(6.4, 4.0))
        axis = axes[0]
        for variant, curve in curves.items():
            per_epoch, finished = curve["per_epoch"], curve["finished"]
            epochs = sorted(per_epoch)
            colour, line = _variant_style(variants.index(variant))  # the bar chart's colour
            means = [100 * sum(per_epoch[e]) / len(per_epoch[e]) for e in epochs]
            axis.plot(epochs, means, marker="o", linestyle=line, color=colour, label=f"{variant} (mean of seeds)")
            # a mean over fewer seeds than the variant has (a cell stopped early has no later epochs): hollow
            fewer = [k for k, e in enumerate(epochs) if len(per_epoch[e]) < finished]
            if fewer:
                axis.plot([epochs[k] for k in fewer], [means[k] for k in fewer], "o", markerfacecolor="white",
                          color=colour)
            for e in epochs:
                axis.plot([e] * len(per_epoch[e]), [100 * v for v in per_epoch[e]], ".", color=colour, alpha=0.4)
            for epoch, ap in curve["stopped"]:  # the last evaluation of a cell stopped by the time cap
                axis.plot([epoch], [100 * ap], "x", color=colour, markersize=8)
        planned = next((curve["planned"] for curve in curves.values() if curve["planned"]), None)
        baseline_entry = summary[record["baseline"]].get("AP")
        if planned:
            for fraction in (0.5, 0.75):
                axis.axvline(fraction * planned, color="#777777", linestyle=":", linewidth=1)
                axis.text(fraction * planned, axis.get_ylim()[1], f" {int(fraction * 100)}%", va="top", fontsize=8)
        if baseline_entry:
            axis.axhline(100 * baseline_entry["mean"], color="#444444", linestyle="--", linewidth=1,
                         label=f"{record['baseline']} at 100% (mean)")
        axis.set_xlabel("epoch")
        axis.set_ylabel("AP (percent)")
        axis.set_title("AP vs epoch (convergence)", fontsize=11)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
        drawn.append(("AP vs epoch", save(figure, figures_dir / "ap_vs_epoch.png"),
                      "Lines: mean AP over seeds at every evaluated epoch; dots: seeds; dotted lines: 50% and 75% "
                      "of the schedule; dashed line: the baseline's final mean AP. A hollow point is a mean over fewer "
                      "seeds than the variant has, and a cross the last evaluation of a cell stopped early by the "
                      "time cap: such cells leave the later means."))

    gamma = _gamma_series(record, cells)
    if gamma:
        figure, axes = new_figure(len(gamma), columns=min(len(gamma), 3), panel_size=(4.8, 3.6))
        for axis, (variant, (iterations, table)) in zip(axes, gamma.items()):
            for level in range(len(table[0])):
                axis.plot(iterations, [row[level] for row in table], color=LEVEL_COLOURS[level % len(LEVEL_COLOURS)],
                          label=f"P{level + 3}", linewidth=1.3)
            axis.set_title(f"{variant}: gamma_ad per level", fontsize=11)
            axis.set_xlabel("iteration")
            axis.set_ylabel("gamma_ad (mean over seeds)")
            axis.grid(alpha=0.3)
            axis.legend(fontsize=8)
        drawn.append(("PFL: gamma_ad per level over training", save(figure, figures_dir / "gamma_ad.png"),
                      "The adaptive focusing parameter of progressive focal loss per pyramid level, from "
                      "log.jsonl (mean over the seeds at each logged iteration)."))

    level_figure = _level_imbalance_figure(record, cells, figures_dir)
    if level_figure:
        drawn.append(("Level imbalance of the training data", level_figure,
                      f"Positive anchors/points per level under each variant's assigner (UMOP Fig. 2), on at most "
                      f"{MAX_LEVEL_IMAGES} training images at the cells' test-time size, and also at "
                      f"{ANALYSIS_SIZE[0]} px (UMOP's COCO setting) where the cells use smaller images: at a small "
                      f"size the large anchors of the upper levels overlap no object. `umop analyze levels` gives "
                      f"the full analysis."))
    return drawn


def _gamma_series(record: dict[str, Any], cells: list[Any]) -> dict[str, tuple[list[float], list[list[float]]]]:
    out = {}
    finished = {(c["variant"], c["seed"]) for c in record["cells"] if c["status"] == "finished"}
    for variant in record["variants"]:
        per_iter: dict[int, list[list[float]]] = {}
        for cell in cells:
            if cell.variant != variant or (cell.variant, cell.seed) not in finished:
                continue
            path = cell.run_dir / "log.jsonl"
            if not path.is_file():
                continue
            for line in path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                values = entry.get("level/gamma_ad")
                if isinstance(values, list) and values:
                    per_iter.setdefault(int(entry["iter"]), []).append([float(v) for v in values])
        if per_iter:
            iterations = sorted(per_iter)
            width = min(len(v) for rows in per_iter.values() for v in rows)
            table = [[sum(row[level] for row in per_iter[i]) / len(per_iter[i]) for level in range(width)]
                     for i in iterations]
            out[variant] = ([float(i) for i in iterations], table)
    return out


def _level_imbalance_figure(record: dict[str, Any], cells: list[Any], figures_dir: Path) -> Path | None:
    """UMOP Fig. 2 of the training data (drawn once; reused on later rewrites)."""
    path = figures_dir / "level_imbalance.png"
    if path.is_file():
        return path
    from ..analysis.levels import VALID_DETECTORS

    config = next((c["config"] for c in (record.get("_states") or []) if c.get("config")), None)
    if config is None:
        return None
    data = config.get("data") or {}
    ann, images = data.get("train_ann"), data.get("train_images")
    if not ann or not Path(ann).is_file():
        return None
    detectors = []
    for state in record.get("_states") or []:
        name = ((state.get("config") or {}).get("model") or {}).get("name")
        if name in VALID_DETECTORS and name not in detectors:
            detectors.append(name)
    if not detectors:
        return None
    from ..analysis.coco import load_coco
    from ..analysis.levels import level_statistics, positive_ratios
    from ..analysis.plots import plot_level_imbalance

    min_size = data.get("test_min_size") or data.get("min_size") or 800
    min_size = int(min_size[-1] if isinstance(min_size, list) else min_size)
    max_size = int(data.get("max_size") or 1333)
    sizes = [(min_size, max_size)]
    if min_size < ANALYSIS_SIZE[0]:  # small images reach only the lowest levels: also show UMOP Fig. 2's size
        sizes.append(ANALYSIS_SIZE)
    ratios = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        index = load_coco(ann, images or Path(ann).parent)
        index.images = index.images[:MAX_LEVEL_IMAGES]
        for low, high in sizes:
            rows = level_statistics(index, detectors, min_size=low, max_size=high)
            for name, per_level in positive_ratios(rows).items():
                label = f"{name}, shorter side {low} px" + (" (training size)" if (low, high) == sizes[0] else "")
                ratios[label] = per_level
    return plot_level_imbalance(ratios, path,
                                title=f"Positive share per level, {Path(ann).name} ({len(index.images)} images)")


def _image_tag(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}" style="max-width:100%">'


def render_html(record: dict[str, Any], figures: list[tuple[str, Path, str]], figure_error: str = "") -> str:
    spec = record["spec"]
    esc = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'>",
             f"<title>umop study {esc(', '.join(spec['vary']))}</title>",
             "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;"
             "text-align:right}td:first-child,th:first-child{text-align:left}pre{background:#f4f4f4;padding:8px;"
             "overflow:auto}.note{max-width:60em}</style></head><body>",
             f"<h1>Study: {esc(', '.join(spec['vary']))} on <code>{esc(spec['config'])}</code></h1>",
             f"<p>Seeds {esc(', '.join(map(str, spec['seeds'])))}; baseline <b>{esc(record['baseline'])}</b>; "
             f"overrides {esc(' '.join(spec['set']) or 'none')}.</p>"]
    for title, header, rows, notes in _tables(record):
        parts.append(f"<h2>{esc(title)}</h2><table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{esc(cell.strip('`'))}</td>" for cell in row) + "</tr>" for row in rows]
        parts.append("</table>")
        parts += [f"<p class='note'>{esc(note)}</p>" for note in notes]
    parts += [f"<p class='note'>{esc(note.replace('**', '').replace('`', ''))}</p>" for note in _cap_notes(record)]
    for title, path, caption in figures:
        parts.append(f"<h2>{esc(title)}</h2>{_image_tag(path)}<p class='note'>{esc(caption)}</p>")
    if figure_error:
        parts.append(f"<p class='note'>Figures could not be drawn: {esc(figure_error)}</p>")
    for title, tail in _failure_notes(record):
        parts.append(f"<h2>{esc(title)}</h2><pre>{esc(tail or '(no stderr)')}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_reports(spec: Any, variants: list[str], cells: list[Any], states: dict[str, dict[str, Any]],
                  *, figures: bool = True) -> dict[str, Any]:
    """Write ``study.json``, ``study.md`` and ``study.html`` into ``spec.out``; return the record."""
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    record = build_record(spec, variants, cells, states)
    _atomic_write(out / "study.json", json.dumps(record, indent=1))
    _atomic_write(out / "study.md", render_markdown(record))
    drawn, error = [], ""
    if figures:
        try:
            drawn = _figures({**record, "_states": [states[c.name] for c in cells]}, cells, out)
        except Exception as exc:  # a figure must not stop the study; the page says what went wrong
            error = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"study.html: figures not drawn ({error})", RuntimeWarning, stacklevel=2)
    _atomic_write(out / "study.html", render_html(record, drawn, error))
    return record


def _atomic_write(path: Path, text: str) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(text)
    temporary.replace(path)
