"""Training engine: YAML configs, the Trainer (SGD/AdamW, warmup, steps, AMP, DDP), checkpoints, inference.

The names below are imported on first use (so that ``umop -h`` does not load torch).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "load_checkpoint": "umop.engine.checkpoint",
    "save_checkpoint": "umop.engine.checkpoint",
    "seed_everything": "umop.engine.checkpoint",
    "Config": "umop.engine.config",
    "ConfigError": "umop.engine.config",
    "apply_overrides": "umop.engine.config",
    "config_from_dict": "umop.engine.config",
    "config_to_dict": "umop.engine.config",
    "describe_config": "umop.engine.config",
    "load_config": "umop.engine.config",
    "evaluate_model": "umop.engine.inference",
    "run_inference": "umop.engine.inference",
    "NonFiniteLossError": "umop.engine.trainer",
    "RunExistsError": "umop.engine.trainer",
    "Trainer": "umop.engine.trainer",
    "TrainingInterrupted": "umop.engine.trainer",
    "format_metrics": "umop.engine.trainer",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'umop.engine' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
