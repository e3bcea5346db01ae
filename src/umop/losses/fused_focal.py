"""The fused focal-loss kernels: the element-wise focal loss and its hand-derived gradient computed in one
pass (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017, Eq. 5), shared by
:func:`umop.losses.sigmoid_focal_loss` (``FocalLossFunction``) and UMOP's progressive focal loss
(:mod:`umop.losses.progressive`, which reuses the binary-target prelude and modulated terms).

Binary targets take a short form that works in three buffers in place (``binary_focal_prelude`` /
``binary_modulated_terms``) and, for a summed loss, applies the alpha factor and row weights to per-row sums.
Moved here unchanged from ``focal.py`` (issue 11, part 5).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["FocalLossFunction", "alpha_factor", "focal_loss_terms", "binary_focal_prelude", "binary_modulated_terms",
           "binary_focal_terms", "signed_alpha_gradient", "last_dim_sums", "last_dim_dots", "binary_violation",
           "targets_are_binary", "scale_saved_gradient", "LOG2_E", "LN_2"]

LOG2_E = math.log2(math.e)
LN_2 = math.log(2.0)


def alpha_factor(targets: Tensor, alpha: float | Tensor) -> Tensor | float:
    """alpha_t = alpha * t + (1 - alpha) * (1 - t); a negative *scalar* alpha disables it (torchvision)."""
    if not isinstance(alpha, Tensor) and alpha < 0:
        return 1.0
    return (1 - alpha) + (2 * alpha - 1) * targets

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


def _row_constant(value: float | Tensor) -> bool:
    """True if ``value`` is the same along the last (class) dimension: a float or a (..., 1) tensor."""
    return not isinstance(value, Tensor) or value.dim() == 0 or value.shape[-1] == 1


def _row_coefficient(value: float | Tensor) -> float | Tensor:
    """A (..., 1) coefficient as (...) so that it multiplies per-row sums; floats and 0-dim pass through."""
    return value.squeeze(-1) if isinstance(value, Tensor) and value.dim() > 0 else value


def binary_modulated_terms(signed_logits: Tensor, ce: Tensor, modulating_base: Tensor, gamma: float | Tensor,
                           need_grad: bool, gamma_is_positive: bool = False
                           ) -> tuple[Tensor, Tensor | None, float | Tensor]:
    """The gamma-dependent part of the binary-target focal loss, in the prelude's buffers.

    Returns ``(loss_part, grad_factor, loss_factor)``:
        loss_factor * loss_part = ce * m^gamma                      (in ce's buffer)
        grad_factor = m^gamma * (m + gamma * ce * (1 - m))          (in m's buffer; None without need_grad)
    so that, with a_t = alpha for positives and 1 - alpha for negatives and s = 1 - 2t,
        loss = a_t * ce * m^gamma,   dloss/dx = a_t * s * grad_factor
    (for binary t, p - t = s m and p (1 - p) = m (1 - m) reduce the general gradient to this form).
    u's buffer is free afterwards. Nothing of the logits' size is allocated: on CPU a fresh (B, A, C)
    allocation costs more than the arithmetic on it.

    m^gamma = exp(gamma log m) with log m = u - ce, evaluated as 2^(gamma log2(e) log m) (exp2 is the
    cheaper instruction on CPU). With ``gamma_is_positive`` (a gamma tensor > 0 everywhere, PFL's gamma_ad)
    ce is scaled by -gamma log2(e) in place, which saves a pass; ``loss_factor`` is then 1 / (-gamma log2 e).
    """
    loss_factor: float | Tensor = 1.0
    if isinstance(gamma, Tensor) and gamma_is_positive:
        gamma_log2e = gamma * LOG2_E
        scaled_ce = ce.mul_(-gamma_log2e)                                     # c = -gamma log2(e) ce, in place
        modulating = torch.addcmul(scaled_ce, gamma_log2e, signed_logits, out=signed_logits).exp2_()
        if need_grad:   # m + gamma ce (1 - m) = m + ln(2) c m - ln(2) c, in m's buffer
            modulating_base.addcmul_(scaled_ce, modulating_base, value=LN_2).sub_(scaled_ce, alpha=LN_2)
        loss_factor = (-gamma_log2e).reciprocal()
    else:
        if isinstance(gamma, (int, float)) and gamma == 2.0:
            modulating = torch.mul(modulating_base, modulating_base, out=signed_logits)
        else:
            modulating = signed_logits.sub_(ce).mul_(gamma * LOG2_E).exp2_()
        if need_grad:   # m + gamma ce (1 - m), in m's buffer
            if isinstance(gamma, Tensor):
                gamma_ce = ce * gamma
                modulating_base.addcmul_(gamma_ce, modulating_base, value=-1.0).add_(gamma_ce)
            else:
                modulating_base.addcmul_(ce, modulating_base, value=-gamma).add_(ce, alpha=gamma)
    grad_factor = modulating_base.mul_(modulating) if need_grad else None
    return ce.mul_(modulating), grad_factor, loss_factor


def signed_alpha_gradient(grad_factor: Tensor, targets: Tensor, negative_coefficient: float | Tensor,
                          coefficient_sum: float | Tensor, out: Tensor) -> Tensor:
    """grad_factor * a_t * s, in grad_factor's buffer; ``out`` (a free buffer of the same size) holds a_t * s.

    a_t * s is ``negative_coefficient`` for negatives and ``negative_coefficient - coefficient_sum`` for
    positives (coefficient_sum = scale * (alpha + 1 - alpha) = scale, or 2 * scale without alpha).
    """
    def as_tensor(value):
        return torch.as_tensor(value, dtype=grad_factor.dtype, device=grad_factor.device)
    signed_alpha = torch.addcmul(as_tensor(negative_coefficient), targets, as_tensor(coefficient_sum),
                                 value=-1.0, out=out)
    return grad_factor.mul_(signed_alpha)


def binary_focal_terms(signed_logits: Tensor, ce: Tensor, modulating_base: Tensor, targets: Tensor,
                       alpha: float | Tensor, gamma: float | Tensor, scale: float | Tensor,
                       need_grad: bool, row_sums: bool = False) -> tuple[Tensor, Tensor | None]:
    """Second half of the binary-target focal loss: (scale * loss, scale * dloss/dx).

    Consumes the prelude's three buffers (see :func:`binary_modulated_terms`).

    Args:
        alpha, gamma, scale: floats or tensors broadcasting to the logits (anchor weights (B, A, 1), ...);
            a negative float alpha disables the alpha factor.
        row_sums: return the loss summed over the last (class) dimension, shape ``logits.shape[:-1]``.
            When alpha and scale are constant along that dimension the alpha factor is applied to two
            per-row sums (all classes, positives only) instead of element-wise.
    Returns:
        (loss, grad): loss element-wise or per row; grad of the logits' shape, or None.
    """
    loss, grad_factor, _ = binary_modulated_terms(signed_logits, ce, modulating_base, gamma, need_grad)
    if not isinstance(alpha, Tensor) and alpha < 0:
        negative_coefficient = positive_coefficient = scale
    else:
        negative_coefficient, positive_coefficient = (1 - alpha) * scale, alpha * scale
    if row_sums and _row_constant(negative_coefficient) and _row_constant(positive_coefficient):
        loss = (last_dim_sums(loss) * _row_coefficient(negative_coefficient)
                + last_dim_dots(targets, loss) * _row_coefficient(positive_coefficient - negative_coefficient))
    else:
        alpha_t = targets * (positive_coefficient - negative_coefficient)
        loss = loss.mul_(alpha_t.add_(negative_coefficient))
        if row_sums:
            loss = last_dim_sums(loss)
    if grad_factor is None:
        return loss, None
    return loss, signed_alpha_gradient(grad_factor, targets, negative_coefficient,
                                       positive_coefficient + negative_coefficient, out=signed_logits)


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


def scale_saved_gradient(grad: Tensor, grad_output: Tensor) -> Tensor:
    """grad * grad_output for the fused losses' backward, without a copy in the common case.

    ``loss.backward()`` sends a CPU scalar 1: the saved gradient is returned as it is (it is never modified,
    so ``retain_graph`` still works). Reading the value is free on CPU; on an accelerator it would be a
    host synchronisation, so there the product is always taken.
    """
    if grad_output.dim() == 0 and grad_output.device.type == "cpu" and float(grad_output) == 1.0:
        return grad
    return grad * grad_output


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
                                            scale, logits.requires_grad, row_sums=reduce_sum)
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
        grad_logits = scale_saved_gradient(grad, grad_output)  # a scalar (sum) or element-wise ("none")
        if grad_logits.shape != ctx.logits_shape:
            grad_logits = grad_logits.expand(ctx.logits_shape)
        return grad_logits, None, None, None, None, None, None
