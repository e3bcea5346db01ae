"""Markdown rows for BENCHMARKS.md from a study's ``study.json`` (so the tables are generated, not copied).

    python benchmarks/study_rows.py benchmarks/results/study_bccd_atss [--metric AP] [--convergence]

One row per variant: mean ± sample sd over the finished seeds (each seed's value in brackets), the paired
difference to the baseline with its 95% t interval (bold when the interval excludes 0), oLRP, and the training
seconds of its fastest cell that ran in one attempt (work running beside a cell only slows it). A study run
with ``--eval-set`` adds the metric, its paired difference and oLRP under those test settings (``study.json``'s
``extra_evaluation``). ``--convergence``: the variant's AP at 75% of the schedule against the baseline at 100%
(the "Convergence" table of study.md). The numbers are formatted by umop.study.report, as in study.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from umop.study.report import difference_text, mean_pm


def load_record(study: Path) -> dict | None:
    """The study's ``study.json``; None (after saying why on stderr) if there is none."""
    path = study / "study.json"
    if not path.is_file():
        print(f"error: no study.json in {study}", file=sys.stderr)
        return None
    return json.loads(path.read_text())


def with_seeds(entry: dict | None, missing: str = "not yet run") -> str:
    """``"mean ± sd (seed 0, seed 1, ...)"`` in percent of a summary entry (``{"mean", "std", "by_seed"}``)."""
    if not entry:
        return missing
    seeds = ", ".join(f"{100 * v:.1f}" for _, v in sorted(entry["by_seed"].items(), key=lambda kv: int(kv[0])))
    return f"{mean_pm(entry)} ({seeds})"


def marked_difference(entry: dict | None, with_n: bool = True) -> str:
    """study.md's paired-difference text, ``(n=...)`` added after an interval if ``with_n``, in bold when the
    interval excludes 0."""
    text = difference_text(entry)
    if entry and with_n and entry["ci"][0] is not None:
        text += f" (n={entry['n']})"
    return f"**{text}**" if entry and entry.get("excludes_zero") else text


def _columns(summary: dict, differences: dict, variant: str, baseline: str, metric: str) -> list[str]:
    """metric (mean ± sd, seeds), its paired difference to the baseline, oLRP (with its difference when bold)."""
    difference = None if variant == baseline else differences.get(variant, {})
    olrp = with_seeds(summary[variant].get("oLRP"))
    if difference and (difference.get("oLRP") or {}).get("excludes_zero"):
        olrp += f" ({marked_difference(difference['oLRP'], with_n=False)})"
    return [with_seeds(summary[variant].get(metric)),
            "-" if difference is None else marked_difference(difference.get(metric)), olrp]


def rows(record: dict, metric: str) -> list[str]:
    baseline = record["baseline"]
    extra = record.get("extra_evaluation")
    header = [f"{metric} (mean ± sd, seeds)", f"minus {baseline} [95% CI]", "oLRP"]
    if extra:
        header += [f"{metric}, {extra['name']}", f"minus {baseline} [95% CI], {extra['name']}", f"oLRP, {extra['name']}"]
    lines = [f"| variant | {' | '.join(header)} | train s (fastest cell) |", "|---" * (len(header) + 2) + "|"]
    for variant in record["variants"]:
        # the cells that ran in one attempt (study.json leaves resumed ones out); work beside a cell only slows it
        seconds = (record["summary"][variant].get("train_seconds") or {}).get("by_seed", {}).values()
        fastest = f"{min(seconds):.0f}" if seconds else "-"
        cells = _columns(record["summary"], record["differences"], variant, baseline, metric)
        if extra:
            cells += _columns(extra["summary"], extra["differences"], variant, baseline, metric)
        lines.append(f"| {variant} | {' | '.join(cells)} | {fastest} |")
    return lines


def convergence_rows(record: dict) -> list[str]:
    baseline = record["baseline"]
    lines = [f"| variant | AP at 50% | AP at 75% | 75% minus {baseline} at 100% [95% CI] |", "|---|---|---|---|"]
    for variant, entry in record["convergence"].items():
        half, three_quarters = entry.get("50%") or {}, entry.get("75%") or {}
        cells = ["-" if not item or item.get("mean") is None
                 else f"{mean_pm(item)} (epoch {', '.join(item['epochs'])})" for item in (half, three_quarters)]
        lines.append(f"| {variant} | {cells[0]} | {cells[1]} | "
                     f"{marked_difference(three_quarters.get('minus_baseline_at_100%'))} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, help="a study folder (holding study.json)")
    parser.add_argument("--metric", default="AP")
    parser.add_argument("--convergence", action="store_true")
    args = parser.parse_args(argv)
    record = load_record(args.study)
    if record is None:
        return 2
    if args.metric not in record["metrics"]:
        print(f"error: --metric {args.metric!r} is not a metric of {args.study} (metrics: "
              f"{', '.join(m for m in record['metrics'] if '/' not in m)})", file=sys.stderr)
        return 2
    print("\n".join(convergence_rows(record) if args.convergence else rows(record, args.metric)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
