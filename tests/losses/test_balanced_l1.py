"""Balanced L1 loss: hand values, continuity at beta, the designed gradient alpha*ln(b|x|+1), integral check."""
from __future__ import annotations

import math

import pytest
import torch

from umop.losses.balanced_l1 import BalancedL1Loss, balanced_l1_loss

B = math.exp(3.0) - 1.0  # alpha = 0.5, gamma = 1.5


def _elem(x: float, **kw) -> float:
    t = torch.tensor([x], dtype=torch.float64)
    return balanced_l1_loss(t, torch.zeros_like(t), reduction="none", **kw).item()


def test_hand_values():
    assert _elem(0.0) == 0.0
    # at |x| = 1: alpha/b (b+1) ln(b+1) - alpha = 0.5 * e^3 / (e^3 - 1) * 3 - 0.5
    assert _elem(1.0) == pytest.approx(1.5 * math.exp(3) / (math.exp(3) - 1) - 0.5, rel=1e-12)
    assert _elem(1.0) == pytest.approx(1.0785944, abs=1e-6)
    # outlier branch: gamma |x| + gamma / b - alpha
    assert _elem(3.0) == pytest.approx(4.5 + 1.5 / B - 0.5, rel=1e-12)
    assert _elem(-3.0) == _elem(3.0)


@pytest.mark.parametrize("x", [0.05, 0.3, 0.77, 1.0, 2.5])
def test_closed_form_is_integral_of_designed_gradient(x):
    # Libra R-CNN Eq. 7: dL/dx = alpha ln(b x + 1) for x < 1, gamma beyond; L(0) = 0. Integrate numerically.
    t = torch.linspace(0, x, 200001, dtype=torch.float64)
    grad = torch.where(t < 1, 0.5 * torch.log(B * t + 1), torch.full_like(t, 1.5))
    assert _elem(x) == pytest.approx(torch.trapezoid(grad, t).item(), abs=1e-7)


@pytest.mark.parametrize("beta", [1.0, 0.11, 2.0])
def test_continuous_at_beta(beta):
    eps = 1e-9
    assert _elem(beta - eps, beta=beta) == pytest.approx(_elem(beta + eps, beta=beta), abs=1e-7)
    assert _elem(beta, beta=beta) == pytest.approx(_elem(beta - eps, beta=beta), abs=1e-7)


def test_gradient_formula_via_autograd():
    x = torch.tensor([-2.0, -0.6, -0.1, 0.2, 0.5, 0.9, 1.5, 4.0], dtype=torch.float64, requires_grad=True)
    balanced_l1_loss(x, torch.zeros_like(x), reduction="sum").backward()
    a = x.detach().abs()
    expected = torch.where(a < 1, 0.5 * torch.log(B * a + 1), torch.full_like(a, 1.5)) * x.detach().sign()
    assert torch.allclose(x.grad, expected, rtol=1e-12, atol=1e-12)
    # gamma = alpha ln(b + 1): the gradient is continuous at |x| = 1
    assert 0.5 * math.log(B + 1) == pytest.approx(1.5)


def test_gradcheck_and_target_gradient():
    gen = torch.Generator().manual_seed(0)
    pred = (torch.randn(5, 4, generator=gen, dtype=torch.float64) * 1.5).requires_grad_(True)
    target = torch.randn(5, 4, generator=gen, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p, t: balanced_l1_loss(p, t, beta=1.0), (pred, target))


def test_weight_reduction_and_module():
    gen = torch.Generator().manual_seed(1)
    pred, target = torch.randn(6, 4, generator=gen), torch.randn(6, 4, generator=gen)
    w = torch.rand(6, generator=gen)
    elem = balanced_l1_loss(pred, target, reduction="none")
    assert torch.allclose(balanced_l1_loss(pred, target, w, reduction="sum"), (elem * w[:, None]).sum())
    assert torch.allclose(balanced_l1_loss(pred, target), elem.mean())
    assert torch.allclose(balanced_l1_loss(pred, target, w, avg_factor=3.0), (elem * w[:, None]).sum() / 3.0)
    mod = BalancedL1Loss(loss_weight=2.0)
    assert torch.allclose(mod(pred, target, w), 2 * balanced_l1_loss(pred, target, w))


def test_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        balanced_l1_loss(torch.zeros(2, 4), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="beta"):
        balanced_l1_loss(torch.zeros(2, 4), torch.zeros(2, 4), beta=0.0)
    with pytest.raises(ValueError, match="weight"):
        balanced_l1_loss(torch.zeros(2, 4), torch.zeros(2, 4), torch.ones(3))
