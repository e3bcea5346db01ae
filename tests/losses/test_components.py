"""The loss protocols, registries and the module twins (issue 11): shared statistics, option validation,
equality of each module with its functional form, and the new box / quality losses against hand-worked values
or independent references."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from umop.losses import (BOX_LOSSES, CLS_LOSSES, PISA, BoundedIoULoss, FocalLoss, KLLoss, ProgressiveFocalLoss,
                         VarifocalLoss, bounded_iou_loss, build_box_loss, build_cls_loss, carl_loss, isr_p,
                         kl_loss, l1_loss, progressive_focal_loss, quality_focal_loss, sigmoid_focal_loss,
                         smooth_l1_loss, varifocal_loss, variance_voting, weight_reduce_loss)


def _batch(seed=0, batch=2, priors=(6, 3), classes=3):
    gen = torch.Generator().manual_seed(seed)
    num = sum(priors)
    logits = torch.randn(batch, num, classes, generator=gen, dtype=torch.float64)
    labels = torch.randint(-1, classes + 1, (batch, num), generator=gen)
    positive = (labels >= 0) & (labels < classes)
    targets = F.one_hot(labels.clamp(min=0), classes + 1)[..., :classes].double() * positive.unsqueeze(-1)
    weight = (labels >= 0).double()
    quality = torch.rand(batch, num, generator=gen, dtype=torch.float64).clamp(min=0.05)
    loc_error = torch.rand(batch, num, generator=gen, dtype=torch.float64)
    return logits, targets, list(priors), weight, labels, quality, loc_error


@pytest.mark.parametrize("name", CLS_LOSSES.names())
def test_every_classification_loss_reports_the_same_level_statistics(name):
    logits, targets, priors, weight, labels, quality, loc_error = _batch()
    module = build_cls_loss(name).double()
    x = logits.clone().requires_grad_(True)
    loss, stats = module(x, targets, priors, weight, 4.0, quality=quality, loc_error=loc_error)
    # independent count: per level, positive labels / valid labels over the batch
    level = torch.tensor([0] * priors[0] + [1] * priors[1])
    positive = ((labels >= 0) & (labels < 3)).double()
    valid = (labels >= 0).double()
    expected_pos = torch.stack([positive[:, level == i].sum() for i in range(2)]).float()
    expected_valid = torch.stack([valid[:, level == i].sum() for i in range(2)]).float()
    torch.testing.assert_close(stats["num_positive"], expected_pos)
    torch.testing.assert_close(stats["num_anchors"], expected_valid)
    total = sum(loss.values()) if isinstance(loss, dict) else loss
    assert isinstance(loss, dict) == module.replaces_box_loss
    total.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert torch.count_nonzero(x.grad[weight == 0]) == 0            # ignored priors get no gradient
    if name.startswith("pfl"):
        assert set(stats) == {"num_positive", "num_anchors", "gamma_ad", "alpha_ad"}
    else:
        assert set(stats) == {"num_positive", "num_anchors"}


@pytest.mark.parametrize("name", ["varifocal", "pfl"])
def test_valid_mask_limits_the_statistics_not_the_loss(name):
    """``valid=`` (the detector's valid flags) counts only the priors inside their image, also where the loss
    weighs every prior (VFNet's varifocal loss: weight 1 in the padding), and leaves the loss unchanged."""
    logits, targets, priors, _, labels, quality, loc_error = _batch(2)
    weight = torch.ones(labels.shape, dtype=torch.float64)
    valid = torch.ones(labels.shape, dtype=torch.bool)
    valid[1, 4:6] = False                      # image 1: two P3 priors (index 4, 5) and one P4 prior in padding
    valid[1, 8] = False
    targets = targets * valid.unsqueeze(-1)    # no positive in the padding
    module = build_cls_loss(name).double()
    loss, stats = module(logits, targets, priors, weight, 4.0, quality=quality, loc_error=loc_error, valid=valid)
    loss_all, stats_all = module(logits, targets, priors, weight, 4.0, quality=quality, loc_error=loc_error)
    torch.testing.assert_close(loss, loss_all)
    assert stats_all["num_anchors"].tolist() == [12.0, 6.0]                 # 2 images x (6, 3) priors
    assert stats["num_anchors"].tolist() == [12.0 - 2, 6.0 - 1]
    torch.testing.assert_close(stats["num_positive"], stats_all["num_positive"])
    with pytest.raises(ValueError, match="valid must be"):
        module(logits, targets, priors, weight, 4.0, quality=quality, loc_error=loc_error, valid=valid[:, :3])


def test_focal_module_is_the_detectors_focal_loss():
    logits, targets, priors, weight, *_ = _batch(1)
    avg = torch.tensor(3.0, dtype=torch.float64)
    x1, x2 = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    loss, _ = FocalLoss(alpha=0.25, gamma=2.0)(x1, targets, priors, weight, avg)
    expected = sigmoid_focal_loss(x2, targets, weight / avg, reduction="sum")
    torch.testing.assert_close(loss, expected, rtol=0, atol=0)
    loss.backward(); expected.backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=0)
    # and torchvision's formula with the same normalisation
    import torchvision
    reference = (torchvision.ops.sigmoid_focal_loss(logits, targets) * weight.unsqueeze(-1)).sum() / avg
    torch.testing.assert_close(loss, reference)


@pytest.mark.parametrize("name,level_reduction", [("pfl", "sum"), ("pfl_mean", "mean")])
def test_pfl_names_are_the_function_with_their_level_reduction(name, level_reduction):
    logits, targets, priors, weight, *_ = _batch(2)
    module = build_cls_loss(name, delta=0.3)
    assert isinstance(module, ProgressiveFocalLoss) and module.level_reduction == level_reduction
    loss, stats = module(logits, targets, priors, weight, 2.0)
    expected, expected_stats = progressive_focal_loss(logits, targets, priors, weight, 2.0, delta=0.3,
                                                      level_reduction=level_reduction, return_stats=True)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(stats["gamma_ad"], expected_stats["gamma_ad"])
    with pytest.raises(ValueError, match="level_reduction"):
        build_cls_loss(name, level_reduction="sum")          # fixed by the name, not an option


def test_varifocal_weight_is_a_weight_not_alpha():
    logits, targets, priors, weight, _, quality, _ = _batch(3)
    soft = targets * quality.unsqueeze(-1)
    positional = varifocal_loss(logits, soft, weight, "sum")
    explicit = (varifocal_loss(logits, soft, reduction="none", alpha=0.75) * weight.unsqueeze(-1)).sum()
    torch.testing.assert_close(positional, explicit)
    with pytest.raises(TypeError):
        varifocal_loss(logits, soft, weight, "sum", None, 0.75)    # options are keyword-only
    loss, _ = VarifocalLoss()(logits, targets, priors, weight, 2.0, quality=quality)
    torch.testing.assert_close(loss, positional / 2.0)
    with pytest.raises(ValueError, match="quality"):
        VarifocalLoss()(logits, targets, priors, weight, 2.0)


def test_quality_focal_loss_hand_worked_and_binary_case_is_focal_without_alpha():
    # x = 0: sigma = 1/2; y = 0.8: |0.8 - 0.5|^2 * (-(0.2 log 0.5 + 0.8 log 0.5)) = 0.09 log 2
    value = quality_focal_loss(torch.zeros(1, 1), torch.tensor([[0.8]]), reduction="sum")
    assert value.item() == pytest.approx(0.09 * math.log(2), rel=1e-6)
    logits, targets, *_ = _batch(4)
    torch.testing.assert_close(quality_focal_loss(logits, targets, reduction="none"),
                               sigmoid_focal_loss(logits, targets, reduction="none", alpha=-1.0, gamma=2.0))


def test_bounded_iou_closed_form():
    target = torch.tensor([[0.0, 0.0, 10.0, 10.0]], dtype=torch.float64)
    pred = torch.tensor([[1.0, 0.0, 11.0, 8.0]], dtype=torch.float64)     # centre (6, 4), size (10, 8)
    # x: |dx| = 1 -> 1 - (10 - 2) / (10 + 2) = 1/3; y: |dy| = 1 -> 1/3; w: 1 - 1 = 0; h: 1 - 8/10 = 0.2
    # smooth L1 with beta 0.2: 1/3 - 0.1 (twice), 0.2 - 0.1, 0
    expected = 2 * (1 / 3 - 0.1) + 0.1
    assert bounded_iou_loss(pred, target, eps=1e-12).item() == pytest.approx(expected, rel=1e-9)
    inside = torch.tensor([[0.0, 0.0, 10.0, 10.5]], dtype=torch.float64)  # h term 1 - 10/10.5 < beta: quadratic
    small = 1 - 10 / 10.5 + 0.0
    # centre y moves by 0.25: 1 - (10 - 0.5) / (10 + 0.5)
    dy = 1 - 9.5 / 10.5
    expected_inside = 0.5 * small ** 2 / 0.2 + 0.5 * dy ** 2 / 0.2
    assert bounded_iou_loss(inside, target, eps=1e-12).item() == pytest.approx(expected_inside, rel=1e-9)
    far = torch.tensor([[20.0, 0.0, 30.0, 10.0]], dtype=torch.float64)    # |dx| = 20 > w/2: the bound is 0
    assert bounded_iou_loss(far, target, eps=1e-12).item() == pytest.approx(1 - 0.1, rel=1e-9)
    module = build_box_loss("bounded_iou", eps=1e-12)
    assert isinstance(module, BoundedIoULoss) and module.space == "boxes"
    assert module(pred, target).item() == pytest.approx(expected, rel=1e-9)
    boxes = pred.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda b: bounded_iou_loss(b, target + 0.3, eps=1e-12), (boxes,))


