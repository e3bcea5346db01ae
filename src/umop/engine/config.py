"""Training configuration: YAML files -> nested dataclasses, ``_base_`` inheritance, ``--set`` overrides.

A config file is a nested mapping whose sections mirror :class:`Config`::

    _base_: atss_focal.yaml          # optional, path relative to this file (or a packaged config name)
    model: {name: atss, cls_loss: pfl, cls_loss_options: {gamma: 2.0, delta: 0.5}}
    solver: {lr: 0.01, epochs: 12, steps: [8, 11]}

Unknown keys and values of the wrong type fail with a :class:`ConfigError` naming the key and the nearest
valid key (``difflib.get_close_matches``), e.g. ``unknown config key 'solver.lrr' (did you mean 'solver.lr'?)``.
The model section is checked against :mod:`umop.models.build` when the config is loaded (detector name and
options, each component's name and typed options, the combination), before any data is touched.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from ..errors import UserError

__all__ = [
    "Config", "ModelConfig", "DataConfig", "SyntheticDataConfig", "SolverConfig", "LogConfig", "EvalConfig",
    "CheckpointConfig", "config_help", "describe_config",
    "ConfigError", "load_config", "config_from_dict", "config_to_dict", "apply_overrides", "parse_override",
    "resolve_config_path", "packaged_config_dir", "list_packaged_configs",
]


class ConfigError(UserError, ValueError):
    """A config file or an override is invalid; the message names the key (and the file, if any)."""


def _opt(default: Any, meaning: str) -> Any:
    """A dataclass field with its one-line meaning (``metadata["help"]``, printed by ``umop config show``)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": meaning})
    return field(default=default, metadata={"help": meaning})


def _section(cls: type, meaning: str) -> Any:
    return field(default_factory=cls, metadata={"help": meaning})


@dataclass
class ModelConfig:
    """Arguments of :func:`umop.models.build_detector`.

    Each remedy is a name with its typed options: ``cls_loss`` (``umop.losses.CLS_LOSSES``; empty = the
    detector's default) + ``cls_loss_options`` (e.g. PFL ``{gamma: 2.0, delta: 0.5, estimator: official}``),
    ``box_loss`` + ``box_loss_options`` (``umop.losses.BOX_LOSSES``), ``sampler`` + ``sampler_options``
    (``umop.samplers.SAMPLERS``), ``reweighting`` + ``reweighting_options`` (``pisa``). ``options`` holds the
    detector's and the backbone's keyword arguments (``fpn_channels``, ``score_thresh``, ``loss_weights``, ...).
    All are validated when the config is loaded (unknown name or option: the nearest valid one).
    """

    name: str = _opt("atss", "detector: retinanet | atss | fcos | vfnet")
    num_classes: int = _opt(80, "number of object classes (must match the training data)")
    backbone: str = _opt("resnet50", "backbone: resnet18/34/50/101, resnext..., or a timm name (swin_t, timm:<model>)")
    pretrained_backbone: bool = _opt(False, "start the backbone from ImageNet weights (downloaded by torchvision, "
                                            "or model.options.backbone_weights=FILE)")
    cls_loss: str = _opt("", "classification loss: focal | pfl | pfl_mean | varifocal | quality_focal | ghm_c | "
                             "ap_loss | alrp | rank_sort (umop.losses.CLS_LOSSES; empty: the detector's default)")
    cls_loss_options: dict = _opt({}, "the classification loss's options, e.g. PFL {gamma, delta, w, estimator}")
    box_loss: str = _opt("", "box loss: l1 | smooth_l1 | balanced_l1 | ghm_r | kl | iou | giou | diou | ciou | "
                             "bounded_iou (umop.losses.BOX_LOSSES; empty: the detector's default)")
    box_loss_options: dict = _opt({}, "the box loss's options, e.g. kl {beta, var_voting, sigma_t}")
    sampler: str = _opt("", "sampler: ohem | iou_balanced | random (umop.samplers.SAMPLERS; empty: none)")
    sampler_options: dict = _opt({}, "the sampler's options, e.g. ohem {neg_pos_ratio}")
    reweighting: str = _opt("", "sample reweighting: pisa (empty: none)")
    reweighting_options: dict = _opt({}, "the reweighting's options, e.g. pisa {isr_k, carl_k, carl_bias}")
    options: dict = _opt({}, "detector and backbone keyword arguments, e.g. fpn_channels, score_thresh, "
                             "loss_weights, backbone_weights=FILE (docs/REMEDIES.md)")

    def component_specs(self) -> dict[str, tuple[str | None, dict]]:
        """Component key -> ``(name or None = the detector's default, options)``, as
        :func:`umop.models.build.build_components` takes them."""
        return {key: (getattr(self, key) or None, dict(getattr(self, f"{key}_options"))) for key in MODEL_COMPONENTS}

    def component_arguments(self) -> dict[str, Any]:
        """The keyword arguments of :func:`umop.models.build_detector` for the components."""
        arguments: dict[str, Any] = {}
        for key, (value, options) in self.component_specs().items():
            arguments[key], arguments[f"{key}_options"] = value, options
        return arguments


