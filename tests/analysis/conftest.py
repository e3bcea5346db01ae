"""Fixtures of the analysis tests: a tiny COCO json writer and a small, hand-checkable fake assigner."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
from torchvision.ops import box_iou

STRIDES = (8, 16, 32, 64, 128)


@dataclass
class FakeAssignResult:
    labels: torch.Tensor
    matched_gt: torch.Tensor
    ious: torch.Tensor
    num_anchors_per_level: list[int]


class FakeMaxIoUAssigner:
    """One square anchor of side 4*stride per location (centres at (i + 0.5) * stride); positive where
    IoU >= 0.5 with the best box. Simple enough that the expected counts of a test can be worked out by hand."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.calls: list[tuple[int, int]] = []

    def anchors(self, image_size: tuple[int, int]) -> tuple[torch.Tensor, list[int]]:
        height, width = image_size
        boxes, counts = [], []
        for stride in STRIDES:
            ys, xs = torch.meshgrid(torch.arange(height // stride), torch.arange(width // stride), indexing="ij")
            cx, cy = (xs.flatten() + 0.5) * stride, (ys.flatten() + 0.5) * stride
            half = 2 * stride
            boxes.append(torch.stack([cx - half, cy - half, cx + half, cy + half], dim=1).float())
            counts.append(cx.numel())
        return torch.cat(boxes), counts

    def __call__(self, image_size: tuple[int, int], targets: list[dict]) -> FakeAssignResult:
        self.calls.append(tuple(image_size))
        anchors, counts = self.anchors(image_size)
        gt = targets[0]["boxes"]
        labels = torch.full((1, len(anchors)), self.num_classes, dtype=torch.long)
        matched = torch.full((1, len(anchors)), -1, dtype=torch.long)
        ious = torch.zeros(1, len(anchors))
        if len(gt):
            best, index = box_iou(anchors, gt).max(dim=1)
            positive = best >= 0.5
            labels[0, positive] = targets[0]["labels"][index[positive]]
            matched[0, positive] = index[positive]
            ious[0, positive] = best[positive]
        return FakeAssignResult(labels, matched, ious, counts)


@pytest.fixture
def fake_assigner_factory() -> Callable[[str, int], FakeMaxIoUAssigner]:
    return lambda detector, num_classes: FakeMaxIoUAssigner(num_classes)


@pytest.fixture
def write_coco(tmp_path: Path) -> Callable[..., tuple[Path, Path]]:
    """Callable ``(images=[(id, w, h, [(x, y, w, h, category_id), ...]), ...], categories=None)`` ->
    ``(ann_file, image_dir)``; image files are empty placeholders (the analyses never decode them)."""

    def write(images: list[tuple], categories: list[tuple[int, str]] | None = None,
              name: str = "coco.json") -> tuple[Path, Path]:
        image_dir = tmp_path / "images"
        image_dir.mkdir(exist_ok=True)
        categories = categories or [(1, "cat"), (2, "dog")]
        data = {"images": [], "annotations": [],
                "categories": [{"id": cid, "name": cname} for cid, cname in categories]}
        for image_id, width, height, boxes in images:
            file_name = f"{image_id}.jpg"
            (image_dir / file_name).write_bytes(b"")
            data["images"].append({"id": image_id, "file_name": file_name, "width": width, "height": height})
            for x, y, w, h, category_id in boxes:
                data["annotations"].append({"id": len(data["annotations"]) + 1, "image_id": image_id,
                                            "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0,
                                            "category_id": category_id})
        ann_file = tmp_path / name
        ann_file.write_text(json.dumps(data))
        return ann_file, image_dir

    return write