def test_l1_family_equals_torch():
    gen = torch.Generator().manual_seed(0)
    pred, target = torch.randn(7, 4, generator=gen), torch.randn(7, 4, generator=gen)
    torch.testing.assert_close(l1_loss(pred, target), F.l1_loss(pred, target))
    torch.testing.assert_close(smooth_l1_loss(pred, target, beta=0.3), F.smooth_l1_loss(pred, target, beta=0.3))
    weight = torch.rand(7, generator=gen)
    expected = (F.smooth_l1_loss(pred, target, beta=1 / 9, reduction="none") * weight[:, None]).sum() / 3.0
    torch.testing.assert_close(build_box_loss("smooth_l1")(pred, target, weight, 3.0), expected, rtol=1e-5, atol=1e-6)
    assert build_box_loss("l1").space == "deltas"


@pytest.mark.parametrize("name", BOX_LOSSES.names())
def test_every_box_loss_module_reduces_by_avg_factor(name):
    gen = torch.Generator().manual_seed(1)
    xy = torch.rand(5, 2, generator=gen, dtype=torch.float64) * 10
    pred = torch.cat([xy, xy + 1 + torch.rand(5, 2, generator=gen, dtype=torch.float64) * 5], 1)
    target = pred + torch.randn(5, 4, generator=gen, dtype=torch.float64) * 0.3
    module = build_box_loss(name).double()
    extra = {"log_var": torch.zeros(5, 4, dtype=torch.float64)} if module.needs_log_var else {}
    per_element = module(pred, target, reduction_override="none", **extra)
    weight = torch.rand(5, generator=gen, dtype=torch.float64)
    loss = module(pred, target, weight, 2.0, **extra)
    if name == "ghm_r":   # GHM-R weights are harmonising weights of the valid examples, not multipliers
        assert torch.isfinite(loss)
        return
    w = weight if per_element.dim() == 1 else weight[:, None]
    torch.testing.assert_close(loss, (per_element * w).sum() / (2.0 + torch.finfo(torch.float32).eps))


