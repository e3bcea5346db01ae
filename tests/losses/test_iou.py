"""IoU-family losses: parity with torchvision (values and gradients), a hand-worked case, mmdet reductions."""
import math

import pytest
import torch
from torchvision.ops import complete_box_iou_loss, distance_box_iou_loss, generalized_box_iou_loss

from umop.losses.iou import aligned_box_iou, ciou_loss, diou_loss, giou_loss, iou_loss


def _random_boxes(n: int, generator: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=generator, dtype=dtype) * 50
    wh = torch.rand(n, 2, generator=generator, dtype=dtype) * 40 + 1
    return torch.cat([xy, xy + wh], dim=1)


@pytest.mark.parametrize("ours, theirs", [
    (giou_loss, generalized_box_iou_loss),
    (diou_loss, distance_box_iou_loss),
    (ciou_loss, complete_box_iou_loss),
])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_matches_torchvision_values_and_grads(ours, theirs, reduction):
    g = torch.Generator().manual_seed(0)
    pred = _random_boxes(64, g).requires_grad_()
    target = _random_boxes(64, g)
    pred_ref = pred.detach().clone().requires_grad_()
    loss = ours(pred, target, reduction=reduction)
    ref = theirs(pred_ref, target, reduction=reduction)
    torch.testing.assert_close(loss, ref)
    (loss.sum() if reduction == "none" else loss).backward()
    (ref.sum() if reduction == "none" else ref).backward()
    torch.testing.assert_close(pred.grad, pred_ref.grad)


def test_hand_worked_case():
    # pred [0,0,2,2] (area 4), target [1,1,3,3] (area 4): inter 1, union 7, IoU 1/7,
    # enclosing [0,0,3,3] area 9 -> GIoU = 1/7 - 2/9; centres (1,1),(2,2): rho^2 = 2, c^2 = 18.
    pred = torch.tensor([[0.0, 0.0, 2.0, 2.0]], dtype=torch.float64)
    target = torch.tensor([[1.0, 1.0, 3.0, 3.0]], dtype=torch.float64)
    iou = 1 / 7
    torch.testing.assert_close(aligned_box_iou(pred, target, eps=0.0), torch.tensor([iou], dtype=torch.float64))
    torch.testing.assert_close(iou_loss(pred, target, eps=0.0, reduction="none"),
                               torch.tensor([-math.log(iou)], dtype=torch.float64))
    torch.testing.assert_close(iou_loss(pred, target, eps=0.0, mode="linear"),
                               torch.tensor(1 - iou, dtype=torch.float64))
    torch.testing.assert_close(giou_loss(pred, target, eps=0.0), torch.tensor(1 - (iou - 2 / 9), dtype=torch.float64))
    torch.testing.assert_close(diou_loss(pred, target, eps=0.0), torch.tensor(1 - iou + 2 / 18, dtype=torch.float64))
    # same aspect ratio -> v = 0 -> CIoU == DIoU
    torch.testing.assert_close(ciou_loss(pred, target, eps=0.0), diou_loss(pred, target, eps=0.0))
    # identical boxes: every loss is 0
    for fn in (giou_loss, diou_loss, ciou_loss):
        assert fn(target, target).abs().item() < 1e-6
    assert iou_loss(target, target).abs().item() < 1e-6


def test_ciou_aspect_term_hand_worked():
    # pred [0,0,2,1] (w/h=2), target [0,0,2,2] (w/h=1): IoU = 2/4, same enclosing box as the target,
    # rho^2 = 0.25, c^2 = 8, v = 4/pi^2 (atan(1) - atan(2))^2, alpha = v / (0.5 + v)
    pred = torch.tensor([[0.0, 0.0, 2.0, 1.0]], dtype=torch.float64)
    target = torch.tensor([[0.0, 0.0, 2.0, 2.0]], dtype=torch.float64)
    v = 4 / math.pi ** 2 * (math.atan(1.0) - math.atan(2.0)) ** 2
    expected = 1 - 0.5 + 0.25 / 8 + v / (0.5 + v) * v
    torch.testing.assert_close(ciou_loss(pred, target, eps=0.0), torch.tensor(expected, dtype=torch.float64))


def test_weight_and_avg_factor_follow_mmdet():
    g = torch.Generator().manual_seed(1)
    pred, target = _random_boxes(10, g), _random_boxes(10, g)
    per_box = giou_loss(pred, target, reduction="none")
    weight = torch.rand(10, generator=g, dtype=torch.float64)
    torch.testing.assert_close(giou_loss(pred, target, weight=weight, reduction="sum"), (per_box * weight).sum())
    torch.testing.assert_close(giou_loss(pred, target, weight=weight, avg_factor=3.0),
                               (per_box * weight).sum() / (3.0 + torch.finfo(torch.float32).eps))
    # a (N, 4) weight is averaged over the coordinates, as mmdetection does
    weight4 = weight[:, None].expand(10, 4)
    torch.testing.assert_close(giou_loss(pred, target, weight=weight4, reduction="sum"), (per_box * weight).sum())
    # avg_factor 0 (no positives) with all-zero weights gives 0, not NaN
    zero = giou_loss(pred, target, weight=torch.zeros(10, dtype=torch.float64), avg_factor=0.0)
    assert zero.item() == 0.0
    # batched (B, A, 4) input reduces the same way
    torch.testing.assert_close(giou_loss(pred.view(2, 5, 4), target.view(2, 5, 4), reduction="none"),
                               per_box.view(2, 5))


def test_gradcheck():
    g = torch.Generator().manual_seed(2)
    pred = _random_boxes(6, g).requires_grad_()
    target = _random_boxes(6, g)
    for fn in (iou_loss, giou_loss, diou_loss):
        assert torch.autograd.gradcheck(lambda p: fn(p, target, reduction="sum"), (pred,))


def test_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        giou_loss(torch.zeros(3, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        giou_loss(torch.zeros(3, 5), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="reduction"):
        giou_loss(torch.zeros(3, 4), torch.zeros(3, 4), reduction="avg")
    with pytest.raises(ValueError, match="weight"):
        giou_loss(torch.zeros(3, 4), torch.zeros(3, 4), weight=torch.ones(5))
    with pytest.raises(ValueError, match="mode"):
        iou_loss(torch.zeros(3, 4), torch.zeros(3, 4), mode="cube")


def test_ciou_of_a_zero_size_predicted_box_is_finite():
    """A collapsed predicted box (FCOS at initialisation: relu distances of 0) gives a finite loss and gradient
    (h + eps in the aspect term, as mmdetection)."""
    pred = torch.tensor([[10.0, 10.0, 10.0, 10.0]], requires_grad=True)
    target = torch.tensor([[0.0, 0.0, 20.0, 40.0]])
    loss = ciou_loss(pred, target, reduction="sum")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all()
