"""``umop study``: multi-seed, resumable comparisons of config variants (runner), their statistics
(paired differences with t intervals, pure Python) and reports (study.json / study.md / study.html).

    from umop.study import StudySpec, run_study
    run_study(StudySpec("demo_synthetic", [("model.cls_loss", ["focal", "pfl"])], [0, 1, 2], "runs/study"))
"""

from __future__ import annotations

from .runner import Cell, StudySpec, StudyStopped, load_study_file, parse_seeds, parse_vary, run_study
from .stats import mean_std, paired_difference, t_cdf, t_quantile

__all__ = ["Cell", "StudySpec", "StudyStopped", "load_study_file", "parse_seeds", "parse_vary", "run_study",
           "mean_std", "paired_difference", "t_cdf", "t_quantile"]
