"""ATSS detector: head layout, hand-checked loss terms, assignment API, bad input.

Training steps for every cls_loss and the BCCD overfit test are in test_detector_matrix.py."""
import math

import pytest
import torch
import torch.nn.functional as F

from umop.assigners import pad_targets
from umop.assigners.atss import ATSSAssigner
from umop.models import build_detector
from umop.models.atss import ATSS, ATSS_TARGET_STDS, ATSSHead, centerness_of_priors


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_detector("atss", 3, backbone="resnet18", fpn_channels=32)


def test_head_layout(model):
    assert isinstance(model, ATSS) and isinstance(model.head, ATSSHead)
    assert sum(isinstance(m, torch.nn.GroupNorm) for m in model.head.cls_convs) == 4
    assert len(model.head.scales) == 5
    # classifier bias = -log((1 - 0.01) / 0.01) (RetinaNet prior)
    torch.testing.assert_close(model.head.atss_cls.bias, torch.full((3,), -math.log(99.0)))
    features = [torch.randn(2, 32, s, s) for s in (8, 4, 2, 1, 1)]
    out = model.head(features)
    assert out["cls_logits"].shape == (2, 86, 3) and out["bbox_regression"].shape == (2, 86, 4)
    assert out["centerness"].shape == (2, 86)
    # one square anchor of side 8 * stride per location
    priors, counts = model.prior_generator([(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)])
    assert counts == [64, 16, 4, 1, 1]
    torch.testing.assert_close(priors[0], torch.tensor([-32.0, -32.0, 32.0, 32.0]))
    torch.testing.assert_close(priors[64], torch.tensor([-64.0, -64.0, 64.0, 64.0]))
    assert model.box_coder.weights == tuple(1 / s for s in ATSS_TARGET_STDS)


def test_centerness_of_priors_hand_worked():
    priors = torch.tensor([[0.0, 0.0, 20.0, 20.0]])  # centre (10, 10)
    boxes = torch.tensor([[[4.0, 2.0, 30.0, 14.0]]])  # l = 6, t = 8, r = 20, b = 4
    expected = math.sqrt(6 / 20 * 4 / 8)
    torch.testing.assert_close(centerness_of_priors(priors, boxes), torch.tensor([[expected]]))


def test_assign_targets_uses_atss(model):
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 50.0]]), "labels": torch.tensor([2])}]
    result = model.assign_targets((64, 64), targets)
    priors, counts = model.prior_generator([(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)])
    direct = ATSSAssigner(3)(priors, counts, pad_targets(targets))
    assert torch.equal(result.labels, direct.labels) and result.positive_mask.sum() > 0
    assert (result.labels[result.positive_mask] == 2).all()


def test_losses_hand_checked(model):
    """Exact deltas -> GIoU loss 0; centerness loss = BCE against the hand formula; no positives -> 0."""
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 50.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    result = model.assign_targets((64, 64), targets)
    priors, _ = model.prior_generator([(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)])
    gt = pad_targets(targets)
    positive = result.positive_mask
    deltas = model.box_coder.encode(gt.boxes[0, 0].expand(len(priors), 4), priors).expand(2, -1, -1)
    centerness_logits = torch.randn(2, len(priors))
    outputs = {"cls_logits": torch.randn(2, len(priors), 3), "bbox_regression": deltas.clone(),
               "centerness": centerness_logits}
    losses = model.compute_losses(outputs, priors, result, gt)
    assert losses["loss_box"].item() == pytest.approx(0.0, abs=1e-5)
    box = gt.boxes[0, 0]
    centres = (priors[:, :2] + priors[:, 2:]) / 2
    l, t = centres[:, 0] - box[0], centres[:, 1] - box[1]
    r, b = box[2] - centres[:, 0], box[3] - centres[:, 1]
    target = torch.sqrt(torch.minimum(l, r) / torch.maximum(l, r) * torch.minimum(t, b) / torch.maximum(t, b))
    pos0 = positive[0]
    expected = F.binary_cross_entropy_with_logits(centerness_logits[0][pos0], target[pos0], reduction="sum")
    # avg_factor = sum over images of max(pos_i, 1) (mmdetection ATSSHead): the background-only image adds 1
    torch.testing.assert_close(losses["loss_centerness"], expected / (pos0.sum() + 1))
    # shifted deltas give a positive box loss, weighted x2 (ATSS GIoU weight)
    shifted = deltas.clone()
    shifted[..., 0] += 2.0  # dx / std 0.1 -> centre moves 0.2 anchor widths
    assert model.compute_losses({**outputs, "bbox_regression": shifted}, priors, result, gt)["loss_box"] > 0.05
    # with the positive image removed there are no positives: box and centerness losses are exactly 0
    empty = model.assign_targets((64, 64), targets[1:])
    zero = model.compute_losses({k: v[1:] for k, v in outputs.items()}, priors, empty, pad_targets(targets[1:]))
    assert zero["loss_box"].item() == 0.0 and zero["loss_centerness"].item() == 0.0
    assert torch.isfinite(zero["loss_cls"])


def test_scores_and_centerness_factors(model):
    """The threshold / top-k see sigmoid(cls) alone; sigmoid(centerness) is the score factor (mmdetection)."""
    outputs = {"cls_logits": torch.tensor([[[0.0, 2.0]]]), "centerness": torch.tensor([[-1.0]])}
    torch.testing.assert_close(model.predict_scores(outputs)[0, 0], torch.sigmoid(torch.tensor([0.0, 2.0])))
    torch.testing.assert_close(model.score_factors(outputs)[0, 0], torch.sigmoid(torch.tensor(-1.0)))


def test_bad_targets_name_the_image(model):
    model.train()
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    good = {"boxes": torch.tensor([[1.0, 1.0, 20.0, 20.0]]), "labels": torch.tensor([0])}
    with pytest.raises(ValueError, match=r"targets\[1\]"):
        model(images, [good, {"boxes": torch.tensor([[5.0, 5.0, 5.0, 9.0]]), "labels": torch.tensor([0])}])
    with pytest.raises(ValueError, match=r"targets\[1\]"):
        model(images, [good, {"boxes": torch.tensor([[5.0, 5.0, 9.0, 9.0]]), "labels": torch.tensor([3])}])

