"""aLRP loss and Rank & Sort loss: hand-worked rankings, a per-positive loop reference of the authors'
algorithm (written here from the papers' Alg. / update rules, independent of the vectorised code), and the
error-driven updates against hand-computed values (their backward is not the autograd of the forward, so
gradcheck does not apply; the updates are checked directly)."""
from __future__ import annotations

import pytest
import torch

from umop.losses import ALRPLoss, RankSortLoss, alrp_loss, build_cls_loss, rank_sort_loss
from umop.losses.ranking import sorted_step_sums, sorted_step_update, step_function


def _column(values):
    """(1, A, 1) logits / targets from a list."""
    return torch.tensor(values, dtype=torch.float64).view(1, -1, 1)


# scores 4 (positive P1), 2 (negative N1), 0 (positive P2), -2 (negative N2): gaps of 2 > 2 delta, so the
# smoothed step is exactly 0 / 1 between different elements
SCORES = [4.0, 2.0, 0.0, -2.0]
LABELS = [1.0, 0.0, 1.0, 0.0]


def test_alrp_hand_worked_ranking_value_is_one_minus_ap_and_the_lrp_localisation():
    logits = _column(SCORES).requires_grad_(True)
    targets = _column(LABELS)
    e1, e2 = 0.2, 0.6
    loc = torch.tensor([[e1, 0.0, e2, 0.0]], dtype=torch.float64, requires_grad=True)
    loss_cls, loss_loc = alrp_loss(logits, targets, loc, delta=0.5)
    # precision: P1 1/1, P2 2/3 -> AP = 5/6, L_cls = 1 - AP = 1/6
    assert loss_cls.item() == pytest.approx(1 / 6, rel=1e-12)
    # LRP localisation: P1 e1 / rank 1, P2 (e1 + e2) / rank 3, mean over the two positives
    assert loss_loc.item() == pytest.approx((e1 + (e1 + e2) / 3) / 2, rel=1e-12)
    (loss_cls + loss_loc).backward()
    # error-driven update: P1 has no false positive -> 0; P2: -(N_FP + e1) / rank = -(1 + e1) / 3, given to N1
    expected = torch.tensor([0.0, (1 + e1) / 3, -(1 + e1) / 3, 0.0], dtype=torch.float64) / 2
    torch.testing.assert_close(logits.grad.view(-1), expected)
    assert logits.grad.sum().item() == pytest.approx(0.0, abs=1e-12)       # balanced (aLRP Theorem 2)
    # the localisation gradient: d/d e1 = (1 + 1/3) / 2, d/d e2 = (1/3) / 2
    torch.testing.assert_close(loc.grad, torch.tensor([[2 / 3, 0.0, 1 / 6, 0.0]], dtype=torch.float64))


def _alrp_loop_reference(scores, positive, negative, loc, delta):
    """The aLRP classification value and update, one positive at a time (the authors' procedure)."""
    fg, bg, loc_fg = scores[positive], scores[negative], loc[positive]
    fg_grad = torch.zeros_like(fg)
    bg_grad = torch.zeros_like(bg)
    precisions, ranks = [], []
    for i in range(len(fg)):
        with_fg = step_function(fg - fg[i], delta)
        with_fg[i] = 0
        with_bg = step_function(bg - fg[i], delta)
        rank_pos, false_pos = 1 + with_fg.sum(), with_bg.sum()
        rank = rank_pos + false_pos
        precisions.append(rank_pos / rank)
        ranks.append(rank)
        if false_pos > 1e-5:
            fg_grad[i] = -((with_fg * loc_fg).sum() + false_pos) / rank
            bg_grad += with_bg * (-fg_grad[i] / false_pos)
    update = torch.zeros_like(scores)
    update[positive], update[negative] = fg_grad, bg_grad
    return 1 - torch.stack(precisions).mean(), update / len(fg), torch.stack(ranks)


