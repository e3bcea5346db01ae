"""Side-by-side timing shared by the benchmark scripts (run them as ``python benchmarks/<name>.py``)."""
from __future__ import annotations

import time
from typing import Callable

import torch


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds taken by ``fn()``, waiting for the accelerator before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def interleaved_times(candidates: dict[str, Callable[[], object]], repeats: int, warmup: int,
                      device: torch.device) -> dict[str, list[float]]:
    """Run every candidate once per round, ``warmup + repeats`` rounds, and return the times of the last
    ``repeats`` rounds per candidate: interleaving makes each round's figures see the same machine load."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for round_index in range(warmup + repeats):
        for name, fn in candidates.items():
            elapsed = timed(fn, device)
            if round_index >= warmup:
                times[name].append(elapsed)
    return times
