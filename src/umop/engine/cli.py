"""``umop train | eval | predict | demo | config``: the engine's subcommands (``register(subparsers)``).

Nothing heavy is imported until a command runs, so that ``umop -h`` answers at once.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

__all__ = ["register", "split_config_and_checkpoint"]

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
CONFIG_SUFFIXES = (".yaml", ".yml")


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="override config values, e.g. --set solver.lr=0.005 batch_size=8 "
                             "data.min_size=[640,800] model.cls_loss_options.delta=0.5 (keys: umop config show NAME)")


def _add_checkpoint_command(subparsers: argparse._SubParsersAction, name: str, summary: str, description: str,
                            positional: tuple[str, str, str], out: tuple[str, bool]) -> argparse.ArgumentParser:
    """A subcommand taking ``[CONFIG] CHECKPOINT ...`` (``positional``: dest, metavar, help), ``--set`` and
    ``--out`` (``out``: help, required)."""
    parser = subparsers.add_parser(name, help=summary, description=description)
    dest, metavar, positional_help = positional
    parser.add_argument(dest, nargs="+", metavar=metavar, help=positional_help)
    _add_overrides(parser)
    out_help, out_required = out
    parser.add_argument("--out", required=out_required, help=out_help)
    return parser


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train``, ``eval``, ``predict``, ``demo`` and ``config`` to ``subparsers``."""
    train = subparsers.add_parser("train", help="train a detector from a YAML config")
    train.add_argument("config", help="YAML config: a path (configs/atss_pfl.yaml) or a packaged name (atss_pfl)")
    _add_overrides(train)
    train.add_argument("--resume", metavar="auto|PATH",
                       help="continue a run: 'auto' = RUN_DIR/checkpoints/last.pt, or a new run when there is "
                            "none (start or continue); or a checkpoint path")
    train.add_argument("--overwrite", action="store_true",
                       help="start over in a run folder that already holds a run (deletes its log.jsonl, "
                            "eval.json, checkpoints/ and tb/); without it such a folder is refused")
    train.add_argument("--out", metavar="RUN_DIR", help="run folder (default: the config's output_dir, runs/<name>)")
    train.set_defaults(func=_cmd_train)

    evaluate = _add_checkpoint_command(
        subparsers, "eval", "COCO AP (+ per class) of a checkpoint on its config's val data",
        "umop eval CHECKPOINT [--set data.val_ann=... data.val_images=...] evaluates with the config stored in "
        "the checkpoint; umop eval CONFIG CHECKPOINT uses CONFIG instead.",
        ("paths", "[CONFIG] CHECKPOINT", "checkpoint file (RUN_DIR/checkpoints/last.pt or best.pt), optionally "
                                         "preceded by a config that replaces the one stored in the checkpoint"),
        ("metrics json (default: CHECKPOINT with suffix .eval.json)", False))
    evaluate.add_argument("--results", help="also write the detections as a COCO results json here")
    evaluate.add_argument("--levels", action="store_true",
                          help="print the per-level table: TP, mean IoU, FP per pyramid level and which level found "
                               "the objects of each size (stored in the metrics json whenever the detector reports "
                               "levels)")
    evaluate.add_argument("--plots", metavar="DIR",
                          help="write PR and F1-confidence curves, confusion matrix, LRP and level tables (PNG + CSV) "
                               "here")
    evaluate.add_argument("--confusion-score", type=float, default=0.3,
                          help="lowest score counted in the confusion matrix (0.3)")
    evaluate.set_defaults(func=_cmd_eval)

    predict = _add_checkpoint_command(
        subparsers, "predict", "draw detections on images; write PNGs + COCO results json",
        "umop predict CHECKPOINT IMAGES... --out DIR (config stored in the checkpoint), or umop predict CONFIG "
        "CHECKPOINT IMAGES... --out DIR. Unreadable inputs are skipped and listed.",
        ("inputs", "[CONFIG] CHECKPOINT IMAGES", "optional config, the checkpoint, then image files or folders"),
        ("output folder", True))
    predict.add_argument("--score-thresh", type=_score_thresh_argument, default=0.3, metavar="S|lrp",
                         help="lowest score drawn and written (0.3), or 'lrp': each class' LRP-optimal threshold "
                              "from the checkpoint's evaluation (CHECKPOINT.eval.json of `umop eval`, else "
                              "RUN_DIR/eval.json); classes without one use 0.3")
    predict.add_argument("--eval-json", help="with --score-thresh lrp: read the thresholds from this metrics json")
    predict.set_defaults(func=_cmd_predict)

    demo = subparsers.add_parser("demo", help="synthetic data: ATSS with PFL vs focal loss over 3 seeds (a small study)")
    demo.add_argument("--out", default="runs/demo", help="output folder (runs/demo)")
    demo.add_argument("--quick", action="store_true", help="a much shorter run (smoke test, AP not meaningful)")
    demo.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                      help="override values of the demo config (packaged demo_synthetic.yaml)")
    demo.set_defaults(func=_cmd_demo)

    config = subparsers.add_parser("config", help="show a resolved config: every key, its value and meaning")
    commands = config.add_subparsers(dest="config_command", metavar="{show,list}")
    config.set_defaults(func=lambda args: _usage(config))
    show = commands.add_parser("show", help="print the resolved config (after _base_ and --set) with every key "
                                            "and a one-line meaning")
    show.add_argument("config", metavar="NAME_OR_PATH",
                      help="packaged config name (atss_pfl), YAML path, or a checkpoint (its stored config)")
    _add_overrides(show)
    show.set_defaults(func=_cmd_config_show)
    listing = commands.add_parser("list", help="names of the packaged configs")
    listing.set_defaults(func=_cmd_config_list)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


