"""Training engine: YAML configs, the Trainer (SGD/AdamW, warmup, steps, AMP, DDP), checkpoints, inference.

The names below are imported on first use (so that ``umop -h`` does not load torch).
"""

from __future__ import annotations

from .._lazy import lazy_exports

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


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
