"""``umop study``: every (variant, seed) cell of a comparison is an ordinary run folder, trained by a
``umop train ... --resume auto`` subprocess; finished cells are skipped, an interrupted one resumes.

Layout of ``OUT``::

    OUT/study.yaml                 the study's specification (``umop study OUT/study.yaml`` continues it)
    OUT/<variant>/seed<k>/         a run folder (config.yaml, log.jsonl, eval.json, checkpoints/, summary.json)
        study_attempts.jsonl       one line per training attempt of the study: seconds, exit code
        eval_<name>.json           with ``--eval-set``: the last checkpoint evaluated again with those test settings
        stdout.log, stderr.log     the training subprocess's output (appended per attempt)
        failed.json                the last attempt failed: exit code and the tail of its stderr
    OUT/study.json, study.md, study.html, figures/      rewritten after every cell (see report.py)

A cell is finished when its ``summary.json`` holds a complete summary (the trainer writes it last).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

from .report import write_reports

__all__ = ["StudySpec", "Cell", "parse_vary", "parse_seeds", "resolve_key", "load_study_file", "is_study_file",
           "plan_cells", "check_cells", "cell_state", "run_study", "StudyStopped"]

KEY_ALIASES = {"detector": "model.name"}
STUDY_FILE_KEYS = ("config", "vary", "seeds", "out", "set", "baseline", "eval_set", "eval_name")
DEFAULT_CELL_OVERRIDES = ["log.progress_bar=false"]  # tqdm bars would bury the stderr tail of a failed cell
# config keys that do not change the trained model (ignored when a finished cell's config is compared)
_IGNORED_KEYS = ("output_dir", "name", "device", "workers", "eval.every", "eval.batch_size")
_IGNORED_SECTIONS = ("log.", "checkpoint.")
_STDERR_TAIL_CHARS = 3000


class StudyStopped(Exception):
    """The study was stopped by SIGINT / SIGTERM (the running cell was stopped and can resume)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class StudySpec:
    """What to compare: a base config, the varied keys, the seeds, overrides applied to every cell."""

    config: str
    vary: list[tuple[str, list[str]]]
    seeds: list[int]
    out: str
    overrides: list[str] = field(default_factory=list)
    baseline: str = ""  # variant name; default: the first variant
    # test settings of one more evaluation of every finished cell's last checkpoint (``--eval-set``), and the
    # name of its file ``CELL/eval_<eval_name>.json``; the trained weights stay the study's
    eval_overrides: list[str] = field(default_factory=list)
    eval_name: str = ""

    def __post_init__(self) -> None:
        self.check_eval()

    def check_eval(self) -> None:
        """Name the extra evaluation after its settings when no name is given; refuse a name without settings."""
        if self.eval_overrides and not self.eval_name:
            self.eval_name = default_eval_name(self.eval_overrides)
        if self.eval_name and not self.eval_overrides:
            raise ValueError(f"--eval-name '{self.eval_name}' needs --eval-set KEY=VALUE (the test settings)")
        if self.eval_name and _safe(self.eval_name) != self.eval_name:
            raise ValueError(f"--eval-name '{self.eval_name}': use letters, digits and . _ + - only")

    def to_dict(self) -> dict[str, Any]:
        data = {"config": self.config, "vary": {key: list(values) for key, values in self.vary},
                "seeds": list(self.seeds), "out": self.out, "set": list(self.overrides),
                "baseline": self.baseline or None}
        if self.eval_overrides:
            data.update(eval_set=list(self.eval_overrides), eval_name=self.eval_name)
        return data


@dataclass
class Cell:
    """One (variant, seed) run."""

    variant: str
    seed: int
    run_dir: Path
    overrides: list[str]  # the variant's ``key=value`` items, then ``seed=K``

    @property
    def name(self) -> str:
        return f"{self.variant}/seed{self.seed}"


# ------------------------------------------------------------------------------------------- parsing

