"""VFNet: star-shaped deformable offsets (mmdetection layout and sampled positions), reg_denoms, losses."""
import pytest
import torch
from torchvision.ops import deform_conv2d

from umop.assigners import pad_targets
from umop.losses import VarifocalLoss
from umop.losses.varifocal import varifocal_loss
from umop.models import build_detector
from umop.models.vfnet import VFNet, star_dcn_offset, vfnet_reg_denoms


def mmdet_star_offset(bbox_pred: torch.Tensor, stride: float) -> torch.Tensor:
    """mmdetection VFNetHead.star_dcn_offset (gradient_mul irrelevant for values), channel by channel."""
    base = torch.tensor([-1, -1, -1, 0, -1, 1, 0, -1, 0, 0, 0, 1, 1, -1, 1, 0, 1, 1], dtype=bbox_pred.dtype)
    x1, y1, x2, y2 = (bbox_pred / stride).unbind(1)
    out = bbox_pred.new_zeros(bbox_pred.shape[0], 18, *bbox_pred.shape[2:])
    out[:, 0], out[:, 1], out[:, 2], out[:, 4], out[:, 5] = -y1, -x1, -y1, -y1, x2
    out[:, 7], out[:, 11], out[:, 12], out[:, 13], out[:, 14] = -x1, x2, y2, -x1, y2
    out[:, 16], out[:, 17] = y2, x2
    return out - base.view(1, 18, 1, 1)


def test_star_offset_matches_mmdet_layout():
    g = torch.Generator().manual_seed(0)
    bbox = torch.rand(2, 4, 3, 5, generator=g) * 40
    torch.testing.assert_close(star_dcn_offset(bbox, 8.0), mmdet_star_offset(bbox, 8.0))


def test_star_offset_samples_the_nine_star_points():
    # Feature = x-coordinate (channel 0) and y-coordinate (channel 1) of each cell. With a box (l, t, r, b)
    # = (2, 1, 3, 2) cells, the kernel point k of a one-hot 3x3 filter must read the star point k:
    # rows y - t, y, y + b and columns x - l, x, x + r.
    height, width = 12, 12
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                            indexing="ij")
    feature = torch.stack([xs, ys])[None]  # (1, 2, H, W)
    stride = 4.0
    box = torch.tensor([2.0, 1.0, 3.0, 2.0], dtype=torch.float64) * stride
    bbox_pred = box.view(1, 4, 1, 1).expand(1, 4, height, width).contiguous()
    offset = star_dcn_offset(bbox_pred, stride)
    y0, x0 = 5, 4
    for row, dy in enumerate((-1.0, 0.0, 2.0)):
        for col, dx in enumerate((-2.0, 0.0, 3.0)):
            weight = torch.zeros(2, 2, 3, 3, dtype=torch.float64)
            weight[0, 0, row, col] = 1.0  # output 0 reads x
            weight[1, 1, row, col] = 1.0  # output 1 reads y
            out = deform_conv2d(feature, offset, weight, padding=1)
            assert out[0, 0, y0, x0].item() == pytest.approx(x0 + dx)
            assert out[0, 1, y0, x0].item() == pytest.approx(y0 + dy)


def test_star_offset_gradient_is_scaled():
    bbox = torch.full((1, 4, 2, 2), 16.0, requires_grad=True)
    star_dcn_offset(bbox, 8.0, gradient_mul=0.1).sum().backward()
    # channel l appears in 3 offsets with sign -1, r in 3 with +1: d/dl = -3 * 0.1 / 8
    torch.testing.assert_close(bbox.grad[0, 0], torch.full((2, 2), -3 * 0.1 / 8))
    torch.testing.assert_close(bbox.grad[0, 2], torch.full((2, 2), 3 * 0.1 / 8))


def test_reg_denoms():
    """mmdetection VFNetHead: the upper end of each regress range, the last one twice the previous."""
    assert vfnet_reg_denoms() == [64.0, 128.0, 256.0, 512.0, 1024.0]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_detector("vfnet", 3, backbone="resnet18", fpn_channels=32, cls_loss="varifocal")


def test_default_cls_loss_and_validation(model):
    assert isinstance(model, VFNet) and isinstance(model.cls_loss, VarifocalLoss)
    assert isinstance(VFNet(model.backbone, 3).cls_loss, VarifocalLoss)  # the class's own default
    with pytest.raises(ValueError, match="cls_loss: unknown classification loss 'ghm'.*'ghm_c'"):
        build_detector("vfnet", 3, backbone="resnet18", fpn_channels=32, cls_loss="ghm")
    # the varifocal loss is a component like any other: ATSS takes it too (quality = IoU of its decoded box)
    atss = build_detector("atss", 3, backbone="resnet18", fpn_channels=32, cls_loss="varifocal")
    assert isinstance(atss.cls_loss, VarifocalLoss)


