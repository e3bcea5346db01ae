"""Progressive Focal Loss with level-wise resampling: the classification loss of UMOP.

Wu et al., "Progressive Hard-case Mining across Pyramid Levels in Object Detection" (UMOP), 2021.

The share of positive anchors differs from one FPN level to another (level imbalance, UMOP Fig. 2), so one
focal-loss setting cannot suit every level. UMOP therefore
  * computes the classification loss per pyramid level (Level-wise Resampling, LRP; Eq. 1), and
  * sets each level's focusing parameter from that level's own convergence (Progressive Focal Loss, PFL):
        gamma_ad = clamp(raw_gamma, gamma - delta, gamma + delta)                       (Eq. 4-5)
        alpha_ad = w / gamma_ad                                                         (Eq. 6)
    both without gradient, raw_gamma measured on the level's positives.

The paper and the released code differ in two places; both are implemented and the default follows the
released code:
  ======================  ========================================  =====================================
  choice                  released code (default)                   paper
  ======================  ========================================  =====================================
  raw gamma estimator     ``estimator="official"``:                 ``estimator="paper"`` (Eq. 4):
                          mean over positives of -log(sigmoid(x))   -log(mean over positives of sigmoid(x))
  combining the levels    ``level_reduction="sum"``: sum of the     ``level_reduction="mean"`` (Eq. 1):
                          per-level losses                          mean over the L levels
  multi-GPU gamma         per-GPU gammas averaged unweighted        --
  ======================  ========================================  =====================================
By Jensen's inequality (-log is convex) the paper's raw gamma is never larger than the official one.
Under ``torch.distributed`` this implementation all-reduces the per-level *sums* (estimator terms and
positive counts), so two processes with half a batch each get exactly the gamma of one process with the
whole batch; the released code's unweighted average of per-GPU gammas differs from that whenever the GPUs
see different numbers of positives.

Speed: vectorised over (B, A, C); no Python loop over images or levels; no host synchronisation on an
accelerator. ``ProgressiveFocalLossFunction`` computes the loss and its hand-derived gradient together (binary
targets allow the short form dL/dx = a_t * s * m^gamma * (m + gamma * ce * (1 - m)), with s = 1 - 2t,
m = sigmoid(s x) = 1 - p_t and ce = softplus(s x)) in the three buffers of the focal-loss prelude; per-level
sums are one matrix product with a cached (A, L) level matrix. Over focal loss with gamma = 2 it adds one
batched row dot (the statistics), one in-place pass and an exp2. On CPU, when every anchor has at most one
positive (one-hot rows, checked for free there), a positive's loss ce * (1 - exp(-ce))^gamma is computed from
the statistics' per-row ce instead of a second row dot over (B, A, C).
"""
from __future__ import annotations

import warnings
from typing import Sequence

import torch
from torch import Tensor

from ._precision import upcast_low_precision
from .base import ClassificationLoss, check_classification_inputs
from ..distributed import all_reduce_sum
from ..structures.levels import level_index_for, level_matrix_for
from .fused_focal import (binary_focal_prelude, binary_modulated_terms, binary_violation, last_dim_dots,
                          last_dim_sums, scale_saved_gradient, signed_alpha_gradient)

__all__ = ["progressive_focal_loss", "ProgressiveFocalLoss", "check_pfl_options", "level_index_for",
           "ESTIMATORS", "LEVEL_REDUCTIONS"]

ESTIMATORS = ("official", "paper")
LEVEL_REDUCTIONS = ("sum", "mean")
BASE_ALPHA = 0.25  # w = BASE_ALPHA * gamma when w is not given (0.5 for gamma = 2, UMOP Sec. 3.3)

