"""GHM-C / GHM-R: slow loop reference (mmdetection's per-bin loop, re-written here), hand-worked cases."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from umop.losses.ghm import GHMCLoss, GHMRLoss, ghmc_loss, ghmr_loss


def _slow_ghm(g, valid, tot, bins, last_edge, loss, momentum=0.0, acc=None):
    """Per-element Python loops over bins; returns sum(beta * loss) / tot and the updated EMA state."""
    g = g.flatten().tolist()
    valid = valid.flatten().tolist()
    loss = loss.flatten().tolist()
    edges = [i / bins for i in range(bins + 1)]
    edges = [float(torch.tensor(e, dtype=torch.float32)) for e in edges]
    edges[-1] = last_edge
    weights = [0.0] * len(g)
    acc = list(acc) if acc is not None else [0.0] * bins
    n = 0
    for i in range(bins):
        members = [k for k in range(len(g)) if valid[k] and edges[i] <= g[k] < edges[i + 1]]
        if members:
            n += 1
            if momentum > 0:
                acc[i] = momentum * acc[i] + (1 - momentum) * len(members)
                dens = acc[i]
            else:
                dens = len(members)
            for k in members:
                weights[k] = tot / dens
    if n:
        weights = [w / n for w in weights]
    return sum(w * l for w, l in zip(weights, loss)) / tot, acc


@pytest.mark.parametrize("momentum", [0.0, 0.7])
def test_ghmc_matches_slow_loop(momentum):
    gen = torch.Generator().manual_seed(0)
    pred = torch.randn(3, 20, 4, generator=gen, dtype=torch.float64) * 3
    target = (torch.rand(3, 20, 4, generator=gen) < 0.2).double()
    weight = (torch.rand(3, 20, generator=gen) > 0.2).double()   # per anchor
    acc = torch.zeros(10, dtype=torch.float64)
    slow_acc = None
    for _ in range(3):  # several iterations to exercise the EMA
        out = ghmc_loss(pred, target, weight, momentum=momentum, acc_sum=acc)
        valid = (weight[..., None].expand_as(pred) > 0)
        g = (pred.sigmoid() - target).abs()
        bce = F.binary_cross_entropy_with_logits(pred, target, reduction="none")
        ref, slow_acc = _slow_ghm(g, valid, float(valid.sum()), 10, 1.0 + 1e-6, bce, momentum, slow_acc)
        assert out.item() == pytest.approx(ref, rel=1e-10)
        if momentum:
            assert acc.tolist() == pytest.approx(slow_acc, rel=1e-12)
        pred = pred + 0.5 * torch.randn(pred.shape, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_ghmr_matches_slow_loop(momentum):
    gen = torch.Generator().manual_seed(1)
    pred = torch.randn(50, 4, generator=gen, dtype=torch.float64) * 0.1
    target = torch.randn(50, 4, generator=gen, dtype=torch.float64) * 0.1
    weight = (torch.rand(50, 4, generator=gen) > 0.3).double() * 2.0  # tot = weight.sum()
    mod = GHMRLoss(momentum=momentum).double()
    out = mod(pred, target, weight)
    diff = pred - target
    asl1 = torch.sqrt(diff**2 + 0.02**2) - 0.02
    g = diff.abs() / torch.sqrt(diff**2 + 0.02**2)
    ref, acc = _slow_ghm(g, weight > 0, float(weight.sum()), 10, 1e3, asl1, momentum)
    assert out.item() == pytest.approx(ref, rel=1e-10)
    if momentum:
        assert mod.acc_sum.tolist() == pytest.approx(acc, rel=1e-12)


def test_ghmc_hand_worked():
    # three easy negatives (p = 0.05, g = 0.05, region 0) and one hard negative (p = 0.95, g = 0.95, region 9)
    x_easy, x_hard = math.log(0.05 / 0.95), math.log(0.95 / 0.05)
    pred = torch.tensor([x_easy, x_easy, x_easy, x_hard], dtype=torch.float64)
    target = torch.zeros(4, dtype=torch.float64)
    # tot = 4, n = 2 regions: beta_easy = 4 / (3 * 2) = 2/3, beta_hard = 4 / (1 * 2) = 2
    expected = (3 * (2 / 3) * -math.log(0.95) + 2 * -math.log(0.05)) / 4
    assert ghmc_loss(pred, target).item() == pytest.approx(expected, rel=1e-12)
    none = ghmc_loss(pred, target, reduction="none")
    assert none.tolist() == pytest.approx([2 / 3 * -math.log(0.95)] * 3 + [2 * -math.log(0.05)], rel=1e-12)
    assert ghmc_loss(pred, target, reduction="sum").item() == pytest.approx(4 * expected, rel=1e-12)
    assert ghmc_loss(pred, target, avg_factor=2.0).item() == pytest.approx(2 * expected, rel=1e-12)
    # momentum 0.75: EMA counts 0.25 * 3 = 0.75 and 0.25 * 1 = 0.25 after the first call
    # the module is a detector classification loss: (B, A, C) logits, per-level prior counts, (loss, stats)
    mod = GHMCLoss(momentum=0.75).double()
    first, stats = mod(pred.view(1, 4, 1), target.view(1, 4, 1), [3, 1])
    assert stats["num_anchors"].tolist() == [3.0, 1.0] and stats["num_positive"].tolist() == [0.0, 0.0]
    assert mod.acc_sum.tolist() == pytest.approx([0.75] + [0] * 8 + [0.25])
    exp1 = (3 * (4 / 0.75 / 2) * -math.log(0.95) + (4 / 0.25 / 2) * -math.log(0.05)) / 4
    assert first.item() == pytest.approx(exp1, rel=1e-12)
    # second call: 0.75 * 0.75 + 0.25 * 3 = 1.3125; 0.75 * 0.25 + 0.25 = 0.4375
    mod(pred.view(1, 4, 1), target.view(1, 4, 1), [4])
    assert mod.acc_sum.tolist() == pytest.approx([1.3125] + [0] * 8 + [0.4375])


def test_ghmc_integer_labels_and_ignore():
    gen = torch.Generator().manual_seed(2)
    pred = torch.randn(2, 6, 3, generator=gen)
    labels = torch.tensor([[0, 3, 2, 3, 1, 3], [3, 3, 0, -1, 3, 2]])  # 3 = background, -1 ignored by weight
    weight = (labels >= 0).float()
    onehot = torch.zeros(2, 6, 3)
    for b in range(2):
        for a in range(6):
            if 0 <= labels[b, a] < 3:
                onehot[b, a, labels[b, a]] = 1
    assert torch.allclose(ghmc_loss(pred, labels, weight), ghmc_loss(pred, onehot, weight))
    # an ignored element gets zero weight and zero gradient
    pred.requires_grad_(True)
    ghmc_loss(pred, onehot, weight).backward()
    assert torch.all(pred.grad[1, 3] == 0)
    assert torch.all(ghmc_loss(pred, onehot, weight, reduction="none")[1, 3] == 0)


def test_ghmr_hand_worked():
    # two boxes' deltas: |d| = 0 (g = 0, region 0) and |d| = 1 (g = 1/sqrt(1.0004) > 0.9, region 9)
    pred = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    target = torch.zeros(1, 2, dtype=torch.float64)
    mu = 0.02
    asl1 = math.sqrt(1 + mu * mu) - mu
    # tot = 2, n = 2: each beta = 2 / (1 * 2) = 1 -> mean = (0 + asl1) / 2
    assert ghmr_loss(pred, target).item() == pytest.approx(asl1 / 2, rel=1e-12)


def test_ghm_gradient_is_weighted_bce_gradient():
    # beta carries no gradient: d loss / d x = beta * (sigmoid(x) - t) / tot
    pred = torch.tensor([-2.0, 0.3, 4.0, 1.0], dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    ghmc_loss(pred, target).backward()
    beta = ghmc_loss(pred.detach(), target, reduction="none") / F.binary_cross_entropy_with_logits(
        pred.detach(), target, reduction="none")
    assert torch.allclose(pred.grad, beta * (pred.detach().sigmoid() - target) / 4)


def test_ghm_bad_input():
    with pytest.raises(ValueError, match="target"):
        ghmc_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="weight"):
        ghmc_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(3, 3))
    with pytest.raises(ValueError, match="acc_sum"):
        ghmc_loss(torch.zeros(2, 3), torch.zeros(2, 3), momentum=0.5)
    with pytest.raises(ValueError, match="reduction"):
        ghmr_loss(torch.zeros(2, 4), torch.zeros(2, 4), reduction="avg")
    for loss in (ghmc_loss, ghmr_loss):  # the convention of weight_reduce_loss: a sum has no avg_factor
        with pytest.raises(ValueError, match='avg_factor can only be used with reduction="mean"'):
            loss(torch.zeros(2, 4), torch.zeros(2, 4), reduction="sum", avg_factor=3.0)
    with pytest.raises(ValueError, match="same shape"):
        ghmr_loss(torch.zeros(2, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="momentum"):
        GHMCLoss(momentum=1.0)
