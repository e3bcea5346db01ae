"""Prior generators: anchor boxes (RetinaNet, ATSS) and points (FCOS).

Both return the priors of all levels concatenated in level order P3..P7, location-major (row-major over
the feature map) and anchor-minor, i.e. the same order as the head outputs ``(B, A, ...)``:
``forward(feature_sizes, device, dtype) -> (priors (A, 4) xyxy, num_priors_per_level list[int])``.
A point is a box of size 0 (``[x, y, x, y]``) so detectors share one code path.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

__all__ = ["AnchorGenerator", "PointGenerator", "retinanet_anchor_generator", "atss_anchor_generator"]


class AnchorGenerator(nn.Module):
    """Anchors of ``sizes[l] x aspect_ratios[l]`` per location of level l (aspect ratio = h / w).

    Args:
        sizes: per level, the anchor sizes (sqrt of area) in pixels.
        aspect_ratios: per level, the aspect ratios h / w.
        strides: per level, the stride in pixels (nominal: 8, 16, 32, 64, 128).
        round_base: round the zero-centred base anchors to integers (torchvision does).
        offset: anchor centre at ``(i + offset) * stride`` (0 in torchvision and mmdetection).

    Order of the anchors at a location: ratio-major, size-minor (torchvision / mmdetection).
    """

    def __init__(
        self,
        sizes: Sequence[Sequence[float]],
        aspect_ratios: Sequence[Sequence[float]],
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        round_base: bool = True,
        offset: float = 0.0,
    ) -> None:
        super().__init__()
        if not (len(sizes) == len(aspect_ratios) == len(strides)):
            raise ValueError(
                f"sizes ({len(sizes)}), aspect_ratios ({len(aspect_ratios)}) and strides ({len(strides)}) "
                "must have one entry per level"
            )
        self.strides = [int(s) for s in strides]
        self.offset = float(offset)
        self.cell_anchors = [self._base_anchors(s, r, round_base) for s, r in zip(sizes, aspect_ratios)]
        counts = {len(c) for c in self.cell_anchors}
        if len(counts) != 1:
            raise ValueError("every level must have the same number of anchors per location")
        self.num_priors_per_location = counts.pop()
        self._cache: dict[tuple, tuple[Tensor, list[int]]] = {}

    @staticmethod
    def _base_anchors(sizes: Sequence[float], ratios: Sequence[float], round_base: bool) -> Tensor:
        scales = torch.as_tensor(sizes, dtype=torch.float32)
        ratios_t = torch.as_tensor(ratios, dtype=torch.float32)
        h_ratios = torch.sqrt(ratios_t)
        w_ratios = 1 / h_ratios
        ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
        hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
        base = torch.stack([-ws, -hs, ws, hs], dim=1) / 2
        return base.round() if round_base else base

    def forward(
        self, feature_sizes: Sequence[tuple[int, int]], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> tuple[Tensor, list[int]]:
        if len(feature_sizes) != len(self.strides):
            raise ValueError(f"feature_sizes: expected {len(self.strides)} levels, got {len(feature_sizes)}")
        key = (tuple(tuple(int(v) for v in s) for s in feature_sizes), str(device), dtype)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        anchors, counts = [], []
        for (height, width), stride, base in zip(feature_sizes, self.strides, self.cell_anchors):
            shifts_x = (torch.arange(width, dtype=torch.float32) + self.offset) * stride
            shifts_y = (torch.arange(height, dtype=torch.float32) + self.offset) * stride
            shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=-1).reshape(-1, 1, 4)
            level = (shifts + base.view(1, -1, 4)).reshape(-1, 4)
            anchors.append(level)
            counts.append(level.shape[0])
        result = (torch.cat(anchors).to(device=device, dtype=dtype), counts)
        if len(self._cache) > 32:
            self._cache.clear()
        self._cache[key] = result
        return result

    def valid_flags(self, feature_sizes: Sequence[tuple[int, int]], pad_sizes: Sequence[tuple[int, int]],
                    device: torch.device | str = "cpu") -> Tensor:
        """``(B, A)`` bool: the priors that lie inside each image's own padded size (mmdetection
        ``AnchorGenerator.valid_flags`` / ``MlvlPointGenerator.valid_flags``, the same rule for both).

        On level ``l`` (stride ``s``, feature map ``H_l x W_l``) the prior of row ``r``, column ``c`` is valid
        for image ``i`` when ``r < min(ceil(h_i / s), H_l)`` and ``c < min(ceil(w_i / s), W_l)``, where
        ``(h_i, w_i)`` = ``pad_sizes[i]`` is the image's size padded to the size divisor (mmdetection's
        ``pad_shape``), not the batch's. All the anchors of a valid location are valid (no border test:
        ``allowed_border = -1`` in mmdetection's RetinaNet / ATSS / VFNet configs).

        Args:
            feature_sizes: ``(H_l, W_l)`` per level (those given to :meth:`forward`).
            pad_sizes: ``(h_i, w_i)`` per image.
        """
        if len(feature_sizes) != len(self.strides):
            raise ValueError(f"feature_sizes: expected {len(self.strides)} levels, got {len(feature_sizes)}")
        sizes = torch.as_tensor([[int(h), int(w)] for h, w in pad_sizes], dtype=torch.long)  # (B, 2)
        if torch.device(device).type == "cuda":  # a pinned, non-blocking copy does not wait for the queued forward
            sizes = sizes.pin_memory()
        sizes = sizes.to(device, non_blocking=True)
        flags = []
        for (height, width), stride in zip(feature_sizes, self.strides):
            limit_h = torch.div(sizes[:, 0] + stride - 1, stride, rounding_mode="floor").clamp(max=int(height))
            limit_w = torch.div(sizes[:, 1] + stride - 1, stride, rounding_mode="floor").clamp(max=int(width))
            rows = torch.arange(int(height), device=device)
            cols = torch.arange(int(width), device=device)
            inside = (rows[None, :, None] < limit_h[:, None, None]) & (cols[None, None, :] < limit_w[:, None, None])
            flags.append(inside[..., None].expand(-1, -1, -1, self.num_priors_per_location).reshape(len(sizes), -1))
        return torch.cat(flags, dim=1)


class PointGenerator(AnchorGenerator):
    """FCOS points ``((i + offset) * stride, (j + offset) * stride)`` as zero-size boxes ``[x, y, x, y]``.

    ``offset=0.5`` as in mmdetection's FCOS (points at pixel-cell centres).
    """

    def __init__(self, strides: Sequence[int] = (8, 16, 32, 64, 128), offset: float = 0.5) -> None:
        super().__init__(
            sizes=[[0.0]] * len(strides), aspect_ratios=[[1.0]] * len(strides), strides=strides,
            round_base=False, offset=offset,
        )


def retinanet_anchor_generator(strides: Sequence[int] = (8, 16, 32, 64, 128), round_base: bool = True) -> AnchorGenerator:
    """RetinaNet: 3 octave scales x 3 ratios, base size 4 * stride (RetinaNet Sec. 4, "Anchors").

    Sizes are ``int(4 * stride * 2 ** (k / 3))`` as in torchvision's ``retinanet_resnet50_fpn``
    (32, 40, 50 at P3), for exact parity with it.
    """
    sizes = [tuple(int(4 * s * 2 ** (k / 3)) for k in range(3)) for s in strides]
    return AnchorGenerator(sizes, [(0.5, 1.0, 2.0)] * len(strides), strides, round_base=round_base)


def atss_anchor_generator(strides: Sequence[int] = (8, 16, 32, 64, 128), scale: float = 8.0) -> AnchorGenerator:
    """ATSS: one square anchor of size ``scale * stride`` per location (ATSS Sec. 4, octave_base_scale 8)."""
    return AnchorGenerator([(scale * s,) for s in strides], [(1.0,)] * len(strides), strides, round_base=False)