MODEL_COMPONENTS = ("cls_loss", "box_loss", "sampler", "reweighting")  # = umop.models.build.COMPONENTS
# the free-form mappings of the model section (their keys are checked by umop.models.build, not here)
MODEL_OPTION_KEYS = ("options",) + tuple(f"{key}_options" for key in MODEL_COMPONENTS)


@dataclass
class SyntheticDataConfig:
    """Built-in synthetic dataset (:func:`umop.data.make_synthetic_dataset`), generated on first use."""

    enabled: bool = _opt(False, "generate and use the built-in synthetic dataset instead of data.*_ann")
    num_train: int = _opt(64, "training images to generate")
    num_val: int = _opt(16, "validation images to generate")
    image_size: int = _opt(256, "side of the square synthetic images (pixels)")
    num_classes: int = _opt(3, "number of synthetic classes")
    class_imbalance: float = _opt(4.0, "frequency ratio of the most to the least common class")
    min_object_size: int = _opt(4, "smallest object side (pixels)")
    max_object_size_fraction: float = _opt(0.8, "largest object side as a fraction of the image side")
    objects_per_image: list = _opt([1, 8], "range [lo, hi] of objects per image")
    seed: int = _opt(0, "generator seed (val uses seed + 1)")
    out_dir: str = _opt("", "where the data is written (empty = RUN_DIR/data)")


@dataclass
class DataConfig:
    """Dataset paths (COCO json + image folder) and the resize / flip recipe.

    ``min_size`` is the shorter side after resizing: an int, or ``[lo, hi]`` for multi-scale training
    (a size drawn uniformly from the range per image). Evaluation uses ``test_min_size`` (default: the int
    ``min_size``, or the upper end of the range).
    """

    train_ann: str = _opt("", "COCO json of the training split (convert VOC/YOLO with `umop data convert`)")
    train_images: str = _opt("", "image folder of the training split (empty = the json's 'image_dir', "
                                 "else the json's folder)")
    val_ann: str = _opt("", "COCO json of the validation split (empty = no evaluation)")
    val_images: str = _opt("", "image folder of the validation split (empty = the json's 'image_dir', "
                               "else the json's folder)")
    min_size: Union[int, list] = _opt(800, "shorter image side when training: an int, or [lo, hi] for multi-scale")
    max_size: int = _opt(1333, "cap on the longer image side")
    test_min_size: int = _opt(0, "shorter image side at evaluation (0 = min_size, or its upper end)")
    flip_prob: float = _opt(0.5, "probability of a horizontal flip when training")
    synthetic: SyntheticDataConfig = _section(SyntheticDataConfig, "built-in synthetic dataset")


