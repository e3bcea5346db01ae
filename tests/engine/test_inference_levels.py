"""evaluate_model keeps the detector's "levels" (issue 9's output key) and returns the per-level table."""

import torch
from torch import nn

from umop.engine.inference import evaluate_model


class _LevelledDetector(nn.Module):
    """Returns each image's target box (found by P4) and one false positive (from P7), at half resolution."""

    def forward(self, images):
        return [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]),
                 "scores": torch.tensor([0.9, 0.4]), "labels": torch.tensor([0, 0]), "levels": torch.tensor([1, 4])}
                for _ in images]


def test_evaluate_model_reports_levels_and_collects_detections():
    images = [torch.zeros(3, 32, 32) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([0]), "image_id": i,
                "orig_size": (64, 64)} for i in range(2)]  # both are mapped back x2 to [0, 0, 20, 20]
    collected: dict = {}
    metrics = evaluate_model(_LevelledDetector(), [(images, targets)], torch.device("cpu"), 1, ["cell"],
                             collect=collected)
    assert metrics["levels"]["per_level"]["P4"] == {"num_tp": 2, "mean_iou": 1.0, "num_fp": 0}
    assert metrics["levels"]["per_level"]["P7"]["num_fp"] == 2
    assert metrics["per_class_lrp"]["cell"]["threshold"] == 0.9 and metrics["oLRP"] == 0.0
    assert [d["levels"].tolist() for d in collected["detections"]] == [[1, 4], [1, 4]]
