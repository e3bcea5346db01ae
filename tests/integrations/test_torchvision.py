"""UMOP inside torchvision's own RetinaNet / FCOS (umop.integrations.torchvision)."""

from __future__ import annotations

import copy

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.fcos import FCOS
from torchvision.models.detection.retinanet import RetinaNet
from torchvision.models import resnet18
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from umop.integrations.torchvision import use_progressive_focal_loss


def _small_backbone(channels: int = 64):
    """ResNet-18 + FPN P3-P7 with few channels, to keep the test fast."""
    body = resnet18(weights=None)
    return BackboneWithFPN(body, {"layer2": "0", "layer3": "1", "layer4": "2"}, [128, 256, 512], channels,
                           extra_blocks=LastLevelP6P7(channels, channels))


def _tv_model(kind: str, num_classes: int = 3):
    torch.manual_seed(0)
    backbone = _small_backbone()
    cls = RetinaNet if kind == "retinanet" else FCOS
    kwargs = {}
    if kind == "fcos":
        kwargs["anchor_generator"] = AnchorGenerator(((8,), (16,), (32,), (64,), (128,)), ((1.0,),) * 5)
    return cls(backbone, num_classes, min_size=128, max_size=160, **kwargs)


def _batch():
    images = [torch.rand(3, 128, 160), torch.rand(3, 128, 160)]
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0], [80.0, 20.0, 150.0, 100.0]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.tensor([[30.0, 30.0, 90.0, 110.0]]), "labels": torch.tensor([1])},
    ]
    return images, targets


@pytest.mark.parametrize("kind", ["retinanet", "fcos"])
def test_pfl_changes_the_loss_and_reports_levels(kind):
    images, targets = _batch()
    original = _tv_model(kind)
    patched = use_progressive_focal_loss(copy.deepcopy(original), delta=0.5)
    original.train(), patched.train()
    torch.manual_seed(1)
    loss_fl = original(images, targets)
    loss_pfl = patched(images, targets)
    stats = patched.pfl_stats
    assert stats["gamma_ad"].shape == (5,)
    # At initialisation p ~ 0.01 so -log p ~ 4.6: every level with positives clamps to gamma + delta != 2.
    has_pos = stats["num_positive"] > 0
    assert has_pos.any()
    assert torch.allclose(stats["gamma_ad"][has_pos], torch.tensor(2.5))
    assert torch.allclose(stats["gamma_ad"][~has_pos], torch.tensor(2.0))
    assert torch.allclose(stats["alpha_ad"], 0.5 / stats["gamma_ad"])
    assert not torch.isclose(loss_pfl["classification"], loss_fl["classification"], rtol=1e-3)
    # The other losses are untouched.
    assert torch.allclose(loss_pfl["bbox_regression"], loss_fl["bbox_regression"])


@pytest.mark.parametrize("kind", ["retinanet", "fcos"])
def test_pfl_with_delta_zero_equals_torchvision_focal_loss(kind):
    """delta=0, w=0.5: gamma_ad = 2, alpha_ad = 0.25 -> exactly torchvision's focal loss (same normalisation)."""
    images, targets = _batch()
    original = _tv_model(kind)
    patched = use_progressive_focal_loss(copy.deepcopy(original), delta=0.0)
    original.train(), patched.train()
    expected = original(images, targets)["classification"]
    actual = patched(images, targets)["classification"]
    assert torch.allclose(actual, expected, rtol=1e-5, atol=1e-6)


def test_patched_retinanet_trains():
    images, targets = _batch()
    model = use_progressive_focal_loss(_tv_model("retinanet"))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    history = []
    for _ in range(4):
        losses = model(images, targets)
        total = losses["classification"] + losses["bbox_regression"]
        assert torch.isfinite(total)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append(float(total.detach()))
    assert history[-1] < history[0]


def test_rejects_other_models_and_options():
    with pytest.raises(ValueError, match="RetinaNet or FCOS"):
        use_progressive_focal_loss(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="unknown"):
        use_progressive_focal_loss(_tv_model("retinanet"), gamma_typo=1.0)


def test_freeze_batchnorm_keeps_the_eval_output_and_stops_training_the_statistics():
    from torchvision.ops.misc import FrozenBatchNorm2d

    from umop.integrations.torchvision import freeze_batchnorm

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                                torch.nn.Sequential(torch.nn.ReLU(), torch.nn.BatchNorm2d(4)))
    with torch.no_grad():
        for bn in (model[1], model[2][1]):
            bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.uniform_(0.5, 2)
    x = torch.randn(2, 3, 8, 8)
    expected = model.eval()(x)
    assert freeze_batchnorm(model) is model
    assert isinstance(model[1], FrozenBatchNorm2d) and isinstance(model[2][1], FrozenBatchNorm2d)
    torch.testing.assert_close(model.train()(x), expected)  # frozen: train mode uses the stored statistics