@pytest.mark.parametrize("delta", [1.0, 0.3])
def test_alrp_matches_a_per_positive_loop_with_ties_and_overlapping_windows(delta):
    gen = torch.Generator().manual_seed(3)
    logits = (torch.randn(2, 30, 3, generator=gen, dtype=torch.float64)).round(decimals=1)   # ties
    labels = torch.randint(0, 4, (2, 30), generator=gen)
    targets = torch.nn.functional.one_hot(labels, 4)[..., :3].double()
    weight = (torch.rand(2, 30, generator=gen) > 0.1).double()
    loc = torch.rand(2, 30, generator=gen, dtype=torch.float64)
    x = logits.clone().requires_grad_(True)
    loss_cls, _ = alrp_loss(x, targets, loc, weight, delta=delta)
    loss_cls.backward()
    valid = (weight > 0).unsqueeze(-1).expand_as(targets).reshape(-1)
    positive = (targets.reshape(-1) > 0) & valid
    negative = (targets.reshape(-1) == 0) & valid
    loc_elements = loc.unsqueeze(-1).expand_as(targets).reshape(-1)
    value, update, _ = _alrp_loop_reference(logits.reshape(-1), positive, negative, loc_elements, delta)
    assert loss_cls.item() == pytest.approx(value.item(), rel=1e-10)
    torch.testing.assert_close(x.grad.reshape(-1), update)


def test_alrp_module_self_balancing_and_no_positive():
    logits = _column(SCORES)
    targets = _column(LABELS)
    loc = torch.tensor([[0.2, 0.0, 0.6, 0.0]], dtype=torch.float64)
    module = ALRPLoss(delta=0.5, sb_initial=50.0, sb_period=2).double()
    losses, stats = module(logits, targets, [3, 1], avg_factor=2.0, loc_error=loc)
    cls_value, loc_value = 1 / 6, (0.2 + 0.8 / 3) / 2
    assert losses["loss_cls"].item() == pytest.approx(cls_value)
    assert losses["loss_box"].item() == pytest.approx(50 * loc_value)
    assert stats["num_positive"].tolist() == [2.0, 0.0] and stats["num_anchors"].tolist() == [3.0, 1.0]
    module(logits, targets, [3, 1], avg_factor=2.0, loc_error=loc)            # second step: w_SB re-set
    assert module.sb_weight.item() == pytest.approx((cls_value + loc_value) / loc_value)
    empty = torch.zeros_like(targets)
    x = logits.clone().requires_grad_(True)
    losses, _ = module(x, empty, [3, 1], avg_factor=1.0, loc_error=loc)
    (losses["loss_cls"] + losses["loss_box"]).backward()
    assert losses["loss_cls"].item() == 0.0 and losses["loss_box"].item() == 0.0
    assert torch.count_nonzero(x.grad) == 0
    with pytest.raises(ValueError, match="loc_error"):
        module(logits, targets, [3, 1])
    assert not ALRPLoss.accepts_sampler and ALRPLoss.replaces_box_loss


def test_rank_sort_hand_worked_ranking_and_update():
    # P1 (score 4, IoU 0.6), N1 (2), P2 (score 0, IoU 0.9), N2 (-2); hard step (delta = 0) = the paper's errors
    logits = _column(SCORES).requires_grad_(True)
    targets = _column(LABELS)
    iou = torch.tensor([[0.6, 0.0, 0.9, 0.0]], dtype=torch.float64)
    ranking, sorting = rank_sort_loss(logits, targets, iou, delta=0.0)
    # ranking errors: P1 0 (nothing above), P2 1/3 (N1 above, rank 3)
    assert ranking.item() == pytest.approx((0 + 1 / 3) / 2, rel=1e-12)
    # sorting errors: P1 current 0.4 / 1 - target 0.4 / 1 = 0; P2 current (0.4 + 0.1) / 2 - target 0.1 / 1
    assert sorting.item() == pytest.approx((0 + 0.15) / 2, rel=1e-12)
    (ranking + sorting).backward()
    # P2: -(1/3 + 0.15); N1 gets its ranking error 1/3, P1 (mis-sorted above P2) its sorting error 0.15; / |P|
    expected = torch.tensor([0.15, 1 / 3, -(1 / 3 + 0.15), 0.0], dtype=torch.float64) / 2
    torch.testing.assert_close(logits.grad.view(-1), expected)


def _rs_loop_reference(scores, positive, negative, y_all, delta):
    """RS value and update, one positive at a time (the authors' procedure)."""
    fg, bg, y = scores[positive], scores[negative], y_all[positive]
    fg_grad = torch.zeros_like(fg)
    bg_grad = torch.zeros_like(bg)
    ranking_errors, sorting_errors = [], []
    for i in range(len(fg)):
        with_fg = step_function(fg - fg[i], delta)
        with_bg = step_function(bg - fg[i], delta)
        rank_pos, false_pos = with_fg.sum(), with_bg.sum()
        ranking_error = false_pos / (rank_pos + false_pos)
        current = (with_fg * (1 - y)).sum() / rank_pos
        target_order = (y >= y[i]).double() * with_fg
        sorting_error = current - (target_order * (1 - y)).sum() / target_order.sum()
        ranking_errors.append(ranking_error)
        sorting_errors.append(sorting_error)
        if false_pos > 1e-10:
            fg_grad[i] -= ranking_error
            bg_grad += with_bg * (ranking_error / false_pos)
        missorted = (y < y[i]).double() * with_fg
        if missorted.sum() > 1e-10:
            fg_grad[i] -= sorting_error
            fg_grad += missorted * (sorting_error / missorted.sum())
    update = torch.zeros_like(scores)
    update[positive], update[negative] = fg_grad, bg_grad
    return torch.stack(ranking_errors).mean(), torch.stack(sorting_errors).mean(), update / len(fg)


