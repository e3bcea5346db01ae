"""Detection transforms built on ``torchvision.transforms.v2`` (boxes move with the image).

``build_transforms(train=True)`` gives: shorter side resized to S (S fixed, sampled from a range, or
chosen from a list, for multi-scale training) with the longer side kept <= ``max_size``; horizontal flip;
conversion to float 0..1; boxes clamped to the image and degenerate ones removed with their labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import PIL.Image
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

__all__ = ["ResizeShorterSide", "build_transforms"]


def _spatial_size(flat_inputs: list[Any]) -> tuple[int, int]:
    for inpt in flat_inputs:
        if isinstance(inpt, (tv_tensors.Image, tv_tensors.Video, tv_tensors.Mask, PIL.Image.Image)):
            height, width = F.get_size(inpt)
            return height, width
    for inpt in flat_inputs:
        if isinstance(inpt, tv_tensors.BoundingBoxes):
            return tuple(inpt.canvas_size)  # type: ignore[return-value]
        if isinstance(inpt, torch.Tensor) and inpt.ndim >= 2:
            height, width = F.get_size(inpt)
            return height, width
    raise TypeError("ResizeShorterSide: no image in the sample")


class ResizeShorterSide(v2.Transform):
    """Resize so that the shorter side is S and the longer side is at most ``max_size``.

    Args:
        min_size: S. An int (fixed); a pair ``(lo, hi)`` sampled uniformly as an integer in ``[lo, hi]``
            (``mode="range"``, the default for a pair); or a list of choices (``mode="choice"``, the default
            for any other length).
        max_size: bound of the longer side (None: unbounded). When it binds, the longer side becomes
            exactly ``max_size`` and the shorter side is smaller than S.
        mode: ``"range"`` or ``"choice"`` (None: chosen from the length of ``min_size`` as above).

    The output size is ``round(side * scale)``, with one scale for both sides; boxes are scaled with it.
    """

    def __init__(
        self,
        min_size: int | Sequence[int],
        max_size: int | None = 1333,
        mode: str | None = None,
        interpolation: v2.InterpolationMode = v2.InterpolationMode.BILINEAR,
        antialias: bool = True,
    ) -> None:
        super().__init__()
        sizes = [int(min_size)] if isinstance(min_size, (int, float)) else [int(size) for size in min_size]
        if not sizes or any(size <= 0 for size in sizes):
            raise ValueError(f"min_size must be positive int(s), got {min_size!r}")
        if max_size is not None and max_size <= 0:
            raise ValueError(f"max_size must be positive or None, got {max_size!r}")
        if mode is None:
            mode = "range" if len(sizes) == 2 else "choice"
        if mode not in ("range", "choice"):
            raise ValueError(f"mode must be 'range' or 'choice', got {mode!r}")
        if mode == "range" and (len(sizes) != 2 or sizes[0] > sizes[1]):
            raise ValueError(f"mode='range' needs min_size=(lo, hi) with lo <= hi, got {min_size!r}")
        self.sizes, self.max_size, self.mode = sizes, max_size, mode
        self.interpolation, self.antialias = interpolation, antialias

    def sample_shorter_side(self) -> int:
        """Draw S with torch's global RNG (so that seeding torch makes it reproducible)."""
        if self.mode == "range":
            low, high = self.sizes
            return int(torch.randint(low, high + 1, ()).item())
        return self.sizes[int(torch.randint(len(self.sizes), ()).item())]

    def output_size(self, height: int, width: int, shorter_side: int) -> tuple[int, int]:
        """``(new_height, new_width)`` for an input of ``height x width`` and target shorter side S."""
        scale = shorter_side / min(height, width)
        if self.max_size is not None:
            scale = min(scale, self.max_size / max(height, width))
        return max(1, round(height * scale)), max(1, round(width * scale))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = _spatial_size(flat_inputs)
        return {"size": self.output_size(height, width, self.sample_shorter_side())}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(
            F.resize, inpt, size=list(params["size"]), interpolation=self.interpolation, antialias=self.antialias
        )


def build_transforms(
    train: bool,
    min_size: int | Sequence[int] = 800,
    max_size: int | None = 1333,
    flip_prob: float = 0.5,
    scale_mode: str | None = None,
) -> v2.Compose:
    """Standard detection pipeline for ``CocoDetection(..., transforms=...)``.

    Args:
        train: training pipeline (multi-scale + flip) or evaluation pipeline (one scale, no flip).
        min_size: shorter side S: an int, a range ``(lo, hi)`` or a list of choices (see
            :class:`ResizeShorterSide`). For evaluation a multi-scale value uses its largest S.
        max_size: bound of the longer side.
        flip_prob: probability of a horizontal flip (training only).
        scale_mode: ``"range"`` / ``"choice"`` / None (see :class:`ResizeShorterSide`).

    Input ``(image, target)`` with ``target["boxes"]`` a ``tv_tensors.BoundingBoxes``; output image float
    ``[3, H', W']`` in 0..1 and boxes/labels with degenerate boxes (< 1 px) removed.
    """
    if not 0.0 <= flip_prob <= 1.0:
        raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob!r}")
    if not train and not isinstance(min_size, (int, float)):
        min_size = max(int(size) for size in min_size)
    steps: list[v2.Transform] = [v2.ToImage(), ResizeShorterSide(min_size, max_size, mode=scale_mode if train else None)]
    if train and flip_prob > 0:
        steps.append(v2.RandomHorizontalFlip(flip_prob))
    steps += [
        v2.ToDtype(torch.float32, scale=True),
        v2.ClampBoundingBoxes(),
        v2.SanitizeBoundingBoxes(min_size=1.0),
    ]
    return v2.Compose(steps)
