"""Image reading helpers: RGB uint8 decoding and header-only size queries."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")


def read_image_rgb(path: str | Path) -> torch.Tensor:
    """Decode an image file to a ``uint8`` tensor ``[3, H, W]`` (RGB; EXIF orientation ignored, like COCO).

    Decoded with Pillow (torchvision's own decoders are deprecated since 0.29).

    Raises:
        OSError: the file is missing or cannot be decoded (message names the file).
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            array = np.array(image.convert("RGB"), dtype=np.uint8)
    except Exception as error:  # noqa: BLE001 - any decoder failure means "unreadable"
        raise OSError(f"cannot decode image {path}: {error}") from error
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def image_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` of an image read from its header only (fast, no decoding).

    Raises:
        OSError: the file is missing or is not an image.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            width, height = image.size
    except Exception as error:  # noqa: BLE001
        raise OSError(f"cannot read image header {path}: {error}") from error
    return height, width


def find_image(image_dir: Path, name: str) -> Path | None:
    """The image called ``name`` in ``image_dir``; if absent, the same stem with any known extension."""
    candidate = image_dir / name
    if candidate.is_file():
        return candidate
    stem = Path(name).stem if Path(name).suffix.lower() in IMAGE_EXTENSIONS else Path(name).name
    for extension in IMAGE_EXTENSIONS + tuple(ext.upper() for ext in IMAGE_EXTENSIONS):
        candidate = image_dir / (stem + extension)
        if candidate.is_file():
            return candidate
    return None
