"""Shared helpers of the samplers: per-row counts and ranks within groups, vectorised over the batch."""
from __future__ import annotations

import torch
from torch import Tensor


def as_counts(num_samples: int | Tensor, batch: int, device: torch.device, name: str = "num_samples") -> Tensor:
    """``num_samples`` as a (B,) long tensor of non-negative counts (an int is used for every image)."""
    if isinstance(num_samples, Tensor):
        if num_samples.ndim == 0:
            num_samples = num_samples.expand(batch)
        if num_samples.shape != (batch,):
            raise ValueError(f"{name} must be an int or a ({batch},) tensor, got shape {tuple(num_samples.shape)}")
        if num_samples.is_floating_point():
            raise ValueError(f"{name} must hold integers, got dtype {num_samples.dtype}")
        return num_samples.to(device=device, dtype=torch.long).clamp(min=0)
    if int(num_samples) != num_samples or num_samples < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {num_samples!r}")
    return torch.full((batch,), int(num_samples), dtype=torch.long, device=device)


def ranks_in_groups(groups: Tensor, num_groups: int, order: Tensor) -> Tensor:
    """Rank of every element within its (row, group), following the per-row priority ``order``.

    Args:
        groups: (B, A) long in ``[0, num_groups)``.
        num_groups: number of groups G.
        order: (B, A) long, a permutation of ``0..A-1`` per row, highest priority first.

    Returns:
        (B, A) long: 0 for the element of its group that comes first in ``order``, 1 for the next, ...
    """
    grouped = groups.gather(1, order)                                      # groups in priority order
    onehot = torch.nn.functional.one_hot(grouped, num_groups)              # (B, A, G)
    rank_in_order = (onehot.cumsum(1) * onehot).sum(-1) - 1                # running count of own group
    ranks = torch.empty_like(rank_in_order)
    return ranks.scatter_(1, order, rank_in_order)


def take_first(candidates: Tensor, quota: Tensor, order: Tensor) -> Tensor:
    """(B, A) bool: the first ``quota[b]`` candidates of row ``b`` in ``order`` (all of them if fewer)."""
    groups = (~candidates).long()
    ranks = ranks_in_groups(groups, 2, order)
    return candidates & (ranks < quota[:, None])
