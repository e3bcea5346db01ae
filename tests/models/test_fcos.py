"""FCOS detector: head (norm_on_bbox, centerness on the regression tower), hand-checked losses, variants.

Training steps for every cls_loss and the BCCD overfit test are in test_detector_matrix.py."""
import pytest
import torch

from umop.assigners import pad_targets
from umop.models import build_detector
from umop.models.fcos import FCOS, FCOSHead

SIZES = [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_detector("fcos", 3, backbone="resnet18", fpn_channels=32)


def test_head_distances_are_stride_scaled_relu(model):
    assert isinstance(model, FCOS) and isinstance(model.head, FCOSHead)
    head = model.head
    features = [torch.randn(1, 32, h, w) for h, w in SIZES]
    out = head(features)
    assert out["cls_logits"].shape == (1, 86, 3) and out["bbox_regression"].shape == (1, 86, 4)
    assert (out["bbox_regression"] >= 0).all()
    # recompute level 1 by hand: relu(scale * conv_reg(reg_convs(x))) * 16
    raw = head.scales[1](head.conv_reg(head.reg_convs(features[1])))
    expected = torch.relu(raw).flatten(2).transpose(1, 2) * 16
    torch.testing.assert_close(out["bbox_regression"][:, 64:80], expected)
    # points at cell centres: (0.5 * stride, 0.5 * stride) first
    priors, _ = model.prior_generator(SIZES)
    torch.testing.assert_close(priors[0], torch.tensor([4.0, 4.0, 4.0, 4.0]))
    torch.testing.assert_close(priors[64], torch.tensor([8.0, 8.0, 8.0, 8.0]))


def test_centerness_branch_on_regression_tower(model):
    features = [torch.randn(1, 32, h, w) for h, w in SIZES]
    model.zero_grad()
    model.head(features)["centerness"].sum().backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.head.cls_convs.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.head.reg_convs.parameters())
    model.zero_grad()
    plain = FCOSHead(32, 3, centerness_on_reg=False, norm_on_bbox=False)
    plain(features)["centerness"].sum().backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in plain.reg_convs.parameters())
    # exp() distances in pixels without norm_on_bbox
    assert (plain(features)["bbox_regression"] > 0).all()


def test_losses_hand_checked(model):
    targets = [{"boxes": torch.tensor([[6.0, 10.0, 50.0, 40.0]]), "labels": torch.tensor([2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    result = model.assign_targets((64, 64), targets)
    assert set(result.extras) >= {"centerness", "bbox_targets"}
    priors, _ = model.prior_generator(SIZES)
    gt = pad_targets(targets)
    positive = result.positive_mask
    assert positive[0].any() and not positive[1].any()
    x, y = priors[:, 0], priors[:, 1]
    box = gt.boxes[0, 0]
    exact = torch.stack([x - box[0], y - box[1], box[2] - x, box[3] - y], dim=1).clamp(min=0)
    outputs = {"cls_logits": torch.randn(2, 86, 3), "bbox_regression": exact.expand(2, -1, -1).clone(),
               "centerness": torch.zeros(2, 86)}
    losses = model.compute_losses(outputs, priors, result, gt)
    assert losses["loss_box"].item() == pytest.approx(0.0, abs=1e-5)
    # centerness logits 0 -> BCE per positive = log 2 regardless of the target
    assert losses["loss_centerness"].item() == pytest.approx(torch.log(torch.tensor(2.0)).item(), rel=1e-5)
    # half-size predictions: GIoU loss = 1 - IoU for nested boxes, weighted by centerness
    half = {**outputs, "bbox_regression": outputs["bbox_regression"] * 0.5}
    loss_half = model.compute_losses(half, priors, result, gt)["loss_box"]
    assert loss_half.item() == pytest.approx(0.75, abs=1e-4)  # IoU of a half-scaled box = 1/4


def test_plain_fcos_variant_trains():
    torch.manual_seed(0)
    plain = build_detector("fcos", 2, backbone="resnet18", fpn_channels=32, center_sampling=False,
                           centerness_on_reg=False, norm_on_bbox=False)
    assert plain.assigner.center_sampling is False
    plain.train()
    losses = plain([torch.rand(3, 96, 96)], [{"boxes": torch.tensor([[10.0, 10.0, 70.0, 80.0]]),
                                              "labels": torch.tensor([1])}])
    total = sum(v for k, v in losses.items() if k.startswith("loss_"))
    assert torch.isfinite(total) and losses["stats"]["num_positive"].sum() > 0
    total.backward()