def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets/braces/quotes: ``a,[1,2],b`` -> ``["a", "[1,2]", "b"]``."""
    parts, depth, quote, current = [], 0, "", []
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    parts.append("".join(current).strip())
    return parts


def resolve_key(key: str) -> str:
    """A full config key for ``key``: itself if valid, an alias (``detector`` -> ``model.name``), or the one
    valid key whose last part is ``key`` (``cls_loss`` -> ``model.cls_loss``, ``epochs`` -> ``solver.epochs``).

    Raises:
        ValueError: unknown or ambiguous key (the message names it and the nearest valid key).
    """
    from ..engine.config import MODEL_OPTION_KEYS, _unknown_key_error, _valid_keys, Config

    key = key.strip()
    valid = _valid_keys(Config)
    parts = key.split(".")
    if key in valid or (len(parts) >= 3 and parts[0] == "model" and parts[1] in MODEL_OPTION_KEYS):
        return key  # free-form option keys (model.options.*, model.cls_loss_options.*, ...): as --set takes them
    if key in KEY_ALIASES:
        return KEY_ALIASES[key]
    matches = [k for k in valid if k.rpartition(".")[2] == key]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ValueError(f"--vary: key '{key}' is ambiguous ({', '.join(matches)}): give the full key")
    raise ValueError(str(_unknown_key_error(key, "--vary: ")))


def parse_vary(text: str) -> tuple[str, list[str]]:
    """``"model.cls_loss=focal,pfl"`` -> ``("model.cls_loss", ["focal", "pfl"])`` (values kept as text,
    parsed as YAML by the trainer's ``--set``; commas inside ``[...]`` do not split)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip() or not raw.strip():
        raise ValueError(f"--vary '{text}' must look like KEY=V1,V2,...")
    values = _split_top_level(raw)
    if any(not value for value in values):
        raise ValueError(f"--vary '{text}': empty value in the list")
    parsed = [json.dumps(_yaml_value(value), sort_keys=True, default=str) for value in values]
    if len(set(parsed)) != len(parsed):
        raise ValueError(f"--vary '{text}': a value is repeated (values are compared as YAML: 0.5 = 0.50)")
    return resolve_key(key), values


def _yaml_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def merge_vary(vary: list[tuple[str, list[str]]], more: list[tuple[str, list[str]]]) -> list[tuple[str, list[str]]]:
    """``vary`` with ``more``'s entries: a key already there takes the new values, a new key is appended (so the
    same command run twice gives the same study)."""
    merged = dict(vary)
    merged.update(more)
    return list(merged.items())


def _override_key(item: str) -> str:
    """``"solver.lr=0.02"`` -> ``"solver.lr"``."""
    return item.partition("=")[0].strip()


def merge_overrides(overrides: list[str], more: list[str]) -> list[str]:
    """``overrides`` with ``more``'s ``KEY=VALUE`` items: an item for a key already there replaces it."""
    replaced = {_override_key(item) for item in more}
    return [item for item in overrides if _override_key(item) not in replaced] + list(more)


def parse_seeds(text: str | list) -> list[int]:
    """``"0,1,2"`` or ``[0, 1, 2]`` -> ``[0, 1, 2]`` (distinct non-negative ints)."""
    items = text if isinstance(text, list) else [part for part in str(text).split(",") if part.strip()]
    try:
        seeds = [int(str(item).strip()) for item in items]
    except ValueError as error:
        raise ValueError(f"--seeds '{text}' must be a comma-separated list of integers") from error
    if not seeds or any(seed < 0 for seed in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds '{text}' must list distinct non-negative integers")
    return seeds


def default_eval_name(overrides: list[str]) -> str:
    """``["model.options.score_thresh=0"]`` -> ``"score_thresh-0"`` (the last part of each key, its value)."""
    parts = []
    for text in overrides:
        key, _, value = text.partition("=")
        parts.append(f"{_safe(key.strip().rpartition('.')[2])}-{_safe(value.strip())}")
    return "_".join(parts)


def is_study_file(path: str | Path) -> bool:
    """True for a YAML file whose top level holds ``vary`` (a study file, not a training config)."""
    path = Path(path)
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        return False
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return False
    return isinstance(data, dict) and "vary" in data


def load_study_file(path: str | Path) -> StudySpec:
    """Read a study file::

        config: bccd_atss_r18_focal
        vary: {model.cls_loss: [focal, pfl, pfl_mean]}      # or a list of "KEY=V1,V2" strings
        seeds: [0, 1, 2]
        out: runs/study_bccd
        set: [solver.epochs=12]                             # optional
        baseline: focal                                     # optional (default: the first variant)
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"study file {path}: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"study file {path}: the top level must be a mapping")
    unknown = [key for key in data if key not in STUDY_FILE_KEYS]
    if unknown:
        raise ValueError(f"study file {path}: unknown key '{unknown[0]}' (keys: {', '.join(STUDY_FILE_KEYS)})")
    for key in ("config", "vary", "seeds", "out"):
        if data.get(key) in (None, "", [], {}):
            raise ValueError(f"study file {path}: key '{key}' is missing")
    vary_raw = data["vary"]
    if isinstance(vary_raw, dict):
        vary = []
        for key, values in vary_raw.items():
            values = values if isinstance(values, list) else [values]
            text = ",".join(_value_text(v) for v in values)
            vary.append(parse_vary(f"{key}={text}"))
    elif isinstance(vary_raw, list):
        vary = [parse_vary(str(item)) for item in vary_raw]
    else:
        raise ValueError(f"study file {path}: 'vary' must be a mapping KEY: [values] or a list of 'KEY=V1,V2'")
    try:
        overrides, eval_overrides = (_override_list(data.get(key)) for key in ("set", "eval_set"))
        return StudySpec(config=str(data["config"]), vary=vary, seeds=parse_seeds(data["seeds"]),
                         out=str(data["out"]), overrides=overrides, baseline=str(data.get("baseline") or ""),
                         eval_overrides=eval_overrides, eval_name=str(data.get("eval_name") or ""))
    except ValueError as error:
        raise ValueError(f"study file {path}: {error}") from error


def check_run_from_start_folder(path: str | Path, out: str) -> None:
    """Refuse a study's own ``OUT/study.yaml`` run from another working directory than the one it was started
    from: its relative ``out`` would then name a new, empty folder and every cell would train again.

    Raises:
        ValueError: naming the file, where ``out`` points from here, and the folder to run it from.
    """
    path, out_here = Path(path), Path(out).resolve()
    folder = path.parent.resolve()
    if path.name != "study.yaml" or not (folder / "study.json").is_file() or out_here == folder:
        return
    start, out_parts = "the folder it was started from", Path(out).parts
    if not Path(out).is_absolute() and folder.parts[-len(out_parts):] == out_parts:
        start = str(Path(*folder.parts[:-len(out_parts)]))
    raise ValueError(f"study file {path}: its out '{out}' is {out_here} from this working directory, "
                     f"not the study's own folder {folder}; running it here would train every cell again (run it "
                     f"from {start}, where its relative config and --set paths hold too, or give --out {folder})")


def _value_text(value: Any) -> str:
    """A study file's YAML value as ``--set`` / ``--vary`` text: a string as it is, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def _override_list(raw: Any) -> list[str]:
    """A study file's ``set`` / ``eval_set``: a list of ``KEY=VALUE``, one such string, or a mapping, as
    ``KEY=VALUE`` strings."""
    if isinstance(raw, dict):
        return [f"{k}={_value_text(v)}" for k, v in raw.items()]
    if isinstance(raw, str):
        return [raw]
    if raw is not None and not isinstance(raw, list):
        raise ValueError(f"'set' / 'eval_set' must be a list of KEY=VALUE, got {raw!r}")
    return [str(item) for item in raw or []]


# -------------------------------------------------------------------------------------------- cells

def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-.") or "x"


def variant_names(vary: list[tuple[str, list[str]]]) -> list[tuple[str, list[str]]]:
    """``[(name, [key=value, ...])]`` for the product of the varied values, in order.

    The name joins the values (``focal``, ``atss_pfl``); where that is not unique, ``leaf-value`` parts.
    """
    keys = [key for key, _values in vary]
    combos = list(itertools.product(*[values for _key, values in vary]))
    names = ["_".join(_safe(value) for value in combo) for combo in combos]
    if len(set(names)) != len(names):
        names = ["_".join(f"{_safe(key.rpartition('.')[2])}-{_safe(value)}" for key, value in zip(keys, combo))
                 for combo in combos]
    if len(set(names)) != len(names):
        names = [f"v{index}_{name}" for index, name in enumerate(names)]
    return [(name, [f"{key}={value}" for key, value in zip(keys, combo)]) for name, combo in zip(names, combos)]


def plan_cells(spec: StudySpec) -> tuple[list[str], list[Cell]]:
    """Variant names (baseline first in the report, not here) and the cells, variant-major then seed."""
    if not spec.vary:
        raise ValueError("a study needs at least one --vary KEY=V1,V2,...")
    keys = [key for key, _values in spec.vary]
    if len(set(keys)) != len(keys):
        raise ValueError(f"--vary: key given twice among {keys}")
    fixed = {_override_key(text) for text in spec.overrides}
    clash = [key for key in keys if key in fixed or key == "seed"]
    if clash:
        raise ValueError(f"--vary key '{clash[0]}' is also fixed by --set (or is the seed: use --seeds)")
    variants = variant_names(spec.vary)
    names = [name for name, _ in variants]
    if spec.baseline and spec.baseline not in names:
        raise ValueError(f"--baseline '{spec.baseline}' is not a variant (variants: {', '.join(names)})")
    out = Path(spec.out)
    cells = [Cell(name, seed, out / name / f"seed{seed}", [*items, f"seed={seed}"])
             for name, items in variants for seed in spec.seeds]
    return names, cells


def cell_command(spec: StudySpec, cell: Cell, python: str | None = None) -> list[str]:
    """The training command of a cell (``python -m umop.cli train CONFIG --set ... --out CELL --resume auto``)."""
    overrides = [*DEFAULT_CELL_OVERRIDES, *spec.overrides, *cell.overrides]
    return [python or sys.executable, "-m", "umop.cli", "train", spec.config, "--set", *overrides,
            "--out", str(cell.run_dir), "--resume", "auto"]


def eval_command(spec: StudySpec, cell: Cell, python: str | None = None) -> list[str]:
    """The command of a finished cell's extra evaluation (``python -m umop.cli eval CELL/checkpoints/last.pt
    --set ... --out CELL/eval_<name>.json``): the stored config, with the ``--eval-set`` test settings."""
    return [python or sys.executable, "-m", "umop.cli", "eval", str(cell.run_dir / "checkpoints" / "last.pt"),
            "--set", *DEFAULT_CELL_OVERRIDES, *spec.eval_overrides, "--out", str(extra_eval_path(spec, cell))]


def extra_eval_path(spec: StudySpec, cell: Cell) -> Path:
    return cell.run_dir / f"eval_{spec.eval_name}.json"


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and not prefix.endswith("options."):
        out: dict[str, Any] = {}
        for key, value in data.items():
            if isinstance(value, dict) and key != "options":
                out.update(_flatten(value, f"{prefix}{key}."))
            elif key == "options" and isinstance(value, dict):
                out.update({f"{prefix}options.{k}": v for k, v in value.items()})
            else:
                out[f"{prefix}{key}"] = value
        return out
    return {prefix.rstrip("."): data}


def check_cells(spec: StudySpec, cells: list[Cell]) -> dict[str, Any]:
    """Resolve every cell's config in-process (unknown keys and bad values fail here, before any training)
    and compare it with the ``config.yaml`` of a cell that has already run.

    Returns ``{cell.name: Config}``. Raises ValueError naming the key (and the cell) on any problem.
    """
    from ..engine.config import config_to_dict, load_config

    configs = {}
    for cell in cells:
        overrides = [*DEFAULT_CELL_OVERRIDES, *spec.overrides, *cell.overrides, f"output_dir={cell.run_dir}"]
        try:
            config = load_config(spec.config, overrides)
        except ValueError as error:
            raise ValueError(f"cell {cell.name}: {error}") from error
        configs[cell.name] = config
        if spec.eval_overrides:
            try:
                load_config(spec.config, [*overrides, *spec.eval_overrides])
            except ValueError as error:
                raise ValueError(f"--eval-set: {error}") from error
        saved = cell.run_dir / "config.yaml"
        if saved.is_file():
            _compare_with_saved(cell, _flatten(config_to_dict(config)), saved)
    return configs


def _compare_with_saved(cell: Cell, intended: dict[str, Any], saved_path: Path) -> None:
    try:
        saved = _flatten(yaml.safe_load(saved_path.read_text()) or {})
    except yaml.YAMLError:
        return
    for key, value in intended.items():
        if key in _IGNORED_KEYS or key.startswith(_IGNORED_SECTIONS):
            continue
        if key in saved and value in ("", None) and key.startswith("data."):
            continue  # filled in at run time (synthetic data paths)
        same_number = (isinstance(value, float) and isinstance(saved.get(key), (int, float))
                       and math.isclose(value, saved[key]))
        if key in saved and saved[key] != value and not same_number:
            raise ValueError(f"cell {cell.name} already ran with {key}={saved[key]!r}, but this study sets "
                             f"{key}={value!r} ({saved_path}); use another --out or remove that folder")


# -------------------------------------------------------------------------------------------- state

def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def cell_state(cell: Cell, eval_name: str = "") -> dict[str, Any]:
    """What the cell's folder says: ``status`` (finished | failed | partial | pending), the summary, the
    evaluations, the attempts, for a failed cell the exit code and stderr tail, and with ``eval_name`` the
    extra evaluation ``eval_<eval_name>.json`` (None until it exists)."""
    run_dir = cell.run_dir
    summary = _read_json(run_dir / "summary.json")
    finished = isinstance(summary, dict) and "epochs" in summary and "iterations" in summary
    attempts = []
    attempts_path = run_dir / "study_attempts.jsonl"
    if attempts_path.is_file():
        for line in attempts_path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                attempts.append(json.loads(line))
    failure = _read_json(run_dir / "failed.json")
    evaluations = _read_json(run_dir / "eval.json")
    config = None
    if (run_dir / "config.yaml").is_file():
        with contextlib.suppress(yaml.YAMLError, OSError):
            config = yaml.safe_load((run_dir / "config.yaml").read_text())
    if finished:
        status = "finished"
    elif isinstance(failure, dict):
        status = "failed"
    elif (run_dir / "checkpoints" / "last.pt").is_file():
        status = "partial"
    else:
        status = "pending"
    extra = _read_json(run_dir / f"eval_{eval_name}.json") if eval_name and finished else None
    return {"status": status, "summary": summary if finished else None,
            "evaluations": evaluations if isinstance(evaluations, list) else [], "attempts": attempts,
            "failure": failure if status == "failed" else None, "config": config,
            "extra_evaluation": extra if isinstance(extra, dict) else None,
            "has_checkpoint": (run_dir / "checkpoints" / "last.pt").is_file()}


# --------------------------------------------------------------------------------------------- running

@contextlib.contextmanager
def _study_lock(out: Path) -> Iterator[None]:
    """One study process per folder (a second one would train the same cell twice)."""
    out.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock
        yield
        return
    handle = (out / ".study.lock").open("a+")  # not "w": that would empty the running study's PID
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        handle.close()
        raise ValueError(f"another `umop study` is running on {out} (lock {out / '.study.lock'})") from error
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into :class:`StudyStopped` (SIGINT arrives as KeyboardInterrupt)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        raise StudyStopped(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """SIGINT and SIGTERM ignored inside (main thread only), restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _tail(path: Path, offset: int, chars: int = _STDERR_TAIL_CHARS) -> str:
    if not path.is_file():
        return ""
    with path.open("rb") as stream:
        stream.seek(offset)
        text = stream.read().decode("utf-8", errors="replace")
    return text[-chars:]


def _stop_process(process: subprocess.Popen, grace_seconds: float = 60.0) -> None:
    """SIGTERM the training process (it saves a resumable checkpoint and exits), kill it after ``grace_seconds``."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _run_logged(command: list[str], run_dir: Path, on_stop: Any = None) -> tuple[int, str]:
    """Run ``command``, its output appended to ``run_dir``'s stdout.log / stderr.log; return the exit code and
    the tail of this run's stderr.

    Raises:
        StudyStopped / KeyboardInterrupt: the study was stopped; the subprocess is stopped first (it saves a
        resumable checkpoint), then ``on_stop(exit code)`` is called.
    """
    stderr_path, stdout_path = run_dir / "stderr.log", run_dir / "stdout.log"
    header = f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} umop study: {' '.join(command[1:])}\n"
    for path in (stdout_path, stderr_path):
        with path.open("a") as stream:
            stream.write(header)
    offset = stderr_path.stat().st_size
    with stdout_path.open("a") as stdout, stderr_path.open("a") as stderr:
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL)
        try:
            returncode = process.wait()
        except BaseException as error:
            with _signals_ignored():  # a second Ctrl-C / SIGTERM must not leave the subprocess running
                if isinstance(error, KeyboardInterrupt):  # Ctrl-C reached the subprocess too: let it save and exit
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        process.wait(timeout=60)
                _stop_process(process)
                if on_stop is not None:
                    on_stop(process.returncode)
            raise
    return returncode, _tail(stderr_path, offset)


def run_cell(spec: StudySpec, cell: Cell, *, python: str | None = None) -> dict[str, Any]:
    """Train one cell in a subprocess; return its state afterwards. A non-zero exit writes ``failed.json``.

    Raises:
        StudyStopped / KeyboardInterrupt: the study was stopped; the subprocess is stopped first.
    """
    run_dir = cell.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "failed.json").unlink(missing_ok=True)
    command = cell_command(spec, cell, python)
    started = time.time()
    returncode, tail = _run_logged(command, run_dir,
                                   on_stop=lambda code: _record_attempt(run_dir, started, code, stopped=True))
    _record_attempt(run_dir, started, returncode)
    state = cell_state(cell, spec.eval_name)
    if returncode != 0 or state["status"] != "finished":
        failure = {"returncode": returncode, "stderr_tail": tail,
                   "command": command[1:], "time": time.strftime("%Y-%m-%d %H:%M:%S")}
        if returncode == 0:
            failure["stderr_tail"] = ("the training exited with code 0 but wrote no summary.json\n"
                                      + failure["stderr_tail"])
        (run_dir / "failed.json").write_text(json.dumps(failure, indent=1))
        state = cell_state(cell, spec.eval_name)
    return state


