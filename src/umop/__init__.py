"""umop: one-stage object detectors balanced across pyramid levels.

UMOP (Wu et al. 2021, "Progressive Hard-case Mining across Pyramid Levels in Object Detection") computes the
classification loss per FPN level and adapts each level's focal-loss gamma/alpha to that level's own
convergence (Progressive Focal Loss). This package provides the losses (``umop.losses``), the detectors
RetinaNet / ATSS / FCOS / VFNet (``umop.build_detector``), data, training, evaluation and the imbalance
analyses of Oksuz et al.'s survey (``umop.analysis``).
"""
from __future__ import annotations

from typing import Any

from .engine.hooks import register_log_hooks

__version__ = "0.1.0"
__all__ = ["build_detector", "__version__"]

# The package wires its parts: the analyses' per-loss gradient norms (``log.objective_every``) become a
# training-log hook; the engine imports no analysis (the factory is imported when a Trainer is built).
register_log_hooks("objective", "umop.analysis.objective:objective_log_hooks")


def build_detector(name: str, num_classes: int, **kwargs: Any):
    """Build a detector; see :func:`umop.models.build.build_detector` (imported lazily)."""
    from .models.build import build_detector as _build

    return _build(name, num_classes, **kwargs)
