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

from ..models.build import COMPONENTS, check_model_options

__all__ = [
    "Config", "ModelConfig", "DataConfig", "SyntheticDataConfig", "SolverConfig", "LogConfig", "EvalConfig",
    "ConfigError", "load_config", "config_from_dict", "config_to_dict", "apply_overrides", "parse_override",
    "resolve_config_path", "packaged_config_dir", "list_packaged_configs",
]


class ConfigError(ValueError):
    """A config file or an override is invalid; the message names the key (and the file, if any)."""


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

    name: str = "atss"
    num_classes: int = 80
    backbone: str = "resnet50"
    pretrained_backbone: bool = False
    cls_loss: str = ""
    cls_loss_options: dict = field(default_factory=dict)
    box_loss: str = ""
    box_loss_options: dict = field(default_factory=dict)
    sampler: str = ""
    sampler_options: dict = field(default_factory=dict)
    reweighting: str = ""
    reweighting_options: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)

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


MODEL_COMPONENTS = COMPONENTS
# the free-form mappings of the model section (their keys are checked by umop.models.build, not here)
MODEL_OPTION_KEYS = ("options",) + tuple(f"{key}_options" for key in MODEL_COMPONENTS)


@dataclass
class SyntheticDataConfig:
    """Built-in synthetic dataset (:func:`umop.data.make_synthetic_dataset`), generated on first use."""

    enabled: bool = False
    num_train: int = 64
    num_val: int = 16
    image_size: int = 256
    num_classes: int = 3
    class_imbalance: float = 4.0
    min_object_size: int = 4
    max_object_size_fraction: float = 0.8
    objects_per_image: list = field(default_factory=lambda: [1, 8])
    seed: int = 0
    out_dir: str = ""  # default: RUN_DIR/data


@dataclass
class DataConfig:
    """Dataset paths (COCO json + image folder) and the resize / flip recipe.

    ``min_size`` is the shorter side after resizing: an int, or ``[lo, hi]`` for multi-scale training
    (a size drawn uniformly from the range per image). Evaluation uses ``test_min_size`` (default: the int
    ``min_size``, or the upper end of the range).
    """

    train_ann: str = ""
    train_images: str = ""
    val_ann: str = ""
    val_images: str = ""
    min_size: Union[int, list] = 800
    max_size: int = 1333
    test_min_size: int = 0  # 0 = derived from min_size
    flip_prob: float = 0.5
    synthetic: SyntheticDataConfig = field(default_factory=SyntheticDataConfig)


@dataclass
class SolverConfig:
    """Optimisation recipe (mmdetection 1x by default: SGD, warmup 500 iters, steps at epochs 8 and 11).

    ``lr`` of 0 means ``base_lr * batch_size / base_batch_size`` (linear scaling rule).
    """

    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.0
    base_lr: float = 0.01
    base_batch_size: int = 16
    momentum: float = 0.9
    weight_decay: float = 1e-4
    norm_bias_decay: bool = True  # False: no weight decay on norm layers and biases
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    epochs: int = 12
    steps: list = field(default_factory=lambda: [8, 11])
    gamma: float = 0.1
    grad_clip: float = 0.0  # max gradient L2 norm; 0 = off
    amp: bool = True  # mixed precision, used on CUDA only
    max_iters_per_epoch: int = 0  # 0 = the whole dataset; >0 caps an epoch (quick runs, tests)
    max_nonfinite: int = 20  # consecutive non-finite losses tolerated before stopping
    max_train_seconds: float = 0.0  # >0: stop (checkpoint + evaluate) once training has run this long


@dataclass
class LogConfig:
    """Logging: progress bar, ``log.jsonl`` every ``every`` iterations, TensorBoard scalars."""

    every: int = 20
    tensorboard: bool = True
    progress_bar: bool = True
    objective_every: int = 0  # >0: log per-loss gradient norms at the FPN features (survey Fig. 14)


@dataclass
class EvalConfig:
    """Evaluation on the validation set during training (every ``every`` epochs; 0 = only at the end)."""

    every: int = 1
    batch_size: int = 0  # 0 = the training batch size per process


@dataclass
class Config:
    """A complete training run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    batch_size: int = 16  # images per optimiser step over all processes (split across DDP ranks)
    workers: int = 2  # DataLoader worker processes per rank
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    output_dir: str = ""  # default: runs/<config name>
    name: str = ""  # run name, default: the config file's stem

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
        (config.log.every >= 1, "log.every", "must be >= 1"),
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
    data = apply_overrides(data, overrides)
    config = config_from_dict(data, source=str(path))
    if not config.name:
        config.name = path.stem
    if not config.output_dir:
        config.output_dir = str(Path("runs") / config.name)
    return config


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
