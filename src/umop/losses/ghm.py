"""Gradient Harmonizing Mechanism losses GHM-C and GHM-R.

Li, Liu and Wang, "Gradient Harmonized Single-stage Detector", AAAI 2019 (arXiv:1811.05181).

GHM re-weights every example by the inverse of the *gradient density* around its gradient norm, so that the
many easy examples (tiny gradient norm) and the few outliers (gradient norm near 1) do not dominate:

- gradient norm (Sec. 3.1, Eq. 3): GHM-C ``g = |sigmoid(x) - t|`` in ``[0, 1]``;
  GHM-R (Sec. 3.3, Eq. 12) with the Authentic Smooth L1 ``ASL1(d) = sqrt(d^2 + mu^2) - mu`` (Eq. 10),
  ``g = |d| / sqrt(d^2 + mu^2)`` in ``[0, 1)``, ``mu = 0.02``;
- unit-region approximation (Sec. 3.4): ``[0, 1]`` is cut into ``bins`` (M = 10) equal regions, the density of
  an example is the number of valid examples in its region ``R``; its weight is ``beta = tot / (R * n)`` where
  ``tot`` is the number of valid examples and ``n`` the number of non-empty regions;
- momentum (Sec. 3.4, Eq. 11): with ``momentum > 0`` the region counts are an exponential moving average
  ``S_j <- m S_j + (1 - m) R_j`` across iterations (only non-empty regions are updated) and ``beta = tot / (S_j n)``;
- loss (Eq. 9 / Eq. 13): ``sum_i beta_i L_i / tot``.

Semantics follow mmdetection's ``GHMC`` / ``GHMR`` (the authors' reference implementation), with these
differences:

- vectorised: one ``bucketize`` + ``scatter_add`` instead of a Python loop over bins, and no host
  synchronisation (``tot`` and ``n`` stay tensors), so a batch costs one pass;
- mmdetection normalises by ``n`` (the number of non-empty regions), not by ``M`` as the paper's
  ``GD(g) = R * M`` would: we follow mmdetection (the constant cancels for the gradient direction);
- the functional forms take the moving-average state ``acc_sum`` explicitly (updated in place); the modules
  ``GHMCLoss`` (the detector's :class:`~umop.losses.base.ClassificationLoss`, config ``ghm_c``) and
  ``GHMRLoss`` (a :class:`~umop.losses.base.BoxLoss` on deltas, config ``ghm_r``) keep it as a buffer, like
  mmdetection; ``GHMCLoss`` always divides by ``tot`` and ignores the detector's ``avg_factor``, as
  mmdetection's ``GHMC`` does;
- ``reduction="none"`` returns the element-wise ``beta_i L_i`` (summing it and dividing by ``tot`` gives the
  mean); ``avg_factor`` replaces ``tot`` as the divisor when given.
- As in mmdetection, ``weight`` only marks validity (``weight > 0``) for GHM-C; for GHM-R ``tot`` is
  ``weight.sum()`` (mmdetection's ``label_weight.sum()``) and, again, only ``weight > 0`` selects examples.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._weights import broadcast_weight
from .base import BoxLoss, ClassificationLoss
from .reduction import check_reduction

__all__ = ["ghmc_loss", "ghmr_loss", "GHMCLoss", "GHMRLoss", "ghm_weights"]


def _edges(bins: int, last: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Region edges ``0, 1/M, ..., 1`` computed in float32 like mmdetection, last edge replaced by ``last``."""
    edges = torch.arange(bins + 1, dtype=torch.float32, device=device) / bins
    edges[-1] = last
    return edges.to(dtype)


