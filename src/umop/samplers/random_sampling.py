"""Random negative sampling with a positive fraction for dense detectors (the R-CNN minibatch rule,
Girshick, "Fast R-CNN", ICCV 2015, Sec. 2.3; mmdetection's ``RandomSampler``)."""
from __future__ import annotations

import torch

from ._utils import take_first
from .base import Sampler
from .iou_balanced import _check_counts, negative_quota, seeded_generator

__all__ = ["RandomSampler"]


class RandomSampler(Sampler):
    """Config name ``random``: every positive is kept, and per image ``num_samples - min(P_b,
    floor(num_samples * positive_fraction))`` negatives drawn uniformly at random (all when fewer)."""

    def __init__(self, num_samples: int = 256, positive_fraction: float = 0.5, seed: int | None = None) -> None:
        super().__init__()
        _check_counts(num_samples, positive_fraction)
        self.num_samples, self.positive_fraction, self.seed = int(num_samples), float(positive_fraction), seed
        self._generators: dict[str, torch.Generator] = {}

    def select_negatives(self, logits, targets, positive, negative, max_ious):
        quota = negative_quota(positive, negative, self.num_samples, self.positive_fraction)
        generator = seeded_generator(self, negative.device)
        order = torch.rand(negative.shape, generator=generator, device=negative.device).argsort(dim=1)
        return take_first(negative, quota, order)

    def extra_repr(self) -> str:
        return f"num_samples={self.num_samples}, positive_fraction={self.positive_fraction}"
