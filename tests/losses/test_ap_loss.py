"""AP-Loss: value = 1 - AP (slow references), error-driven update (slow loop of Alg. 1), balance property."""
from __future__ import annotations

import pytest
import torch

from umop.losses.ap_loss import APLoss, ap_loss


def _f(x: float, delta: float = 1.0) -> float:
    return min(1.0, max(0.0, x / (2 * delta) + 0.5))


def _slow_ap_loss(scores, labels, interpolated, delta=1.0):
    """Per-positive / per-pair Python loops (AP-Loss Eq. 5-7, Alg. 1). Returns (loss, update list)."""
    s = [float(v) for v in scores]
    pos = [i for i, t in enumerate(labels) if t == 1]
    neg = [j for j, t in enumerate(labels) if t == 0]
    if not pos:
        return 0.0, [0.0] * len(s)
    prec, rank = {}, {}
    for i in pos:
        rank_pos = 1 + sum(_f(s[k] - s[i], delta) for k in pos if k != i)
        fp = sum(_f(s[j] - s[i], delta) for j in neg)
        rank[i] = rank_pos + fp
        prec[i] = rank_pos / rank[i]
    interp = {i: (max(prec[k] for k in pos if s[k] <= s[i]) if interpolated else prec[i]) for i in pos}
    update = [0.0] * len(s)
    for i in pos:
        scale = (1 - interp[i]) / (1 - prec[i]) if interp[i] > prec[i] else 1.0
        for j in neg:
            l_ij = _f(s[j] - s[i], delta) / rank[i]
            update[j] += l_ij * scale / len(pos)
            update[i] -= l_ij * scale / len(pos)
    return sum(1 - interp[i] for i in pos) / len(pos), update


def _true_ap(scores, labels, interpolated):
    """AP of the sorted ranking (exact Heaviside), the metric itself."""
    order = sorted(range(len(scores)), key=lambda k: -float(scores[k]))
    tp = 0
    precisions = []
    for r, k in enumerate(order, start=1):
        if labels[k] == 1:
            tp += 1
            precisions.append(tp / r)
    if interpolated:  # precision at recall level r is the best precision at recall >= r
        precisions = [max(precisions[m:]) for m in range(len(precisions))]
    return sum(precisions) / len(precisions)


@pytest.mark.parametrize("interpolated", [False, True])
def test_equals_one_minus_true_ap_when_scores_are_far_apart(interpolated):
    # gaps > 2 delta: f is the Heaviside step, so the surrogate is the exact AP of the ranking
    scores = torch.tensor([9.0, 6.0, 3.0, 0.0, -3.0, -6.0, -9.0, -12.0], dtype=torch.float64)
    labels = torch.tensor([1, 0, 1, 0, 0, 1, 0, 1])
    # hand: positives at ranks 1, 3, 6, 8 -> precisions 1, 2/3, 1/2, 1/2 -> AP = 2.6667/4
    assert _true_ap(scores, labels.tolist(), False) == pytest.approx((1 + 2 / 3 + 0.5 + 0.5) / 4)
    out = ap_loss(scores, labels, interpolated=interpolated)
    assert out.item() == pytest.approx(1 - _true_ap(scores, labels.tolist(), interpolated), rel=1e-12)
    # interpolation: ranks 1,3,6,8 are already non-increasing in precision, so try a case where it matters
    labels2 = torch.tensor([0, 1, 0, 0, 1, 1, 0, 0])  # precisions 1/2, 2/5, 1/2 -> interpolated 1/2, 1/2, 1/2
    out2 = ap_loss(scores, labels2, interpolated=interpolated)
    assert out2.item() == pytest.approx(1 - _true_ap(scores, labels2.tolist(), interpolated), rel=1e-12)
    if interpolated:
        assert out2.item() == pytest.approx(0.5, rel=1e-12)


@pytest.mark.parametrize("method", ["sort", "matrix"])
@pytest.mark.parametrize("interpolated", [False, True])
def test_matches_slow_reference_value_and_update(interpolated, method):
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 15, 3, generator=gen, dtype=torch.float64) * 1.5   # many pairs inside |x| <= delta
    labels = (torch.rand(2, 15, 3, generator=gen) < 0.15).long()
    labels[0, 0, 0] = 1
    weight = (torch.rand(2, 15, 1, generator=gen) > 0.1).double()   # ignore some anchors
    x = scores.clone().requires_grad_(True)
    out = ap_loss(x, labels, weight, interpolated=interpolated, method=method)
    out.backward()
    flat_labels = torch.where(weight.expand_as(scores) > 0, labels, torch.full_like(labels, -1)).flatten()
    ref, update = _slow_ap_loss(scores.flatten().tolist(), flat_labels.tolist(), interpolated)
    assert out.item() == pytest.approx(ref, rel=1e-10)
    assert torch.allclose(x.grad.flatten(), torch.tensor(update, dtype=torch.float64), atol=1e-12)
    # chunked computation (tiny memory bound) gives the same value and update
    y = scores.clone().requires_grad_(True)
    ap_loss_chunked = ap_loss(y, labels, weight, interpolated=interpolated, method="matrix", max_elements=7)
    ap_loss_chunked.backward()
    assert ap_loss_chunked.item() == pytest.approx(ref, rel=1e-10)
    assert torch.allclose(y.grad, x.grad, atol=1e-12)


