"""A tiny detector and dataset that follow umop's detector / data contracts, for fast engine tests.

The toy detector predicts one box and class per image from pooled conv features; its loss is a mean over
the images of the batch, so one process with batch 2 and two DDP processes with batch 1 each compute the
same gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset


class ToyDetector(nn.Module):
    """``model(images, targets)`` -> losses + per-level stats; ``model(images)`` -> detections."""

    strides = [8, 16]

    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())
        self.cls_head = nn.Linear(8, num_classes)
        self.box_head = nn.Linear(8, 4)

    def _features(self, images: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([self.backbone(image[None]).mean(dim=(2, 3))[0] for image in images])

    def forward(self, images, targets=None):
        features = self._features(images)
        logits, boxes = self.cls_head(features), self.box_head(features).sigmoid()
        sizes = torch.tensor([[i.shape[-1], i.shape[-2], i.shape[-1], i.shape[-2]] for i in images],
                             dtype=torch.float32, device=features.device)
        if self.training:
            labels = torch.stack([t["labels"][0] for t in targets])
            gt = torch.stack([t["boxes"][0] for t in targets]) / sizes
            num_boxes = torch.tensor([float(len(t["labels"])) for t in targets])
            return {"loss_cls": F.cross_entropy(logits, labels), "loss_box": F.l1_loss(boxes, gt),
                    "stats": {"num_positive": torch.stack([num_boxes.sum(), num_boxes.sum() / 2]),
                              "num_anchors": torch.tensor([64.0, 16.0]) * len(images)}}
        scores, labels = logits.softmax(-1).max(-1)
        return [{"boxes": b[None] * s, "scores": sc[None], "labels": lb[None]}
                for b, s, sc, lb in zip(boxes, sizes, scores, labels)]


class ToyDataset(Dataset):
    """``num_images`` 32x32 images with one filled square each; label = colour; random horizontal flip."""

    class_names = ["red", "green"]
    label_to_category_id = [1, 2]

    def __init__(self, num_images: int = 8, seed: int = 0, flip: bool = True) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.items = []
        for index in range(num_images):
            x0, y0 = torch.randint(0, 16, (2,), generator=generator).tolist()
            size = int(torch.randint(6, 16, (1,), generator=generator))
            label = index % 2
            image = torch.rand(3, 32, 32, generator=generator) * 0.2
            image[label, y0:y0 + size, x0:x0 + size] = 1.0
            self.items.append((image, [x0, y0, x0 + size, y0 + size], label))
        self.flip = flip

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        image, box, label = self.items[index]
        box = torch.tensor([box], dtype=torch.float32)
        if self.flip and torch.rand(()) < 0.5:  # uses the global torch RNG, like torchvision transforms
            image = image.flip(-1)
            box = torch.stack([32 - box[:, 2], box[:, 1], 32 - box[:, 0], box[:, 3]], dim=1)
        return image.clone(), {"boxes": box, "labels": torch.tensor([label]), "image_id": index + 1,
                               "orig_size": (32, 32)}
