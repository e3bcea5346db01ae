"""Shared test fixtures.

Real data lives beside the repository in ``../shared/data`` (never inside it). Tests that need it skip with
a message where the folder is absent, as on a user's machine. ``UMOP_SHARED_DATA`` overrides the location.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
BCCD_CLASSES = ("RBC", "WBC", "Platelets")


def find_shared_data() -> Path | None:
    """Return ``../shared/data`` (or ``$UMOP_SHARED_DATA``) when it exists, else None."""
    candidate = Path(os.environ.get("UMOP_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
    return candidate if candidate.is_dir() else None


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    path = find_shared_data()
    if path is None:
        pytest.skip("../shared/data is absent (real datasets live beside the repo, not in it)")
    return path


def _load_bccd_sample(root: Path, stem: str, max_size: int | None) -> tuple[torch.Tensor, dict]:
    from PIL import Image
    from torchvision.transforms.v2 import functional as F

    tree = ET.parse(root / "Annotations" / f"{stem}.xml")
    boxes, labels = [], []
    for obj in tree.findall("object"):
        name = obj.findtext("name", "").strip()
        box = obj.find("bndbox")
        xyxy = [float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
        if name not in BCCD_CLASSES or xyxy[2] - xyxy[0] < 2 or xyxy[3] - xyxy[1] < 2:
            continue
        boxes.append(xyxy)
        labels.append(BCCD_CLASSES.index(name))
    image = F.to_dtype(F.pil_to_tensor(Image.open(root / "JPEGImages" / f"{stem}.jpg").convert("RGB")),
                       torch.float32, scale=True)
    box_tensor = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    if max_size is not None:
        height, width = image.shape[-2:]
        scale = max_size / max(height, width)
        if scale < 1:
            new_size = [round(height * scale), round(width * scale)]
            image = F.resize(image, new_size, antialias=True)
            box_tensor = box_tensor * torch.tensor(
                [new_size[1] / width, new_size[0] / height, new_size[1] / width, new_size[0] / height])
    return image, {"boxes": box_tensor, "labels": torch.tensor(labels, dtype=torch.int64)}


@pytest.fixture(scope="session")
def bccd_samples(shared_data_dir: Path) -> Callable[..., list[tuple[torch.Tensor, dict]]]:
    """Callable ``(n=2, split="train", max_size=None)`` -> first n BCCD images of the split with their boxes.

    Read straight from the VOC xml (independent of ``umop.data``); labels RBC=0, WBC=1, Platelets=2.
    """
    root = shared_data_dir / "bccd" / "BCCD"

    def load(n: int = 2, split: str = "train", max_size: int | None = None) -> list[tuple[torch.Tensor, dict]]:
        stems = (root / "ImageSets" / "Main" / f"{split}.txt").read_text().split()[:n]
        return [_load_bccd_sample(root, stem, max_size) for stem in stems]

    return load