def test_kl_module_needs_log_var_and_variance_voting_hand_worked():
    pred, target = torch.zeros(2, 4), torch.full((2, 4), 0.5)
    log_var = torch.full((2, 4), 0.3)
    module = KLLoss()
    assert module.needs_log_var and module.space == "deltas"
    torch.testing.assert_close(module(pred, target, log_var=log_var), kl_loss(pred, target, log_var=log_var))
    with pytest.raises(ValueError, match="log_var"):
        module(pred, target)
    kept = torch.tensor([[0.0, 0.0, 10.0, 10.0]], dtype=torch.float64)
    candidates = torch.tensor([[0.0, 0.0, 10.0, 10.0], [2.0, 0.0, 12.0, 10.0], [1.0, 0.0, 11.0, 10.0],
                               [50.0, 50.0, 60.0, 60.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 0])
    log_var = torch.zeros(4, 4, dtype=torch.float64)
    log_var[1, 0] = math.log(4.0)                      # candidate 1 is 4x less certain of its x1 only
    voted = variance_voting(kept, torch.ones(1), torch.tensor([0]), candidates, torch.ones(4), labels, log_var,
                            sigma_t=0.1)
    # candidate 1: IoU 8*10 / (12*10) = 2/3 -> p = exp(-(1/3)^2 / 0.1); candidate 2 other class, 3 no overlap
    p = math.exp(-(1 / 3) ** 2 / 0.1)
    x1 = (1 * 0.0 + p / 4 * 2.0) / (1 + p / 4)
    x2 = (1 * 10.0 + p * 12.0) / (1 + p)
    expected = torch.tensor([[x1, 0.0, x2, 10.0]], dtype=torch.float64)
    torch.testing.assert_close(voted, expected)


def test_registry_validates_names_options_and_types():
    with pytest.raises(ValueError, match="did you mean 'delta'"):
        build_cls_loss("pfl", detla=0.5)
    with pytest.raises(ValueError, match="did you mean 'focal'"):
        build_cls_loss("focall")
    with pytest.raises(ValueError, match="'gamma' of 'focal' must be float"):
        build_cls_loss("focal", gamma="2")
    with pytest.raises(ValueError, match="must be bool"):
        build_cls_loss("varifocal", iou_weighted=1)
    module = FocalLoss()
    assert build_cls_loss(module) is module
    with pytest.raises(ValueError, match="already built"):
        build_cls_loss(module, gamma=1.0)
    assert build_cls_loss("focal", gamma=1).gamma == 1.0            # an int is a valid float
    CLS_LOSSES.check("rank_sort", {"delta": 0.5}, where="model.cls_loss")
    with pytest.raises(ValueError, match="model.cls_loss: unknown option 'detla'"):
        CLS_LOSSES.check("rank_sort", {"detla": 0.5}, where="model.cls_loss")
    for registry in (CLS_LOSSES, BOX_LOSSES):
        for name, cls_name, citation in registry.table():
            assert citation and cls_name
    assert set(CLS_LOSSES.names()) == {"focal", "pfl", "pfl_mean", "varifocal", "quality_focal", "ghm_c",
                                        "ap_loss", "alrp", "rank_sort"}
    assert set(BOX_LOSSES.names()) == {"l1", "smooth_l1", "balanced_l1", "ghm_r", "iou", "giou", "diou", "ciou",
                                        "bounded_iou", "kl"}


def test_pisa_object_calls_isr_p_and_carl():
    gen = torch.Generator().manual_seed(2)
    labels = torch.tensor([[0, 1, 3, 0, -1, 3], [2, 3, 3, 0, 1, 1]])
    ious = torch.rand(2, 6, generator=gen)
    matched = torch.randint(0, 3, (2, 6), generator=gen)
    cls_loss = torch.rand(2, 6, generator=gen)
    weight = (labels >= 0).float()
    pisa = PISA()
    torch.testing.assert_close(pisa.reweight(ious, labels, matched, cls_loss, weight, 3),
                               isr_p(ious, labels, matched, cls_loss, 3, label_weights=weight, k=2.0, bias=0.0))
    logits = torch.randn(2, 6, 3, generator=gen)
    box = torch.rand(2, 6, generator=gen)
    torch.testing.assert_close(pisa.carl(logits, labels, box, 4.0),
                               carl_loss(logits, labels, box, 3, k=1.0, bias=0.2, avg_factor=4.0))


def test_weight_reduce_loss_avg_factor_semantics():
    loss = torch.tensor([1.0, 2.0, 3.0])
    assert weight_reduce_loss(loss, torch.tensor([1.0, 0.0, 1.0]), "mean").item() == pytest.approx(4 / 3)
    assert weight_reduce_loss(loss, None, "mean", avg_factor=2.0).item() == pytest.approx(3.0)
    assert weight_reduce_loss(torch.zeros(3), None, "mean", avg_factor=0.0).item() == 0.0   # no NaN
    torch.testing.assert_close(weight_reduce_loss(loss, None, "none", avg_factor=2.0), loss)
    with pytest.raises(ValueError, match="avg_factor"):
        weight_reduce_loss(loss, None, "sum", avg_factor=2.0)
    with pytest.raises(ValueError, match="reduction"):
        weight_reduce_loss(loss, None, "avg")


def test_given_positive_mask_gives_the_same_statistics():
    logits, targets, priors, weight, labels, *_ = _batch(6)
    positive = (labels >= 0) & (labels < 3)
    _, from_targets = FocalLoss()(logits, targets, priors, weight, 1.0)
    _, from_mask = FocalLoss()(logits, targets, priors, weight, 1.0, positive=positive)
    torch.testing.assert_close(from_targets, from_mask)
    with pytest.raises(ValueError, match="positive must be"):
        FocalLoss()(logits, targets, priors, weight, 1.0, positive=positive[:, :3])
