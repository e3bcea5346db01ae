"""sigmoid_focal_loss: parity with torchvision (values and gradients), tensor alpha/gamma, weights."""
import pytest
import torch
import torchvision

from umop.losses import sigmoid_focal_loss
from umop.losses.focal import focal_loss_reference


def _inputs(shape=(2, 50, 7), positive_rate=0.1, seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    logits = (torch.randn(shape, generator=generator, dtype=dtype) * 3).requires_grad_(True)
    targets = (torch.rand(shape, generator=generator) < positive_rate).to(dtype)
    return logits, targets


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 2.0), (0.4, 1.3), (0.9, 0.0), (0.25, 3.5)])
def test_matches_torchvision_values_and_gradients(reduction, alpha, gamma):
    logits, targets = _inputs()
    ours = sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction=reduction)
    reference = torchvision.ops.sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction=reduction)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
    upstream = torch.randn_like(ours)
    (grad_ours,) = torch.autograd.grad((ours * upstream).sum(), logits)
    (grad_reference,) = torch.autograd.grad((reference * upstream).sum(), logits)
    torch.testing.assert_close(grad_ours, grad_reference, rtol=1e-5, atol=1e-6)


def test_soft_targets_take_the_general_path_and_match_torchvision():
    logits, _ = _inputs()
    soft = torch.rand(logits.shape, generator=torch.Generator().manual_seed(3))
    ours = sigmoid_focal_loss(logits, soft, reduction="sum", gamma=1.5)
    reference = torchvision.ops.sigmoid_focal_loss(logits, soft, reduction="sum", gamma=1.5)
    torch.testing.assert_close(ours, reference)
    torch.testing.assert_close(torch.autograd.grad(ours, logits)[0], torch.autograd.grad(reference, logits)[0])


def test_bool_targets_and_no_grad_path():
    logits, targets = _inputs()
    with torch.no_grad():
        ours = sigmoid_focal_loss(logits, targets.bool(), reduction="none")
    torch.testing.assert_close(ours, torchvision.ops.sigmoid_focal_loss(logits.detach(), targets))


def test_tensor_alpha_gamma_broadcast_equal_elementwise_scalars():
    logits, targets = _inputs(shape=(2, 6, 3))
    gamma = torch.tensor([1.5, 2.0, 2.5]).view(1, 3, 1).repeat_interleave(2, dim=1)  # (1, 6, 1)
    alpha = 0.5 / gamma
    ours = sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction="none")
    for anchor in range(6):
        expected = torchvision.ops.sigmoid_focal_loss(logits[:, anchor], targets[:, anchor],
                                                      alpha=float(alpha[0, anchor, 0]),
                                                      gamma=float(gamma[0, anchor, 0]))
        torch.testing.assert_close(ours[:, anchor], expected)


def test_weight_per_anchor_and_elementwise():
    logits, targets = _inputs(shape=(2, 10, 4))
    weight = (torch.arange(20).view(2, 10) % 3 != 0).float()
    ours = sigmoid_focal_loss(logits, targets, reduction="sum", weight=weight)
    expected = (torchvision.ops.sigmoid_focal_loss(logits, targets) * weight[..., None]).sum()
    torch.testing.assert_close(ours, expected)
    ours_mean = sigmoid_focal_loss(logits, targets, reduction="mean", weight=weight[..., None].expand(2, 10, 4))
    torch.testing.assert_close(ours_mean, expected / logits.numel())
    torch.testing.assert_close(torch.autograd.grad(ours, logits)[0], torch.autograd.grad(expected, logits)[0])


def test_gradients_flow_to_tensor_alpha_when_requested():
    logits, targets = _inputs(shape=(1, 5, 2))
    alpha = torch.tensor(0.3, requires_grad=True)
    loss = sigmoid_focal_loss(logits, targets, alpha=alpha, reduction="sum")
    (grad_alpha,) = torch.autograd.grad(loss, alpha)
    reference = focal_loss_reference(logits, targets, alpha, 2.0).sum()
    torch.testing.assert_close(grad_alpha, torch.autograd.grad(reference, alpha)[0])


def test_gradcheck_float64():
    logits, targets = _inputs(shape=(2, 4, 3), dtype=torch.float64, positive_rate=0.3)
    gamma = torch.tensor([1.5, 2.5, 2.0, 1.7], dtype=torch.float64).view(1, 4, 1)
    assert torch.autograd.gradcheck(
        lambda x: sigmoid_focal_loss(x, targets, alpha=0.5 / gamma, gamma=gamma, reduction="sum"), (logits,))
    assert torch.autograd.gradcheck(lambda x: sigmoid_focal_loss(x, targets, reduction="none"), (logits,))


def test_hand_worked_value():
    # x = 0: p = 0.5, p_t = 0.5, ce = log 2; positive: 0.25 * log2 * 0.25; negative: 0.75 * log2 * 0.25
    loss = sigmoid_focal_loss(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]), reduction="none")
    torch.testing.assert_close(loss, torch.tensor([[0.0625, 0.1875]]) * torch.log(torch.tensor(2.0)))
    # default reduction "mean" (mmdetection's convention); avg_factor divides the sum instead
    mean = sigmoid_focal_loss(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]))
    torch.testing.assert_close(mean, torch.tensor(0.125) * torch.log(torch.tensor(2.0)))
    with_factor = sigmoid_focal_loss(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]), avg_factor=4.0)
    torch.testing.assert_close(with_factor, torch.tensor(0.0625) * torch.log(torch.tensor(2.0)))


def test_bad_input_errors_name_the_argument():
    logits, targets = _inputs(shape=(2, 5, 3))
    with pytest.raises(ValueError, match="target"):
        sigmoid_focal_loss(logits, targets[:, :4])
    with pytest.raises(ValueError, match="avg_factor"):
        sigmoid_focal_loss(logits, targets, reduction="sum", avg_factor=2.0)
    with pytest.raises(ValueError, match="reduction"):
        sigmoid_focal_loss(logits, targets, reduction="avg")
    with pytest.raises(ValueError, match="weight"):
        sigmoid_focal_loss(logits, targets, weight=torch.ones(3, 5))
