"""``umop analyze`` subcommands: ``levels``, ``run``, ``dataset`` and ``report``.

Examples::

    umop data convert --from yolo ../shared/data/coco128 --out /tmp/coco128.json
    umop analyze levels --detector retinanet --detector atss --detector fcos --detector vfnet \\
        --data /tmp/coco128.json --images ../shared/data/coco128/images/train --out runs/levels_coco128
    umop analyze dataset /tmp/coco128.json --images ../shared/data/coco128/images/train --out runs/ds_coco128
    umop analyze run runs/atss_pfl
    umop analyze report --levels runs/levels_coco128 --dataset runs/ds_coco128 --run runs/atss_pfl \\
        --out runs/report/report.html
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``analyze`` command (with ``levels``, ``run``, ``dataset``, ``report``) to ``subparsers``."""
    analyze = subparsers.add_parser("analyze", help="imbalance analyses: levels, run, dataset, report",
                                    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = analyze.add_subparsers(dest="analyze_command", metavar="{levels,run,dataset,report}")
    analyze.set_defaults(func=lambda args: _usage(analyze))
    detectors = "retinanet, atss, fcos, vfnet"  # umop.analysis.levels.VALID_DETECTORS (not imported for -h)

    levels = commands.add_parser(
        "levels", help="positive anchors/points per FPN level under each detector's assigner (UMOP Fig. 2)")
    levels.add_argument("--detector", action="append", metavar="NAME",
                        help=f"detector whose assigner to use, repeatable ({detectors}); default: all four")
    _add_dataset_arguments(levels, positional=False)
    levels.add_argument("--out", type=Path, required=True, help="output folder (level_stats.csv, level_imbalance.png)")
    levels.add_argument("--title", help="figure title (default: the json's name)")
    levels.set_defaults(func=_guard(_levels))

    run = commands.add_parser("run", help="plots of a training run over iterations (UMOP Fig. 3, survey Fig. 14)")
    run.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="training run folder holding log.jsonl")
    run.add_argument("--out", type=Path, help="output folder (default RUN_DIR/analysis)")
    run.set_defaults(func=_guard(_run))

    dataset = commands.add_parser("dataset", help="class, scale, IoU and location imbalance (survey Fig. 5, 7, 12, 13)")
    _add_dataset_arguments(dataset, positional=True)
    dataset.add_argument("--detector", action="append", metavar="NAME",
                         help=f"assigner for the anchor analyses, repeatable ({detectors}); default: atss")
    dataset.add_argument("--out", type=Path, required=True, help="output folder (PNG + CSV per analysis)")
    dataset.set_defaults(func=_guard(_dataset))

    report = commands.add_parser("report", help="one self-contained HTML page of the analyses")
    report.add_argument("--levels", type=Path, help="output folder of `umop analyze levels`")
    report.add_argument("--dataset", type=Path, help="output folder of `umop analyze dataset`")
    report.add_argument("--run", type=Path, metavar="RUN_DIR", help="training run folder holding log.jsonl")
    report.add_argument("--eval", type=Path, metavar="DIR", dest="eval_dir",
                        help="folder written by `umop eval --plots DIR` (curves, confusion matrix, LRP, levels)")
    report.add_argument("--out", type=Path, required=True, help="output .html (PNGs and CSVs written beside it)")
    report.add_argument("--title", default="umop imbalance report", help="page title")
    report.set_defaults(func=_guard(_report))
    return analyze


def _add_dataset_arguments(parser: argparse.ArgumentParser, positional: bool) -> None:
    if positional:
        parser.add_argument("data", type=Path, metavar="COCO_JSON", help="COCO detection json")
    else:
        parser.add_argument("--data", type=Path, required=True, metavar="COCO_JSON", help="COCO detection json")
    parser.add_argument("--images", type=Path, metavar="DIR",
                        help="image folder of the json (default: the folder `umop data convert` recorded in it, "
                             "else the json's folder)")
    parser.add_argument("--min-size", type=int, default=800, help="test-time resize: shorter side (default 800)")
    parser.add_argument("--max-size", type=int, default=1333, help="test-time resize: longer side at most (default 1333)")


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _guard(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn a ``ValueError`` (bad input) into a one-line message on stderr and exit code 2."""
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except ValueError as error:
            print(f"umop analyze: error: {error}", file=sys.stderr)
            return 2
    run.__doc__ = command.__doc__
    return run


def _check_sizes(args: argparse.Namespace) -> None:
    if args.min_size <= 0 or args.max_size <= 0:
        raise ValueError(f"--min-size ({args.min_size}) and --max-size ({args.max_size}) must be positive")


def _load(args: argparse.Namespace):
    from umop.analysis.coco import load_coco

    _check_sizes(args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        index = load_coco(args.data, args.images)
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    return index


def _levels(args: argparse.Namespace) -> int:
    """``umop analyze levels``: level_stats.csv + level_imbalance.png."""
    from umop.analysis.levels import (check_detector_name, highest_level_has_highest_share, level_statistics,
                                      mean_positive_ratios, positive_ratios, write_level_csv)
    from umop.analysis.levels import LEVELS, VALID_DETECTORS
    from umop.analysis.plots import plot_level_imbalance

    names = [check_detector_name(name) for name in (args.detector or VALID_DETECTORS)]
    index = _load(args)
    start = time.perf_counter()
    rows = level_statistics(index, names, min_size=args.min_size, max_size=args.max_size)
    elapsed = time.perf_counter() - start
    csv_path = write_level_csv(rows, args.out / "level_stats.csv")
    title = args.title or f"Positive share per level, {args.data.name} ({len(index.images)} images, UMOP Fig. 2)"
    png_path = plot_level_imbalance(positive_ratios(rows), args.out / "level_imbalance.png", title=title)
    print(f"assigned {len(index.images)} images x {len(names)} detectors in {elapsed:.1f} s")
    print("mean positive ratio per level (num_positive / num_total):")
    print("detector   " + "".join(f"{'P' + str(level):>11}" for level in LEVELS) + "  P7 highest")
    for detector, means in mean_positive_ratios(rows).items():
        verdict = "yes" if highest_level_has_highest_share(means) else "no"
        print(f"{detector:<11}" + "".join(f"{means[level]:>11.3e}" for level in LEVELS) + f"  {verdict}")
    print(f"wrote {csv_path} and {png_path}")
    return 0


def _run(args: argparse.Namespace) -> int:
    """``umop analyze run``: plots of RUN_DIR/log.jsonl."""
    from umop.analysis.run import analyze_run

    for path in analyze_run(args.run_dir, args.out):
        print(f"wrote {path}")
    return 0


def _dataset(args: argparse.Namespace) -> int:
    """``umop analyze dataset``: the survey's dataset analyses."""
    from umop.analysis.dataset import analyze_dataset
    from umop.analysis.levels import check_detector_name

    names = [check_detector_name(name) for name in (args.detector or ["atss"])]
    index = _load(args)
    for path in analyze_dataset(index, args.out, names, min_size=args.min_size, max_size=args.max_size):
        print(f"wrote {path}")
    return 0


def _report(args: argparse.Namespace) -> int:
    """``umop analyze report``: one HTML page."""
    from umop.analysis.report import write_report

    path = write_report(args.out, levels_dir=args.levels, dataset_dir=args.dataset, run_dir=args.run,
                        eval_dir=args.eval_dir, title=args.title)
    print(f"wrote {path}")
    return 0