def test_head_outputs_and_refinement(model):
    features = [torch.randn(2, 32, s, s) for s in (8, 4, 2, 1, 1)]
    out = model.head(features)
    num = sum(s * s for s in (8, 4, 2, 1, 1))
    assert out["cls_logits"].shape == (2, num, 3)
    assert out["bbox_init"].shape == out["bbox_regression"].shape == (2, num, 4)
    assert (out["bbox_init"] > 0).all() and (out["bbox_regression"] > 0).all()
    # at initialisation the refinement factor exp(~0) ~ 1 and the initial box ~ reg_denom of the level
    ratio = out["bbox_regression"] / out["bbox_init"]
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=0.2)
    assert out["bbox_init"][:, :64].mean().item() == pytest.approx(64.0, rel=0.2)


def test_deform_conv_implementations_give_the_same_head_outputs_and_gradients(model):
    """The CPU default (bilinear sampling) and torchvision's deform_conv2d: same outputs and head gradients."""
    assert model.head.deform_conv_impl == "auto"
    generator = torch.Generator().manual_seed(3)
    features = [torch.randn(2, 32, s, s, generator=generator) for s in (8, 4, 2, 1, 1)]
    results = {}
    for impl in ("torchvision", "sampling"):
        model.head.deform_conv_impl = impl
        model.head.zero_grad()
        out = model.head(features)
        (out["cls_logits"].square().mean() + out["bbox_regression"].mean() + out["bbox_init"].mean()).backward()
        results[impl] = (out, {n: p.grad.clone() for n, p in model.head.named_parameters() if p.grad is not None})
    model.head.deform_conv_impl = "auto"
    model.head.zero_grad()
    for key in ("cls_logits", "bbox_init", "bbox_regression"):
        torch.testing.assert_close(results["sampling"][0][key], results["torchvision"][0][key], rtol=1e-4, atol=1e-4)
    assert results["sampling"][1].keys() == results["torchvision"][1].keys()
    for name, grad in results["torchvision"][1].items():
        torch.testing.assert_close(results["sampling"][1][name], grad, rtol=1e-3, atol=1e-5, msg=name)
    with pytest.raises(ValueError, match="deform_conv_impl"):
        build_detector("vfnet", 3, backbone="resnet18", fpn_channels=32, deform_conv_impl="cuda")


def test_losses_with_perfect_boxes(model):
    """Refined and initial boxes equal to the gt: both GIoU losses are 0 and the varifocal target is 1."""
    image_size = (64, 64)
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 44.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    result = model.assign_targets(image_size, targets)
    sizes = [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]
    priors, counts = model.prior_generator(sizes)
    gt = pad_targets(targets)
    positive = result.positive_mask
    assert positive[0].any() and not positive[1].any()
    centres = (priors[:, :2] + priors[:, 2:]) / 2
    box = gt.boxes[0, 0]
    exact = torch.cat([centres - box[:2], box[2:] - centres], dim=1)  # (A, 4), l t r b
    distances = torch.where(positive[..., None], exact.expand(2, -1, -1), torch.full((2, len(priors), 4), 10.0))
    logits = torch.randn(2, len(priors), 3)
    outputs = {"cls_logits": logits, "bbox_init": distances, "bbox_regression": distances}
    losses = model.compute_losses(outputs, priors, result, gt)
    assert losses["loss_box"].item() == pytest.approx(0.0, abs=1e-5)
    assert losses["loss_box_init"].item() == pytest.approx(0.0, abs=1e-5)
    target = torch.zeros_like(logits)
    target[..., 1] = positive.float()  # IoU 1 at the gt class
    expected = varifocal_loss(logits, target, reduction="sum") / positive.sum()
    torch.testing.assert_close(losses["loss_cls"], expected, rtol=1e-4, atol=1e-6)
    # a worse refined box lowers the target score and raises the refined GIoU loss
    worse = distances * torch.tensor([1.0, 1.0, 0.5, 0.5])
    losses2 = model.compute_losses({**outputs, "bbox_regression": worse}, priors, result, gt)
    assert losses2["loss_box"].item() > 0.1
    assert losses2["loss_box_init"].item() == pytest.approx(0.0, abs=1e-5)


def test_training_step_and_eval(model):
    torch.manual_seed(1)
    images = [torch.rand(3, 96, 128), torch.rand(3, 80, 100)]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0], [60.0, 30.0, 120.0, 90.0]]),
                "labels": torch.tensor([0, 2])},
               {"boxes": torch.tensor([[5.0, 5.0, 30.0, 40.0]]), "labels": torch.tensor([1])}]
    model.train()
    losses = model(images, targets)
    assert set(k for k in losses if k.startswith("loss_")) == {"loss_cls", "loss_box", "loss_box_init"}
    total = sum(v for k, v in losses.items() if k.startswith("loss_"))
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in model.head.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    # the deformable convs and the initial-box branch receive gradient
    assert model.head.cls_dconv.weight.grad.abs().sum() > 0
    assert model.head.reg_init.weight.grad.abs().sum() > 0
    model.zero_grad()
    model.eval()
    model.score_thresh = 0.0
    with torch.no_grad():
        detections = model(images)
    model.score_thresh = 0.05
    assert len(detections) == 2
    for det, image in zip(detections, images):
        assert det["boxes"].shape[1] == 4 and 0 < det["boxes"].shape[0] <= 100
        assert (det["boxes"][:, 2] <= image.shape[2]).all() and (det["boxes"][:, 3] <= image.shape[1]).all()
        assert det["labels"].dtype == torch.long and det["labels"].max() < 3