@pytest.mark.parametrize("delta,max_elements", [(0.5, 1 << 20), (0.5, 50), (0.0, 1 << 20)])
def test_rank_sort_matches_a_per_positive_loop(delta, max_elements):
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 40, 3, generator=gen, dtype=torch.float64).round(decimals=1)
    labels = torch.randint(0, 4, (2, 40), generator=gen)
    targets = torch.nn.functional.one_hot(labels, 4)[..., :3].double()
    weight = (torch.rand(2, 40, generator=gen) > 0.1).double()
    iou = torch.rand(2, 40, generator=gen, dtype=torch.float64).round(decimals=1)     # ties in IoU too
    x = logits.clone().requires_grad_(True)
    ranking, sorting = rank_sort_loss(x, targets, iou, weight, delta=delta, max_elements=max_elements)
    (ranking + sorting).backward()
    valid = (weight > 0).unsqueeze(-1).expand_as(targets).reshape(-1)
    positive = (targets.reshape(-1) > 0) & valid
    negative = (targets.reshape(-1) == 0) & valid
    y = iou.unsqueeze(-1).expand_as(targets).reshape(-1)
    ref_ranking, ref_sorting, update = _rs_loop_reference(logits.reshape(-1), positive, negative, y, delta)
    assert ranking.item() == pytest.approx(ref_ranking.item(), rel=1e-10)
    assert sorting.item() == pytest.approx(ref_sorting.item(), rel=1e-10, abs=1e-12)
    torch.testing.assert_close(x.grad.reshape(-1), update)
    assert x.grad.sum().item() == pytest.approx(0.0, abs=1e-10)              # balanced


def test_rank_sort_module_box_loss_is_score_weighted_and_value_balanced():
    logits = _column(SCORES)
    targets = _column(LABELS)
    iou = torch.tensor([[0.6, 0.0, 0.9, 0.0]], dtype=torch.float64)
    loc = torch.tensor([[0.5, 3.0, 0.2, 3.0]], dtype=torch.float64, requires_grad=True)   # negatives ignored
    module = build_cls_loss("rank_sort", delta=0.0)
    losses, _ = module(logits, targets, [4], avg_factor=2.0, quality=iou, loc_error=loc)
    l_rs = (1 / 3) / 2 + 0.15 / 2
    assert losses["loss_cls"].item() == pytest.approx(l_rs)
    # value balanced: loss_box equals L_RS in value, and its gradient is that of the weighted mean scaled
    assert losses["loss_box"].item() == pytest.approx(l_rs)
    losses["loss_box"].backward()
    p1, p2 = torch.sigmoid(torch.tensor(4.0, dtype=torch.float64)), torch.sigmoid(torch.tensor(0.0))
    box = (p1 * 0.5 + p2 * 0.2) / (p1 + p2)
    expected = l_rs / box * torch.tensor([p1, 0.0, p2, 0.0], dtype=torch.float64) / (p1 + p2)
    torch.testing.assert_close(loc.grad.view(-1), expected)
    assert RankSortLoss.needs_quality and not RankSortLoss.accepts_sampler


def test_sorted_step_primitives_equal_their_matrix_forms():
    gen = torch.Generator().manual_seed(0)
    queries = torch.randn(17, generator=gen, dtype=torch.float64).round(decimals=1)
    values = torch.randn(29, generator=gen, dtype=torch.float64).round(decimals=1)
    coef = torch.rand(29, generator=gen, dtype=torch.float64)
    coef_q = torch.rand(17, generator=gen, dtype=torch.float64)
    for delta in (0.0, 0.25, 1.0):
        matrix = step_function(values[None, :] - queries[:, None], delta)          # (Q, V): f(v_k - q)
        torch.testing.assert_close(sorted_step_sums(queries, values, delta, coef), matrix @ coef)
        torch.testing.assert_close(sorted_step_update(queries, values, coef_q, delta), coef_q @ matrix)
