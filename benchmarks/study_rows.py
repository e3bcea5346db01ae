"""Markdown rows for BENCHMARKS.md from a study's ``study.json`` (so the tables are generated, not copied).

    python benchmarks/study_rows.py benchmarks/results/study_bccd_atss [--metric AP] [--convergence]

One row per variant: mean ± sample sd over the finished seeds (each seed's value in brackets), the paired
difference to the baseline with its 95% t interval (bold when the interval excludes 0), oLRP, and the training
seconds of its fastest cell (work running beside a cell only slows it). ``--convergence``: the variant's AP at 75% of the schedule against the baseline
at 100% (the "Convergence" table of study.md).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _pm(entry: dict | None, scale: float = 100.0) -> str:
    if not entry:
        return "not yet run"
    seeds = ", ".join(f"{scale * v:.1f}" for _, v in sorted(entry["by_seed"].items(), key=lambda kv: int(kv[0])))
    std = "" if entry["std"] is None else f" ± {scale * entry['std']:.1f}"
    return f"{scale * entry['mean']:.1f}{std} ({seeds})"


def _difference(entry: dict | None, scale: float = 100.0) -> str:
    if not entry:
        return "-"
    low, high = entry["ci"]
    text = f"{scale * entry['mean']:+.1f}"
    if low is not None:
        text += f" [{scale * low:+.1f}, {scale * high:+.1f}]"
    text += f" (n={entry['n']})"
    return f"**{text}**" if entry.get("excludes_zero") else text


def rows(record: dict, metric: str) -> list[str]:
    baseline = record["baseline"]
    lines = [f"| variant | {metric} (mean ± sd, seeds) | minus {baseline} [95% CI] | oLRP | train s (fastest cell) |",
             "|---|---|---|---|---|"]
    for variant in record["variants"]:
        summary = record["summary"][variant]
        difference = None if variant == baseline else record["differences"].get(variant, {}).get(metric)
        seconds = sorted(c["train_seconds"] for c in record["cells"]
                         if c["variant"] == variant and c["status"] == "finished" and c.get("train_seconds"))
        fastest = f"{seconds[0]:.0f}" if seconds else "-"  # other work beside a cell only slows it
        change = "-" if variant == baseline else _difference(difference)
        lines.append(f"| {variant} | {_pm(summary.get(metric))} | {change} | {_pm(summary.get('oLRP'))} | {fastest} |")
    return lines


def convergence_rows(record: dict) -> list[str]:
    baseline = record["baseline"]
    lines = [f"| variant | AP at 50% | AP at 75% | 75% minus {baseline} at 100% [95% CI] |", "|---|---|---|---|"]
    for variant, entry in record["convergence"].items():
        half, three_quarters = entry.get("50%") or {}, entry.get("75%") or {}
        cells = []
        for item in (half, three_quarters):
            cells.append("-" if not item or item.get("mean") is None else
                         f"{100 * item['mean']:.1f}" + (f" ± {100 * item['std']:.1f}" if item.get("std") is not None
                                                        else "") + f" (epoch {', '.join(item['epochs'])})")
        lines.append(f"| {variant} | {cells[0]} | {cells[1]} | "
                     f"{_difference(three_quarters.get('minus_baseline_at_100%'))} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, help="a study folder (holding study.json)")
    parser.add_argument("--metric", default="AP")
    parser.add_argument("--convergence", action="store_true")
    args = parser.parse_args(argv)
    path = args.study / "study.json"
    if not path.is_file():
        print(f"error: no study.json in {args.study}", file=sys.stderr)
        return 2
    record = json.loads(path.read_text())
    print("\n".join(convergence_rows(record) if args.convergence else rows(record, args.metric)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
