"""The README's Python examples run as written (with small inputs standing for the user's)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_the_three_examples():
    blocks = _python_blocks()
    assert len(blocks) == 3
    assert "progressive_focal_loss" in blocks[0] and "build_detector" in blocks[1]
    assert "use_progressive_focal_loss" in blocks[2]


def test_the_loss_example_runs():
    torch.manual_seed(0)
    levels = [64, 16, 4, 1, 1]
    logits = torch.randn(2, sum(levels), 3, requires_grad=True)
    targets = torch.zeros(2, sum(levels), 3)
    targets[0, 5, 1] = targets[1, 70, 0] = 1.0
    namespace = {"logits": logits, "targets": targets, "num_priors_per_level": levels,
                 "prior_weight": torch.ones(2, sum(levels)), "num_positives": targets.sum()}
    exec(_python_blocks()[0], namespace)  # noqa: S102 - our own README
    loss, stats = namespace["loss"], namespace["stats"]
    assert loss.ndim == 0 and torch.isfinite(loss) and stats["gamma_ad"].shape == (5,)
    loss.backward()
    assert logits.grad is not None


def test_the_detector_example_runs():
    torch.manual_seed(0)
    images = [torch.rand(3, 96, 128), torch.rand(3, 80, 96)]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[5.0, 5.0, 40.0, 30.0], [50.0, 20.0, 90.0, 75.0]]),
                "labels": torch.tensor([0, 2])}]
    namespace = {"images": images, "targets": targets}
    exec(_python_blocks()[1], namespace)  # noqa: S102
    assert torch.isfinite(namespace["total"]) and namespace["losses"]["stats"]["gamma_ad"].numel() == 5
    assert {"boxes", "scores", "labels", "levels"} <= set(namespace["detections"][0])


def test_the_torchvision_example_runs():
    from torchvision.models.detection import retinanet_resnet50_fpn

    torch.manual_seed(0)
    tv_model = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3, min_size=96, max_size=128)
    exec(_python_blocks()[2], {"tv_model": tv_model})  # noqa: S102
    tv_model.train()
    losses = tv_model([torch.rand(3, 96, 128)], [{"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0]]),
                                                 "labels": torch.tensor([1])}])
    assert torch.isfinite(losses["classification"])
    assert tv_model.pfl_stats["gamma_ad"].shape == (5,)  # PFL computed the classification loss