def check_pfl_options(gamma: float, delta: float, w: float | None, estimator: str,
                      level_reduction: str) -> None:
    """PFL's option validation, the one place used by the function and the module: ValueError naming the option."""
    if delta < 0:
        raise ValueError(f"delta must be >= 0, got {delta}")
    if gamma - delta <= 0:
        raise ValueError(f"gamma - delta must be > 0 (alpha_ad = w / gamma_ad), got gamma={gamma}, delta={delta}")
    if w is not None and w <= 0:
        raise ValueError(f"w must be > 0 (alpha_ad = w / gamma_ad), got {w}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if level_reduction not in LEVEL_REDUCTIONS:
        raise ValueError(f"level_reduction must be one of {LEVEL_REDUCTIONS}, got {level_reduction!r}")


def _check_binary(targets: Tensor, positives_per_anchor: Tensor) -> None:
    """Targets must be one-hot 0/1; on CUDA a device-side assert (no host synchronisation)."""
    if targets.numel() == 0:
        return
    violation = binary_violation(targets, positives_per_anchor)
    if targets.is_cuda:
        torch._assert_async(~violation, "progressive_focal_loss: targets must be binary (one-hot)")
    elif violation:
        raise ValueError("targets must be binary one-hot (0 or 1) for progressive_focal_loss; "
                         "use sigmoid_focal_loss for soft targets")


def _adaptive_parameters(level_sums: Tensor, gamma: float, delta: float, w: float,
                         estimator: str) -> tuple[Tensor, Tensor]:
    """Per-level gamma_ad and alpha_ad from the (2, L) [estimator-term sum, positive count] table."""
    term_sum, num_positive = level_sums[0], level_sums[1]
    mean_term = term_sum / num_positive.clamp(min=1)
    if estimator == "official":      # released code: mean of -log(p) over the positives
        raw_gamma = mean_term
    else:                             # paper Eq. 4: -log of the mean p over the positives
        raw_gamma = -torch.log(mean_term.clamp(min=torch.finfo(mean_term.dtype).tiny))
    gamma_ad = torch.where(num_positive > 0, raw_gamma.clamp(gamma - delta, gamma + delta),
                           torch.full_like(raw_gamma, gamma))
    return gamma_ad, w / gamma_ad


class ProgressiveFocalLossFunction(torch.autograd.Function):
    """Fused PFL forward + hand-derived backward. Returns (total, per-level loss, stats table)."""

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, level_index: Tensor, level_matrix: Tensor,
                num_levels: int, gamma: float,
                delta: float, w: float, estimator: str, level_reduction: str, valid: Tensor | None,
                weight: Tensor | None, avg_factor: Tensor | float, sync: bool, positives_per_anchor: Tensor,
                one_hot_rows: bool):
        signed_logits, ce, modulating_base = binary_focal_prelude(logits, targets)
        num_anchors = logits.shape[1]

        # ---- per-level statistics of the positives (UMOP Eq. 4 / released code) -----------------------
        ce_positive = last_dim_dots(targets, ce)       # (B, A): sum of ce = -log(p) over the row's positives
        if estimator == "official":   # sum of -log(p) over the positives
            term_per_anchor = ce_positive
        elif one_hot_rows:            # sum of p = exp(-ce) over the positives (at most one per row)
            term_per_anchor = positives_per_anchor * torch.exp(-ce_positive)
        else:                         # sum of p = 1 - m over the positives
            term_per_anchor = positives_per_anchor - last_dim_dots(targets, modulating_base)
        per_anchor = torch.stack([term_per_anchor, positives_per_anchor])            # (2, B, A)
        if valid is not None:
            per_anchor = per_anchor * valid
        level_sums = per_anchor.sum(1) @ level_matrix                                  # (2, L)
        if sync:
            level_sums = all_reduce_sum(level_sums)  # identity in one process
        gamma_ad, alpha_ad = _adaptive_parameters(level_sums, gamma, delta, w, estimator)

        # ---- focal loss with one (alpha, gamma) per level ----------------------------------------------
        anchor_gamma, anchor_alpha = torch.stack([gamma_ad, alpha_ad]).index_select(1, level_index)  # (A,)
        loss_part, grad_factor, loss_factor = binary_modulated_terms(
            signed_logits, ce, modulating_base, anchor_gamma.view(1, num_anchors, 1), logits.requires_grad,
            gamma_is_positive=True)
        # per anchor (B, A): focal loss summed over all classes without alpha, and its positives' share
        all_classes = last_dim_sums(loss_part) * loss_factor.view(1, num_anchors)
        if one_hot_rows:  # a positive's ce * m^gamma from its ce alone: m = 1 - p = -expm1(-ce)
            # rows without a positive (ce_positive = 0) are shifted to ce = 1 to keep log finite (log(0) is
            # a slow path); they are multiplied by 0 anyway
            shifted_ce = torch.sub(positives_per_anchor, 1.0).sub_(ce_positive)     # -(ce + 1 - positives)
            positives = ce_positive * torch.expm1(shifted_ce).neg_().log2_().mul_(anchor_gamma).exp2_()
        else:
            positives = last_dim_dots(targets, loss_part) * loss_factor.view(1, num_anchors)
        # a_t = 1 - alpha for negatives, alpha for positives
        anchor_loss = torch.addcmul(all_classes * (1 - anchor_alpha), positives, 2 * anchor_alpha - 1)
        if weight is not None:
            anchor_loss = anchor_loss * weight
        inverse = 1.0 / avg_factor if isinstance(avg_factor, float) else avg_factor.reciprocal()
        if level_reduction == "mean":
            inverse = inverse / num_levels
        level_loss = (anchor_loss.sum(0) @ level_matrix) * inverse                      # (L,)
        grad = None
        if grad_factor is not None:
            scale = (weight * inverse).unsqueeze(-1) if weight is not None else torch.as_tensor(inverse)
            grad = signed_alpha_gradient(grad_factor, targets, (1 - anchor_alpha).view(1, num_anchors, 1) * scale,
                                         scale, out=signed_logits)
        ctx.save_for_backward(grad if grad is not None else torch.empty(0))
        stats = torch.stack([gamma_ad, alpha_ad, level_sums[1]])
        ctx.mark_non_differentiable(level_loss, stats)
        return level_loss.sum(), level_loss, stats

    @staticmethod
    def backward(ctx, grad_total: Tensor, grad_level_loss: Tensor, grad_stats: Tensor):
        (grad,) = ctx.saved_tensors
        return (scale_saved_gradient(grad, grad_total),) + (None,) * 15


