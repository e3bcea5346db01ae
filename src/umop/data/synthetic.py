"""Synthetic detection dataset (no download): coloured shapes on textured backgrounds, COCO json + PNGs.

Each class is one (shape, colour) pair, e.g. ``red_rectangle`` or ``blue_triangle``, so it is learnable.
Objects range from ``min_object_size`` pixels to ``max_object_size_fraction`` of the shorter image side
(log-uniform, so every FPN level gets objects); backgrounds are noise, gradients, stripes or checkers.
Class frequencies decay geometrically from class 0 to class K-1 with ratio ``class_imbalance`` (most /
least frequent), and the counts are allotted exactly, so the measured ratio matches up to rounding.
Everything is driven by one ``numpy`` generator seeded with ``seed``: same arguments, same bytes.

Layout written: ``OUT_DIR/annotations.json`` and ``OUT_DIR/images/NNNNNN.png``; ``file_name`` in the json
is ``images/NNNNNN.png``, so the image folder is the json's folder (``CocoDetection(json)`` needs no
``image_dir``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from umop.data.convert import save_coco_json

__all__ = ["SHAPES", "COLOURS", "class_frequencies", "make_synthetic_dataset", "make_tiny_synthetic_dataset", "synthetic_class_names"]

SHAPES = ("rectangle", "ellipse", "triangle", "diamond", "cross", "hexagon")
COLOURS = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 80, 240),
    "yellow": (240, 220, 40),
    "magenta": (220, 50, 220),
    "cyan": (40, 220, 230),
    "orange": (250, 140, 20),
    "white": (245, 245, 245),
}
ANNOTATION_FILE = "annotations.json"


def _class_style(label: int) -> tuple[str, str]:
    """(shape, colour) of class ``label``: unique for every label below ``len(SHAPES) * len(COLOURS)``."""
    shape_index, round_index = label % len(SHAPES), label // len(SHAPES)
    colour = list(COLOURS)[(shape_index + round_index) % len(COLOURS)]
    return SHAPES[shape_index], colour


def synthetic_class_names(num_classes: int) -> list[str]:
    """Names ``colour_shape`` of the synthetic classes, index = label."""
    return [f"{colour}_{shape}" for shape, colour in map(_class_style, range(num_classes))]


def class_frequencies(num_classes: int, class_imbalance: float) -> np.ndarray:
    """Geometric class frequencies ``p_k ∝ r^(-k / (K-1))`` summing to 1 (``r = class_imbalance``)."""
    if num_classes == 1:
        return np.ones(1)
    weights = float(class_imbalance) ** (-np.arange(num_classes) / (num_classes - 1))
    return weights / weights.sum()


def _allot(total: int, frequencies: np.ndarray) -> np.ndarray:
    """Integer counts summing to ``total`` (largest remainder), at least 1 per class when possible."""
    raw = frequencies * total
    counts = np.floor(raw).astype(int)
    for index in np.argsort(-(raw - counts))[: total - counts.sum()]:
        counts[index] += 1
    for index in np.flatnonzero(counts == 0):
        donor = int(np.argmax(counts))
        if counts[donor] > 1:
            counts[donor] -= 1
            counts[index] += 1
    return counts


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A textured, rather dark background ``(H, W, 3) uint8``: noise, gradient, stripes or checker."""
    base = rng.uniform(30, 130, size=3).astype(np.float32)
    kind = rng.integers(4)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == 0:  # gradient
        angle = rng.uniform(0, 2 * math.pi)
        ramp = (np.cos(angle) * xx / width + np.sin(angle) * yy / height)[..., None]
        image = base + ramp * rng.uniform(-60, 60, size=3)
    elif kind == 1:  # stripes
        period = rng.uniform(6, 40)
        angle = rng.uniform(0, math.pi)
        phase = (np.cos(angle) * xx + np.sin(angle) * yy) / period
        image = base + (np.sin(2 * math.pi * phase)[..., None] * rng.uniform(10, 35, size=3))
    elif kind == 2:  # checker
        cell = int(rng.integers(8, 48))
        checker = (((yy // cell) + (xx // cell)) % 2)[..., None]
        image = base + checker * rng.uniform(-30, 30, size=3)
    else:  # blotchy low-frequency noise
        coarse = rng.normal(0, 25, size=(max(2, height // 32), max(2, width // 32), 3)).astype(np.float32)
        up = np.asarray(
            Image.fromarray(np.clip(coarse + 128, 0, 255).astype(np.uint8)).resize((width, height), Image.BILINEAR),
            dtype=np.float32,
        )
        image = base + (up - 128)
    image = image + rng.standard_normal(size=(height, width, 3), dtype=np.float32) * 8  # fine grain everywhere
    return np.clip(image, 0, 255).astype(np.uint8)


def _polygon(shape: str, x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]]:
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    if shape == "triangle":
        return [(cx, y0), (x1, y1), (x0, y1)]
    if shape == "diamond":
        return [(cx, y0), (x1, cy), (cx, y1), (x0, cy)]
    if shape == "hexagon":
        return [(x0 + w / 4, y0), (x1 - w / 4, y0), (x1, cy), (x1 - w / 4, y1), (x0 + w / 4, y1), (x0, cy)]
    if shape == "cross":
        a, b = w / 3, h / 3
        return [
            (x0 + a, y0), (x1 - a, y0), (x1 - a, y0 + b), (x1, y0 + b), (x1, y1 - b), (x1 - a, y1 - b),
            (x1 - a, y1), (x0 + a, y1), (x0 + a, y1 - b), (x0, y1 - b), (x0, y0 + b), (x0 + a, y0 + b),
        ]  # fmt: skip
    raise ValueError(f"unknown polygon shape {shape!r}")


def _draw(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], colour: tuple[int, int, int]) -> None:
    """Draw ``shape`` filling the pixel box ``[x0, x1) x [y0, y1)`` (its tight box is ``box``)."""
    x0, y0, x1, y1 = box
    inclusive = (x0, y0, x1 - 1, y1 - 1)  # PIL coordinates are inclusive pixel indices
    if shape == "rectangle":
        draw.rectangle(inclusive, fill=colour)
    elif shape == "ellipse":
        draw.ellipse(inclusive, fill=colour)
    else:
        draw.polygon(_polygon(shape, *map(float, inclusive)), fill=colour)


def _intersection(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    return max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))


def make_synthetic_dataset(
    out_dir: str | Path,
    num_images: int = 200,
    image_size: int | tuple[int, int] = 256,
    num_classes: int = 6,
    class_imbalance: float = 1.0,
    min_object_size: int = 4,
    max_object_size_fraction: float = 0.8,
    objects_per_image: tuple[int, int] = (1, 8),
    seed: int = 0,
) -> Path:
    """Write a synthetic COCO detection dataset and return the path of its json.

    Args:
        out_dir: output folder (created); ``annotations.json`` and ``images/`` are written in it.
        num_images: number of images.
        image_size: ``(H, W)`` or one int for square images.
        num_classes: number of classes (at most ``len(SHAPES) * len(COLOURS)`` = 48).
        class_imbalance: ratio of the most to the least frequent class (>= 1; geometric decay in between).
        min_object_size: smallest object side in pixels.
        max_object_size_fraction: largest object side as a fraction of the shorter image side.
        objects_per_image: inclusive range of the number of objects in one image.
        seed: seed of the generator (same arguments and seed -> identical files).
    """
    height, width = (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))
    max_classes = len(SHAPES) * len(COLOURS)
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if not 1 <= num_classes <= max_classes:
        raise ValueError(f"num_classes must be in 1..{max_classes}, got {num_classes}")
    if class_imbalance < 1:
        raise ValueError(f"class_imbalance is the ratio most/least frequent and must be >= 1, got {class_imbalance}")
    if height < 16 or width < 16:
        raise ValueError(f"image_size must be at least 16x16, got {height}x{width}")
    largest = int(max_object_size_fraction * min(height, width))
    if not 0 < max_object_size_fraction <= 1 or not 2 <= min_object_size <= largest:
        raise ValueError(
            f"need 2 <= min_object_size <= max_object_size_fraction * min(H, W): got {min_object_size}, "
            f"{max_object_size_fraction} * {min(height, width)}"
        )
    low, high = objects_per_image
    if not 1 <= low <= high:
        raise ValueError(f"objects_per_image must be (low, high) with 1 <= low <= high, got {objects_per_image}")

    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    counts_per_image = rng.integers(low, high + 1, size=num_images)
    class_counts = _allot(int(counts_per_image.sum()), class_frequencies(num_classes, class_imbalance))
    labels = rng.permutation(np.repeat(np.arange(num_classes), class_counts))
    styles = [_class_style(label) for label in range(num_classes)]

    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    cursor = 0
    for image_index in range(num_images):
        image_labels = labels[cursor : cursor + counts_per_image[image_index]]
        cursor += counts_per_image[image_index]
        sides = np.exp(rng.uniform(math.log(min_object_size), math.log(largest), size=len(image_labels)))
        order = np.argsort(-sides)  # large objects first; smaller ones may sit on top of them
        canvas = Image.fromarray(_background(rng, height, width))
        draw = ImageDraw.Draw(canvas)
        placed: list[tuple[int, int, int, int]] = []
        file_name = f"images/{image_index:06d}.png"
        image_id = image_index + 1
        for position in order:
            label = int(image_labels[position])
            aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
            box_w = int(np.clip(round(sides[position] * math.sqrt(aspect)), min_object_size, width))
            box_h = int(np.clip(round(sides[position] / math.sqrt(aspect)), min_object_size, height))
            for _attempt in range(20):  # keep every earlier object at least 75% visible
                x0 = int(rng.integers(0, width - box_w + 1))
                y0 = int(rng.integers(0, height - box_h + 1))
                box = (x0, y0, x0 + box_w, y0 + box_h)
                if all(_intersection(box, other) < 0.25 * (other[2] - other[0]) * (other[3] - other[1]) for other in placed):
                    break
            shape, colour_name = styles[label]
            jitter = rng.integers(-20, 21, size=3)
            colour = tuple(int(v) for v in np.clip(np.array(COLOURS[colour_name]) + jitter, 0, 255))
            _draw(draw, shape, box, colour)
            placed.append(box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": label + 1,
                    "bbox": [float(box[0]), float(box[1]), float(box_w), float(box_h)],
                    "area": float(box_w * box_h),
                    "iscrowd": 0,
                }
            )
        canvas.save(out_dir / file_name, compress_level=1)
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})

    coco = {
        "info": {
            "description": "umop synthetic shapes",
            "generator": {
                "num_images": num_images,
                "image_size": [height, width],
                "num_classes": num_classes,
                "class_imbalance": class_imbalance,
                "min_object_size": min_object_size,
                "max_object_size_fraction": max_object_size_fraction,
                "objects_per_image": [low, high],
                "seed": seed,
            },
        },
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": label + 1, "name": name, "supercategory": "shape"} for label, name in enumerate(synthetic_class_names(num_classes))
        ],
    }
    return save_coco_json(coco, out_dir / ANNOTATION_FILE)


def make_tiny_synthetic_dataset(out_dir: str | Path, num_images: int = 8, image_size: int = 64, num_classes: int = 3, seed: int = 0) -> Path:
    """A tiny set for tests (8 images of 64x64, 3 classes, 1-4 objects each): ``make_tiny_synthetic_dataset(tmp_path)``."""
    return make_synthetic_dataset(
        out_dir,
        num_images=num_images,
        image_size=image_size,
        num_classes=num_classes,
        min_object_size=4,
        max_object_size_fraction=0.8,
        objects_per_image=(1, 4),
        seed=seed,
    )
