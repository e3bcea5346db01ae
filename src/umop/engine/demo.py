"""``umop demo``: a small study, ATSS with progressive focal loss (PFL) vs focal loss on the built-in
synthetic dataset, over 3 seeds.

Generates the data once, trains the 2 x 3 cells with ``umop study`` (each an ordinary run folder
``OUT/<loss>/seed<k>``), draws the seed-0 detections of both losses on validation images and ends with
``OUT/study.html`` (+ ``study.md``, ``study.json``) and one plain sentence about the AP difference and its
95% interval. Each training is capped by ``solver.max_train_seconds`` so that ``make demo`` stays within
10 minutes; a cell the cap stopped early is said so, in the console and in the reports.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

__all__ = ["run_demo", "DEMO_CONFIG", "DEMO_SEEDS"]

DEMO_CONFIG = "demo_synthetic"
DEMO_SEEDS = (0, 1, 2)
DEMO_VARIANTS = ("focal", "pfl")  # focal is the baseline
_QUICK = ["data.synthetic.num_train=16", "data.synthetic.num_val=8", "solver.epochs=1", "solver.steps=[]",
          "solver.warmup_iters=2", "batch_size=4", "log.every=1"]


def run_demo(out_dir: str | Path = "runs/demo", *, quick: bool = False, overrides: list[str] | None = None,
             num_pictures: int = 6, seeds: tuple[int, ...] = DEMO_SEEDS) -> dict[str, Any]:
    """Run the demo study; return a summary dict (also written to ``OUT/summary.json``)."""
    from ..study.report import comparison_sentence
    from ..study.runner import StudySpec, run_study

    out_dir = Path(out_dir)
    started = time.perf_counter()
    base = (_QUICK if quick else []) + list(overrides or []) + [f"data.synthetic.out_dir={out_dir / 'data'}"]
    spec = StudySpec(DEMO_CONFIG, [("model.cls_loss", list(DEMO_VARIANTS))], list(seeds), str(out_dir), base,
                     baseline=DEMO_VARIANTS[0])
    print(f"[demo] ATSS-R18 from scratch on synthetic shapes: cls_loss focal vs pfl, seeds "
          f"{', '.join(map(str, seeds))} ({2 * len(seeds)} trainings)"
          + (" (quick mode: AP not meaningful)" if quick else ""))
    record = run_study(spec, log=lambda text: print(f"[demo] {text}"))
    pictures = _draw_pictures(record, out_dir, num_pictures)

    difference = record["differences"].get("pfl", {}).get("AP")
    sentence = comparison_sentence("pfl", "focal", difference)
    capped = [c for c in record["cells"] if c["stopped_early"]]
    cap_sentence = ""
    if capped:
        cap_sentence = (f"{len(capped)} of {len(record['cells'])} trainings were stopped early by the time cap "
                        f"(solver.max_train_seconds): their AP comes from a shorter training than the recipe asks.")
    result = {"config": DEMO_CONFIG, "overrides": base, "quick": quick, "seeds": list(seeds),
              "AP": {v: record["summary"][v].get("AP") for v in DEMO_VARIANTS}, "difference_AP": difference,
              "sentence": sentence, "time_capped_cells": [f"{c['variant']}/seed{c['seed']}" for c in capped],
              "failed_cells": [f"{c['variant']}/seed{c['seed']}" for c in record["cells"] if c["status"] == "failed"],
              "pictures": {v: str(p) for v, p in pictures.items()},
              "total_seconds": round(time.perf_counter() - started, 1)}
    (out_dir / "summary.json").write_text(json.dumps(result, indent=1))
    print(f"\n[demo] finished in {result['total_seconds']:.0f} s")
    for variant in DEMO_VARIANTS:
        entry = record["summary"][variant].get("AP")
        if entry:
            std = f" ± {100 * entry['std']:.1f}" if entry.get("std") is not None else ""
            print(f"[demo] ATSS + {variant:<5} AP {100 * entry['mean']:.1f}{std} (mean ± std over {entry['n']} seeds)")
    print(f"[demo] {sentence}")
    if cap_sentence:
        print(f"[demo] {cap_sentence}")
    if result["failed_cells"]:
        print(f"[demo] failed trainings: {', '.join(result['failed_cells'])} (see {out_dir / 'study.md'})")
    print(f"[demo] report:   {out_dir / 'study.html'} (tables and figures; also study.md, study.json)")
    print(f"[demo] pictures: {out_dir / 'pictures'}/{{focal,pfl}}/*.png (seed 0)")
    print(f"[demo] runs:     {out_dir}/{{focal,pfl}}/seed<k> (log.jsonl, eval.json, checkpoints/); "
          f"continue or extend with `umop study {out_dir / 'study.yaml'}`")
    return result


def _draw_pictures(record: dict[str, Any], out_dir: Path, num_pictures: int) -> dict[str, Path]:
    """Detections of each variant's first finished cell on the first validation images."""
    from .builders import test_min_size
    from .config import load_config
    from .predict import load_trained_model, predict_images

    drawn: dict[str, Path] = {}
    for variant in record["variants"]:
        cell = next((c for c in record["cells"] if c["variant"] == variant and c["status"] == "finished"), None)
        if cell is None:
            continue
        run_dir = Path(cell["run_dir"])
        config = load_config(run_dir / "config.yaml")
        model, info = load_trained_model(config, run_dir / "checkpoints" / "last.pt")
        annotations = json.loads(Path(config.data.val_ann).read_text())
        paths = [Path(config.data.val_images) / image["file_name"] for image in annotations["images"][:num_pictures]]
        pictures = out_dir / "pictures" / variant
        predict_images(model, paths, pictures, class_names=info["class_names"],
                       label_to_category_id=info["label_to_category_id"], min_size=test_min_size(config.data),
                       max_size=config.data.max_size, score_thresh=0.3)
        drawn[variant] = pictures
    return drawn