def _avg_factor_from_deprecated(avg_factor: Tensor | float | None, normalizer: Tensor | float | None,
                                caller: str) -> Tensor | float | None:
    """``avg_factor``, or the deprecated ``normalizer`` alias with a DeprecationWarning (not both)."""
    if normalizer is None:
        return avg_factor
    if avg_factor is not None:
        raise ValueError("give avg_factor only (normalizer is its deprecated alias), not both")
    warnings.warn(f"{caller}(..., normalizer=...) is deprecated, use avg_factor=...", DeprecationWarning,
                  stacklevel=3)
    return normalizer


def progressive_focal_loss(logits: Tensor, targets: Tensor, num_priors_per_level: Sequence[int],
                           weight: Tensor | None = None, avg_factor: Tensor | float | None = None, *,
                           gamma: float = 2.0, delta: float = 0.5, w: float | None = None,
                           estimator: str = "official", level_reduction: str = "sum",
                           return_stats: bool = False, sync: bool = True,
                           normalizer: Tensor | float | None = None):
    """Progressive focal loss over FPN levels (UMOP Eq. 1, 4-6).

    The per-level losses are sums over the level's valid elements, divided by ``avg_factor`` and then
    summed (``level_reduction="sum"``) or averaged (``"mean"``) over the levels.

    Args:
        logits: (B, A, C) classification logits; the priors of all pyramid levels concatenated in level
            order, ``A == sum(num_priors_per_level)``.
        targets: (B, A, C) one-hot targets (a background prior is a row of zeros); float, int or bool.
        num_priors_per_level: priors (anchors or points) per level, e.g. ``[A_P3, ..., A_P7]``.
        weight: optional (B, A) prior weights, 0 for an ignored prior; positives and the loss only count
            priors with weight > 0, and the loss is multiplied by the weight.
        avg_factor: divides the total (typically the number of positives, >= 1); scalar tensor or float;
            ``None`` means 1 (the plain sum).
        gamma: base focusing parameter; delta: half-width of the clamp range ``[gamma-delta, gamma+delta]``.
        w: alpha_ad = w / gamma_ad; ``None`` means ``0.25 * gamma`` (0.5 for the default gamma).
        estimator: "official" (released code: mean of -log p over positives) or "paper" (Eq. 4).
        level_reduction: "sum" (released code) or "mean" over levels (Eq. 1).
        return_stats: also return a dict of per-level tensors (L,): ``gamma_ad``, ``alpha_ad``,
            ``num_positive``, ``num_valid`` (valid elements = valid priors x C) and ``loss``.
        sync: under ``torch.distributed``, all-reduce the per-level sums so every process uses the
            gamma_ad of the global batch.
        normalizer: deprecated alias of ``avg_factor`` (DeprecationWarning; removed in the next release).

    Returns:
        The scalar loss, or ``(loss, stats)`` with ``return_stats=True``.
    """
    avg_factor = _avg_factor_from_deprecated(avg_factor, normalizer, "progressive_focal_loss")
    check_classification_inputs(logits, targets, num_priors_per_level, weight)
    check_pfl_options(gamma, delta, w, estimator, level_reduction)
    logits = upcast_low_precision(logits)  # bf16/fp16 (AMP): gamma_ad and the loss in float32
    w = BASE_ALPHA * gamma if w is None else float(w)
    level_index = level_index_for(num_priors_per_level, logits.device)
    level_matrix = level_matrix_for(num_priors_per_level, logits.device, logits.dtype)
    num_levels = len(num_priors_per_level)
    if avg_factor is None:
        avg_factor = 1.0
    elif isinstance(avg_factor, Tensor):
        avg_factor = avg_factor.to(logits.dtype)
    else:
        avg_factor = float(avg_factor)
    valid_mask = (weight > 0).to(logits.dtype) if weight is not None else None
    weight = weight.to(logits.dtype) if weight is not None else None
    targets_are_bool = targets.dtype == torch.bool
    targets = targets.to(logits.dtype)
    positives_per_anchor = last_dim_sums(targets)                                       # (B, A)
    if not targets_are_bool:
        _check_binary(targets, positives_per_anchor)
    # At most one positive per prior (one-hot, as every assigner produces) lets the fused function read a
    # positive's loss from the statistics it computes anyway. Known for free on CPU only; on an accelerator
    # that would be a host synchronisation, so the general path is taken there.
    one_hot_rows = (positives_per_anchor.device.type == "cpu" and positives_per_anchor.numel() > 0
                    and bool(positives_per_anchor.max() <= 1))
    total, level_loss, stats = ProgressiveFocalLossFunction.apply(
        logits, targets, level_index, level_matrix,
        num_levels, gamma, delta, w, estimator, level_reduction, valid_mask,
        weight, avg_factor, sync, positives_per_anchor, one_hot_rows)
    if not return_stats:
        return total
    num_valid_anchors = (valid_mask.sum(0) if valid_mask is not None
                         else logits.new_full((logits.shape[1],), logits.shape[0]))
    num_valid = (num_valid_anchors @ level_matrix) * logits.shape[2]
    return total, {"gamma_ad": stats[0], "alpha_ad": stats[1], "num_positive": stats[2],
                   "num_valid": num_valid, "loss": level_loss}


