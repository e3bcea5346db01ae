"""Atomic checkpoints and RNG state capture, for exact resumption."""

from __future__ import annotations

import errno
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["save_checkpoint", "link_checkpoint", "load_checkpoint", "load_model_state", "get_rng_states",
           "set_rng_states", "seed_everything"]


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy and torch (CPU and all CUDA devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_rng_states() -> dict[str, Any]:
    """The states of every random generator that training touches."""
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore the states captured by :func:`get_rng_states`."""
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        cuda_states = states["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` with ``torch.save`` atomically: a temporary file in the same folder, then ``os.replace``.

    A crash during the write leaves the previous checkpoint intact.

    Raises:
        OSError: (``errno.ENOSPC``) naming the file and the free space when the disk is full; torch reports
            that as an unclear ``RuntimeError`` ("unexpected pos ...").
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(state, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_name, path)
    except BaseException as error:
        written = os.path.getsize(temp_name) if os.path.exists(temp_name) else 0
        if os.path.exists(temp_name):
            os.unlink(temp_name)
        if _is_disk_full(error):
            free_mb = shutil.disk_usage(path.parent).free / 2**20
            kept = "the previous one is intact" if path.exists() else "nothing was saved"
            raise OSError(errno.ENOSPC, f"cannot write checkpoint '{path}': no space left on device "
                                        f"({written / 2**20:.0f} MB written before the disk filled, "
                                        f"{free_mb:.0f} MB free now; {kept})") from error
        raise
    return path


def _is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` or an exception it was raised from or during is ``ENOSPC`` (disk full)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        error = error.__cause__ or error.__context__
    return False


def link_checkpoint(source: str | Path, target: str | Path) -> Path:
    """Make ``target`` a second name of the finished checkpoint ``source``, atomically, without a second copy.

    A hard link (a temporary name in ``target``'s folder, then ``os.replace``); where the file system refuses
    hard links, a copy. :func:`save_checkpoint` always writes a new file, so a later save of ``source`` leaves
    ``target`` as it was. ``epoch_N.pt`` and ``best.pt`` are such links to ``last.pt``: one file on disk
    instead of three.
    """
    source, target = Path(source), Path(target)
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    temp.unlink(missing_ok=True)
    try:
        try:
            os.link(source, temp)
        except OSError:  # no hard links here (some network or FAT file systems): copy instead
            shutil.copyfile(source, temp)
        os.replace(temp, target)
    finally:  # also when target was already this file: rename() then does nothing and leaves temp
        temp.unlink(missing_ok=True)
    return target


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (or a bare ``state_dict``).

    Raises:
        ValueError: naming the file when it is missing or unreadable.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"checkpoint '{path}' is a directory, expected a checkpoint file (e.g. {path}/checkpoints/last.pt)")
    if not path.is_file():
        raise ValueError(f"checkpoint '{path}' does not exist")
    try:
        # Our checkpoints hold RNG states (NumPy arrays, tuples) and the config dict: not weights-only.
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:  # noqa: BLE001 - report any unpickling failure with the file name
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        if not reason.isprintable() or len(reason) > 200:  # unpickling random bytes quotes them
            reason = f"{type(error).__name__} while unpickling"
        raise ValueError(f"checkpoint '{path}' could not be read (not a PyTorch checkpoint, or a damaged one): "
                         f"{reason}") from error
    if not isinstance(checkpoint, dict):
        raise ValueError(f"checkpoint '{path}' does not hold a dict (got {type(checkpoint).__name__})")
    if "model" not in checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        checkpoint = {"model": checkpoint}
    return checkpoint


def load_model_state(model: torch.nn.Module, state: dict[str, Any], source: str) -> None:
    """``model.load_state_dict(state)`` (a ``module.`` prefix from DDP removed) with a one-line error.

    Raises:
        ValueError: the weights do not fit the model; the message counts the missing, unexpected and
            differently shaped tensors and names the first of each, instead of listing every one.
    """
    state = {key.removeprefix("module."): value for key, value in state.items()}
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    reshaped = [key for key, value in state.items() if key in expected and hasattr(value, "shape")
                and tuple(value.shape) != tuple(expected[key].shape)]
    if missing or unexpected or reshaped:
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensors missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if reshaped:
            key = reshaped[0]
            parts.append(f"{len(reshaped)} with other shapes (e.g. {key}: {tuple(state[key].shape)} in the "
                         f"file, {tuple(expected[key].shape)} in the model)")
        raise ValueError(f"{source} does not fit the model: {'; '.join(parts)}")
    model.load_state_dict(state)