@pytest.mark.parametrize("method", ["sort", "matrix"])
@pytest.mark.parametrize("interpolated", [False, True])
def test_update_of_positives_and_negatives_sums_to_zero(interpolated, method):
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(300, generator=gen, dtype=torch.float64) * 2).requires_grad_(True)
    labels = (torch.rand(300, generator=gen) < 0.1).long()
    ap_loss(x, labels, interpolated=interpolated, method=method).backward()
    pos = labels == 1
    assert x.grad[pos].sum().item() == pytest.approx(-x.grad[~pos].sum().item(), rel=1e-10)
    assert x.grad[pos].abs().sum() > 0
    assert torch.all(x.grad[pos] <= 0) and torch.all(x.grad[~pos] >= 0)


@pytest.mark.parametrize("interpolated", [False, True])
def test_sort_method_equals_matrix_method_at_scale(interpolated):
    # float32 detector-like scores: many ties in the prior region and many pairs inside |x| <= delta
    gen = torch.Generator().manual_seed(6)
    scores = torch.randn(2, 2000, 5, generator=gen) * 1.2 - 3.0
    scores[0, :300] = -4.59511985                      # the focal-loss prior bias, exactly tied
    labels = (torch.rand(2, 2000, 5, generator=gen) < 0.01).long()
    a = scores.clone().requires_grad_(True)
    b = scores.clone().requires_grad_(True)
    la = ap_loss(a, labels, interpolated=interpolated, method="sort")
    lb = ap_loss(b, labels, interpolated=interpolated, method="matrix")
    la.backward()
    lb.backward()
    assert la.item() == pytest.approx(lb.item(), rel=1e-5)
    assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-9)


def test_perfect_ranking_and_no_positive():
    x = torch.tensor([5.0, 4.5, 4.0, 1.9, 0.0, -3.0], requires_grad=True)
    labels = torch.tensor([1, 1, 1, 0, 0, 0])   # every negative more than delta below the lowest positive
    out = ap_loss(x, labels)
    out.backward()
    assert out.item() == 0.0
    assert torch.all(x.grad == 0)
    x2 = torch.randn(10, requires_grad=True)
    out2 = ap_loss(x2, torch.zeros(10, dtype=torch.long))
    out2.backward()
    assert out2.item() == 0.0 and torch.all(x2.grad == 0)


def test_reduction_avg_factor_and_module():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(40, generator=gen)
    labels = (torch.rand(40, generator=gen) < 0.2).long()
    labels[0] = 1
    mean = ap_loss(x, labels)
    total = ap_loss(x, labels, reduction="sum")
    assert total.item() == pytest.approx(mean.item() * int(labels.sum()), rel=1e-6)
    assert ap_loss(x, labels, avg_factor=2.0).item() == pytest.approx(total.item() / 2, rel=1e-6)
    # the module: (B, A, C) logits, avg_factor = number of positives gives 1 - AP
    module_loss, stats = APLoss(loss_weight=3.0)(x.view(1, 40, 1), labels.view(1, 40, 1).float(), [30, 10],
                                                 avg_factor=labels.sum().float())
    assert module_loss.item() == pytest.approx(3 * mean.item(), rel=1e-6)
    assert stats["num_positive"].sum().item() == labels.sum().item()


def test_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        ap_loss(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="target"):
        ap_loss(torch.zeros(3), torch.tensor([0, 2, 1]))
    with pytest.raises(ValueError, match="reduction"):
        ap_loss(torch.zeros(3), torch.tensor([0, 1, 1]), reduction="none")
    with pytest.raises(ValueError, match="weight"):
        ap_loss(torch.zeros(3), torch.tensor([0, 1, 1]), torch.ones(2))
    with pytest.raises(ValueError, match="method"):
        ap_loss(torch.zeros(3), torch.tensor([0, 1, 1]), method="fast")


def test_sum_with_avg_factor_is_an_error():
    pred, target = torch.zeros(2, 4), torch.tensor([[1.0, 0, 0, 0], [0, 0, 1, 0]])
    with pytest.raises(ValueError, match='avg_factor can only be used with reduction="mean"'):
        ap_loss(pred, target, reduction="sum", avg_factor=2.0)