# ------------------------------------------------------------------------------------------ argument roles

def _looks_like_config(item: str) -> bool:
    """A YAML path, or a packaged config name that is not a file here."""
    path = Path(item)
    if path.suffix.lower() in CONFIG_SUFFIXES:
        return True
    if path.suffix.lower() in CHECKPOINT_SUFFIXES or path.exists():
        return False
    from .config import list_packaged_configs

    return item in list_packaged_configs()


def split_config_and_checkpoint(paths: list[str]) -> tuple[str | None, str]:
    """``umop eval``'s positionals -> ``(config or None, checkpoint)``; either order for two arguments."""
    from .config import ConfigError

    if len(paths) == 1:
        if _looks_like_config(paths[0]) and Path(paths[0]).suffix.lower() not in CHECKPOINT_SUFFIXES:
            raise ConfigError(f"'{paths[0]}' is a config, not a checkpoint: umop eval [CONFIG] CHECKPOINT")
        return None, paths[0]
    if len(paths) != 2:
        raise ConfigError(f"umop eval takes [CONFIG] CHECKPOINT, got {len(paths)} arguments: {' '.join(paths)}")
    first, second = paths
    if _looks_like_config(second) and not _looks_like_config(first):
        return second, first
    return first, second


def _split_predict_inputs(inputs: list[str]) -> tuple[str | None, str, list[str]]:
    """``umop predict``'s positionals -> ``(config or None, checkpoint, images)``."""
    from .config import ConfigError

    config = None
    if inputs and _looks_like_config(inputs[0]):
        config, inputs = inputs[0], inputs[1:]
    if len(inputs) < 2:
        raise ConfigError("umop predict takes [CONFIG] CHECKPOINT IMAGES... --out DIR (no images given)")
    return config, inputs[0], inputs[1:]


def _load_for_inference(config_arg: str | None, checkpoint_path: str, overrides: list[str]) -> tuple[Any, ...]:
    """``(config, model, info, device)`` of a checkpoint: its stored config unless ``config_arg``; the model is
    built without downloading backbone weights (the checkpoint replaces them)."""
    from .checkpoint import load_checkpoint
    from .distributed import init_distributed
    from .predict import checkpoint_config, load_trained_model

    checkpoint = load_checkpoint(checkpoint_path, map_location="cpu")
    config = checkpoint_config(checkpoint, checkpoint_path, config_arg, overrides)
    device = init_distributed(config.device)
    model, info = load_trained_model(config, checkpoint, device)
    return config, model, info, device


# -------------------------------------------------------------------------------------------------- commands

