"""Training engine: YAML configs, the Trainer (SGD/AdamW, warmup, steps, AMP, DDP), checkpoints, inference.

The names below are imported on first use (so that ``umop -h`` does not load torch).
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {  # submodule: the public names it defines
    ".checkpoint": "load_checkpoint save_checkpoint seed_everything",
    ".config": "Config ConfigError apply_overrides config_from_dict config_to_dict describe_config load_config",
    ".inference": "evaluate_model run_inference",
    ".trainer": "NonFiniteLossError RunExistsError Trainer TrainingInterrupted format_metrics",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