@dataclass
class SolverConfig:
    """Optimisation recipe (mmdetection 1x by default: SGD, warmup 500 iters, steps at epochs 8 and 11).

    ``lr`` of 0 means ``base_lr * batch_size / base_batch_size`` (linear scaling rule).
    """

    optimizer: str = _opt("sgd", "sgd | adamw")
    lr: float = _opt(0.0, "learning rate (0 = base_lr * batch_size / base_batch_size, linear scaling rule)")
    base_lr: float = _opt(0.01, "learning rate at base_batch_size (used when lr is 0)")
    base_batch_size: int = _opt(16, "batch size that base_lr is meant for")
    momentum: float = _opt(0.9, "SGD momentum (AdamW beta1)")
    weight_decay: float = _opt(1e-4, "weight decay")
    norm_bias_decay: bool = _opt(True, "False: no weight decay on norm layers and biases")
    warmup_iters: int = _opt(500, "linear warmup length (iterations)")
    warmup_ratio: float = _opt(0.001, "learning rate at the start of warmup, as a fraction of lr")
    epochs: int = _opt(12, "training epochs")
    steps: list = _opt([8, 11], "epochs after which the learning rate is multiplied by gamma")
    gamma: float = _opt(0.1, "learning-rate decay factor at each step")
    grad_clip: float = _opt(0.0, "max gradient L2 norm (0 = no clipping)")
    amp: bool = _opt(False, "autocast: bf16 on a CPU with native bf16 (AVX512-BF16/AMX), bf16/fp16 on CUDA")
    amp_dtype: str = _opt("auto", "auto | bf16 | fp16 (fp16 uses a GradScaler; a CPU runs bf16 only)")
    max_iters_per_epoch: int = _opt(0, "cap on the iterations of an epoch (0 = the whole dataset; quick runs)")
    max_nonfinite: int = _opt(20, "consecutive non-finite losses tolerated before training stops")
    max_train_seconds: float = _opt(0.0, ">0: stop (checkpoint + evaluate) once training has run this long")


@dataclass
class LogConfig:
    """Logging: progress bar, ``log.jsonl`` every ``every`` iterations, TensorBoard scalars."""

    every: int = _opt(20, "write a log.jsonl record every N iterations (and at the first)")
    tensorboard: bool = _opt(True, "also write TensorBoard scalars to RUN_DIR/tb")
    progress_bar: bool = _opt(True, "show a tqdm progress bar")
    objective_every: int = _opt(200, "log per-loss gradient norms at the FPN features every N iterations, at a "
                                     "logged iteration (survey Fig. 14; 0 = off; costs one extra backward)")


@dataclass
class EvalConfig:
    """Evaluation on the validation set during training (every ``every`` epochs; 0 = only at the end)."""

    every: int = _opt(1, "evaluate every N epochs (0 = only after the last epoch)")
    batch_size: int = _opt(0, "evaluation batch size per process (0 = the training batch size per process)")


@dataclass
class CheckpointConfig:
    """Checkpoints in ``RUN_DIR/checkpoints``: ``last.pt`` (always), ``epoch_N.pt``, ``best.pt``."""

    keep_last: int = _opt(3, "keep the newest N epoch_N.pt files (0 = keep all); last.pt and best.pt stay")
    every_iters: int = _opt(0, ">0: also save last.pt every N iterations within an epoch (resumable mid-epoch)")
    best_metric: str = _opt("AP", "evaluation metric whose highest value is kept as best.pt ('' = no best.pt)")