def _cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .distributed import cleanup_distributed, is_main_process
    from .trainer import Trainer

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"output_dir={args.out}")
    config = load_config(args.config, overrides)
    if args.overwrite and args.resume:
        from .config import ConfigError

        raise ConfigError("--overwrite starts over and --resume continues: pass one of them")
    try:
        summary = Trainer(config, resume=args.resume, overwrite=args.overwrite).train()
    finally:
        cleanup_distributed()
    if is_main_process():
        ap = summary["eval"]["AP"] if summary.get("eval") else None
        print(f"done: {summary['epochs']} epochs, {summary['iterations']} iterations in {summary['train_seconds']} s"
              + (f", AP {100 * ap:.1f}" if ap is not None else "") + f"; run folder: {summary['run_dir']}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from ..evaluation import detections_to_coco_results
    from .builders import build_dataset, build_eval_loader
    from .distributed import cleanup_distributed, is_main_process
    from ..evaluation.outputs import format_level_table, format_lrp, write_eval_outputs
    from .inference import evaluate_model
    from .trainer import format_metrics

    config_arg, checkpoint_path = split_config_and_checkpoint(args.paths)
    try:
        config, model, info, device = _load_for_inference(config_arg, checkpoint_path, args.overrides)
        dataset = build_dataset(config.data, train=False)
        if list(dataset.class_names) != info["class_names"]:
            warnings.warn(f"the evaluation data's classes {dataset.class_names} differ from the checkpoint's "
                          f"{info['class_names']}", stacklevel=1)
        loader = build_eval_loader(dataset, config)
        with warnings.catch_warnings():  # the unreadable images are listed below, one line each
            warnings.filterwarnings("ignore", message="evaluation: ", category=RuntimeWarning)
            evaluated: dict = {}
            metrics = evaluate_model(model, loader, device, len(info["class_names"]), dataset.class_names,
                                     progress=is_main_process(), collect=evaluated)
        if is_main_process():
            out = Path(args.out) if args.out else Path(checkpoint_path).with_suffix(".eval.json")
            out.parent.mkdir(parents=True, exist_ok=True)
            record = {"config": str(config_arg) if config_arg else "stored in the checkpoint",
                      "checkpoint": str(checkpoint_path), "epoch": info["epoch"], "val_ann": config.data.val_ann,
                      **metrics}
            out.write_text(json.dumps(record, indent=1))
            print(format_metrics(metrics))
            print(format_lrp(metrics))
            if args.levels:
                print(format_level_table(metrics))
            for failure in metrics["failed_images"]:
                print(f"not evaluated (unreadable): image id={failure['image_id']} ({failure['file_name']}): "
                      f"{failure['load_error']}", file=sys.stderr)
            failed = f", {metrics['num_failed_images']} unreadable (skipped)" if metrics["num_failed_images"] else ""
            print(f"{metrics['num_images']} images evaluated{failed}; metrics written to {out}")
            if args.plots:
                write_eval_outputs(evaluated["detections"], evaluated["targets"], metrics, args.plots,
                                   num_classes=len(info["class_names"]), class_names=dataset.class_names,
                                   score_thresh=args.confusion_score)
                print(f"PR / F1 curves, confusion matrix, LRP and level tables (PNG + CSV): {args.plots}")
            if args.results:  # the evaluated detections: no second inference pass
                detections = evaluated["detections"]
                results = detections_to_coco_results(detections, [d["image_id"] for d in detections],
                                                     dataset.label_to_category_id)
                Path(args.results).write_text(json.dumps(results))
                print(f"COCO results json: {args.results}")
    finally:
        cleanup_distributed()
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from .config import ConfigError
    from .predict import eval_sizes, predict_images

    config_arg, checkpoint_path, items = _split_predict_inputs(args.inputs)
    config, model, info, device = _load_for_inference(config_arg, checkpoint_path, args.overrides)
    images: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            images.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp")))
        else:
            images.append(path)
    if not images:
        raise ConfigError(f"no images found in {' '.join(items)}")
    min_size, max_size = eval_sizes(config)
    score_thresh, thresh_note = _predict_score_thresh(args.score_thresh, checkpoint_path, info["class_names"],
                                                      args.eval_json)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="predict: skipped", category=RuntimeWarning)
        out = predict_images(model, images, args.out, class_names=info["class_names"],
                             label_to_category_id=info["label_to_category_id"], min_size=min_size,
                             max_size=max_size, score_thresh=score_thresh, device=device)
    for skipped in out["skipped"]:
        print(f"umop predict: skipped {skipped['file']}: {skipped['error']}", file=sys.stderr)
    skipped_note = f"; {len(out['skipped'])} unreadable input(s) skipped" if out["skipped"] else ""
    print(f"{len(out['images'])} pictures and {out['num_detections']} detections (score >= {thresh_note}) "
          f"written to {args.out} (COCO results: {out['results']}){skipped_note}")
    return 0


def _score_thresh_argument(text: str) -> float | str:
    """``--score-thresh``: a number in [0, 1] or ``lrp``."""
    if text.lower() == "lrp":
        return "lrp"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number or 'lrp', got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def _predict_score_thresh(score_thresh: float | str, checkpoint_path: str, class_names: list[str],
                          eval_json: str | None) -> tuple[float | list[float], str]:
    """``--score-thresh``: a number, or ``lrp`` = the per-class LRP-optimal thresholds of the checkpoint's
    evaluation (:func:`umop.evaluation.outputs.find_lrp_thresholds`). Returns the value(s) and a description."""
    if score_thresh != "lrp":
        return float(score_thresh), f"{float(score_thresh):g}"
    from ..evaluation.outputs import find_lrp_thresholds

    thresholds, source = find_lrp_thresholds(checkpoint_path, class_names, default=0.3, eval_json=eval_json)
    listed = ", ".join(f"{name} {value:.3f}" for name, value in zip(class_names, thresholds))
    return thresholds, f"the LRP-optimal threshold of each class from {source}: {listed}"


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.out, quick=args.quick, overrides=args.overrides)
    return 0


def _cmd_config_show(args: argparse.Namespace) -> int:
    from .config import describe_config, load_config

    if Path(args.config).suffix.lower() in CHECKPOINT_SUFFIXES:
        from .checkpoint import load_checkpoint
        from .predict import checkpoint_config

        config = checkpoint_config(load_checkpoint(args.config), args.config, None, args.overrides)
    else:
        config = load_config(args.config, args.overrides)
    print(describe_config(config), end="")
    return 0


def _cmd_config_list(args: argparse.Namespace) -> int:
    from .config import list_packaged_configs

    print("\n".join(list_packaged_configs()))
    return 0
