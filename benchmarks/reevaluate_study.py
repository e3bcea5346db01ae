"""Re-evaluate every finished cell of a study with other test settings, and compare the variants again.

    python benchmarks/reevaluate_study.py runs/study_bccd_atss --name score0 --set model.options.score_thresh=0

Each finished cell's ``checkpoints/last.pt`` is evaluated by ``umop eval`` with the overrides (test settings
only: the trained weights are the study's) into ``CELL/eval_<name>.json`` (kept: a second run reads it). The
table (``STUDY/reeval_<name>.md``, also printed) gives per variant the study's AP, the re-evaluated AP (mean ±
sample sd, each seed), and the paired difference to the baseline with its 95% t interval (umop.study.stats).

Why: a test setting can decide a comparison. Ranking losses (AP-Loss, aLRP, Rank & Sort) order the scores but
do not calibrate them; when their scores stay below ``score_thresh`` (0.05, the reference test setting), most
detections are cut before NMS, whatever their ranking.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_rows import load_record, marked_difference, with_seeds  # noqa: E402

from umop.study.stats import mean_std, paired_difference  # noqa: E402


def _evaluate(cell_dir: Path, overrides: list[str], out: Path) -> dict:
    from umop.cli import main as umop_main

    if not out.is_file():
        code = umop_main(["eval", str(cell_dir / "checkpoints" / "last.pt"), "--set", *overrides, "--out", str(out)])
        if code != 0:
            raise RuntimeError(f"umop eval failed for {cell_dir} (exit {code})")
    return json.loads(out.read_text())


def _summary(values: dict[int, float]) -> dict | None:
    """A study.json summary entry (``{"mean", "std", "by_seed"}``) of one variant's values by seed."""
    if not values:
        return None
    mean, std = mean_std(list(values.values()))
    return {"mean": mean, "std": None if std != std else std, "by_seed": values}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("--name", required=True, help="suffix of the eval files and the report (eval_<name>.json)")
    parser.add_argument("--set", nargs="+", required=True, metavar="KEY=VALUE", help="umop eval overrides")
    parser.add_argument("--metric", default="AP")
    args = parser.parse_args(argv)
    record = load_record(args.study)
    if record is None:
        return 2
    before: dict[str, dict[int, float]] = {v: {} for v in record["variants"]}
    after: dict[str, dict[int, float]] = {v: {} for v in record["variants"]}
    for cell in record["cells"]:
        if cell["status"] != "finished":
            continue
        cell_dir = args.study / cell["variant"] / f"seed{cell['seed']}"  # the study's layout (runner.py)
        out = cell_dir / f"eval_{args.name}.json"
        if not out.is_file() and not (cell_dir / "checkpoints" / "last.pt").is_file():
            print(f"skipped {cell_dir}: no checkpoints/last.pt (and no {out.name})", file=sys.stderr)
            continue
        metrics = _evaluate(cell_dir, args.set, out)
        before[cell["variant"]][cell["seed"]] = cell["metrics"][args.metric]
        after[cell["variant"]][cell["seed"]] = metrics[args.metric]
    baseline = record["baseline"]
    lines = [f"Re-evaluated with `{' '.join(args.set)}` (the study's checkpoints, test settings only).", "",
             f"| variant | {args.metric} in the study | {args.metric} re-evaluated | minus {baseline} [95% CI] |",
             "|---|---|---|---|"]
    for variant in record["variants"]:
        difference = None if variant == baseline else paired_difference(after[variant], after[baseline])
        difference = difference.to_dict() if difference else None
        lines.append(f"| {variant} | {with_seeds(_summary(before[variant]), '-')} | "
                     f"{with_seeds(_summary(after[variant]), '-')} | "
                     f"{'-' if variant == baseline else marked_difference(difference, with_n=False)} |")
    text = "\n".join(lines) + "\n"
    suffix = "" if args.metric == "AP" else f"_{args.metric}"
    (args.study / f"reeval_{args.name}{suffix}.md").write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
