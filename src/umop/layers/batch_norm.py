"""Frozen batch normalisation that stays in the activations' precision under autocast."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import misc

__all__ = ["FrozenBatchNorm2d"]


class FrozenBatchNorm2d(misc.FrozenBatchNorm2d):
    """torchvision's ``FrozenBatchNorm2d`` (same buffers, state-dict keys and float32 result), with the affine
    applied in the input's dtype.

    torchvision computes ``x * scale + bias`` with float32 ``scale`` and ``bias``; under bf16 / fp16 autocast
    that promotes every bf16 activation of the backbone to float32 (the elementwise ops are not autocast ops),
    and the next convolution casts it back: two full-size copies per block and float32 ReLUs and residual
    adds. Here ``scale`` and ``bias`` are cast to ``x.dtype`` first (a no-op in float32, where the result is
    bit-identical to torchvision's).

    Shapes: ``(N, C, H, W) -> (N, C, H, W)``.
    """

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight.reshape(1, -1, 1, 1) * (self.running_var.reshape(1, -1, 1, 1) + self.eps).rsqrt()
        bias = self.bias.reshape(1, -1, 1, 1) - self.running_mean.reshape(1, -1, 1, 1) * scale
        return x * scale.to(x.dtype) + bias.to(x.dtype)