@dataclass
class Config:
    """A complete training run."""

    model: ModelConfig = _section(ModelConfig, "the detector")
    data: DataConfig = _section(DataConfig, "datasets and resizing")
    solver: SolverConfig = _section(SolverConfig, "optimisation")
    log: LogConfig = _section(LogConfig, "logging")
    eval: EvalConfig = _section(EvalConfig, "evaluation during training")
    checkpoint: CheckpointConfig = _section(CheckpointConfig, "checkpoints")
    batch_size: int = _opt(16, "images per optimiser step over all processes (split across DDP ranks)")
    workers: int = _opt(2, "DataLoader worker processes per rank")
    seed: int = _opt(0, "seed of every random generator (data order, augmentation, initialisation)")
    device: str = _opt("auto", "auto | cpu | cuda | cuda:N")
    output_dir: str = _opt("", "run folder (empty = runs/<name>)")
    name: str = _opt("", "run name (empty = the config file's stem)")

    @property
    def learning_rate(self) -> float:
        """The learning rate actually used (linear scaling rule when ``solver.lr`` is 0)."""
        if self.solver.lr > 0:
            return self.solver.lr
        return self.solver.base_lr * self.batch_size / self.solver.base_batch_size


# --------------------------------------------------------------------------------------------------- paths

def packaged_config_dir() -> Path:
    """Folder of the configs shipped inside the package (``umop/configs``)."""
    return Path(__file__).resolve().parent.parent / "configs"


def list_packaged_configs() -> list[str]:
    """Names (without ``.yaml``) of the packaged configs."""
    return sorted(p.stem for p in packaged_config_dir().glob("*.yaml"))


def resolve_config_path(name_or_path: str | Path, relative_to: Path | None = None) -> Path:
    """Find a config: an existing path, a path relative to ``relative_to``, or a packaged name.

    ``"configs/atss_pfl.yaml"``, ``"atss_pfl.yaml"`` and ``"atss_pfl"`` all resolve to the same file.
    """
    raw = Path(name_or_path)
    candidates = [raw]
    if relative_to is not None and not raw.is_absolute():
        candidates.insert(0, relative_to / raw)
    stem = raw.name if raw.suffix in (".yaml", ".yml") else raw.name + ".yaml"
    candidates.append(packaged_config_dir() / stem)
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    close = difflib.get_close_matches(raw.stem, list_packaged_configs(), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else f" Packaged configs: {', '.join(list_packaged_configs())}."
    raise ConfigError(f"config '{name_or_path}' not found (no such file, and no packaged config of that name).{hint}")


# ---------------------------------------------------------------------------------------------- conversion

def _deep_merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in MODEL_OPTION_KEYS:
            out[key] = _deep_merge(out[key], value)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):  # model.*options: merged one level
            out[key] = {**out[key], **value}
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    if path in chain:
        raise ConfigError(f"{path}: circular _base_ chain: {' -> '.join(str(p) for p in (*chain, path))}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: invalid YAML: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping at the top level, got {type(data).__name__}")
    bases = data.pop("_base_", None)
    if bases is None:
        return data
    merged: dict = {}
    for base in [bases] if isinstance(bases, str) else list(bases):
        merged = _deep_merge(merged, _read_yaml(resolve_config_path(base, path.parent), (*chain, path)))
    return _deep_merge(merged, data)


def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _valid_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        keys.append(name)
        hint = _type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            keys.extend(_valid_keys(hint, name + "."))
    return keys


