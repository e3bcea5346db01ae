"""PISA: IoU-HLR / ISR-P / CARL against hand-worked cases and a slow loop reference (mmdetection's loops)."""
from __future__ import annotations

import pytest
import torch

from umop.losses.pisa import CARLLoss, carl_loss, hierarchical_local_rank, isr_p

C = 3  # classes; label 3 = background, -1 = ignored


def _hand_case():
    # one image, 8 anchors. class 0: gt0 with IoUs .9 .7 .5 and gt1 with .8 .6; class 1: gt2 with .4;
    # anchor 6 is background, anchor 7 ignored.
    ious = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.95, 0.99]])
    labels = torch.tensor([[0, 0, 0, 0, 0, 1, 3, -1]])
    matched = torch.tensor([[0, 1, 0, 1, 0, 2, -1, -1]])
    return ious, labels, matched


def test_hlr_hand_worked():
    ious, labels, matched = _hand_case()
    rank, n_max = hierarchical_local_rank(ious, labels, matched, C)
    # local ranks: gt0 .9->0 .7->1 .5->2; gt1 .8->0 .6->1; class 0 order (r0: .9, .8), (r1: .7, .6), (r2: .5)
    assert rank.tolist() == [[0, 1, 2, 3, 4, 0, -1, -1]]
    assert int(n_max) == 5
    # the local rank dominates the IoU: a rank-0 sample with low IoU beats a rank-1 sample with high IoU
    ious2 = torch.tensor([[0.9, 0.3, 0.85, 0.2]])
    rank2, _ = hierarchical_local_rank(ious2, torch.zeros(1, 4, dtype=torch.long), torch.tensor([[0, 1, 0, 1]]), C)
    assert rank2.tolist() == [[0, 1, 2, 3]]


def test_isr_p_hand_worked():
    ious, labels, matched = _hand_case()
    cls_loss = torch.tensor([[1.0, 2.0, 1.0, 1.0, 4.0, 2.0, 5.0, 7.0]])
    lw = isr_p(ious, labels, matched, cls_loss, C, k=2.0, bias=0.0)
    u = torch.tensor([1.0, 0.8, 0.6, 0.4, 0.2, 1.0])       # (n_max - r) / n_max with n_max = 5
    imp = u**2
    ratio = (cls_loss[0, :6]).sum() / (cls_loss[0, :6] * imp).sum()   # 11 / (1 + 1.28 + .36 + .16 + .16 + 2)
    assert ratio.item() == pytest.approx(11 / 4.96)
    expected = torch.cat([imp * ratio, torch.tensor([1.0, 1.0])])
    assert torch.allclose(lw[0], expected)
    # the positives' weighted loss is unchanged
    assert (lw[0, :6] * cls_loss[0, :6]).sum().item() == pytest.approx(11.0, rel=1e-6)
    # bias shifts the mapping: ((1 - bias) u + bias) ** k
    lw_b = isr_p(ious, labels, matched, torch.ones_like(cls_loss), C, k=1.0, bias=0.5)
    v = 0.5 + 0.5 * u
    assert torch.allclose(lw_b[0, :6], v * 6 / v.sum())


def _slow_isr_p(ious, labels, matched, cls_loss, label_weights, k, bias):
    """mmdetection's isr_p loops on flattened positives (unique IoUs so sorting ties do not matter)."""
    B, A = labels.shape
    pos = [(b, a) for b in range(B) for a in range(A) if 0 <= labels[b, a] < C]
    gts, last = [], 0
    for b in range(B):
        g_b = [int(matched[b, a]) for (bb, a) in pos if bb == b]
        gts += [g + last for g in g_b]
        if g_b:
            last = max(gts) + 1
    plabels = [int(labels[b, a]) for b, a in pos]
    piou = [float(ious[b, a]) for b, a in pos]
    w = [float(label_weights[b, a]) for b, a in pos]
    max_l = max(plabels.count(c) for c in set(plabels))
    key = list(piou)
    for c in set(plabels):
        l_inds = [i for i in range(len(pos)) if plabels[i] == c]
        for t in {gts[i] for i in l_inds}:
            t_inds = sorted([i for i in l_inds if gts[i] == t], key=lambda i: -piou[i])
            for r, i in enumerate(t_inds):
                key[i] += max_l - r
        order = sorted(l_inds, key=lambda i: -key[i])
        for r, i in enumerate(order):
            w[i] *= (max_l - r) / max_l
    imp = [(bias + x * (1 - bias)) ** k for x in w]
    loss = [float(cls_loss[b, a]) for b, a in pos]
    ori = sum(l * float(label_weights[b, a]) for l, (b, a) in zip(loss, pos))
    ratio = ori / sum(l * x for l, x in zip(loss, imp))
    out = label_weights.clone()
    for (b, a), x in zip(pos, imp):
        out[b, a] = x * ratio
    return out


