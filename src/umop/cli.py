"""umop: train, evaluate and run one-stage detectors; convert, check and analyse datasets.

Examples::

    umop train configs/atss_pfl.yaml --set data.train_ann=train.json data.train_images=images/
    umop train atss_pfl --resume auto                      # packaged config by name, continue the last run
    torchrun --nproc_per_node 8 -m umop.cli train atss_pfl # multi-GPU (batch_size is the global batch)
    umop train atss_pfl --overwrite                        # start over in a folder that holds a run
    umop eval runs/atss_pfl/checkpoints/best.pt            # the config stored in the checkpoint; no download
    umop predict runs/atss_pfl/checkpoints/last.pt img1.jpg img2.jpg --out predictions/
    umop config show atss_pfl                              # every key, its value and meaning
    umop demo                                              # synthetic data, ATSS with PFL vs focal loss, 3 seeds
    umop study atss_focal --vary cls_loss=focal,pfl --seeds 0,1,2 --out runs/study   # see `umop study -h`
    umop data convert --from voc ROOT --out train.json     # see `umop data -h`, `umop analyze -h`
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

__all__ = ["main", "build_parser"]


def _register_optional(subparsers: argparse._SubParsersAction, module: str, name: str) -> None:
    """Add the subcommand ``name`` from ``module`` (``register(subparsers)``); if the module cannot be
    imported, ``umop name`` still exists and says why it is unavailable."""
    import importlib

    try:
        register: Callable = importlib.import_module(module).register
    except (ImportError, AttributeError) as error:
        reason = str(error)  # ``error`` is unbound once the except block ends
        parser = subparsers.add_parser(name, help=f"(unavailable: {reason})")
        parser.set_defaults(func=lambda args: _unavailable(name, reason))
        return
    register(subparsers)


def _unavailable(name: str, reason: str) -> int:
    print(f"umop {name} is unavailable: {reason}", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    """The ``umop`` argument parser with all subcommands (nothing heavy is imported: ``umop -h`` is instant)."""
    parser = argparse.ArgumentParser(prog="umop", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from . import __version__ as version

    parser.add_argument("--version", action="version", version=f"umop {version}")
    subparsers = parser.add_subparsers(dest="command",
                                       metavar="{train,eval,predict,demo,config,data,analyze,study}")
    from .engine.cli import register as register_engine

    register_engine(subparsers)
    _register_optional(subparsers, "umop.data.cli", "data")
    _register_optional(subparsers, "umop.analysis.cli", "analyze")
    _register_optional(subparsers, "umop.study.cli", "study")
    return parser


def _user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that are the user's to fix: one line on stderr, exit code 2, no traceback."""
    from .errors import UserError

    return (UserError, ValueError, OSError)


def _one_line(error: BaseException) -> str:
    """The error's message on one line (a multi-line message is joined)."""
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``umop`` script; returns the exit code.

    The one error boundary of the CLI: a user mistake (:class:`umop.errors.UserError`, ``ValueError`` from a
    config or data, ``OSError`` such as a missing file, unavailable weights or optional package) prints one
    line ``umop CMD: error: ...`` on stderr and returns 2; a diverged training (non-finite loss) returns 1;
    Ctrl-C / SIGTERM return 130 after saying what was saved. ``UMOP_DEBUG=1`` re-raises (tracebacks).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as error:
        if os.environ.get("UMOP_DEBUG"):
            raise
        from .engine.trainer import TrainingInterrupted

        if isinstance(error, TrainingInterrupted):
            print(f"umop {args.command}: interrupted by {error}", file=sys.stderr)
        else:
            print(f"umop {args.command}: interrupted; this command saved nothing", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - sorted below: user errors get one line, bugs a traceback
        if os.environ.get("UMOP_DEBUG"):
            raise
        from .engine.trainer import NonFiniteLossError

        if isinstance(error, NonFiniteLossError):
            print(f"umop {args.command}: error: {_one_line(error)}", file=sys.stderr)
            return 1
        if not isinstance(error, _user_error_types()):
            raise
        print(f"umop {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
