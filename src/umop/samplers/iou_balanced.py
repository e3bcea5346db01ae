"""IoU-balanced negative sampling (Pang et al., "Libra R-CNN: Towards Balanced Learning for Object
Detection", CVPR 2019, Sec. 3.1, Eq. 1).

Hard negatives are rare among random samples (most negatives have IoU 0 with every object). Libra R-CNN
splits the negatives' IoU range into ``K`` bins and draws ``N / K`` negatives uniformly from each bin; a bin
with too few candidates gives all of them and the shortfall is drawn uniformly from the rest.

Semantics of mmdetection's ``IoUBalancedNegSampler`` (``floor_thr``, ``floor_fraction``, ``num_bins``):

- if an image has at most ``num_samples`` negatives, all of them are taken;
- ``floor_thr > 0``: negatives with IoU in ``[0, floor_thr)`` form the *floor set*, the others the *IoU set*;
  ``floor_thr == 0``: the floor set is IoU == 0, the IoU set IoU > 0; ``floor_thr < 0``: no floor set;
- ``n_iou = int(num_samples * (1 - floor_fraction))`` are drawn from the IoU set: ``n_iou // K`` per bin
  (``K >= 2``), the shortfall uniformly from the IoU set's remaining negatives (all of the IoU set if it has
  at most ``n_iou``); then the floor set fills up to ``num_samples``, then any remaining negative.

Differences from mmdetection: the bins split ``[floor_thr, max IoU of the image's IoU-set negatives]``
(mmdetection uses the largest IoU of *all* anchors, positives included, so the upper bins hold no negatives),
and the largest IoU falls in the last bin (mmdetection's half-open intervals leave it out). Vectorised over
the batch with one random permutation per image (the ``generator`` makes it reproducible); no host
synchronisation and no Python loop over images or bins.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ._utils import as_counts, ranks_in_groups, take_first
from .base import Sampler

__all__ = ["iou_balanced_negative_sample", "IoUBalancedSampler", "negative_quota"]


def iou_balanced_negative_sample(max_iou: Tensor, negative_mask: Tensor, num_samples: int | Tensor,
                                 num_bins: int = 3, floor_thr: float = 0.0, floor_fraction: float = 0.0,
                                 generator: torch.Generator | None = None) -> Tensor:
    """Sample negatives evenly across IoU bins (Libra R-CNN Eq. 1), per image.

    Args:
        max_iou: (B, A) each anchor's largest IoU with any ground truth of its image (>= 0).
        negative_mask: (B, A) bool, the candidate negatives.
        num_samples: negatives to draw per image, an int or a (B,) long tensor.
        num_bins: number of IoU bins K (Libra R-CNN: 3).
        floor_thr: the floor-set threshold (see the module docstring); 0 by default.
        floor_fraction: fraction of ``num_samples`` reserved for the floor set (mmdetection's default 0).
        generator: random generator on ``max_iou``'s device, for reproducible draws.

    Returns:
        (B, A) bool mask of the sampled negatives: ``min(num_samples[b], negatives of b)`` per image.
    """
    if max_iou.ndim != 2:
        raise ValueError(f"max_iou must have shape (B, A), got {tuple(max_iou.shape)}")
    if negative_mask.shape != max_iou.shape:
        raise ValueError(f"negative_mask must have max_iou's shape {tuple(max_iou.shape)}, "
                         f"got {tuple(negative_mask.shape)}")
    if int(num_bins) != num_bins or num_bins < 1:
        raise ValueError(f"num_bins must be a positive integer, got {num_bins!r}")
    if not 0.0 <= floor_fraction <= 1.0:
        raise ValueError(f"floor_fraction must be in [0, 1], got {floor_fraction!r}")
    num_bins = int(num_bins)
    batch, anchors = max_iou.shape
    device = max_iou.device
    num = as_counts(num_samples, batch, device)
    negative = negative_mask.bool()
    iou = max_iou.detach()

    if floor_thr > 0:
        floor_set, iou_set, start = negative & (iou < floor_thr), negative & (iou >= floor_thr), float(floor_thr)
    elif floor_thr == 0:
        floor_set, iou_set, start = negative & (iou == 0), negative & (iou > 0), 0.0
    else:
        floor_set, iou_set, start = torch.zeros_like(negative), negative & (iou > floor_thr), 0.0

    order = torch.rand(batch, anchors, generator=generator, device=device).argsort(dim=1)  # random priority
    num_iou = torch.floor(num.double() * (1.0 - floor_fraction)).long()

    selected = torch.zeros_like(negative)
    if num_bins >= 2:
        top = torch.where(iou_set, iou, torch.full_like(iou, -float("inf"))).amax(dim=1, keepdim=True)
        width = ((top - start) / num_bins).clamp(min=torch.finfo(iou.dtype).tiny)
        bins = torch.floor((iou - start) / width).clamp(0, num_bins - 1)
        bins = torch.where(iou_set, torch.nan_to_num(bins, nan=0.0), torch.full_like(iou, num_bins)).long()
        ranks = ranks_in_groups(bins, num_bins + 1, order)
        selected = iou_set & (ranks < (num_iou // num_bins)[:, None])
    # shortfall of the bins (or all of a small IoU set) from the rest of the IoU set
    need = (num_iou - selected.sum(1)).clamp(min=0)
    selected = selected | take_first(iou_set & ~selected, need, order)
    # then the floor set, then any negative, up to num_samples
    need = (num - selected.sum(1)).clamp(min=0)
    selected = selected | take_first(floor_set & ~selected, need, order)
    need = (num - selected.sum(1)).clamp(min=0)
    selected = selected | take_first(negative & ~selected, need, order)
    take_all = negative.sum(1) <= num
    return torch.where(take_all[:, None], negative, selected)


def negative_quota(positive: Tensor, negative: Tensor, num_samples: int, positive_fraction: float) -> Tensor:
    """(B,) negatives to keep per image: ``num_samples - min(P_b, floor(num_samples * positive_fraction))``
    (mmdetection's count rule, with every positive kept), at most the image's negatives."""
    expected_positive = torch.clamp(positive.sum(1), max=int(num_samples * positive_fraction))
    return torch.minimum(num_samples - expected_positive, negative.sum(1))


class IoUBalancedSampler(Sampler):
    """IoU-balanced negative sampling (Libra R-CNN, Pang et al. CVPR 2019, Sec. 3.1) for dense detectors;
    config name ``iou_balanced``.

    Every positive is kept; ``negative_quota`` negatives per image are drawn with
    :func:`iou_balanced_negative_sample` (``num_bins`` IoU bins over the priors' ``max_ious``).
    """

    def __init__(self, num_samples: int = 512, positive_fraction: float = 0.25, num_bins: int = 3,
                 floor_thr: float = -1.0, floor_fraction: float = 0.0, seed: int | None = None) -> None:
        super().__init__()
        _check_counts(num_samples, positive_fraction)
        self.num_samples, self.positive_fraction = int(num_samples), float(positive_fraction)
        self.num_bins, self.floor_thr, self.floor_fraction = int(num_bins), float(floor_thr), float(floor_fraction)
        self.seed = seed
        self._generators: dict[str, torch.Generator] = {}

    def select_negatives(self, logits, targets, positive, negative, max_ious):
        quota = negative_quota(positive, negative, self.num_samples, self.positive_fraction)
        return iou_balanced_negative_sample(max_ious, negative, quota, self.num_bins, self.floor_thr,
                                            self.floor_fraction, generator=seeded_generator(self, max_ious.device))

    def extra_repr(self) -> str:
        return (f"num_samples={self.num_samples}, positive_fraction={self.positive_fraction}, "
                f"num_bins={self.num_bins}, floor_thr={self.floor_thr}, floor_fraction={self.floor_fraction}")


def _check_counts(num_samples: int, positive_fraction: float) -> None:
    if int(num_samples) != num_samples or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    if not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction!r}")


def seeded_generator(sampler: Sampler, device: torch.device) -> torch.Generator | None:
    """The sampler's random generator on ``device`` (seeded with ``sampler.seed``), or None without a seed."""
    if sampler.seed is None:
        return None
    key = str(device)
    if key not in sampler._generators:
        sampler._generators[key] = torch.Generator(device=device).manual_seed(int(sampler.seed))
    return sampler._generators[key]