@pytest.mark.parametrize("k,bias", [(2.0, 0.0), (1.0, 0.3)])
def test_isr_p_matches_slow_reference(k, bias):
    gen = torch.Generator().manual_seed(0)
    B, A = 2, 40
    ious = torch.randperm(B * A, generator=gen).double().view(B, A) / (B * A)   # distinct IoUs
    labels = torch.randint(0, C + 1, (B, A), generator=gen)
    labels[torch.rand(B, A, generator=gen) < 0.1] = -1
    matched = torch.randint(0, 4, (B, A), generator=gen)
    cls_loss = torch.rand(B, A, generator=gen, dtype=torch.float64)
    label_weights = torch.rand(B, A, generator=gen, dtype=torch.float64) + 0.5
    out = isr_p(ious, labels, matched, cls_loss, C, label_weights, k=k, bias=bias)
    ref = _slow_isr_p(ious, labels, matched, cls_loss, label_weights, k, bias)
    assert torch.allclose(out, ref, rtol=1e-10)


def test_isr_p_without_positives_is_identity():
    labels = torch.full((2, 5), C)
    lw = torch.rand(2, 5)
    out = isr_p(torch.rand(2, 5), labels, torch.zeros(2, 5, dtype=torch.long), torch.rand(2, 5), C, lw)
    assert torch.equal(out, lw)


def test_carl_hand_worked_and_gradient():
    logits = torch.tensor([[[0.0, 2.0, -1.0], [1.0, -3.0, 0.5], [0.3, 0.3, 0.3]]], dtype=torch.float64,
                          requires_grad=True)
    labels = torch.tensor([[1, 0, 3]])  # two positives (classes 1 and 0), one background
    reg = torch.tensor([[[0.1, 0.2, 0.3, 0.4], [1.0, 0.0, 0.0, 1.0], [9.0, 9.0, 9.0, 9.0]]], dtype=torch.float64,
                       requires_grad=True)
    out = carl_loss(logits, labels, reg, C, k=1.0, bias=0.2)
    p1, p2 = torch.sigmoid(torch.tensor(2.0, dtype=torch.float64)), torch.sigmoid(torch.tensor(1.0, dtype=torch.float64))
    v1, v2 = 0.2 + 0.8 * p1, 0.2 + 0.8 * p2
    s = v1 + v2
    expected = (v1 * 2 / s * 1.0 + v2 * 2 / s * 2.0) / 2   # reg sums 1.0 and 2.0, avg_factor = 2 positives
    assert out.item() == pytest.approx(expected.item(), rel=1e-12)
    out.backward()
    # the gradient reaches the classification scores of the positives' gt classes only
    nonzero = logits.grad != 0
    assert nonzero.tolist() == [[[False, True, False], [True, False, False], [False, False, False]]]
    # a worse-localised positive (larger reg loss) pushes its score down: d/dp2 > 0, d/dp1 < 0
    assert logits.grad[0, 1, 0] > 0 and logits.grad[0, 0, 1] < 0
    assert torch.all(reg.grad[0, 2] == 0)
    assert torch.autograd.gradcheck(lambda x, r: carl_loss(x, labels, r, C), (logits, reg))


def test_carl_module_and_softmax():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 6, C + 1, generator=gen)
    labels = torch.randint(0, C + 1, (2, 6), generator=gen)
    labels[0, 0] = 0
    reg = torch.rand(2, 6, generator=gen)
    out = CARLLoss(C, sigmoid=False, loss_weight=2.0)(logits, labels, reg, avg_factor=4.0)
    pos = labels < C
    p = logits.softmax(-1).gather(-1, labels.clamp(max=C - 1)[..., None])[..., 0]
    v = (0.2 + 0.8 * p)[pos]
    expected = 2.0 * (v * pos.sum() / v.sum() * reg[pos]).sum() / 4.0
    assert out.item() == pytest.approx(expected.item(), rel=1e-6)


def test_bad_input():
    with pytest.raises(ValueError, match="labels"):
        hierarchical_local_rank(torch.rand(2, 3), torch.zeros(2, 4, dtype=torch.long),
                                torch.zeros(2, 3, dtype=torch.long), C)
    with pytest.raises(ValueError, match="cls_loss"):
        isr_p(torch.rand(2, 3), torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long),
              torch.rand(3), C)
    with pytest.raises(ValueError, match="cls_score"):
        carl_loss(torch.rand(2, 3), torch.zeros(2, 3, dtype=torch.long), torch.rand(2, 3), C)
    with pytest.raises(ValueError, match="reg_loss"):
        carl_loss(torch.rand(2, 3, C), torch.zeros(2, 3, dtype=torch.long), torch.rand(2, 4), C)


def test_carl_without_positives_is_zero_with_a_graph():
    logits = torch.randn(1, 4, C, requires_grad=True)
    reg = torch.rand(1, 4, 4, requires_grad=True)
    out = carl_loss(logits, torch.full((1, 4), C), reg, C)
    out.backward()
    assert out.item() == 0.0
    assert torch.all(logits.grad == 0) and torch.all(reg.grad == 0)
