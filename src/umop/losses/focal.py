"""Sigmoid focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017, Eq. 5).

``sigmoid_focal_loss`` is numerically equal to ``torchvision.ops.sigmoid_focal_loss`` (values and
gradients) but accepts ``alpha`` and ``gamma`` as tensors that broadcast against ``logits`` (UMOP's
progressive focal loss uses one (alpha, gamma) pair per pyramid level) and an mmdetection-style ``weight``.

Speed: the common case (gradient needed for ``logits`` only) runs through ``FocalLossFunction``, an
``autograd.Function`` that computes the element-wise loss and its hand-derived gradient in the same pass
and keeps only the gradient for backward. It is about twice as fast as autograd through the textbook
formula. When ``targets``, ``alpha``, ``gamma`` or ``weight`` require gradients, the plain autograd path
(``focal_loss_reference``) is used instead, so every input still gets its correct gradient.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._weights import broadcast_weight

__all__ = ["sigmoid_focal_loss", "focal_loss_reference", "focal_loss_terms", "FocalLossFunction"]

_REDUCTIONS = ("none", "mean", "sum")


def _as_tensor_or_float(value: float | Tensor) -> float | Tensor:
    return value if isinstance(value, Tensor) else float(value)


def alpha_factor(targets: Tensor, alpha: float | Tensor) -> Tensor | float:
    """alpha_t = alpha * t + (1 - alpha) * (1 - t); a negative *scalar* alpha disables it (torchvision)."""
    if not isinstance(alpha, Tensor) and alpha < 0:
        return 1.0
    return (1 - alpha) + (2 * alpha - 1) * targets


def focal_loss_reference(logits: Tensor, targets: Tensor, alpha: float | Tensor = 0.25,
                         gamma: float | Tensor = 2.0) -> Tensor:
    """Element-wise focal loss written as in the paper, differentiated by autograd.

    Same formula as ``torchvision.ops.sigmoid_focal_loss(..., reduction="none")``.
    """
    prob = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    one_minus_pt = 1 - (prob * targets + (1 - prob) * (1 - targets))
    return alpha_factor(targets, alpha) * ce * one_minus_pt**gamma


def focal_loss_terms(logits: Tensor, targets: Tensor, alpha: float | Tensor, gamma: float | Tensor,
                     need_grad: bool) -> tuple[Tensor, Tensor | None]:
    """Element-wise focal loss and, if ``need_grad``, its derivative w.r.t. ``logits``.

    With p = sigmoid(x), ce = softplus(x) - t x, m = 1 - p_t = p (1 - 2t) + t and a_t the alpha factor:
        L     = a_t * ce * m^gamma
        dL/dx = a_t * [ (p - t) m^gamma + gamma * ce * m^(gamma - 1) * (1 - 2t) * p (1 - p) ]
    (dce/dx = p - t and dm/dx = (1 - 2t) p (1 - p)). All tensors broadcast; nothing syncs with the host.
    """
    prob = torch.sigmoid(logits)
    ce = F.softplus(logits) - targets * logits
    sign = 1 - 2 * targets                       # (1 - 2t): +1 for negatives, -1 for positives
    modulating_base = torch.addcmul(targets, prob, sign)  # m = 1 - p_t
    if isinstance(gamma, float) and gamma == 2.0:
        modulating = modulating_base * modulating_base
    else:
        modulating = modulating_base.pow(gamma)
    a_t = alpha_factor(targets, alpha)
    loss = ce * modulating
    if not (isinstance(a_t, float) and a_t == 1.0):
        loss = loss * a_t
    if not need_grad:
        return loss, None
    # m^(gamma - 1) = m^gamma / m, defined as 0 where m == 0 (p saturated exactly at its target).
    safe_base = torch.where(modulating_base > 0, modulating_base, torch.ones_like(modulating_base))
    pow_minus_one = torch.where(modulating_base > 0, modulating / safe_base, torch.zeros_like(modulating))
    grad = (prob - targets) * modulating
    grad = grad + gamma * ce * pow_minus_one * sign * prob * (1 - prob)
    if not (isinstance(a_t, float) and a_t == 1.0):
        grad = grad * a_t
    return loss, grad


def binary_focal_prelude(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """First half of the binary-target focal loss: (u, ce, m), three fresh buffers.

    For t in {0, 1}: u = (1 - 2t) x, ce = -log(p_t) = softplus(u), m = 1 - p_t = sigmoid(u).
    Progressive focal loss reads its per-level statistics from ``ce`` and ``m`` before the second half.
    """
    signed_logits = torch.addcmul(logits, targets, logits, value=-2.0)
    return signed_logits, F.softplus(signed_logits), torch.sigmoid(signed_logits)


def binary_focal_terms(signed_logits: Tensor, ce: Tensor, modulating_base: Tensor, targets: Tensor,
                       alpha: float | Tensor, gamma: float | Tensor, scale: float | Tensor,
                       need_grad: bool) -> tuple[Tensor, Tensor | None]:
    """Second half of the binary-target focal loss: (scale * loss, scale * dloss/dx).

    Consumes the prelude's buffers (they are overwritten: large CPU allocations are the main cost here).
    With log m = u - ce, m^gamma = exp(gamma (u - ce)); since for binary t (p - t) = s m and
    p (1 - p) = m (1 - m) with s = 1 - 2t, the general gradient reduces to
        dL/dx = a_t * s * m^gamma * (m + gamma * ce * (1 - m)).
    Tensors may broadcast (per-level alpha/gamma of shape (1, A, 1), weights (B, A, 1)).
    """
    if isinstance(gamma, float) and gamma == 2.0:
        modulating = torch.mul(modulating_base, modulating_base, out=signed_logits)
    else:
        modulating = signed_logits.sub_(ce).mul_(gamma).exp_()          # m^gamma, in u's buffer
    if not isinstance(alpha, Tensor) and alpha < 0:                      # alpha disabled (torchvision: -1)
        alpha_t = torch.ones_like(ce).mul_(scale)
    else:                                                                # a_t = (1 - a) + (2a - 1) t, scaled
        alpha_t = torch.addcmul(torch.as_tensor((1 - alpha) * scale, dtype=ce.dtype, device=ce.device),
                                targets, torch.as_tensor((2 * alpha - 1) * scale, dtype=ce.dtype,
                                                         device=ce.device))
    grad = None
    if need_grad:
        grad = torch.sub(1.0, modulating_base).mul_(ce).mul_(gamma).add_(modulating_base)
    loss = ce.mul_(modulating).mul_(alpha_t)                             # a_t ce m^gamma, in ce's buffer
    if need_grad:
        signed_alpha = alpha_t.addcmul_(targets, alpha_t, value=-2.0)    # a_t * s
        grad.mul_(modulating).mul_(signed_alpha)
    return loss, grad


def last_dim_sums(values: Tensor) -> Tensor:
    """Sum over the last dimension as a matrix-vector product (one BLAS pass, no temporary)."""
    flat = values.reshape(-1, values.shape[-1])
    return (flat @ flat.new_ones(values.shape[-1])).view(values.shape[:-1])


def last_dim_dots(first: Tensor, second: Tensor) -> Tensor:
    """sum(first * second, -1) as a batched dot product (no (..., C) temporary)."""
    size = first.shape[-1]
    return torch.bmm(first.reshape(-1, 1, size), second.reshape(-1, size, 1)).view(first.shape[:-1])


def binary_violation(targets: Tensor, row_sums: Tensor) -> Tensor:
    """Boolean scalar tensor: True if some target is not 0 or 1.

    For t in [0, 1], t - t^2 >= 0 with equality only at 0 and 1, so targets are binary exactly when they
    lie in [0, 1] and each row's sum of t equals its sum of t^2. Two passes, no (..., C) temporaries.
    """
    low, high = torch.aminmax(targets)
    return (low < 0) | (high > 1) | (last_dim_dots(targets, targets) != row_sums).any()


def targets_are_binary(targets: Tensor) -> bool:
    """True when the fast binary path applies: bool targets, or CPU targets that are all 0/1.

    On CPU the check costs two passes and no device synchronisation; on an accelerator it would be a
    host synchronisation, so non-bool CUDA targets take the general path.
    """
    if targets.dtype == torch.bool:
        return True
    if targets.is_cuda or targets.requires_grad or targets.numel() == 0:
        return False
    return not bool(binary_violation(targets, last_dim_sums(targets)))


class FocalLossFunction(torch.autograd.Function):
    """Fused focal loss: the forward pass also computes dL/dlogits; backward is one multiply.

    ``scale`` (float or tensor broadcasting to logits) multiplies the element-wise loss (weights, 1/N of a
    mean, ...). ``reduce_sum`` returns the sum instead of the element-wise loss. Only ``logits`` gets a
    gradient; callers route other cases to autograd.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, alpha, gamma, scale, reduce_sum: bool,
                binary: bool) -> Tensor:
        if binary:
            loss, grad = binary_focal_terms(*binary_focal_prelude(logits, targets), targets, alpha, gamma,
                                            scale, logits.requires_grad)
        else:
            loss, grad = focal_loss_terms(logits, targets, alpha, gamma, need_grad=logits.requires_grad)
            if not (isinstance(scale, float) and scale == 1.0):
                loss = loss * scale
                grad = grad * scale if grad is not None else None
        ctx.reduce_sum = reduce_sum
        ctx.logits_shape = logits.shape
        ctx.save_for_backward(grad if grad is not None else torch.empty(0))
        return loss.sum() if reduce_sum else loss

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        (grad,) = ctx.saved_tensors
        grad_logits = grad * grad_output  # grad_output is a scalar (sum) or element-wise ("none")
        if grad_logits.shape != ctx.logits_shape:
            grad_logits = grad_logits.expand(ctx.logits_shape)
        return grad_logits, None, None, None, None, None, None




