"""Iteration timing, ETA and memory for the training logs (``time``, ``data_time``, ``eta``, ``memory``).

The names and units follow mmdetection's text logger: ``time`` and ``data_time`` in seconds per iteration
(means over the iterations since the previous log record), ``eta`` in seconds, ``memory`` in MB (peak
CUDA memory allocated since the previous record on a GPU, resident set size of the process on a CPU).
"""

from __future__ import annotations

import os
import resource
import sys
import time

import torch

__all__ = ["IterationTimer", "memory_mb", "format_eta"]


def _rss_mb() -> float:
    """Resident set size of this process in MB (``/proc/self/statm``; else the peak from getrusage)."""
    try:
        with open("/proc/self/statm") as stream:
            resident_pages = int(stream.read().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux, bytes on macOS
        return peak / (2**20 if sys.platform == "darwin" else 2**10)


def memory_mb(device: torch.device, reset_peak: bool = True) -> float:
    """Peak CUDA memory allocated (MB) since the last reset on a GPU, else the process RSS (MB)."""
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        if reset_peak:
            torch.cuda.reset_peak_memory_stats(device)
        return peak
    return _rss_mb()


def format_eta(seconds: float) -> str:
    """``h:mm:ss`` (hours unbounded), e.g. ``format_eta(3725) == "1:02:05"``."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class IterationTimer:
    """Wall-clock split of the training iterations into data loading and compute.

    Call :meth:`restart` before the first batch of an epoch (after evaluation / checkpointing, which are
    not iteration time), :meth:`data_ready` when a batch arrives and :meth:`step_done` after its optimiser
    step. :meth:`window` returns and resets the means since the previous call; :attr:`seconds_per_iteration`
    is the mean over every iteration timed (the ETA's rate).
    """

    def __init__(self) -> None:
        self.total_seconds = 0.0
        self.total_iterations = 0
        self._window_seconds = self._window_data = 0.0
        self._window_iterations = 0
        self._mark = self._data_end = time.perf_counter()

    def restart(self) -> None:
        self._mark = self._data_end = time.perf_counter()

    def data_ready(self) -> None:
        self._data_end = time.perf_counter()
        self._window_data += self._data_end - self._mark

    def step_done(self) -> None:
        now = time.perf_counter()
        self._window_seconds += now - self._mark
        self.total_seconds += now - self._mark
        self._window_iterations += 1
        self.total_iterations += 1
        self._mark = now

    @property
    def seconds_per_iteration(self) -> float:
        return self.total_seconds / self.total_iterations if self.total_iterations else float("nan")

    @property
    def iterations_per_second(self) -> float:
        return self.total_iterations / self.total_seconds if self.total_seconds > 0 else float("nan")

    def eta(self, remaining_iterations: int) -> float:
        return self.seconds_per_iteration * max(0, remaining_iterations) if self.total_iterations else 0.0

    def window(self) -> dict[str, float]:
        """``{"time", "data_time"}``: mean seconds per iteration since the previous call (then reset)."""
        count = max(1, self._window_iterations)
        out = {"time": self._window_seconds / count, "data_time": self._window_data / count}
        self._window_seconds = self._window_data = 0.0
        self._window_iterations = 0
        return out
