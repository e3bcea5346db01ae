"""Tests of umop.analysis.objective.loss_gradient_norms (survey Fig. 14) on a small fake detector."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from umop.analysis.objective import loss_gradient_norms


class _TinyBackbone(nn.Module):
    """Two 'FPN levels' from a conv: (B, 3, H, W) -> [(B, 2, H, W), (B, 2, H/2, W/2)]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.calls += 1
        p3 = self.conv(x)
        return [p3, nn.functional.avg_pool2d(p3, 2)]


class _TinyDetector(nn.Module):
    """loss_cls = 3 * sum(P3) + sum(P4^2); loss_box = sum(P4); known analytic gradients."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = _TinyBackbone()

    def forward(self, images, targets=None):
        features = self.backbone(torch.stack(images))
        p3, p4 = features
        return {"loss_cls": 3 * p3.sum() + p4.pow(2).sum(), "loss_box": p4.sum(),
                "loss_const": torch.zeros(()), "stats": {"num_positive": torch.ones(2)}}


def test_norms_match_analytic_gradients_and_leave_no_side_effects():
    torch.manual_seed(0)
    model = _TinyDetector().eval()
    images = [torch.rand(3, 4, 4), torch.rand(3, 4, 4)]
    with torch.no_grad():
        p3, p4 = model.backbone(torch.stack(images))
    model.backbone.calls.zero_()

    norms = loss_gradient_norms(model, images, [{}, {}])

    # d loss_cls / d P3 = 3 everywhere, d loss_cls / d P4 = 2 * P4; d loss_box / d P4 = 1.
    expected_cls = math.sqrt(9 * p3.numel() + float((2 * p4).pow(2).sum()))
    expected_box = math.sqrt(p4.numel())
    assert set(norms) == {"loss_cls", "loss_box", "loss_const"}
    assert norms["loss_cls"] == pytest.approx(expected_cls, rel=1e-5)
    assert norms["loss_box"] == pytest.approx(expected_box, rel=1e-6)
    assert norms["loss_const"] == 0.0
    assert all(p.grad is None for p in model.parameters()), "must not touch .grad"
    assert not model.training, "train/eval mode must be restored"
    assert float(model.backbone.calls) == 0.0, "buffers must be restored"


def test_wrapped_model_is_unwrapped_like_ddp():
    """A DDP-style wrapper (``.module``) is measured on the wrapped detector, with the same numbers."""

    class Wrapper(nn.Module):
        def __init__(self, module: nn.Module) -> None:
            super().__init__()
            self.module = module

        def forward(self, *args):
            raise AssertionError("the wrapper's forward must not be used")

    torch.manual_seed(0)
    model = _TinyDetector()
    images = [torch.rand(3, 4, 4)]
    assert loss_gradient_norms(Wrapper(model), images, [{}]) == loss_gradient_norms(model, images, [{}])


def test_model_without_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="backbone"):
        loss_gradient_norms(nn.Linear(2, 2), [torch.rand(3, 4, 4)], [{}])


def test_real_detector_gradient_norms():
    """On a real umop detector (ATSS with PFL, as the engine trains it): one norm per loss term, finite, classification > 0, no .grad written,
    mode restored, and a second call gives the same numbers (no hidden state changed by the first)."""
    from umop.models import build_detector

    torch.manual_seed(0)
    model = build_detector("atss", num_classes=3, backbone="resnet18", cls_loss="pfl").eval()
    images = [torch.rand(3, 96, 128), torch.rand(3, 96, 128)]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    first = loss_gradient_norms(model, images, targets)
    second = loss_gradient_norms(model, images, targets)
    assert not model.training
    model.train()
    loss_keys = {key for key in model(images, targets) if key.startswith("loss_")}
    assert set(first) == loss_keys and {"loss_cls", "loss_box"} <= loss_keys
    assert all(math.isfinite(value) and value >= 0 for value in first.values())
    assert first["loss_cls"] > 0 and first["loss_box"] > 0
    assert first == pytest.approx(second, rel=1e-5)
    assert all(p.grad is None for p in model.parameters())
