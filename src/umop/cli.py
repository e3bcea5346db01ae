"""umop: train, evaluate and run one-stage detectors; convert, check and analyse datasets.

Examples::

    umop train configs/atss_pfl.yaml --set data.train_ann=train.json data.train_images=images/
    umop train atss_pfl --resume auto                      # packaged config by name, continue the last run
    torchrun --nproc_per_node 8 -m umop.cli train atss_pfl # multi-GPU (batch_size is the global batch)
    umop eval atss_pfl runs/atss_pfl/checkpoints/last.pt
    umop predict atss_pfl runs/atss_pfl/checkpoints/last.pt img1.jpg img2.jpg --out predictions/
    umop demo                                              # synthetic data, ATSS with PFL vs focal loss
    umop data convert --from voc ROOT --out train.json     # see `umop data -h`, `umop analyze -h`
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Callable

__all__ = ["main", "build_parser"]


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config: a path (configs/atss_pfl.yaml) or a packaged name (atss_pfl)")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="override config values, e.g. --set solver.lr=0.005 batch_size=8 "
                             "data.min_size=[640,800] model.cls_loss_options.delta=0.5")


def _cmd_train(args: argparse.Namespace) -> int:
    from .analysis.objective import objective_log_hooks
    from .engine import Trainer, load_config
    from .engine.distributed import cleanup_distributed

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"output_dir={args.out}")
    config = load_config(args.config, overrides)
    try:
        summary = Trainer(config, resume=args.resume,
                          log_hooks=objective_log_hooks(config.log.objective_every)).train()
    finally:
        cleanup_distributed()
    from .engine.distributed import is_main_process

    if is_main_process():
        ap = summary["eval"]["AP"] if summary.get("eval") else None
        print(f"done: {summary['epochs']} epochs, {summary['iterations']} iterations in {summary['train_seconds']} s"
              + (f", AP {100 * ap:.1f}" if ap is not None else "") + f"; run folder: {summary['run_dir']}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .engine import evaluate_model, format_metrics, load_config
    from .engine.builders import build_dataset, build_eval_loader
    from .engine.distributed import cleanup_distributed, init_distributed, is_main_process
    from .engine.predict import load_trained_model
    from .evaluation import detections_to_coco_results

    config = load_config(args.config, args.overrides)
    device = init_distributed(config.device)
    try:
        model, info = load_trained_model(config, args.checkpoint, device)
        dataset = build_dataset(config.data, train=False)
        if list(dataset.class_names) != info["class_names"]:
            warnings.warn(f"the evaluation data's classes {dataset.class_names} differ from the checkpoint's "
                          f"{info['class_names']}", stacklevel=1)
        loader = build_eval_loader(dataset, config)
        metrics = evaluate_model(model, loader, device, len(info["class_names"]), dataset.class_names,
                                 progress=is_main_process())
        if is_main_process():
            out = Path(args.out) if args.out else Path(args.checkpoint).with_suffix(".eval.json")
            out.parent.mkdir(parents=True, exist_ok=True)
            record = {"config": str(args.config), "checkpoint": str(args.checkpoint), "epoch": info["epoch"],
                      "val_ann": config.data.val_ann, **metrics}
            out.write_text(json.dumps(record, indent=1))
            print(format_metrics(metrics))
            print(f"{metrics['num_images']} images; metrics written to {out}")
            if args.results:
                from .engine import run_inference

                detections, _ = run_inference(model, loader, device)
                results = detections_to_coco_results(detections, [d["image_id"] for d in detections],
                                                     dataset.label_to_category_id)
                Path(args.results).write_text(json.dumps(results))
                print(f"COCO results json: {args.results}")
    finally:
        cleanup_distributed()
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from .engine import load_config
    from .engine.distributed import init_distributed
    from .engine.predict import eval_sizes, load_trained_model, predict_images

    config = load_config(args.config, args.overrides)
    device = init_distributed(config.device)
    model, info = load_trained_model(config, args.checkpoint, device)
    images: list[Path] = []
    for item in args.images:
        path = Path(item)
        if path.is_dir():
            images.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp")))
        else:
            images.append(path)
    if not images:
        raise ValueError(f"no images found in {args.images}")
    min_size, max_size = eval_sizes(config)
    out = predict_images(model, images, args.out, class_names=info["class_names"],
                         label_to_category_id=info["label_to_category_id"], min_size=min_size, max_size=max_size,
                         score_thresh=args.score_thresh, device=device)
    print(f"{len(out['images'])} pictures and {out['num_detections']} detections (score >= {args.score_thresh}) "
          f"written to {args.out} (COCO results: {out['results']})")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .engine.demo import run_demo

    run_demo(args.out, quick=args.quick, overrides=args.overrides)
    return 0


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
    """The ``umop`` argument parser with all subcommands."""
    parser = argparse.ArgumentParser(prog="umop", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from . import __version__ as version

    parser.add_argument("--version", action="version", version=f"umop {version}")
    subparsers = parser.add_subparsers(dest="command", metavar="{train,eval,predict,demo,data,analyze}")

    train = subparsers.add_parser("train", help="train a detector from a YAML config")
    _add_config_arguments(train)
    train.add_argument("--resume", metavar="auto|PATH",
                       help="continue a run: 'auto' = RUN_DIR/checkpoints/last.pt if present, or a checkpoint path")
    train.add_argument("--out", metavar="RUN_DIR", help="run folder (default: the config's output_dir, runs/<name>)")
    train.set_defaults(func=_cmd_train)

    evaluate = subparsers.add_parser("eval", help="COCO AP (+ per class) of a checkpoint on the config's val data")
    _add_config_arguments(evaluate)
    evaluate.add_argument("checkpoint", help="checkpoint file (RUN_DIR/checkpoints/last.pt)")
    evaluate.add_argument("--out", help="metrics json (default: CHECKPOINT with suffix .eval.json)")
    evaluate.add_argument("--results", help="also write the detections as a COCO results json here")
    evaluate.set_defaults(func=_cmd_eval)

    predict = subparsers.add_parser("predict", help="draw detections on images; write PNGs + COCO results json")
    _add_config_arguments(predict)
    predict.add_argument("checkpoint", help="checkpoint file")
    predict.add_argument("images", nargs="+", help="image files or folders")
    predict.add_argument("--out", required=True, help="output folder")
    predict.add_argument("--score-thresh", type=float, default=0.3, help="lowest score drawn and written (0.3)")
    predict.set_defaults(func=_cmd_predict)

    demo = subparsers.add_parser("demo", help="synthetic data: train ATSS with PFL and with focal loss, compare")
    demo.add_argument("--out", default="runs/demo", help="output folder (runs/demo)")
    demo.add_argument("--quick", action="store_true", help="a much shorter run (smoke test, AP not meaningful)")
    demo.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                      help="override values of the demo config (packaged demo_synthetic.yaml)")
    demo.set_defaults(func=_cmd_demo)

    _register_optional(subparsers, "umop.data.cli", "data")
    _register_optional(subparsers, "umop.analysis.cli", "analyze")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``umop`` script; returns the exit code. ``UMOP_DEBUG=1`` shows tracebacks."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from .engine.trainer import NonFiniteLossError

    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, NonFiniteLossError) as error:
        if os.environ.get("UMOP_DEBUG"):
            raise
        print(f"umop {args.command}: error: {error}", file=sys.stderr)
        return 2 if isinstance(error, ValueError) else 1
    except KeyboardInterrupt:
        print(f"umop {args.command}: interrupted (continue a training run with --resume auto)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
