"""``umop study``: multi-seed, resumable comparisons of config variants, with paired confidence intervals.

Examples::

    umop study bccd_atss_r18_focal --vary model.cls_loss=focal,pfl,pfl_mean --seeds 0,1,2 --out runs/study_bccd
    umop study demo_synthetic --vary cls_loss=focal,pfl --vary detector=atss,retinanet --seeds 0,1 \\
        --out runs/study_demo --set solver.epochs=3
    umop study runs/study_bccd/study.yaml          # continue (or extend) a study from its file
    umop study runs/study_bccd/study.yaml --dry-run   # the cells, their state and the estimated time
    umop study runs/study_bccd/study.yaml --eval-set model.options.score_thresh=0 --eval-name score0
                                                   # every finished cell evaluated again with other test settings

Every (variant, seed) cell is a run folder OUT/<variant>/seed<k> trained by
`python -m umop.cli train CONFIG --set ... seed=K --out CELL --resume auto`. Finished cells are skipped,
an interrupted cell resumes, a failing cell is reported and the others still run. OUT/study.md,
study.html and study.json are rewritten after every cell. With --eval-set, every finished cell's last
checkpoint is also evaluated with those test settings (`umop eval ... --set ...` into CELL/eval_<name>.json,
kept: a second run reads it), and the report compares the variants under them too.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``umop study`` to ``subparsers``."""
    parser = subparsers.add_parser("study", help="compare config variants over several seeds (resumable)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", metavar="CONFIG|STUDY.yaml",
                        help="base training config (path or packaged name), or a study file (holds 'vary')")
    parser.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2,...",
                        help="a config key and its values; several --vary make the product "
                             "(short keys: cls_loss, epochs, detector = model.name, ...)")
    parser.add_argument("--seeds", metavar="0,1,2", help="seeds of every variant")
    parser.add_argument("--out", metavar="DIR", help="study folder (one run folder per cell inside)")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="overrides applied to every cell")
    parser.add_argument("--baseline", metavar="NAME", help="variant the others are compared with (default: the first)")
    parser.add_argument("--eval-set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="test settings of one more evaluation of every finished cell's last checkpoint "
                             "(e.g. model.options.score_thresh=0); the report compares the variants under them too")
    parser.add_argument("--eval-name", metavar="NAME",
                        help="name of that evaluation: CELL/eval_<NAME>.json (default: from the settings, "
                             "e.g. score_thresh-0)")
    parser.add_argument("--dry-run", action="store_true",
                        help="list the cells, their state and the estimated time; train nothing")
    parser.set_defaults(func=_study)
    return parser


def spec_from_args(args: argparse.Namespace):
    """The :class:`~umop.study.runner.StudySpec` of the command line (a study file, then the flags)."""
    from .runner import (StudySpec, check_run_from_start_folder, is_study_file, load_study_file, merge_overrides,
                         merge_vary, parse_seeds, parse_vary)

    if is_study_file(args.config):  # the flags replace the file's entries for the same keys, or add to them
        spec = load_study_file(args.config)
        if not args.out:
            check_run_from_start_folder(args.config, spec.out)
        spec.vary = merge_vary(spec.vary, [parse_vary(text) for text in args.vary])
        if args.seeds:
            spec.seeds = parse_seeds(args.seeds)
        spec.out = args.out or spec.out
        spec.overrides = merge_overrides(spec.overrides, list(args.overrides))
    else:
        missing = [flag for flag, value in (("--vary", args.vary), ("--seeds", args.seeds), ("--out", args.out))
                   if not value]
        if missing:
            raise ValueError(f"{', '.join(missing)} required (or give a study file that holds them)")
        spec = StudySpec(config=args.config, vary=[parse_vary(text) for text in args.vary],
                         seeds=parse_seeds(args.seeds), out=args.out, overrides=list(args.overrides))
    if args.baseline:
        spec.baseline = args.baseline
    if args.eval_set or args.eval_name:  # one extra evaluation per study: the command line's replaces the file's
        spec.eval_overrides = list(args.eval_set) or spec.eval_overrides
        spec.eval_name = args.eval_name or ("" if args.eval_set else spec.eval_name)
        spec.check_eval()
    return spec


def _study(args: argparse.Namespace) -> int:
    from .runner import StudyStopped, run_study

    spec = spec_from_args(args)
    try:
        record = run_study(spec, dry_run=args.dry_run)
    except StudyStopped:
        return 143
    except KeyboardInterrupt:
        return 130
    if args.dry_run:
        return 0
    failed = record["counts"]["failed"]
    if failed:
        print(f"umop study: {failed} cell(s) failed (see {spec.out}/study.md); the others are in the report",
              file=sys.stderr)
        return 1
    return 0