class ProgressiveFocalLoss(ClassificationLoss):
    """Progressive focal loss (UMOP, Wu et al. 2021) as a detector's classification loss.

    :class:`~umop.losses.base.ClassificationLoss` protocol; ``level_reduction="sum"`` is the config name
    ``pfl`` (released code), ``"mean"`` is ``pfl_mean`` (paper Eq. 1). Adds the per-level ``gamma_ad`` and
    ``alpha_ad`` to the statistics. ``last_stats`` keeps the last call's statistics (detached) for logging.
    """

    def __init__(self, gamma: float = 2.0, delta: float = 0.5, w: float | None = None,
                 estimator: str = "official", level_reduction: str = "sum", sync: bool = True,
                 loss_weight: float = 1.0) -> None:
        super().__init__(loss_weight)
        check_pfl_options(gamma, delta, w, estimator, level_reduction)
        self.gamma, self.delta, self.w = float(gamma), float(delta), w
        self.estimator, self.level_reduction, self.sync = estimator, level_reduction, bool(sync)
        self.last_stats: dict[str, Tensor] = {}

    def forward(self, logits: Tensor, targets: Tensor, num_priors_per_level: Sequence[int],
                weight: Tensor | None = None, avg_factor: Tensor | float | None = None, *,
                quality: Tensor | None = None, loc_error: Tensor | None = None, positive: Tensor | None = None,
                valid: Tensor | None = None, normalizer: Tensor | float | None = None
                ) -> tuple[Tensor, dict[str, Tensor]]:
        avg_factor = _avg_factor_from_deprecated(avg_factor, normalizer, "ProgressiveFocalLoss")
        loss, stats = super().forward(logits, targets, num_priors_per_level, weight, avg_factor,
                                      quality=quality, loc_error=loc_error, positive=positive, valid=valid)
        self.last_stats = stats
        return loss, stats

    def compute(self, logits, targets, num_priors_per_level, weight, avg_factor, *, quality, loc_error):
        loss, stats = progressive_focal_loss(
            logits, targets, num_priors_per_level, weight, avg_factor, gamma=self.gamma, delta=self.delta,
            w=self.w, estimator=self.estimator, level_reduction=self.level_reduction, return_stats=True,
            sync=self.sync)
        return loss, {"gamma_ad": stats["gamma_ad"], "alpha_ad": stats["alpha_ad"]}

    def extra_repr(self) -> str:
        return (f"gamma={self.gamma}, delta={self.delta}, w={self.w}, estimator={self.estimator!r}, "
                f"level_reduction={self.level_reduction!r}")
