"""``umop data`` subcommands: ``convert`` (VOC / YOLO -> COCO json), ``check`` and ``synth``.

Examples::

    umop data convert --from voc ../shared/data/bccd/BCCD --split-file train --classes RBC,WBC,Platelets --out bccd_train.json
    umop data convert --from yolo ../shared/data/coco128 --out coco128.json
    umop data check bccd_train.json --images ../shared/data/bccd/BCCD/JPEGImages
    umop data synth runs/shapes --num-images 200 --class-imbalance 10
    umop data split coco128.json --val 32 --by name      # -> coco128_train.json (96), coco128_val.json (32)
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``data`` command (with ``convert``, ``check``, ``synth``) to an argparse subparsers object."""
    data = subparsers.add_parser("data", help="convert, check and generate datasets", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = data.add_subparsers(dest="data_command", metavar="{convert,check,synth,split}")
    data.set_defaults(func=lambda args: _usage(data))

    convert = commands.add_parser("convert", help="Pascal VOC xml or YOLO txt -> COCO json")
    convert.add_argument("--from", dest="source_format", choices=("voc", "yolo"), required=True, help="input format")
    convert.add_argument(
        "src",
        type=Path,
        help="VOC: root (with Annotations/) or xml folder. YOLO: images folder, or a root with images/ "
        "(images/<split>/ with --split-file as the split name)",
    )
    convert.add_argument("--out", type=Path, required=True, help="output COCO json")
    convert.add_argument("--split-file", help="VOC: split list file or name (train -> ImageSets/Main/train.txt); YOLO: split folder name under images/")
    convert.add_argument("--images", type=Path, help="image folder (VOC default ROOT/JPEGImages)")
    convert.add_argument("--labels", type=Path, help="YOLO label folder (default: images path with images -> labels)")
    convert.add_argument(
        "--classes", help="class order: a file (one name a line, or YOLO data.yaml) or a comma-separated list "
        "(VOC default: sorted names; YOLO default: classes.txt near the images)"
    )
    convert.set_defaults(func=_convert)

    check = commands.add_parser("check", help="report every bad record of a COCO json (exit code 1 if any)")
    check.add_argument("ann_file", type=Path, help="COCO json")
    check.add_argument("--images", type=Path, help="image folder (default: the folder `umop data convert` "
                       "recorded in the json, else the json's folder)")
    check.add_argument("--no-decode", action="store_true", help="only check that image files exist (faster)")
    check.add_argument("--max-listed", type=int, default=None, help="list at most this many records of each family")
    check.set_defaults(func=_check)

    synth = commands.add_parser("synth", help="write a synthetic shapes dataset (COCO json + PNGs)")
    synth.add_argument("out_dir", type=Path)
    synth.add_argument("--num-images", type=int, default=200)
    synth.add_argument("--image-size", type=int, nargs="+", default=[256], help="S or H W")
    synth.add_argument("--num-classes", type=int, default=6)
    synth.add_argument("--class-imbalance", type=float, default=1.0, help="most/least frequent class ratio")
    synth.add_argument("--min-object-size", type=int, default=4)
    synth.add_argument("--max-object-size-fraction", type=float, default=0.8)
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=_synth)

    split = commands.add_parser("split", help="a fixed train/val split of a COCO json (sorted by file name)")
    split.add_argument("ann_file", type=Path, help="COCO json")
    split.add_argument("--val", type=int, required=True, help="number of validation images (the last by name)")
    split.add_argument("--by", default="name", choices=("name",), help="order of the images (file_name)")
    split.add_argument("--out-train", type=Path, help="default: ANN_train.json beside the input")
    split.add_argument("--out-val", type=Path, help="default: ANN_val.json beside the input")
    split.set_defaults(func=_split)
    return data


