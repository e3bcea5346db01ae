"""AP-Loss: a ranking loss trained with an error-driven update.

Chen, Ling, Zhang, Liu, Huang and Lin (Chen et al.), "Towards Accurate One-Stage Object Detection with
AP-Loss", CVPR 2019 (arXiv:1904.06373); the official code is ``cccorn/AP-loss`` (``lib/model/aploss.py``).

Classification is recast as ranking all (anchor, class) pairs of the mini-batch by score. With
``x_ij = s_j - s_i`` and the piecewise step function (Sec. 3.3)

    f(x) = 0 (x < -delta),  x / (2 delta) + 1/2 (|x| <= delta),  1 (x > delta),   delta = 1,

a positive ``i`` has ``rank+(i) = 1 + sum_{k in P, k != i} f(x_ik)``, ``rank(i) = rank+(i) + sum_{j in N} f(x_ij)``
and precision ``rank+(i) / rank(i)``. The loss is ``1 - AP`` (Eq. 5-7)::

    L = 1/|P| sum_{i in P} sum_{j in N} L_ij,      L_ij = f(x_ij) / rank(i).

It is not differentiable, so the paper replaces the gradient by the perceptron-style *error-driven update*
(Sec. 3.2, Eq. 10-11, Alg. 1): the primary terms ``L_ij`` are the errors, giving

    dL/ds_i = -1/|P| sum_j L_ij   (positive i),        dL/ds_j = 1/|P| sum_i L_ij   (negative j),

which sum to zero over all samples (Sec. 3.4, "the gradients of positives and negatives are balanced").

Interpolated AP (the official code, always on there; ``interpolated=True`` here): the positives' precisions
are replaced by the interpolated precision ``max_{k in P, s_k <= s_i} prec(k)`` (the running maximum in
ascending score order), and a positive whose precision was raised has its negatives' errors scaled by
``(1 - prec_interp(i)) / (1 - prec(i))`` so that the update stays balanced. ``interpolated=False`` gives the
plain form above.

Implementation: an ``autograd.Function`` computing the value and the error-driven gradient together (as the
official code does). ``method="matrix"`` vectorises over positives with ``(P, N)`` comparison matrices,
chunked over positives so that memory stays below ``max_elements`` floats; it costs O(P N), which is minutes
on CPU for a RetinaNet-sized batch (4 M scores, 400 positives: ~130 s against ~5 s for ``"sort"``, 2 CPU
cores). ``method="sort"`` (default) computes the
same sums exactly: ``f`` is piecewise linear, so ``sum_j f(s_j - s_i)`` is a count above ``s_i + delta`` plus
a linear term over the window ``[s_i - delta, s_i + delta]``, both read from the sorted scores with
``searchsorted`` and float64 prefix sums (and symmetrically for the negatives' update): O((P + N) log N).
Negatives with ``s_j < min_i s_i - delta`` have ``f = 0`` for
every positive and are skipped (the official code's acceleration). Selecting the positives and relevant
negatives needs boolean indexing, i.e. a host synchronisation: AP-Loss is a whole-set ranking loss and cannot
avoid it. Differences from the official code: no Python loop over positives; ``weight`` / ``target = -1``
mark ignored elements; ``reduction="sum"`` / ``avg_factor`` are offered (``"mean"`` divides by ``|P|`` as
there); with no positive the loss is 0 with zero gradient (as there).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ._precision import upcast_low_precision
from ._weights import broadcast_weight
from .base import ClassificationLoss
from .ranking import sorted_step_sums, sorted_step_update, step_function

__all__ = ["ap_loss", "APLoss", "APLossFunction"]


def _check_options(delta: float, method: str) -> None:
    if delta <= 0:
        raise ValueError(f"delta must be positive, got {delta!r}")
    if method not in ("sort", "matrix"):
        raise ValueError(f"method must be 'sort' or 'matrix', got {method!r}")


def _matrix_sums(fg: Tensor, bg: Tensor, delta: float, max_elements: int) -> tuple[Tensor, Tensor]:
    """``(sum_k f(fg_k - fg_i), sum_j f(bg_j - fg_i))`` per positive i from chunked (chunk, P) / (chunk, N)
    comparison matrices."""
    num_pos = fg.numel()
    chunk = max(1, max_elements // max(num_pos, bg.numel(), 1))
    with_pos = torch.empty_like(fg)
    with_neg = torch.empty_like(fg)
    for start in range(0, num_pos, chunk):           # chunks of positives, not single samples
        fi = fg[start:start + chunk, None]
        with_pos[start:start + chunk] = step_function(fg[None, :] - fi, delta).sum(1)
        with_neg[start:start + chunk] = step_function(bg[None, :] - fi, delta).sum(1)
    return with_pos, with_neg


def _matrix_update(fg: Tensor, bg: Tensor, coef: Tensor, delta: float, max_elements: int) -> Tensor:
    """``sum_i coef_i f(bg_j - fg_i)`` per negative j, chunked over positives."""
    num_pos = fg.numel()
    chunk = max(1, max_elements // max(num_pos, bg.numel(), 1))
    out = torch.zeros_like(bg)
    for start in range(0, num_pos, chunk):
        fi = fg[start:start + chunk, None]
        out += (step_function(bg[None, :] - fi, delta) * coef[start:start + chunk, None]).sum(0)
    return out


class APLossFunction(torch.autograd.Function):
    """Value ``sum_i (1 - prec_i)`` over positives; backward returns the error-driven update (not a gradient).

    Inputs: ``logits`` (N,) float, ``positive`` (N,) bool, ``negative`` (N,) bool, ``delta``, ``interpolated``,
    ``method`` (``"sort"`` or ``"matrix"``), ``max_elements``. The caller divides by ``|P|`` for the mean.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, positive: Tensor, negative: Tensor, delta: float, interpolated: bool,
                method: str, max_elements: int) -> Tensor:
        scores = upcast_low_precision(logits.detach())
        update = torch.zeros_like(scores)
        fg = scores[positive]
        if fg.numel() == 0:
            ctx.save_for_backward(update.to(logits.dtype))
            return scores.new_zeros(()).to(logits.dtype)
        # negatives below min(fg) - delta have f = 0 against every positive (the official code's shortcut)
        relevant = negative & (scores >= fg.min() - delta)
        bg = scores[relevant]
        if method == "matrix":
            with_pos, false_pos = _matrix_sums(fg, bg, delta, max_elements)
        else:
            with_pos, false_pos = sorted_step_sums(fg, fg, delta), sorted_step_sums(fg, bg, delta)
        # the sum over all positives includes k = i with f(0) = 1/2: rank+ = 1 + sum_{k != i} f = 1/2 + sum_k f
        rank_pos = 0.5 + with_pos
        rank = rank_pos + false_pos
        prec = rank_pos / rank
        if interpolated:
            order = torch.argsort(fg, stable=True)        # ascending score = descending recall
            interp = torch.empty_like(prec)
            interp[order] = torch.cummax(prec[order], dim=0).values
            raised = interp > prec
            scale = torch.where(raised, (1 - interp) / (1 - torch.where(raised, prec, torch.zeros_like(prec))),
                                torch.ones_like(prec))
        else:
            interp = prec
            scale = torch.ones_like(prec)
        coef = scale / rank                               # L_ij = f(x_ij) * coef_i
        if method == "matrix":
            update[relevant] = _matrix_update(fg, bg, coef, delta, max_elements)
        else:
            update[relevant] = sorted_step_update(fg, bg, coef, delta)
        update[positive] = -(1 - interp)                  # = -sum_j L_ij (scaled), Alg. 1
        ctx.save_for_backward(update.to(logits.dtype))
        return (1 - interp).sum().to(logits.dtype)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        (update,) = ctx.saved_tensors
        return update * grad_output, None, None, None, None, None, None


