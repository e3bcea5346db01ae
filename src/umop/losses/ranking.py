"""Primitives shared by the ranking-based losses (AP-Loss, aLRP loss, Rank & Sort loss).

All three rank every (image, prior, class) element of the batch by its logit and compare a positive ``i``
with the other elements through the smoothed step function of AP-Loss (Chen et al. 2019, Sec. 3.3), used
unchanged by aLRP (Oksuz et al. 2020) and RS (Oksuz et al. 2021)::

    f(x) = 0 (x < -delta),  x / (2 delta) + 1/2 (|x| <= delta),  1 (x > delta);   delta = 0: f(x) = [x >= 0]

with ``x = s_k - s_i``. ``f`` is piecewise linear, so a sum ``sum_k c_k f(s_k - q)`` over many ``s_k`` is a
weighted count above ``q + delta`` plus a linear term over the window ``[q - delta, q + delta]``; with the
``s_k`` sorted both come from ``searchsorted`` and float64 prefix sums, exactly, in O((Q + V) log V)
(:func:`sorted_step_sums`, :func:`sorted_step_update`). No (P, N) matrix is formed.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["step_function", "sorted_step_sums", "sorted_step_update", "ranking_sets"]


def step_function(x: Tensor, delta: float) -> Tensor:
    """The smoothed step function f(x) (AP-Loss Sec. 3.3); ``delta = 0`` gives the hard step ``[x >= 0]``."""
    if delta == 0:
        return (x >= 0).to(x.dtype)
    return (x / (2 * delta) + 0.5).clamp_(0.0, 1.0)


def _prefix_sums(values: Tensor, coef: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Sorted values, and float64 prefix sums (with a leading 0) of ``c`` and ``c * v`` in sorted order."""
    v, order = torch.sort(values)
    c = torch.ones_like(v, dtype=torch.float64) if coef is None else coef[order].double()
    zero = c.new_zeros(1)
    return v, torch.cat([zero, c.cumsum(0)]), torch.cat([zero, (c * v.double()).cumsum(0)])


def sorted_step_sums(queries: Tensor, values: Tensor, delta: float, coef: Tensor | None = None) -> Tensor:
    """``sum_k c_k f(v_k - q)`` for every query ``q``, exactly, in O((Q + V) log V) (``c = 1`` without coef).

    Args:
        queries: (Q,) scores; values: (V,) scores; coef: (V,) or None.
    Returns:
        (Q,) in the queries' dtype.
    """
    v, csum_c, csum_cv = _prefix_sums(values, coef)
    if delta == 0:        # [v >= q]
        lo = torch.searchsorted(v, queries, right=False)
        return (csum_c[-1] - csum_c[lo]).to(queries.dtype)
    lo = torch.searchsorted(v, queries - delta, right=False)   # first v >= q - delta
    hi = torch.searchsorted(v, queries + delta, right=True)    # first v > q + delta
    q = queries.double()
    above = csum_c[-1] - csum_c[hi]
    window = ((csum_cv[hi] - csum_cv[lo]) - (q - delta) * (csum_c[hi] - csum_c[lo])) / (2 * delta)
    return (above + window).to(queries.dtype)


def sorted_step_update(positives: Tensor, others: Tensor, coef: Tensor, delta: float) -> Tensor:
    """``sum_i c_i f(o_j - s_i)`` for every ``o_j`` of ``others`` (the negatives' share of the positives'
    errors): positives below ``o_j - delta`` count fully, those within ``delta`` linearly.

    Args:
        positives: (P,) scores ``s_i``; others: (N,) scores ``o_j``; coef: (P,) ``c_i``.
    Returns:
        (N,) in the others' dtype.
    """
    s, csum_c, csum_cs = _prefix_sums(positives, coef)
    if delta == 0:        # [o - s >= 0] = [s <= o]
        hi = torch.searchsorted(s, others, right=True)
        return csum_c[hi].to(others.dtype)
    lo = torch.searchsorted(s, others - delta, right=False)    # positives with s < o - delta: f = 1
    hi = torch.searchsorted(s, others + delta, right=True)     # positives with s <= o + delta
    o = others.double()
    window = ((o + delta) * (csum_c[hi] - csum_c[lo]) - (csum_cs[hi] - csum_cs[lo])) / (2 * delta)
    return (csum_c[lo] + window).to(others.dtype)


def ranking_sets(logits: Tensor, targets: Tensor, weight: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """``(flat logits, positive, negative)``: every element of ``logits (B, A, C)`` is one ranked sample;
    positive where ``targets > 0``, negative where ``targets == 0``, both only where ``weight > 0``
    (``weight (B, A)`` per prior). All (B * A * C,)."""
    valid = targets >= 0
    if weight is not None:
        valid = valid & (weight > 0).unsqueeze(-1)
    return logits.reshape(-1), (valid & (targets > 0)).reshape(-1), (valid & (targets == 0)).reshape(-1)