def _unknown_key_error(key: str, source: str) -> ConfigError:
    valid = _valid_keys(Config)
    section, _, leaf = key.rpartition(".")
    siblings = [k for k in valid if k.rpartition(".")[0] == section]
    # 1. a key of the same section that contains the mistyped name (warmup -> warmup_iters)
    close = [k for k in siblings if leaf and leaf in k.rpartition(".")[2]][:1]
    # 2. the closest full key (sovler.lr -> solver.lr), 3. the closest name within the section
    close = close or difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if not close:
        leaves = difflib.get_close_matches(leaf, [k.rpartition(".")[2] for k in siblings], n=1, cutoff=0.4)
        close = [f"{section}.{leaves[0]}" if section else leaves[0]] if leaves else []
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"{source}unknown config key '{key}'{hint}")


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """Check / convert ``value`` to the annotated type ``hint``; raise ConfigError naming ``key``."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _coerce(value, option, key, source)
            except ConfigError:
                pass
        raise ConfigError(f"{source}config key '{key}' expects {_type_name(hint)}, got {value!r}")
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
        if value is None:
            return ""
    elif hint is list or origin is list:
        if isinstance(value, (list, tuple)):
            return list(value)
    elif hint is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
        if value is None:
            return {}
    raise ConfigError(f"{source}config key '{key}' expects {_type_name(hint)}, got {value!r} "
                      f"({type(value).__name__})")


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) in (Union, types.UnionType):
        return " or ".join(_type_name(h) for h in typing.get_args(hint))
    return getattr(hint, "__name__", str(hint))


def _build(cls: type, data: dict, prefix: str, source: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}config section '{prefix.rstrip('.') or 'root'}' must be a mapping, got {data!r}")
    hints = _type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise _unknown_key_error(f"{prefix}{key}", source)
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value or {}, f"{prefix}{key}.", source)
        else:
            kwargs[key] = _coerce(value, hint, f"{prefix}{key}", source)
    return cls(**kwargs)


def config_from_dict(data: dict, source: str = "") -> Config:
    """Build and validate a :class:`Config` from a nested dict (``source`` prefixes error messages)."""
    config = _build(Config, data, "", f"{source}: " if source else "")
    validate_config(config)
    return config


def config_to_dict(config: Config) -> dict:
    """Nested plain dict of ``config`` (YAML / checkpoint friendly)."""
    return dataclasses.asdict(config)


def validate_config(config: Config) -> None:
    """Check value ranges; raise :class:`ConfigError` naming the key."""
    checks = [
        (config.batch_size >= 1, "batch_size", "must be >= 1"),
        (config.workers >= 0, "workers", "must be >= 0"),
        (config.model.num_classes >= 1, "model.num_classes", "must be >= 1"),
        (config.solver.optimizer in ("sgd", "adamw"), "solver.optimizer", "must be 'sgd' or 'adamw'"),
        (config.solver.epochs >= 1, "solver.epochs", "must be >= 1"),
        (config.solver.warmup_iters >= 0, "solver.warmup_iters", "must be >= 0"),
        (0 < config.solver.warmup_ratio <= 1, "solver.warmup_ratio", "must be in (0, 1]"),
        (config.solver.lr >= 0, "solver.lr", "must be >= 0 (0 = linear scaling of base_lr)"),
        (config.solver.max_nonfinite >= 1, "solver.max_nonfinite", "must be >= 1"),
        (config.solver.amp_dtype in ("auto", "bf16", "fp16"), "solver.amp_dtype", "must be 'auto', 'bf16' or 'fp16'"),
        (config.log.every >= 1, "log.every", "must be >= 1"),
        (config.log.objective_every >= 0, "log.objective_every", "must be >= 0"),
        (config.checkpoint.keep_last >= 0, "checkpoint.keep_last", "must be >= 0 (0 = keep all)"),
        (config.checkpoint.every_iters >= 0, "checkpoint.every_iters", "must be >= 0"),
        (0 <= config.data.flip_prob <= 1, "data.flip_prob", "must be in [0, 1]"),
        (all(isinstance(s, int) for s in config.solver.steps), "solver.steps", "must be a list of epochs (ints)"),
    ]
    min_size = config.data.min_size
    checks.append((isinstance(min_size, int) and min_size > 0 or isinstance(min_size, list) and len(min_size) == 2
                   and all(isinstance(s, int) and s > 0 for s in min_size) and min_size[0] <= min_size[1],
                   "data.min_size", "must be a positive int or a range [lo, hi]"))
    for ok, key, message in checks:
        if not ok:
            raise ConfigError(f"config key '{key}' {message}, got {_get(config, key)!r}")
    validate_model(config.model)


def validate_model(model: ModelConfig) -> None:
    """Check the detector name, its options and every component name / option / combination against
    :mod:`umop.models.build` (nothing is built); ConfigError naming the config key and the nearest name."""
    # imported here: ``umop config show`` / ``umop -h`` read configs without loading torch
    from ..models.build import check_model_options

    try:
        check_model_options(model.name, model.component_specs(), model.options)
    except ValueError as error:
        raise ConfigError(f"config section 'model': {error}") from None


def _get(config: Config, key: str) -> Any:
    value: Any = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


# ----------------------------------------------------------------------------------------------- overrides

def parse_override(text: str) -> tuple[str, Any]:
    """Split ``"solver.lr=0.02"`` into ``("solver.lr", 0.02)``; the value is parsed as YAML.

    ``a=[1, 2]`` gives a list, ``a=true`` a bool, ``a=null`` None, ``a=abc`` the string ``"abc"``.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override '{text}' must look like key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Apply ``key.sub=value`` overrides to a nested config dict (returns a new dict).

    Keys are checked against :class:`Config`; the keys below ``model.options`` and ``model.*_options`` are
    checked when the config is built (:func:`validate_model`).
    """
    data = copy.deepcopy(data)
    valid = set(_valid_keys(Config))
    for text in overrides or []:
        key, value = parse_override(text)
        parts = key.split(".")
        is_option = len(parts) >= 3 and parts[0] == "model" and parts[1] in MODEL_OPTION_KEYS
        if key not in valid and not is_option:
            raise _unknown_key_error(key, "--set: ")
        node = data
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return data


def load_config(path_or_name: str | Path, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (file path or packaged name), resolve ``_base_``, apply ``--set`` overrides.

    The run name defaults to the file's stem and the output folder to ``runs/<name>``.
    """
    path = resolve_config_path(path_or_name)
    data = _read_yaml(path)
    source = str(path)
    if overrides:  # the file alone first, so that an error is blamed on the file or on --set, not both
        config_from_dict(copy.deepcopy(data), source=source)
        data = apply_overrides(data, overrides)
        source = f"--set (over {path})"
    config = config_from_dict(data, source=source)
    if not config.name:
        config.name = path.stem
    if not config.output_dir:
        config.output_dir = str(Path("runs") / config.name)
    return config


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))


