"""Training engine: YAML configs, the Trainer (SGD/AdamW, warmup, steps, AMP, DDP), checkpoints, inference."""

from .checkpoint import load_checkpoint, save_checkpoint, seed_everything
from .config import Config, ConfigError, apply_overrides, config_from_dict, config_to_dict, load_config
from .inference import evaluate_model, run_inference
from .trainer import NonFiniteLossError, Trainer, format_metrics

__all__ = ["Config", "ConfigError", "NonFiniteLossError", "Trainer", "apply_overrides", "config_from_dict",
           "config_to_dict", "evaluate_model", "format_metrics", "load_checkpoint", "load_config",
           "run_inference", "save_checkpoint", "seed_everything"]
