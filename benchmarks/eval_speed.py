"""Evaluation time: COCO AP alone vs AP + optimal LRP + per-level table (``umop.evaluation.evaluate_coco``).

Synthetic, COCO-like: 80 classes, 640x480 images with ~7 boxes of COCO-like sizes, 100 detections per image
(a jittered copy of each box, mostly of the right class, then random boxes), each with the pyramid level an
FPN would give its size. "AP alone" is the evaluation umop ran before LRP (``COCOeval_faster`` evaluate,
accumulate, summarize); both candidates start from the same ground-truth dict and results list.

    PYTHONPATH=src python benchmarks/eval_speed.py [--images 5000] [--repeats 1]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import interleaved_times  # noqa: E402

from umop.evaluation import evaluate_coco  # noqa: E402


def synthetic_coco(num_images: int, dets_per_image: int = 100, num_classes: int = 80, seed: int = 0
                   ) -> tuple[dict, list[dict]]:
    """A COCO ground-truth dict and a results list (with ``"level"``) of ``num_images`` images."""
    rng = np.random.default_rng(seed)
    width, height = 640, 480
    images, annotations, results = [], [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "width": width, "height": height})
        num_gt = int(rng.integers(1, 14))
        side = np.exp(rng.uniform(np.log(8), np.log(400), num_gt))  # small / medium / large as in COCO
        aspect = np.exp(rng.uniform(-0.7, 0.7, num_gt))
        w, h = np.minimum(side * aspect, width - 1), np.minimum(side / aspect, height - 1)
        x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
        labels = rng.integers(1, num_classes + 1, num_gt)
        for k in range(num_gt):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(labels[k]),
                                "bbox": [float(x[k]), float(y[k]), float(w[k]), float(h[k])],
                                "area": float(w[k] * h[k]), "iscrowd": int(rng.random() < 0.01)})
        # detections: a jittered copy of each box (80 % the right class), then random boxes
        jitter = rng.normal(0, 0.12, (num_gt, 4)) * np.stack([w, h, w, h], 1)
        det = np.stack([x, y, w, h], 1) + jitter
        det_labels = np.where(rng.random(num_gt) < 0.8, labels, rng.integers(1, num_classes + 1, num_gt))
        rest = dets_per_image - num_gt
        side = np.exp(rng.uniform(np.log(8), np.log(400), rest))
        det = np.concatenate([det, np.stack([rng.uniform(0, width - 8, rest), rng.uniform(0, height - 8, rest),
                                             side, side * np.exp(rng.uniform(-0.7, 0.7, rest))], 1)])
        det[:, 2:] = np.maximum(det[:, 2:], 1.0)
        det_labels = np.concatenate([det_labels, rng.integers(1, num_classes + 1, rest)])
        scores = np.concatenate([rng.uniform(0.3, 1.0, num_gt), rng.uniform(0.0, 0.6, rest)])
        levels = np.clip(np.floor(np.log2(np.sqrt(det[:, 2] * det[:, 3]) / 16.0)), 0, 4).astype(int)  # P3: < 32 px
        for k in range(dets_per_image):
            results.append({"image_id": image_id, "category_id": int(det_labels[k]),
                            "bbox": [round(float(v), 3) for v in det[k]], "score": round(float(scores[k]), 5),
                            "level": int(levels[k])})
    categories = [{"id": c, "name": f"class_{c}"} for c in range(1, num_classes + 1)]
    return {"images": images, "annotations": annotations, "categories": categories}, results


def coco_ap_only(gt: dict, results: list[dict]) -> list[float]:
    """The AP evaluation umop ran before LRP: faster-coco-eval's evaluate / accumulate / summarize."""
    from faster_coco_eval import COCO, COCOeval_faster

    quiet = lambda *args, **kwargs: None  # noqa: E731
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(gt, print_function=quiet)
        coco_dt = coco_gt.loadRes([dict(r) for r in results])
        evaluator = COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=quiet)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(v) for v in evaluator.stats[:6]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--dets", type=int, default=100, help="detections per image (100)")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved rounds (1: ~2.5 min at 5,000 images)")
    args = parser.parse_args()
    gt, results = synthetic_coco(args.images, args.dets)
    print(f"{args.images} images, {len(gt['annotations'])} boxes, {len(results)} detections, 80 classes")
    outputs: dict[str, object] = {}
    times = interleaved_times(
        {"COCO AP alone": lambda: outputs.__setitem__("ap", coco_ap_only(gt, results)),
         "AP + LRP + per-level table": lambda: outputs.__setitem__("full", evaluate_coco(gt, results))},
        repeats=args.repeats, warmup=0, device=torch.device("cpu"))
    full = outputs["full"]
    assert np.allclose([full[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")], outputs["ap"])  # same AP
    print(f"AP {full['AP']:.3f}  moLRP {full['oLRP']:.3f} (loc {full['oLRP_loc']:.3f}, FP {full['oLRP_FP']:.3f}, "
          f"FN {full['oLRP_FN']:.3f});  TP per level: "
          + ", ".join(f"{k} {v['num_tp']}" for k, v in full["levels"]["per_level"].items()))
    base = float(np.median(times["COCO AP alone"]))
    for name, values in times.items():
        median = float(np.median(values))
        print(f"{name:<28} median {median:7.2f} s  ({', '.join(f'{v:.2f}' for v in values)})  "
              f"ratio {median / base:.2f}")


if __name__ == "__main__":
    main()