def needs_extra_eval(spec: StudySpec, state: dict[str, Any]) -> bool:
    """A finished cell with a checkpoint and without its ``--eval-set`` evaluation."""
    return bool(spec.eval_overrides) and state["status"] == "finished" and state["extra_evaluation"] is None \
        and state["has_checkpoint"]


def evaluate_cell(spec: StudySpec, cell: Cell, *, python: str | None = None) -> tuple[dict[str, Any], str]:
    """Evaluate a finished cell's last checkpoint with the ``--eval-set`` test settings (a ``umop eval``
    subprocess writing ``CELL/eval_<name>.json``); return the cell's state and, if it failed, the stderr tail."""
    returncode, tail = _run_logged(eval_command(spec, cell, python), cell.run_dir)
    state = cell_state(cell, spec.eval_name)
    if returncode == 0 and state["extra_evaluation"] is not None:
        return state, ""
    return state, tail.strip() or f"exit code {returncode}"


def _record_attempt(run_dir: Path, started: float, returncode: int | None, stopped: bool = False) -> None:
    record = {"started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
              "seconds": round(time.time() - started, 1), "returncode": returncode, "stopped": stopped}
    with (run_dir / "study_attempts.jsonl").open("a") as stream:
        stream.write(json.dumps(record) + "\n")


