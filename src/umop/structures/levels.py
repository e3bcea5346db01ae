"""Per-level prior layouts: which pyramid level each prior (anchor / point) belongs to, and per-level sums.

The priors of all levels are concatenated in level order (``A = sum(num_priors_per_level)``); both helpers are
cached per layout and device so that a training step builds them once.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

__all__ = ["level_index_for", "level_matrix_for"]

_level_index_cache: dict[tuple, Tensor] = {}


def level_index_for(num_priors_per_level: Sequence[int], device: torch.device) -> Tensor:
    """(A,) long tensor giving the pyramid level (0..L-1) of each prior; cached per layout and device."""
    key = (tuple(int(n) for n in num_priors_per_level), str(device))
    index = _level_index_cache.get(key)
    if index is None:
        counts = torch.tensor(key[0], dtype=torch.long)
        index = torch.repeat_interleave(torch.arange(len(key[0])), counts).to(device)
        if len(_level_index_cache) > 64:
            _level_index_cache.clear()
        _level_index_cache[key] = index
    return index


_level_matrix_cache: dict[tuple, Tensor] = {}


def level_matrix_for(num_priors_per_level: Sequence[int], device: torch.device, dtype: torch.dtype) -> Tensor:
    """(A, L) one-hot matrix of each prior's level: ``per_anchor @ matrix`` sums per level in one BLAS call."""
    key = (tuple(int(n) for n in num_priors_per_level), str(device), dtype)
    matrix = _level_matrix_cache.get(key)
    if matrix is None:
        index = level_index_for(key[0], device)
        matrix = torch.zeros(len(index), len(key[0]), dtype=dtype, device=device)
        matrix[torch.arange(len(index), device=device), index] = 1
        if len(_level_matrix_cache) > 64:
            _level_matrix_cache.clear()
        _level_matrix_cache[key] = matrix
    return matrix