def _split(args: argparse.Namespace) -> int:
    import json

    from umop.data.convert import save_coco_json
    from umop.data.split import split_coco

    try:
        coco = json.loads(args.ann_file.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read the COCO json {args.ann_file}: {error}") from error
    try:
        train, val = split_coco(coco, args.val, by=args.by)
    except ValueError as error:
        raise ValueError(f"{args.ann_file}: {error}") from error
    stem = args.ann_file.with_suffix("")
    for part, path in ((train, args.out_train or Path(f"{stem}_train.json")),
                       (val, args.out_val or Path(f"{stem}_val.json"))):
        save_coco_json(part, path)
        print(f"{path}: {len(part['images'])} images, {len(part['annotations'])} boxes")
    return 0


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _class_names(value: str | None) -> Any:
    from umop.data.convert import read_class_names

    if value is None:
        return None
    if not Path(value).is_file() and "," in value:
        return read_class_names([name for name in value.split(",") if name.strip()])
    return value


def _yolo_images_dir(src: Path, split: str | None, images: Path | None) -> Path:
    from umop.data.image_io import IMAGE_EXTENSIONS

    if images is not None:
        return images
    if not src.is_dir():
        raise FileNotFoundError(f"YOLO source folder not found: {src}")
    if any(path.suffix.lower() in IMAGE_EXTENSIONS for path in src.iterdir()):
        return src
    root = src / "images" if (src / "images").is_dir() else src
    if split is not None:
        return root / split
    if any(path.suffix.lower() in IMAGE_EXTENSIONS for path in root.iterdir()):
        return root
    subfolders = sorted(path for path in root.iterdir() if path.is_dir())
    if len(subfolders) == 1:
        return subfolders[0]
    raise ValueError(f"{src}: cannot tell which image folder to use ({[p.name for p in subfolders]}); pass --split-file NAME or --images DIR")


def _convert(args: argparse.Namespace) -> int:
    from umop.data.convert import save_coco_json, voc_to_coco, yolo_to_coco
    from umop.data.records import BadRecordWarning, format_counts

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BadRecordWarning)  # the issues are printed below instead
            if args.source_format == "voc":
                coco = voc_to_coco(args.src, image_dir=args.images, split_file=args.split_file, class_names=_class_names(args.classes))
                image_dir = args.images or (args.src / "JPEGImages" if (args.src / "Annotations").is_dir() else args.src.parent / "JPEGImages")
            else:
                image_dir = _yolo_images_dir(args.src, args.split_file, args.images)
                coco = yolo_to_coco(image_dir, labels_dir=args.labels, classes_file=_class_names(args.classes))
    except (OSError, ValueError) as error:
        print(f"umop data convert: error: {error}", file=sys.stderr)
        return 2
    issues = coco["info"]["conversion_issues"]
    # Record the image folder (relative to the json's folder when possible), so --images need not be repeated.
    coco["info"]["image_dir"] = _relative_to(Path(image_dir).resolve(), Path(args.out).resolve().parent)
    for issue in issues:
        print(f"  {issue['source']}: {issue['record']}: {issue['kind']}: {issue['message']}")
    save_coco_json(coco, args.out)
    counts = format_counts(dict(sorted(_count(issues).items())))
    print(
        f"wrote {args.out}: {len(coco['images'])} images, {len(coco['annotations'])} boxes, "
        f"{len(coco['categories'])} categories; issues: {counts}\n"
        f"image folder recorded in the json: {image_dir} (data check/analyze/train find it without --images)"
    )
    return 0


def _relative_to(path: Path, start: Path) -> str:
    """``path`` relative to ``start`` (``..`` allowed), or absolute when there is no relative path."""
    try:
        return os.path.relpath(path, start)
    except ValueError:  # another drive (Windows)
        return str(path)


def _count(issues: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for issue in issues:
        counts[issue["kind"]] = counts.get(issue["kind"], 0) + 1
    return counts


def _check(args: argparse.Namespace) -> int:
    from umop.data.check import check_dataset

    try:
        report = check_dataset(args.ann_file, args.images, decode_images=not args.no_decode)
    except (OSError, ValueError) as error:
        print(f"umop data check: error: {error}", file=sys.stderr)
        return 2
    print(report.format(max_listed=args.max_listed))
    return 0 if report.ok else 1


def _synth(args: argparse.Namespace) -> int:
    from umop.data.synthetic import make_synthetic_dataset

    size = args.image_size[0] if len(args.image_size) == 1 else tuple(args.image_size[:2])
    try:
        path = make_synthetic_dataset(
            args.out_dir,
            num_images=args.num_images,
            image_size=size,
            num_classes=args.num_classes,
            class_imbalance=args.class_imbalance,
            min_object_size=args.min_object_size,
            max_object_size_fraction=args.max_object_size_fraction,
            seed=args.seed,
        )
    except ValueError as error:
        print(f"umop data synth: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path} (images under {path.parent / 'images'})")
    return 0