def ghm_weights(g: Tensor, valid: Tensor, bins: int, tot: Tensor, momentum: float = 0.0,
                acc_sum: Tensor | None = None, last_edge: float = 1.0 + 1e-6) -> Tensor:
    """GHM harmonizing weights ``beta_i`` (GHM paper Sec. 3.4), vectorised over all examples.

    Args:
        g: (...) gradient norms in ``[0, 1]`` (no gradient needed).
        valid: (...) bool, the examples that count.
        bins: number of unit regions M.
        tot: 0-d tensor, the normaliser ``tot`` (number of valid examples, at least 1).
        momentum: EMA momentum of the region counts; 0 disables it.
        acc_sum: (bins,) float EMA state, updated in place (required when ``momentum > 0``).
        last_edge: upper edge of the last region (mmdetection: ``1 + 1e-6`` for GHM-C, ``1e3`` for GHM-R).

    Returns:
        (...) weights, 0 for invalid examples; they sum to ``tot`` when ``momentum == 0``.
    """
    edges = _edges(bins, last_edge, g.dtype, g.device)
    # region index i such that edges[i] <= g < edges[i + 1], exactly mmdetection's comparisons
    index = torch.bucketize(g, edges[1:-1], right=True)
    validf = valid.to(g.dtype)
    counts = torch.zeros(bins, dtype=g.dtype, device=g.device).scatter_add_(0, index.reshape(-1),
                                                                            validf.reshape(-1))
    nonempty = counts > 0
    num_nonempty = nonempty.sum().clamp(min=1).to(g.dtype)
    if momentum > 0:
        if acc_sum is None:
            raise ValueError("acc_sum (the (bins,) moving-average state) is required when momentum > 0")
        if acc_sum.shape != (bins,):
            raise ValueError(f"acc_sum must have shape ({bins},), got {tuple(acc_sum.shape)}")
        updated = torch.where(nonempty, momentum * acc_sum.to(g.dtype) + (1 - momentum) * counts,
                              acc_sum.to(g.dtype))
        acc_sum.copy_(updated.to(acc_sum.dtype))
        density = updated
    else:
        density = counts
    per_bin = torch.where(nonempty, tot.to(g.dtype) / density.clamp(min=torch.finfo(g.dtype).tiny),
                          torch.zeros_like(density)) / num_nonempty
    return per_bin[index] * validf


def _reduce(loss: Tensor, reduction: str, divisor: Tensor | float, avg_factor: Tensor | float | None) -> Tensor:
    """``"none"`` / ``"sum"`` / ``"mean"`` (the sum divided by ``avg_factor``, else by ``divisor``); ``avg_factor``
    with ``"sum"`` is an error, as in :func:`~umop.losses.reduction.weight_reduce_loss`."""
    if reduction == "none":
        return loss
    if reduction == "sum":
        if avg_factor is not None:
            raise ValueError('avg_factor can only be used with reduction="mean" or "none", got reduction="sum"')
        return loss.sum()
    return loss.sum() / (divisor if avg_factor is None else avg_factor)


def _check_common(pred: Tensor, reduction: str, bins: int, momentum: float) -> None:
    check_reduction(reduction)
    if int(bins) != bins or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    if not pred.is_floating_point():
        raise ValueError(f"pred must be a floating point tensor, got dtype {pred.dtype}")


def _expand_weight(weight: Tensor | None, pred: Tensor, name: str = "weight") -> Tensor:
    if weight is None:
        return torch.ones_like(pred)
    return broadcast_weight(weight, pred, name).expand(pred.shape)


def ghmc_loss(pred: Tensor, target: Tensor, weight: Tensor | None = None, reduction: str = "mean",
              avg_factor: float | Tensor | None = None, *, bins: int = 10, momentum: float = 0.0,
              acc_sum: Tensor | None = None) -> Tensor:
    """GHM-C: binary cross-entropy re-weighted by the inverse gradient density (GHM paper Eq. 9).

    Args:
        pred: (..., C) logits (sigmoid classification).
        target: (..., C) binary targets, or (...) integer labels where a label in ``[0, C)`` is that class
            and anything else (e.g. ``C`` = background) is an all-zero row (mmdetection's expansion).
        weight: optional, (..., C) or (...) per anchor; ``weight > 0`` marks the valid elements.
        reduction: ``"mean"`` (``sum(beta * BCE) / tot``), ``"sum"`` or ``"none"`` (element-wise ``beta * BCE``).
        avg_factor: divisor for ``"mean"`` instead of ``tot`` (number of valid elements, at least 1).
        bins: number of unit regions M (paper: 30 in the ablation, 10 in mmdetection's configs).
        momentum: EMA momentum of the region counts (Eq. 11); needs ``acc_sum``.
        acc_sum: (bins,) moving-average state, updated in place.

    Returns:
        scalar, or (..., C) for ``reduction="none"``.
    """
    _check_common(pred, reduction, bins, momentum)
    if target.shape != pred.shape:
        if pred.ndim >= 1 and target.shape == pred.shape[:-1] and not target.is_floating_point():
            num_classes = pred.shape[-1]
            in_range = (target >= 0) & (target < num_classes)
            target = F.one_hot(torch.where(in_range, target, torch.full_like(target, num_classes)).long(),
                               num_classes + 1)[..., :num_classes]
        else:
            raise ValueError(f"target must have pred's shape {tuple(pred.shape)} (binary) or pred.shape[:-1] "
                             f"(integer labels), got {tuple(target.shape)}")
    target = target.to(pred.dtype)
    valid = _expand_weight(weight, pred) > 0
    tot = valid.sum().clamp(min=1).to(pred.dtype)
    g = (pred.detach().sigmoid() - target).abs()
    beta = ghm_weights(g, valid, int(bins), tot, momentum, acc_sum, last_edge=1.0 + 1e-6)
    loss = F.binary_cross_entropy_with_logits(pred, target, reduction="none") * beta
    return _reduce(loss, reduction, tot, avg_factor)


