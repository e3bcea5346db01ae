"""aLRP loss (Oksuz, Cam, Akbas and Kalkan, "A Ranking-based, Balanced Loss Function Unifying Classification
and Localisation in Object Detection", NeurIPS 2020, arXiv:2009.13592; authors' code kemaloksuz/aLRPLoss).

aLRP ranks every (image, prior, class) element of the batch by its logit, like AP-Loss, and measures the
Localisation-Recall-Precision error of each positive ``i`` (Eq. 9-12)::

    l_LRP(i) = ( N_FP(i) + E_loc(i) + sum_{k in P, k != i} H(x_ik) E_loc(k) ) / rank(i)
    rank(i) = rank+(i) + N_FP(i),  rank+(i) = 1 + sum_{k in P, k != i} H(x_ik),  N_FP(i) = sum_{j in N} H(x_ij)

with ``x_ik = s_k - s_i``, ``H`` the step function smoothed with ``delta`` (:mod:`umop.losses.ranking`; aLRP
uses ``delta = 1``) and ``E_loc(k)`` the localisation error of positive ``k`` in ``[0, 1]`` (the authors use the
GIoU loss ``1 - GIoU`` in ``[0, 2]`` divided by 2 and by ``1 - tau = 0.5``, i.e. the GIoU loss itself). The loss
splits into

- the classification component ``L_cls = 1/|P| sum_i N_FP(i) / rank(i) = 1 - mean_i precision(i)``, not
  differentiable: its gradient is replaced by the error-driven update (Sec. 4, Theorem 2, the authors'
  code): for a positive ``i`` with ``N_FP(i) > eps``, ``g_i = -(N_FP(i) + sum_{k != i} H(x_ik) E_loc(k)) /
  rank(i)``, distributed over the negatives in proportion to ``H(x_ij) / N_FP(i)``:
  ``g_j = sum_i -g_i H(x_ij) / N_FP(i)``; all divided by ``|P|``. Positives' and negatives' updates cancel
  (the loss is "balanced", Theorem 2);
- the localisation component ``L_loc = 1/|P| sum_i (sum_{k: s_k >= s_i} E_loc(k)) / rank(i)`` (hard order,
  ``i`` included, ``rank`` without gradient), differentiated through ``E_loc`` by autograd;
- self-balancing (Sec. 5): ``L_loc`` is multiplied by ``w_SB = (mean L_cls + mean L_loc) / mean L_loc`` over the
  previous ``sb_period`` training steps (an epoch in the paper; the authors' COCO configs: 3665 iterations),
  starting at ``sb_initial = 50``.

Implementation: :class:`ALRPLossFunction` computes ``L_cls`` and its update together, vectorised: every sum
over positives or negatives is a prefix-sum query on sorted scores (O((P + N) log N)); no Python loop over
positives (the authors loop over them), no (P, N) matrix. Selecting the positives and negatives is boolean
indexing, a host synchronisation a whole-set ranking loss cannot avoid. Differences from the authors' code:
ties of the hard localisation order are broken by element index (theirs: an unstable argsort); the
self-balancing step counter is a Python attribute (it restarts after a resume, the weight itself is a
buffer and is saved).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ._precision import upcast_low_precision
from .base import ClassificationLoss
from .ranking import ranking_sets, sorted_step_sums, sorted_step_update

__all__ = ["alrp_loss", "ALRPLoss", "ALRPLossFunction"]


class ALRPLossFunction(torch.autograd.Function):
    """aLRP classification component and its error-driven update.

    Inputs: ``logits`` (N,) float, ``positive`` (N,) bool, ``negative`` (N,) bool, ``loc_error`` (P,) the
    positives' localisation errors in the order of ``logits[positive]`` (values only), ``delta``, ``eps``.
    Returns ``(sum_i N_FP(i) / rank(i), rank (P,))``; the caller divides by ``|P|``. Backward returns the
    error-driven update (not the gradient of the returned value, which is piecewise constant).
    """

    @staticmethod
    def forward(ctx, logits: Tensor, positive: Tensor, negative: Tensor, loc_error: Tensor, delta: float,
                eps: float) -> tuple[Tensor, Tensor]:
        scores = upcast_low_precision(logits.detach())
        update = torch.zeros_like(scores)
        fg = scores[positive]
        if fg.numel() == 0:
            ctx.save_for_backward(update.to(logits.dtype))
            ctx.mark_non_differentiable(fg)
            return scores.new_zeros(()).to(logits.dtype), fg
        bg = scores[negative]
        loc = loc_error.detach().to(scores.dtype)
        # f(0) = 1/2 is in every sum over all positives: rank+ = 1 + sum_{k != i} f = 1/2 + sum_k f
        rank_pos = 0.5 + sorted_step_sums(fg, fg, delta)
        false_pos = sorted_step_sums(fg, bg, delta)
        rank = rank_pos + false_pos
        loc_above = sorted_step_sums(fg, fg, delta, coef=loc) - 0.5 * loc      # sum_{k != i} f(x_ik) E_loc(k)
        active = false_pos > eps
        error = torch.where(active, (false_pos + loc_above) / rank, torch.zeros_like(rank))   # -g_i
        coef = torch.where(active, error / false_pos.clamp(min=eps), torch.zeros_like(rank))
        update[negative] = sorted_step_update(fg, bg, coef, delta)
        update[positive] = -error
        ctx.save_for_backward(update.to(logits.dtype))
        ctx.mark_non_differentiable(rank)
        return (false_pos / rank).sum().to(logits.dtype), rank

    @staticmethod
    def backward(ctx, grad_output: Tensor, grad_rank: Tensor):
        (update,) = ctx.saved_tensors
        return update * grad_output, None, None, None, None, None


def alrp_loss(pred: Tensor, target: Tensor, loc_error: Tensor, weight: Tensor | None = None,
              avg_factor: float | Tensor | None = None, *, delta: float = 1.0, eps: float = 1e-5
              ) -> tuple[Tensor, Tensor]:
    """aLRP loss components ``(L_cls, L_loc)`` without self-balancing (aLRP Eq. 11-12, Sec. 4).

    Args:
        pred: (B, A, C) logits; every element is one ranked sample.
        target: (B, A, C) one-hot targets (1 positive, 0 negative).
        loc_error: (B, A) localisation error of each prior (read at the positives; gradient flows into it).
        weight: optional (B, A); priors with weight <= 0 are left out of the ranking.
        avg_factor: divisor of both sums (default: the number of positive elements ``|P|``, giving the
            paper's means).
        delta: smoothing of the step function (aLRP: 1).
        eps: a positive with ``N_FP <= eps`` gets no update (authors' code: 1e-5).

    Returns:
        ``(L_cls, L_loc)``, 0-d; ``L_cls``'s backward is the error-driven update.
    """
    if pred.dim() != 3 or target.shape != pred.shape:
        raise ValueError(f"pred and target must be (B, A, C) of one shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    if loc_error.shape != pred.shape[:2]:
        raise ValueError(f"loc_error must be (B, A) = {tuple(pred.shape[:2])}, got {tuple(loc_error.shape)}")
    if delta <= 0:
        raise ValueError(f"delta must be positive, got {delta!r}")
    flat, positive, negative = ranking_sets(pred, target, weight)
    loc_positive = loc_error.unsqueeze(-1).expand(pred.shape).reshape(-1)[positive]    # (P,), with gradient
    cls_sum, rank = ALRPLossFunction.apply(flat, positive, negative, loc_positive, float(delta), float(eps))
    if loc_positive.numel() == 0:
        loc_sum = loc_error.sum() * 0
    else:
        order = torch.sort(flat.detach()[positive], descending=True, stable=True).indices
        loc_sum = (loc_positive[order].cumsum(0) / rank[order]).sum()
    if avg_factor is None:
        avg_factor = positive.sum().clamp(min=1).to(pred.dtype)
    return cls_sum / avg_factor, loc_sum / avg_factor


class ALRPLoss(ClassificationLoss):
    """aLRP loss (Oksuz et al., NeurIPS 2020) as a detector's classification *and* box loss (config ``alrp``).

    :class:`~umop.losses.base.ClassificationLoss` protocol with ``needs_loc_error`` and ``replaces_box_loss``:
    returns ``{"loss_cls": L_cls, "loss_box": w_SB * L_loc}`` (both divided by ``avg_factor``, the number of
    positives for the paper's means). ``loc_error`` (B, A) is the detector's per-prior box loss in ``[0, 1]``
    scale (the authors: the GIoU loss). A ranking loss over the whole batch takes no sampler.

    Self-balancing state: buffer ``sb_weight`` (starts at ``sb_initial``) is re-set every ``sb_period``
    training-mode calls from the means of the two components over those calls.
    """

    needs_loc_error = True
    replaces_box_loss = True
    accepts_sampler = False
    sb_weight: Tensor

    def __init__(self, delta: float = 1.0, eps: float = 1e-5, sb_initial: float = 50.0, sb_period: int = 3665,
                 loss_weight: float = 1.0) -> None:
        super().__init__(loss_weight)
        if delta <= 0:
            raise ValueError(f"delta must be positive, got {delta!r}")
        if sb_initial <= 0:
            raise ValueError(f"sb_initial must be positive, got {sb_initial!r}")
        if int(sb_period) != sb_period or sb_period < 1:
            raise ValueError(f"sb_period must be a positive integer, got {sb_period!r}")
        self.delta, self.eps, self.sb_period = float(delta), float(eps), int(sb_period)
        self.register_buffer("sb_weight", torch.tensor(float(sb_initial)))
        self.register_buffer("_sb_sums", torch.zeros(2))        # running sums of L_cls and L_loc
        self._sb_steps = 0

    def compute(self, logits, targets, num_priors_per_level, weight, avg_factor, *, quality, loc_error):
        loss_cls, loss_loc = alrp_loss(logits, targets, loc_error, weight, avg_factor, delta=self.delta,
                                       eps=self.eps)
        loss_box = self.sb_weight.to(loss_loc.dtype) * loss_loc
        if self.training:
            self._update_self_balance(loss_cls.detach(), loss_loc.detach())
        return {"loss_cls": loss_cls, "loss_box": loss_box}, {}

    @torch.no_grad()
    def _update_self_balance(self, loss_cls: Tensor, loss_loc: Tensor) -> None:
        """w_SB = (mean L_cls + mean L_loc) / mean L_loc over the last ``sb_period`` steps (no host sync)."""
        self._sb_sums += torch.stack([loss_cls, loss_loc]).to(self._sb_sums)
        self._sb_steps += 1
        if self._sb_steps >= self.sb_period:
            cls_sum, loc_sum = self._sb_sums
            self.sb_weight.copy_(torch.where(loc_sum > 0, (cls_sum + loc_sum) / loc_sum.clamp(min=1e-12),
                                             self.sb_weight))
            self._sb_sums.zero_()
            self._sb_steps = 0

    def extra_repr(self) -> str:
        return f"delta={self.delta}, sb_period={self.sb_period}, sb_weight={float(self.sb_weight):.4g}"
