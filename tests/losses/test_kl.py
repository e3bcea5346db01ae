"""KL loss: the closed form against torch.distributions' KL divergence, the |x| > 1 branch, gradients."""
from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from umop.losses.kl import KLLoss, kl_loss


def test_inlier_branch_is_kl_divergence_to_a_near_dirac_gt():
    # He et al. Eq. 5-8: KL(N(x_g, s_D^2) || N(x_e, sigma^2)) = alpha/2 - log s_D + (s_D^2 + d^2) / (2 sigma^2) - 1/2;
    # dropping the network-independent terms (-log s_D - 1/2) and s_D^2 -> 0 leaves e^-alpha d^2 / 2 + alpha / 2.
    gen = torch.Generator().manual_seed(0)
    xe = torch.rand(20, 4, generator=gen, dtype=torch.float64) * 1.8 - 0.9   # |d| <= 0.9 < 1
    xg = torch.zeros(20, 4, dtype=torch.float64)
    alpha = torch.randn(20, 4, generator=gen, dtype=torch.float64)
    s_d = 1e-6
    kl = kl_divergence(Normal(xg, torch.full_like(xg, s_d)), Normal(xe, torch.exp(0.5 * alpha)))
    reference = kl + math.log(s_d) + 0.5
    out = kl_loss(xe, xg, reduction="none", log_var=alpha)
    assert torch.allclose(out, reference, atol=1e-9)


def test_outlier_branch_closed_form():
    # |x_g - x_e| > 1: e^-alpha (|d| - 1/2) + alpha / 2 (Eq. 9)
    xe = torch.tensor([[2.0, -3.5, 1.25, 10.0]], dtype=torch.float64)
    alpha = torch.tensor([[0.0, 1.0, -2.0, math.log(4.0)]], dtype=torch.float64)
    out = kl_loss(xe, torch.zeros_like(xe), reduction="none", log_var=alpha)
    expected = [1.5, math.exp(-1) * 3.0 + 0.5, math.exp(2) * 0.75 - 1.0, 9.5 / 4 + 0.5 * math.log(4)]
    assert out[0].tolist() == pytest.approx(expected, rel=1e-12)
    # continuity at |d| = 1: 0.5 e^-alpha + alpha/2 from both sides
    for d in (1 - 1e-9, 1.0, 1 + 1e-9):
        v = kl_loss(torch.tensor([d]), torch.zeros(1), reduction="none", log_var=torch.tensor([0.3]))
        assert v.item() == pytest.approx(0.5 * math.exp(-0.3) + 0.15, abs=1e-6)


def test_optimal_variance_and_gradients():
    # d L / d alpha = -e^-alpha smoothL1(d) + 1/2 = 0 at alpha* = log(2 smoothL1(d)): the loss learns the error.
    d = torch.tensor([0.5, 3.0], dtype=torch.float64)
    sl1 = torch.tensor([0.125, 2.5], dtype=torch.float64)
    alpha = torch.log(2 * sl1).requires_grad_(True)
    kl_loss(d, torch.zeros_like(d), reduction="sum", log_var=alpha).backward()
    assert torch.allclose(alpha.grad, torch.zeros(2, dtype=torch.float64), atol=1e-12)
    # d L / d x_e = e^-alpha * d (inlier), e^-alpha * sign(d) (outlier)
    xe = d.clone().requires_grad_(True)
    a = torch.tensor([0.2, -0.4], dtype=torch.float64)
    kl_loss(xe, torch.zeros_like(d), reduction="sum", log_var=a).backward()
    assert torch.allclose(xe.grad, torch.exp(-a) * torch.tensor([0.5, 1.0], dtype=torch.float64))


def test_gradcheck_float64():
    gen = torch.Generator().manual_seed(1)
    xe = (torch.randn(6, 4, generator=gen, dtype=torch.float64) * 1.5).requires_grad_(True)
    xg = torch.randn(6, 4, generator=gen, dtype=torch.float64).requires_grad_(True)
    alpha = torch.randn(6, 4, generator=gen, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p, t, a: kl_loss(p, t, log_var=a, beta=1.0), (xe, xg, alpha))


def test_weight_reduction_and_module():
    gen = torch.Generator().manual_seed(2)
    xe, xg, alpha = (torch.randn(5, 4, generator=gen) for _ in range(3))
    w = torch.rand(5, generator=gen)
    elem = kl_loss(xe, xg, reduction="none", log_var=alpha)
    assert torch.allclose(kl_loss(xe, xg, w, reduction="sum", log_var=alpha), (elem * w[:, None]).sum())
    assert torch.allclose(kl_loss(xe, xg, log_var=alpha), elem.mean())
    assert torch.allclose(KLLoss(loss_weight=0.5)(xe, xg, w, avg_factor=2.0, log_var=alpha),
                          0.5 * (elem * w[:, None]).sum() / 2.0)


def test_bad_input():
    with pytest.raises(ValueError, match="log_var"):
        kl_loss(torch.zeros(2, 4), torch.zeros(2, 4), log_var=torch.zeros(2, 1))
    with pytest.raises(ValueError, match="beta"):
        kl_loss(torch.zeros(2, 4), torch.zeros(2, 4), log_var=torch.zeros(2, 4), beta=-1.0)
    with pytest.raises(ValueError, match="weight"):
        kl_loss(torch.zeros(2, 4), torch.zeros(2, 4), torch.ones(4, 2), log_var=torch.zeros(2, 4))