def estimate_seconds_per_cell(states: dict[str, dict[str, Any]]) -> float | None:
    """Wall seconds of the first finished cell (all its attempts; its training time without a record)."""
    for state in states.values():
        if state["status"] == "finished":
            seconds = sum(float(a.get("seconds", 0)) for a in state["attempts"])
            return seconds or float(state["summary"].get("train_seconds") or 0) or None
    return None


def _format_duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


def run_study(spec: StudySpec, *, dry_run: bool = False, python: str | None = None,
              log: Any = print) -> dict[str, Any]:
    """Run (or, with ``dry_run``, list) the study's cells; write the reports after every cell.

    Returns the study record written to ``OUT/study.json``. Raises :class:`StudyStopped` or
    ``KeyboardInterrupt`` when stopped (the reports are written first; run the same command to continue).
    """
    variants, cells = plan_cells(spec)
    check_cells(spec, cells)
    out = Path(spec.out)
    states = {cell.name: cell_state(cell, spec.eval_name) for cell in cells}
    todo = [cell for cell in cells if states[cell.name]["status"] != "finished"]
    if dry_run:
        per_cell = estimate_seconds_per_cell(states)
        log(f"study {out}: {len(variants)} variants x {len(spec.seeds)} seeds = {len(cells)} cells, "
            f"{len(cells) - len(todo)} finished")
        for cell in cells:
            log(f"  {states[cell.name]['status']:<9} {cell.name:<32} python {' '.join(cell_command(spec, cell)[1:])}")
            if needs_extra_eval(spec, states[cell.name]) or (spec.eval_overrides and cell in todo):
                log(f"  {'then':<9} {'':<32} python {' '.join(eval_command(spec, cell)[1:])}")
        if per_cell is None:
            log("estimated time: unknown until one cell has finished")
        else:
            log(f"estimated time for the {len(todo)} remaining cells: {_format_duration(per_cell * len(todo))} "
                f"({_format_duration(per_cell)} per cell, from the first finished cell)")
        return {"cells": len(cells), "remaining": len(todo), "seconds_per_cell": per_cell}

    with _study_lock(out), _stop_on_sigterm():
        _check_eval_name_reuse(spec, out / "study.yaml")
        (out / "study.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
        log(f"study {out}: {len(cells)} cells ({len(cells) - len(todo)} finished, {len(todo)} to run)")
        record = write_reports(spec, variants, cells, states)
        for cell in cells:
            if cell in todo:
                record = _train_and_report(spec, variants, cells, states, cell, todo, python, log)
            if needs_extra_eval(spec, states[cell.name]):
                record = _evaluate_and_report(spec, variants, cells, states, cell, python, log)
        log(f"reports: {out / 'study.md'}, {out / 'study.html'}, {out / 'study.json'}")
        return record


def _check_eval_name_reuse(spec: StudySpec, previous_file: Path) -> None:
    """Refuse ``--eval-name`` NAME when the study's previous run used NAME with other ``--eval-set`` settings: the
    cells' ``eval_<NAME>.json`` would be read back and reported under the new settings."""
    if not spec.eval_overrides or not previous_file.is_file():
        return
    try:
        previous = yaml.safe_load(previous_file.read_text()) or {}
    except yaml.YAMLError:
        return
    if previous.get("eval_name") == spec.eval_name and previous.get("eval_set") not in (None, spec.eval_overrides):
        raise ValueError(f"--eval-name '{spec.eval_name}' was used with --eval-set {' '.join(previous['eval_set'])} "
                         f"({previous_file}); give these settings another --eval-name")


def _stopped(spec: StudySpec, variants: list[str], cells: list[Cell], states: dict[str, dict[str, Any]],
             cell: Cell, log: Any, what_happens_next: str) -> None:
    states[cell.name] = cell_state(cell, spec.eval_name)
    write_reports(spec, variants, cells, states)
    log(f"study stopped during {cell.name}; run the same command again to continue "
        f"(finished cells are skipped, {what_happens_next})")


def _evaluate_and_report(spec: StudySpec, variants: list[str], cells: list[Cell], states: dict[str, dict[str, Any]],
                         cell: Cell, python: str | None, log: Any) -> dict[str, Any]:
    log(f"    {cell.name}: evaluating again with {' '.join(spec.eval_overrides)} -> "
        f"{extra_eval_path(spec, cell)}")
    try:
        states[cell.name], error = evaluate_cell(spec, cell, python=python)
    except (StudyStopped, KeyboardInterrupt):
        _stopped(spec, variants, cells, states, cell, log, f"the evaluation of {cell.name} runs again")
        raise
    extra = states[cell.name]["extra_evaluation"]
    if extra is not None:
        ap = extra.get("AP")
        log("    evaluated: " + (f"AP {100 * ap:.1f}" if isinstance(ap, (int, float)) else "no AP"))
    else:
        log(f"    evaluation FAILED (the study goes on; the next run tries again): {error.splitlines()[-1]}")
    return write_reports(spec, variants, cells, states)


def _train_and_report(spec: StudySpec, variants: list[str], cells: list[Cell], states: dict[str, dict[str, Any]],
                      cell: Cell, todo: list[Cell], python: str | None, log: Any) -> dict[str, Any]:
    status = states[cell.name]["status"]
    log(f"[{todo.index(cell) + 1}/{len(todo)}] {cell.name}: "
        f"{'resuming' if status == 'partial' else 'training'} -> {cell.run_dir}")
    try:
        states[cell.name] = run_cell(spec, cell, python=python)
    except (StudyStopped, KeyboardInterrupt):
        _stopped(spec, variants, cells, states, cell, log, f"{cell.name} resumes from its last checkpoint")
        raise
    state = states[cell.name]
    if state["status"] == "finished":
        summary = state["summary"]
        ap = (summary.get("eval") or {}).get("AP")
        log(f"    finished: {summary['iterations']} iterations, "
            + (f"AP {100 * ap:.1f}" if isinstance(ap, (int, float)) else "no evaluation")
            + (" (stopped early by solver.max_train_seconds)" if summary.get("stopped_early") else ""))
    else:
        tail = (state["failure"] or {}).get("stderr_tail", "").strip().splitlines()[-1:] or [""]
        log(f"    FAILED (exit code {(state['failure'] or {}).get('returncode')}): {tail[0]}")
    return write_reports(spec, variants, cells, states)


__all__ += ["cell_command", "eval_command", "run_cell", "evaluate_cell", "needs_extra_eval", "variant_names",
            "estimate_seconds_per_cell", "default_eval_name", "merge_vary", "merge_overrides"]