def ap_loss(pred: Tensor, target: Tensor, weight: Tensor | None = None, reduction: str = "mean",
            avg_factor: float | Tensor | None = None, *, delta: float = 1.0, interpolated: bool = True,
            method: str = "sort", max_elements: int = 1 << 24) -> Tensor:
    """AP-Loss ``1 - AP`` over all elements of ``pred`` ranked together (AP-Loss Eq. 5-7, Alg. 1).

    Args:
        pred: (...) logits, e.g. (B, A, C): every (image, anchor, class) of the mini-batch is one sample.
        target: same shape, 1 positive, 0 negative, -1 ignored (the official code's convention).
        weight: optional, broadcastable to ``pred``; elements with ``weight <= 0`` are ignored (only
            validity is used: AP-Loss has no per-sample weights).
        reduction: ``"mean"`` (``1 - AP``, the sum of per-positive errors divided by ``|P|``) or ``"sum"``;
            ``"none"`` is not defined for a ranking loss over the whole set.
        avg_factor: with ``"mean"``, the divisor instead of ``|P|``; with ``"sum"`` an error (as in
            :func:`~umop.losses.reduction.weight_reduce_loss`).
        delta: half-width of the piecewise step function (paper: 1).
        interpolated: use interpolated AP (the official code) rather than plain AP.
        method: ``"sort"`` (default): exact sums of the piecewise-linear ``f`` from sorted scores and prefix
            sums, O((P + N) log N) time and O(P + N) memory; ``"matrix"``: explicit (P, N) comparison
            matrices chunked over positives (O(P N), the direct transcription of Alg. 1).
        max_elements: memory bound of one chunk of the ``"matrix"`` method.

    Returns:
        scalar; its backward is the error-driven update.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum' for AP-Loss (a ranking loss over the whole set), "
                         f"got {reduction!r}")
    if target.shape != pred.shape:
        raise ValueError(f"pred and target must have the same shape, got pred {tuple(pred.shape)} and "
                         f"target {tuple(target.shape)}")
    _check_options(delta, method)
    if not pred.is_floating_point():
        raise ValueError(f"pred must be a floating point tensor, got dtype {pred.dtype}")
    if not bool(((target == 0) | (target == 1) | (target == -1)).all()):
        raise ValueError("target must contain only 1 (positive), 0 (negative) and -1 (ignored) values")
    valid = target >= 0
    if weight is not None:
        valid = valid & (broadcast_weight(weight, pred) > 0)
    flat = pred.reshape(-1)
    positive = ((target == 1) & valid).reshape(-1)
    negative = ((target == 0) & valid).reshape(-1)
    total = APLossFunction.apply(flat, positive, negative, float(delta), bool(interpolated), method,
                                 int(max_elements))
    if reduction == "sum":
        if avg_factor is not None:
            raise ValueError('avg_factor can only be used with reduction="mean", got reduction="sum"')
        return total
    divisor = positive.sum().clamp(min=1).to(pred.dtype) if avg_factor is None else avg_factor
    return total / divisor


class APLoss(ClassificationLoss):
    """AP-Loss (Chen et al., CVPR 2019) as a detector's classification loss (config name ``ap_loss``).

    :class:`~umop.losses.base.ClassificationLoss` protocol: every (image, prior, class) element with
    weight > 0 is ranked against all others; the loss is ``sum_i (1 - prec_i) / avg_factor``, i.e.
    ``1 - AP`` when ``avg_factor`` is the number of positives (as the detectors pass it). Its backward is the
    error-driven update. A ranking loss over the whole batch uses no sampler (``accepts_sampler = False``).
    """

    accepts_sampler = False

    def __init__(self, delta: float = 1.0, interpolated: bool = True, method: str = "sort",
                 loss_weight: float = 1.0) -> None:
        super().__init__(loss_weight)
        _check_options(delta, method)
        self.delta, self.interpolated, self.method = float(delta), bool(interpolated), method

    def compute(self, logits, targets, num_priors_per_level, weight, avg_factor, *, quality, loc_error):
        loss = ap_loss(logits, targets, weight, "sum", delta=self.delta, interpolated=self.interpolated,
                       method=self.method)
        return loss / avg_factor, {}

    def extra_repr(self) -> str:
        return f"delta={self.delta}, interpolated={self.interpolated}, method={self.method!r}"