# ------------------------------------------------------------------------------------------------ meanings

def config_help(cls: type = None) -> dict[str, str]:  # type: ignore[assignment]
    """``{"solver.lr": "learning rate (...)", ...}``: the one-line meaning of every key (sections included)."""
    cls = Config if cls is None else cls
    out: dict[str, str] = {}

    def walk(section: type, prefix: str) -> None:
        hints = _type_hints(section)
        for f in dataclasses.fields(section):
            out[prefix + f.name] = f.metadata.get("help", "")
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], f"{prefix}{f.name}.")

    walk(cls, "")
    return out


def describe_config(config: Config) -> str:
    """The resolved config as YAML with every key and, as a comment, its meaning (``umop config show``)."""
    meanings = config_help()
    width = 44
    lines: list[str] = []

    def scalar(value: Any) -> str:
        return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n...").strip()

    def emit(node: Any, section: type, prefix: str, indent: str) -> None:
        hints = _type_hints(section)
        for f in dataclasses.fields(section):
            key = prefix + f.name
            value = getattr(node, f.name)
            meaning = meanings.get(key, "")
            if dataclasses.is_dataclass(hints[f.name]):
                lines.append(f"{indent}{f.name}:".ljust(width) + f"  # {meaning}")
                emit(value, hints[f.name], key + ".", indent + "  ")
            elif key == "model.options" and value:
                lines.append(f"{indent}{f.name}:".ljust(width) + f"  # {meaning}")
                for option, option_value in value.items():
                    lines.append(f"{indent}  {option}: {scalar(option_value)}")
            else:
                lines.append(f"{indent}{f.name}: {scalar(value)}".ljust(width) + f"  # {meaning}")

    emit(config, Config, "", "")
    return "\n".join(lines) + "\n"
