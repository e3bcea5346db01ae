"""Max pooling in the layout CPU kernels vectorise."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["ChannelsLastMaxPool2d"]


class ChannelsLastMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` whose CPU forward without gradient runs in ``channels_last`` memory format; the output
    has the input's layout and the same values.

    PyTorch's CPU max pooling is vectorised over channels in ``channels_last``: the ResNet stem's 3x3/2 pool
    of a ``(4, 64, 192, 272)`` map takes 36-39 ms in NCHW and 11-15 ms through ``channels_last`` with the two
    layout copies (float32 and bf16). With a gradient the NCHW forward+backward is the faster one (45 ms vs
    51-79 ms), so an input that requires grad (a trained stem), a CUDA input, or one already in
    ``channels_last`` takes plain ``nn.MaxPool2d``. This helps inference and every detector whose stem is
    frozen (``frozen_stages >= 0``, the pretrained recipes). Measured with
    ``python benchmarks/pooling_speed.py`` (torch 2.14, 2 cores).

    Shapes: ``(N, C, H, W) -> (N, C, H', W')``.
    """

    def forward(self, x: Tensor) -> Tensor:
        if (x.device.type != "cpu" or x.dim() != 4 or (x.requires_grad and torch.is_grad_enabled())
                or x.is_contiguous(memory_format=torch.channels_last)):
            return super().forward(x)
        return super().forward(x.contiguous(memory_format=torch.channels_last)).contiguous()
