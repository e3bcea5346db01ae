"""The sampler protocol for dense detectors.

A :class:`Sampler` chooses which negatives of a dense detector's priors take part in the classification
loss; every positive is kept with its weight::

    weight = sampler(logits, targets, labels, max_ious, weight)

- ``logits``: ``(B, A, C)`` classification logits, detached (hard-example mining reads the current loss);
- ``targets``: ``(B, A, C)`` one-hot targets;
- ``labels``: ``(B, A)`` long, umop's assignment convention: ``0..C-1`` positive, ``C`` background, ``-1``
  ignored;
- ``max_ious``: ``(B, A)`` each prior's largest IoU with a ground truth of its image;
- ``weight``: ``(B, A)`` the prior weights before sampling (0 = ignored).

It returns the new ``(B, A)`` weight: unchanged at positives, 0 at the negatives it leaves out. Vectorised
over the batch, no host synchronisation. ``generator`` (random samplers) makes the draws reproducible.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["Sampler", "split_labels"]


def split_labels(labels: Tensor, num_classes: int, weight: Tensor) -> tuple[Tensor, Tensor]:
    """``(positive, negative)`` (B, A) bool masks of the valid priors (weight > 0)."""
    valid = weight > 0
    positive = (labels >= 0) & (labels < num_classes) & valid
    negative = (labels == num_classes) & valid
    return positive, negative


class Sampler(nn.Module):
    """Base class: subclasses implement :meth:`select_negatives` -> (B, A) bool mask of kept negatives."""

    def forward(self, logits: Tensor, targets: Tensor, labels: Tensor, max_ious: Tensor,
                weight: Tensor) -> Tensor:
        if logits.dim() != 3 or targets.shape != logits.shape:
            raise ValueError(f"logits and targets must be (B, A, C) of one shape, got {tuple(logits.shape)} "
                             f"and {tuple(targets.shape)}")
        for name, value in (("labels", labels), ("max_ious", max_ious), ("weight", weight)):
            if value.shape != logits.shape[:2]:
                raise ValueError(f"{name} must be (B, A) = {tuple(logits.shape[:2])}, got {tuple(value.shape)}")
        positive, negative = split_labels(labels, logits.shape[-1], weight)
        with torch.no_grad():
            keep = self.select_negatives(logits.detach(), targets, positive, negative, max_ious.detach())
        return torch.where(positive | keep, weight, torch.zeros_like(weight))

    def select_negatives(self, logits: Tensor, targets: Tensor, positive: Tensor, negative: Tensor,
                         max_ious: Tensor) -> Tensor:
        raise NotImplementedError
