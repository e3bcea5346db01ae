"""Imbalance analyses: level statistics (UMOP Fig. 2/3), survey dataset analyses, HTML report.

Public API (imported on first use, so that ``umop -h`` loads neither torch nor matplotlib)::

    loss_gradient_norms(model, images, targets) -> {"loss_cls": float, ...}     # survey Fig. 14
    load_coco(ann_file, image_dir) -> CocoIndex
    level_statistics(index, detectors, min_size=800, max_size=1333) -> list[LevelRow]   # UMOP Fig. 2
    write_level_csv(rows, path), read_level_csv(path), mean_positive_ratios(rows)
    plot_level_imbalance(positive_ratios(rows), path)
    analyze_dataset(index, out_dir, detectors=("atss",)) -> list[Path]        # survey Fig. 5, 7, 12, 13
    analyze_run(run_dir, out_dir=None) -> list[Path]                          # UMOP Fig. 3, survey Fig. 14
    write_report(out_html, levels_dir=..., dataset_dir=..., run_dir=...) -> Path
"""
from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {  # submodule: the public names it defines
    ".objective": "loss_gradient_norms",
    ".coco": "load_coco",
    ".levels": "level_statistics write_level_csv read_level_csv mean_positive_ratios positive_ratios",
    ".plots": "plot_level_imbalance",
    ".dataset": "analyze_dataset",
    ".run": "analyze_run",
    ".report": "write_report",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