def ghmr_loss(pred: Tensor, target: Tensor, weight: Tensor | None = None, reduction: str = "mean",
              avg_factor: float | Tensor | None = None, *, mu: float = 0.02, bins: int = 10,
              momentum: float = 0.0, acc_sum: Tensor | None = None) -> Tensor:
    """GHM-R: Authentic Smooth L1 re-weighted by the inverse gradient density (GHM paper Eq. 10-13).

    Args:
        pred: (..., 4) regression outputs (box deltas).
        target: (..., 4) regression targets, same shape.
        weight: optional (..., 4) or (...) per box; ``weight > 0`` selects the examples and ``tot`` is
            ``max(weight.sum(), 1)`` (mmdetection), all elements when ``None``.
        reduction: ``"mean"`` (``sum(beta * ASL1) / tot``), ``"sum"`` or ``"none"``.
        avg_factor: divisor for ``"mean"`` instead of ``tot``.
        mu: ASL1 parameter (paper: 0.02).
        bins, momentum, acc_sum: as in :func:`ghmc_loss`.

    Returns:
        scalar, or pred's shape for ``reduction="none"``.
    """
    _check_common(pred, reduction, bins, momentum)
    if target.shape != pred.shape:
        raise ValueError(f"pred and target must have the same shape, got pred {tuple(pred.shape)} and "
                         f"target {tuple(target.shape)}")
    if mu <= 0:
        raise ValueError(f"mu must be positive, got {mu!r}")
    w = _expand_weight(weight, pred)
    valid = w > 0
    tot = w.sum().clamp(min=1).to(pred.dtype)
    diff = pred - target
    loss = torch.sqrt(diff * diff + mu * mu) - mu                      # ASL1, Eq. 10
    g = (diff / torch.sqrt(diff * diff + mu * mu)).abs().detach()     # Eq. 12
    beta = ghm_weights(g, valid, int(bins), tot, momentum, acc_sum, last_edge=1e3)
    return _reduce(loss * beta, reduction, tot, avg_factor)


def _check_state_options(bins: int, momentum: float) -> None:
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    if int(bins) != bins or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")


class GHMCLoss(ClassificationLoss):
    """GHM-C (Li et al., AAAI 2019) as a detector's classification loss (config name ``ghm_c``).

    :class:`~umop.losses.base.ClassificationLoss` protocol: ``sum(beta * BCE) / tot`` over the valid elements
    (weight > 0), ``tot`` their number (GHM paper Eq. 9). As in mmdetection's ``GHMC`` the normaliser is
    ``tot`` and the detector's ``avg_factor`` is not used: the harmonizing weights ``beta`` sum to ``tot``.
    The moving-average region counts (``momentum > 0``) are the buffer ``acc_sum``.
    """

    acc_sum: Tensor

    def __init__(self, bins: int = 10, momentum: float = 0.0, loss_weight: float = 1.0) -> None:
        super().__init__(loss_weight)
        _check_state_options(bins, momentum)
        self.bins, self.momentum = int(bins), float(momentum)
        self.register_buffer("acc_sum", torch.zeros(self.bins))

    def compute(self, logits, targets, num_priors_per_level, weight, avg_factor, *, quality, loc_error):
        loss = ghmc_loss(logits, targets, weight, "mean", bins=self.bins, momentum=self.momentum,
                         acc_sum=self.acc_sum)
        return loss, {}

    def extra_repr(self) -> str:
        return f"bins={self.bins}, momentum={self.momentum}"


class GHMRLoss(BoxLoss):
    """GHM-R (Li et al., AAAI 2019) on encoded deltas as a detector's box loss (config name ``ghm_r``).

    :class:`~umop.losses.base.BoxLoss` protocol; the moving-average region counts are the buffer ``acc_sum``.
    """

    space = "deltas"
    acc_sum: Tensor

    def __init__(self, mu: float = 0.02, bins: int = 10, momentum: float = 0.0, reduction: str = "mean",
                 loss_weight: float = 1.0) -> None:
        super().__init__(reduction, loss_weight)
        _check_state_options(bins, momentum)
        if mu <= 0:
            raise ValueError(f"mu must be positive, got {mu!r}")
        self.mu, self.bins, self.momentum = float(mu), int(bins), float(momentum)
        self.register_buffer("acc_sum", torch.zeros(self.bins))

    def loss(self, pred, target, weight, reduction, avg_factor, **kwargs):
        return ghmr_loss(pred, target, weight, reduction, avg_factor, mu=self.mu, bins=self.bins,
                         momentum=self.momentum, acc_sum=self.acc_sum)
