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
official code does), vectorised over positives with ``(P, N)`` comparison matrices, chunked over positives so
that memory stays below ``max_elements`` floats. Negatives with ``s_j < min_i s_i - delta`` have ``f = 0`` for
every positive and are skipped (the official code's acceleration). Selecting the positives and relevant
negatives needs boolean indexing, i.e. a host synchronisation: AP-Loss is a whole-set ranking loss and cannot
avoid it. Differences from the official code: no Python loop over positives; ``weight`` / ``target = -1``
mark ignored elements; ``reduction="sum"`` / ``avg_factor`` are offered (``"mean"`` divides by ``|P|`` as
there); with no positive the loss is 0 with zero gradient (as there).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["ap_loss", "APLoss", "APLossFunction"]


def _step(x: Tensor, delta: float) -> Tensor:
    """Piecewise step function f(x) (AP-Loss Sec. 3.3)."""
    return (x / (2 * delta) + 0.5).clamp_(0.0, 1.0)


class APLossFunction(torch.autograd.Function):
    """Value ``sum_i (1 - prec_i)`` over positives; backward returns the error-driven update (not a gradient).

    Inputs: ``logits`` (N,) float, ``positive`` (N,) bool, ``negative`` (N,) bool, ``delta``, ``interpolated``,
    ``max_elements``. The caller divides by ``|P|`` for the mean.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, positive: Tensor, negative: Tensor, delta: float, interpolated: bool,
                max_elements: int) -> Tensor:
        scores = logits.detach()
        if scores.dtype in (torch.float16, torch.bfloat16):
            scores = scores.float()
        update = torch.zeros_like(scores)
        fg = scores[positive]
        num_pos = fg.numel()
        if num_pos == 0:
            ctx.save_for_backward(update.to(logits.dtype))
            return scores.new_zeros(()).to(logits.dtype)
        threshold = fg.min() - delta
        relevant = negative & (scores >= threshold)
        bg = scores[relevant]
        chunk = max(1, max_elements // max(num_pos, bg.numel(), 1))

        rank_pos = torch.empty_like(fg)
        false_pos = torch.empty_like(fg)
        for start in range(0, num_pos, chunk):           # chunks of positives, each a (chunk, P) / (chunk, N) matrix
            fi = fg[start:start + chunk, None]
            # sum over all positives includes k = i with f(0) = 1/2: rank+ = 1 + sum_{k != i} f = 1/2 + sum_k f
            rank_pos[start:start + chunk] = 0.5 + _step(fg[None, :] - fi, delta).sum(1)
            false_pos[start:start + chunk] = _step(bg[None, :] - fi, delta).sum(1)
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
        bg_update = torch.zeros_like(bg)
        for start in range(0, num_pos, chunk):
            fi = fg[start:start + chunk, None]
            bg_update += (_step(bg[None, :] - fi, delta) * coef[start:start + chunk, None]).sum(0)
        update[relevant] = bg_update
        update[positive] = -(1 - interp)                  # = -sum_j L_ij (scaled), Alg. 1
        ctx.save_for_backward(update.to(logits.dtype))
        return (1 - interp).sum().to(logits.dtype)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        (update,) = ctx.saved_tensors
        return update * grad_output, None, None, None, None, None


def ap_loss(pred: Tensor, target: Tensor, weight: Tensor | None = None, reduction: str = "mean",
            avg_factor: float | Tensor | None = None, *, delta: float = 1.0, interpolated: bool = True,
            max_elements: int = 1 << 24) -> Tensor:
    """AP-Loss ``1 - AP`` over all elements of ``pred`` ranked together (AP-Loss Eq. 5-7, Alg. 1).

    Args:
        pred: (...) logits, e.g. (B, A, C): every (image, anchor, class) of the mini-batch is one sample.
        target: same shape, 1 positive, 0 negative, -1 ignored (the official code's convention).
        weight: optional, broadcastable to ``pred``; elements with ``weight <= 0`` are ignored (only
            validity is used: AP-Loss has no per-sample weights).
        reduction: ``"mean"`` (``1 - AP``, the sum of per-positive errors divided by ``|P|``) or ``"sum"``;
            ``"none"`` is not defined for a ranking loss over the whole set.
        avg_factor: with ``"mean"``, the divisor instead of ``|P|``.
        delta: half-width of the piecewise step function (paper: 1).
        interpolated: use interpolated AP (the official code) rather than plain AP.
        max_elements: memory bound for the chunked (positives x negatives) matrices.

    Returns:
        scalar; its backward is the error-driven update.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum' for AP-Loss (a ranking loss over the whole set), "
                         f"got {reduction!r}")
    if target.shape != pred.shape:
        raise ValueError(f"pred and target must have the same shape, got pred {tuple(pred.shape)} and "
                         f"target {tuple(target.shape)}")
    if delta <= 0:
        raise ValueError(f"delta must be positive, got {delta!r}")
    if not pred.is_floating_point():
        raise ValueError(f"pred must be a floating point tensor, got dtype {pred.dtype}")
    if not bool(((target == 0) | (target == 1) | (target == -1)).all()):
        raise ValueError("target must contain only 1 (positive), 0 (negative) and -1 (ignored) values")
    valid = target >= 0
    if weight is not None:
        try:
            shape = torch.broadcast_shapes(weight.shape, pred.shape)
        except RuntimeError:
            shape = None
        if shape != pred.shape:
            raise ValueError(f"weight of shape {tuple(weight.shape)} does not broadcast to pred's shape "
                             f"{tuple(pred.shape)}")
        valid = valid & (weight > 0)
    flat = pred.reshape(-1)
    positive = ((target == 1) & valid).reshape(-1)
    negative = ((target == 0) & valid).reshape(-1)
    total = APLossFunction.apply(flat, positive, negative, float(delta), bool(interpolated), int(max_elements))
    if reduction == "sum":
        return total
    divisor = positive.sum().clamp(min=1).to(pred.dtype) if avg_factor is None else avg_factor
    return total / divisor


class APLoss(nn.Module):
    """Module form of :func:`ap_loss` with ``loss_weight``."""

    def __init__(self, delta: float = 1.0, interpolated: bool = True, reduction: str = "mean",
                 loss_weight: float = 1.0) -> None:
        super().__init__()
        if delta <= 0:
            raise ValueError(f"delta must be positive, got {delta!r}")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.delta = float(delta)
        self.interpolated = bool(interpolated)
        self.reduction = reduction
        self.loss_weight = float(loss_weight)

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None,
                avg_factor: float | Tensor | None = None, reduction_override: str | None = None) -> Tensor:
        reduction = reduction_override or self.reduction
        return self.loss_weight * ap_loss(pred, target, weight, reduction, avg_factor, delta=self.delta,
                                          interpolated=self.interpolated)
