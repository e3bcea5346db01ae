"""Varifocal loss (VFNet Eq. 2): hand-worked values, the paper's piecewise form, gradcheck, reductions."""
import math

import pytest
import torch

from umop.losses.varifocal import varifocal_loss


def _paper_vfl(p: torch.Tensor, q: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """Eq. 2 written literally, element by element (independent of the implementation)."""
    out = torch.empty_like(p)
    for i, (pi, qi) in enumerate(zip(p.tolist(), q.tolist())):
        if qi > 0:
            out[i] = -qi * (qi * math.log(pi) + (1 - qi) * math.log(1 - pi))
        else:
            out[i] = -alpha * pi ** gamma * math.log(1 - pi)
    return out


def test_hand_worked():
    # x = 0 -> p = 0.5. Positive q = 0.8: -0.8 (0.8 log .5 + .2 log .5) = 0.8 log 2.
    # Negative: -0.75 * 0.25 * log(0.5) = 0.1875 log 2.
    x = torch.zeros(2, dtype=torch.float64)
    q = torch.tensor([0.8, 0.0], dtype=torch.float64)
    loss = varifocal_loss(x, q, reduction="none")
    torch.testing.assert_close(loss, torch.tensor([0.8, 0.1875], dtype=torch.float64) * math.log(2))
    # not IoU-weighted: a positive has weight 1 -> log 2
    loss = varifocal_loss(x, q, iou_weighted=False, reduction="none")
    torch.testing.assert_close(loss[0], torch.tensor(math.log(2), dtype=torch.float64))


def test_matches_piecewise_equation():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, generator=g, dtype=torch.float64) * 3
    q = torch.rand(200, generator=g, dtype=torch.float64)
    q[torch.rand(200, generator=g) < 0.6] = 0.0
    for alpha, gamma in [(0.75, 2.0), (0.5, 1.5)]:
        ours = varifocal_loss(x, q, alpha=alpha, gamma=gamma, reduction="none")
        torch.testing.assert_close(ours, _paper_vfl(x.sigmoid(), q, alpha, gamma))


def test_gradcheck():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, generator=g, dtype=torch.float64).requires_grad_()
    q = torch.tensor([[0.0, 0.7, 0.0], [0.0, 0.0, 0.0], [0.3, 0.0, 0.0], [0.0, 0.0, 0.95]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: varifocal_loss(t, q, reduction="sum"), (x,))
    # analytic gradient of a negative: d/dx [-a p^g log(1-p)] = a p^g (g (1-p) (-log(1-p)) + p)
    x0 = torch.tensor([0.3], dtype=torch.float64, requires_grad=True)
    varifocal_loss(x0, torch.zeros(1, dtype=torch.float64), reduction="sum").backward()
    p = torch.sigmoid(torch.tensor(0.3, dtype=torch.float64))
    expected = 0.75 * p ** 2 * (2 * (1 - p) * (-torch.log(1 - p)) + p)
    torch.testing.assert_close(x0.grad[0], expected)


def test_weight_and_avg_factor():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 3, generator=g)
    q = torch.zeros(5, 3)
    q[1, 2] = 0.6
    q[3, 0] = 0.9
    per_element = varifocal_loss(x, q, reduction="none")
    weight = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0])[:, None]  # anchors 2 and 4 ignored
    torch.testing.assert_close(varifocal_loss(x, q, weight=weight, reduction="sum"), (per_element * weight).sum())
    torch.testing.assert_close(varifocal_loss(x, q, avg_factor=torch.tensor(2.0)),
                               per_element.sum() / (2.0 + torch.finfo(torch.float32).eps))
    torch.testing.assert_close(varifocal_loss(x, q), per_element.mean())


def test_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        varifocal_loss(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="alpha"):
        varifocal_loss(torch.zeros(3), torch.zeros(3), alpha=-1.0)
    with pytest.raises(ValueError, match="reduction"):
        varifocal_loss(torch.zeros(3), torch.zeros(3), reduction="max")
