"""Rank & Sort loss (Oksuz, Cam, Akbas and Kalkan, "Rank & Sort Loss for Object Detection and Instance
Segmentation", ICCV 2021, arXiv:2107.11669; authors' code kemaloksuz/RankSortLoss).

RS ranks every (image, prior, class) element of the batch by its logit. Positives carry a continuous
target ``y_i`` in ``[0, 1]`` (the IoU of the prior's decoded box with its ground truth); the loss asks that
positives are ranked above all negatives (ranking) and sorted among themselves by ``y`` (sorting). With
``H`` the step function smoothed by ``delta`` (RS: 0.5; :mod:`umop.losses.ranking`) and, for positive ``i``,
``rank+(i) = sum_{k in P} H(x_ik)``, ``N_FP(i) = sum_{j in N} H(x_ij)``, ``rank(i) = rank+(i) + N_FP(i)``
(Eq. 7-8; as in the authors' code the sums over P include ``k = i`` with ``H(0)``)::

    l_R(i) = N_FP(i) / rank(i)                                   (ranking error; target 0)
    l_S(i) = sum_{k in P} H(x_ik)(1 - y_k) / rank+(i)  -  sum_{k in P, y_k >= y_i} H(x_ik)(1 - y_k)
                                                          / sum_{k in P, y_k >= y_i} H(x_ik)
    L_RS = 1/|P| sum_i (l_R(i) + l_S(i)).

The gradient is the error-driven update (Sec. 3, Eq. 10-12): for positive ``i`` the ranking error goes to
``-l_R(i)`` for ``i`` and ``+l_R(i) H(x_ij) / N_FP(i)`` to every negative ``j`` (if ``N_FP(i) > eps``); the sorting
error goes to ``-l_S(i)`` for ``i`` and ``+l_S(i) M_ik / sum_k M_ik`` to the mis-sorted positives
``M_ik = [y_k < y_i] H(x_ik)`` (if that sum ``> eps``); all divided by ``|P|``. Positive and negative updates
cancel.

:class:`RankSortLoss` (config ``rank_sort``) also produces the box loss as RS-R-CNN / RS-ATSS do: the per-prior
localisation loss weighted by each positive's detached top class score, normalised by the sum of those
weights, and value-balanced every step: ``loss_box = L_box * (L_RS / L_box)`` with the ratio detached.

Implementation: :class:`RankSortLossFunction`, vectorised. Positive-negative sums are prefix-sum queries on
sorted scores (O((P + N) log N)); positive-positive terms need the IoU condition ``y_k >= y_i``, so they are
(P, P) matrices computed in row chunks of at most ``max_elements`` entries; no Python loop over positives
(the authors loop over them). Selecting the sets is boolean indexing (a host synchronisation). Difference
from the authors' code: a positive is a positive of the assignment even when its IoU target is 0 (theirs
turns it into a negative through ``targets > 0``); its target is 0 and it is ranked as a positive.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ._precision import upcast_low_precision
from .base import ClassificationLoss
from .ranking import ranking_sets, sorted_step_sums, sorted_step_update, step_function

__all__ = ["rank_sort_loss", "RankSortLoss", "RankSortLossFunction"]


def _positive_pair_terms(fg: Tensor, y: Tensor, delta: float, max_elements: int
                         ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per positive i, from (chunk, P) matrices of H(x_ik): ``rank+(i)``, the current sorting error, the
    target sorting error and the mis-sorting mass ``sum_k M_ik`` (each (P,))."""
    num_pos = fg.numel()
    chunk = max(1, max_elements // max(num_pos, 1))
    rank_pos = torch.empty_like(fg)
    current = torch.empty_like(fg)
    target_err = torch.empty_like(fg)
    missorted = torch.empty_like(fg)
    one_minus_y = 1 - y
    for start in range(0, num_pos, chunk):          # chunks of positives, not single samples
        rows = slice(start, start + chunk)
        relation = step_function(fg[None, :] - fg[rows, None], delta)                  # H(x_ik)
        at_least = (y[None, :] >= y[rows, None]).to(fg.dtype)                          # y_k >= y_i
        rank_pos[rows] = relation.sum(1)
        current[rows] = relation @ one_minus_y
        target_sorted = relation * at_least
        target_err[rows] = (target_sorted @ one_minus_y) / target_sorted.sum(1)
        missorted[rows] = (relation * (1 - at_least)).sum(1)
    return rank_pos, current / rank_pos, target_err, missorted


def _sorting_update(fg: Tensor, y: Tensor, coef: Tensor, delta: float, max_elements: int) -> Tensor:
    """``sum_i coef_i M_ik`` for every positive k, ``M_ik = [y_k < y_i] H(x_ik)``, chunked over i."""
    num_pos = fg.numel()
    chunk = max(1, max_elements // max(num_pos, 1))
    out = torch.zeros_like(fg)
    for start in range(0, num_pos, chunk):
        rows = slice(start, start + chunk)
        relation = step_function(fg[None, :] - fg[rows, None], delta)
        missorted = relation * (y[None, :] < y[rows, None]).to(fg.dtype)
        out += coef[rows] @ missorted
    return out


class RankSortLossFunction(torch.autograd.Function):
    """RS value ``sum_i (l_R(i) + l_S(i))`` and its error-driven update (backward is the update).

    Inputs: ``logits`` (N,), ``positive`` (N,) bool, ``negative`` (N,) bool, ``sort_target`` (P,) the
    positives' targets ``y`` in the order of ``logits[positive]``, ``delta``, ``eps``, ``max_elements``.
    Returns ``(sum of ranking errors, sum of sorting errors)``; the caller divides by ``|P|``.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, positive: Tensor, negative: Tensor, sort_target: Tensor, delta: float,
                eps: float, max_elements: int) -> tuple[Tensor, Tensor]:
        scores = upcast_low_precision(logits.detach())
        update = torch.zeros_like(scores)
        fg = scores[positive]
        zero = scores.new_zeros(()).to(logits.dtype)
        if fg.numel() == 0:
            ctx.save_for_backward(update.to(logits.dtype))
            return zero, zero.clone()
        bg = scores[negative]
        y = sort_target.detach().to(scores.dtype).clamp(0, 1)
        rank_pos, current, target_err, missorted = _positive_pair_terms(fg, y, delta, max_elements)
        false_pos = sorted_step_sums(fg, bg, delta)
        ranking_error = false_pos / (rank_pos + false_pos)
        sorting_error = current - target_err
        ranking_active = false_pos > eps
        sorting_active = missorted > eps
        ranking_share = torch.where(ranking_active, ranking_error / false_pos.clamp(min=eps),
                                    torch.zeros_like(fg))
        sorting_share = torch.where(sorting_active, sorting_error / missorted.clamp(min=eps), torch.zeros_like(fg))
        fg_update = (-torch.where(ranking_active, ranking_error, torch.zeros_like(fg))
                     - torch.where(sorting_active, sorting_error, torch.zeros_like(fg))
                     + _sorting_update(fg, y, sorting_share, delta, max_elements))
        update[negative] = sorted_step_update(fg, bg, ranking_share, delta)
        update[positive] = fg_update
        ctx.save_for_backward(update.to(logits.dtype))
        return ranking_error.sum().to(logits.dtype), sorting_error.sum().to(logits.dtype)

    @staticmethod
    def backward(ctx, grad_ranking: Tensor, grad_sorting: Tensor):
        # the update covers both errors; it is attached to the ranking output as in the authors' code, so
        # that L_R + L_S (the detector's sum) back-propagates it exactly once
        (update,) = ctx.saved_tensors
        return update * grad_ranking, None, None, None, None, None, None


def rank_sort_loss(pred: Tensor, target: Tensor, sort_target: Tensor, weight: Tensor | None = None,
                   avg_factor: float | Tensor | None = None, *, delta: float = 0.5, eps: float = 1e-10,
                   max_elements: int = 1 << 24) -> tuple[Tensor, Tensor]:
    """Rank & Sort loss components ``(L_R, L_S)`` (RS Eq. 7-8); ``L_R``'s backward is the whole RS update.

    Args:
        pred: (B, A, C) logits; every element is one ranked sample.
        target: (B, A, C) one-hot targets (1 positive, 0 negative).
        sort_target: (B, A) the sorting target ``y`` of each prior (its IoU; read at the positives).
        weight: optional (B, A); priors with weight <= 0 are left out of the ranking.
        avg_factor: divisor (default: the number of positive elements, the paper's mean).
        delta: smoothing of the step function (RS: 0.5; 0 = hard step).
        eps: thresholds of the updates (authors' code: 1e-10).
        max_elements: memory bound of one chunk of the (P, P) positive-pair matrices.

    Returns:
        ``(L_R, L_S)``, 0-d; back-propagate their sum (or ``L_R`` alone: same update).
    """
    if pred.dim() != 3 or target.shape != pred.shape:
        raise ValueError(f"pred and target must be (B, A, C) of one shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    if sort_target.shape != pred.shape[:2]:
        raise ValueError(f"sort_target must be (B, A) = {tuple(pred.shape[:2])}, got {tuple(sort_target.shape)}")
    if delta < 0:
        raise ValueError(f"delta must be >= 0, got {delta!r}")
    flat, positive, negative = ranking_sets(pred, target, weight)
    y_positive = sort_target.unsqueeze(-1).expand(pred.shape).reshape(-1)[positive]
    ranking, sorting = RankSortLossFunction.apply(flat, positive, negative, y_positive, float(delta), float(eps),
                                                  int(max_elements))
    if avg_factor is None:
        avg_factor = positive.sum().clamp(min=1).to(pred.dtype)
    return ranking / avg_factor, sorting / avg_factor


class RankSortLoss(ClassificationLoss):
    """Rank & Sort loss (Oksuz et al., ICCV 2021) as a detector's classification and box loss
    (config name ``rank_sort``).

    :class:`~umop.losses.base.ClassificationLoss` protocol with ``needs_quality`` (the sorting targets:
    IoU of each positive's decoded box), ``needs_loc_error`` and ``replaces_box_loss``: returns
    ``{"loss_cls": L_R + L_S, "loss_box": L_RS / L_box (detached) * L_box}``, with ``L_box`` the positives'
    ``loc_error`` weighted by their detached top class score (sigmoid) over the sum of those weights (RS-ATSS).
    A ranking loss over the whole batch takes no sampler.
    """

    needs_quality = True
    needs_loc_error = True
    replaces_box_loss = True
    accepts_sampler = False

    def __init__(self, delta: float = 0.5, eps: float = 1e-10, max_elements: int = 1 << 24,
                 loss_weight: float = 1.0) -> None:
        super().__init__(loss_weight)
        if delta < 0:
            raise ValueError(f"delta must be >= 0, got {delta!r}")
        self.delta, self.eps, self.max_elements = float(delta), float(eps), int(max_elements)

    def compute(self, logits, targets, num_priors_per_level, weight, avg_factor, *, quality, loc_error):
        ranking, sorting = rank_sort_loss(logits, targets, quality, weight, avg_factor, delta=self.delta,
                                          eps=self.eps, max_elements=self.max_elements)
        loss_cls = ranking + sorting
        positive = (targets > 0).any(-1)
        if weight is not None:
            positive = positive & (weight > 0)
        with torch.no_grad():
            box_weight = logits.detach().sigmoid().amax(-1) * positive                # (B, A)
        weighted = (box_weight * torch.where(positive, loc_error, torch.zeros_like(loc_error))).sum()
        loss_box = weighted / box_weight.sum().clamp(min=1e-12)
        balance = (loss_cls.detach() / loss_box.detach().clamp(min=1e-12)).to(loss_box.dtype)
        return {"loss_cls": loss_cls, "loss_box": balance * loss_box}, {}

    def extra_repr(self) -> str:
        return f"delta={self.delta}, eps={self.eps}"
