"""Online hard example mining (Shrivastava, Gupta and Girshick, "Training Region-based Object Detectors with
Online Hard Example Mining", CVPR 2016, Sec. 4).

Per image, the examples with the highest current loss are kept: up to ``floor(num_samples * positive_fraction)``
hardest positives, then the hardest negatives fill the rest of ``num_samples`` (mmdetection's ``OHEMSampler``:
``num_expected_pos = int(num * pos_fraction)``, ``num_expected_neg = num - num_sampled_pos``). The original
OHEM used NMS over RoIs before picking the top losses; like mmdetection, no NMS is applied here.

Vectorised over the batch: one descending sort of the (B, A) losses and a running count of positives and
negatives in that order; no Python loop over images and no host synchronisation. Ties in loss are broken by
anchor order (the sort is stable).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._utils import as_counts, ranks_in_groups, take_first
from .base import Sampler

__all__ = ["ohem_select", "OHEMSampler"]


def ohem_select(loss: Tensor, labels: Tensor, num_samples: int | Tensor, positive_fraction: float = 0.25, *,
                num_classes: int | None = None) -> Tensor:
    """Select the hardest examples of every image.

    Args:
        loss: (B, A) per-example loss (its value only is used).
        labels: (B, A) long. With ``num_classes`` given (umop's assignment convention): ``0..num_classes-1``
            positive, ``num_classes`` negative (background), ``-1`` ignored. Without it: ``1`` positive,
            ``0`` negative, ``-1`` ignored (mmdetection's sampler convention).
        num_samples: examples to keep per image, an int or a (B,) long tensor.
        positive_fraction: the largest fraction of ``num_samples`` that may be positives.
        num_classes: see ``labels``.

    Returns:
        (B, A) bool mask of the selected examples: ``min(P_b, floor(n * f))`` positives and
        ``min(N_b, n - selected positives)`` negatives of image ``b``, each the highest-loss ones.
    """
    if loss.ndim != 2:
        raise ValueError(f"loss must have shape (B, A), got {tuple(loss.shape)}")
    if labels.shape != loss.shape:
        raise ValueError(f"labels must have loss's shape {tuple(loss.shape)}, got {tuple(labels.shape)}")
    if not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction!r}")
    batch, _ = loss.shape
    if num_classes is None:
        positive, negative = labels == 1, labels == 0
    else:
        positive = (labels >= 0) & (labels < num_classes)
        negative = labels == num_classes
    num = as_counts(num_samples, batch, loss.device)
    num_pos = torch.minimum(torch.floor(num.double() * positive_fraction).long(), positive.sum(1))
    num_neg = torch.minimum(num - num_pos, negative.sum(1))
    hardness = loss.detach()
    hardness = torch.where(torch.isnan(hardness), torch.full_like(hardness, -float("inf")), hardness)
    order = torch.sort(hardness, dim=1, descending=True, stable=True).indices
    groups = torch.where(positive, 0, torch.where(negative, 1, 2)).long()
    ranks = ranks_in_groups(groups, 3, order)
    return (positive & (ranks < num_pos[:, None])) | (negative & (ranks < num_neg[:, None]))


class OHEMSampler(Sampler):
    """Hard negative mining for dense detectors (SSD, Liu et al. ECCV 2016, Sec. 2.2; OHEM, Shrivastava
    et al. CVPR 2016); config name ``ohem``.

    Per image every positive is kept and the ``max(floor(neg_pos_ratio * P_b), min_negatives)`` negatives
    with the highest classification loss (sigmoid BCE of the detached logits summed over the classes, the
    loss of a background prior) are kept (all of them when fewer); SSD's ratio is 3:1. Ties are broken by
    prior order.
    """

    def __init__(self, neg_pos_ratio: float = 3.0, min_negatives: int = 0) -> None:
        super().__init__()
        if neg_pos_ratio < 0:
            raise ValueError(f"neg_pos_ratio must be >= 0, got {neg_pos_ratio!r}")
        if int(min_negatives) != min_negatives or min_negatives < 0:
            raise ValueError(f"min_negatives must be a non-negative integer, got {min_negatives!r}")
        self.neg_pos_ratio, self.min_negatives = float(neg_pos_ratio), int(min_negatives)

    def select_negatives(self, logits, targets, positive, negative, max_ious):
        hardness = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none").sum(-1)
        hardness = torch.where(negative, hardness, torch.full_like(hardness, -float("inf")))
        order = torch.sort(hardness, dim=1, descending=True, stable=True).indices
        quota = torch.floor(positive.sum(1).double() * self.neg_pos_ratio).long().clamp(min=self.min_negatives)
        return take_first(negative, quota, order)

    def extra_repr(self) -> str:
        return f"neg_pos_ratio={self.neg_pos_ratio}, min_negatives={self.min_negatives}"