def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float | Tensor = 0.25,
                       gamma: float | Tensor = 2.0, reduction: str = "none",
                       weight: Tensor | None = None) -> Tensor:
    """Sigmoid focal loss, equal to ``torchvision.ops.sigmoid_focal_loss`` with tensor-valued alpha/gamma.

    Args:
        logits: (..., C) raw scores, any float dtype.
        targets: same shape as ``logits``: 1 for the positive class, 0 otherwise (soft targets allowed).
        alpha: weight of positives, float or tensor broadcasting to ``logits``; a negative float disables it.
        gamma: focusing exponent, float or tensor broadcasting to ``logits``.
        reduction: "none" (element-wise), "mean" (over all elements) or "sum".
        weight: optional element weights broadcasting to ``logits`` (or of shape ``logits.shape[:-1]``,
            e.g. (B, A) per anchor, 0 for an ignored anchor), applied before the reduction.

    Returns:
        A tensor of ``logits.shape`` ("none") or a scalar.
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must have the same shape")
    alpha, gamma = _as_tensor_or_float(alpha), _as_tensor_or_float(gamma)
    weight = broadcast_weight(weight, logits)
    binary_dtype = targets.dtype == torch.bool
    targets = targets.to(logits.dtype)

    others_need_grad = torch.is_grad_enabled() and any(
        isinstance(value, Tensor) and value.requires_grad for value in (targets, alpha, gamma, weight))
    if others_need_grad:
        loss = focal_loss_reference(logits, targets, alpha, gamma)
        if weight is not None:
            loss = loss * weight
        if reduction == "mean":
            return loss.mean()
        return loss.sum() if reduction == "sum" else loss

    scale: float | Tensor = 1.0 if weight is None else weight
    if reduction == "mean":
        scale = scale / logits.numel() if logits.numel() else scale
    if torch.is_grad_enabled() and logits.requires_grad:
        return FocalLossFunction.apply(logits, targets, alpha, gamma, scale, reduction != "none",
                                       binary_dtype or targets_are_binary(targets))
    loss, _ = focal_loss_terms(logits, targets, alpha, gamma, need_grad=False)
    if not (isinstance(scale, float) and scale == 1.0):
        loss = loss * scale
    if reduction == "none" and loss.shape != logits.shape:
        loss = loss.expand(logits.shape)
    return loss if reduction == "none" else loss.sum()
