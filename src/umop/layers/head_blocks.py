"""Head building blocks: a learnable per-level scale, GroupNorm, conv towers, prediction convs, the prior
bias of the classifier and the level flattening (mmdetection ``normal_init`` / ``ConvModule`` conventions).

Used by the ATSS, FCOS and VFNet heads (RetinaNet keeps torchvision's own head for weight compatibility).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor, nn

__all__ = ["NormLayer", "Scale", "conv_tower", "flatten_level", "group_norm", "log_variance_conv", "prediction_conv",
           "prior_bias"]

NormLayer = Callable[[int], nn.Module]


class Scale(nn.Module):
    """Learnable scalar multiplier, one per pyramid level (FCOS Sec. 3.2: ``exp(s_i x)``)."""

    def __init__(self, value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def group_norm(channels: int, num_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with 32 groups (FCOS / ATSS heads: 8 channels per group at 256 channels).

    Narrow heads (tests, small models) get fewer groups so that every group keeps at least 2 channels
    (a 1x1 P7 map of a single image would otherwise normalise single values).
    """
    groups = math.gcd(num_groups, channels)
    while groups > 1 and channels // groups < 2:
        groups //= 2
    return nn.GroupNorm(groups, channels)


def conv_tower(in_channels: int, channels: int, num_convs: int, norm_layer: Optional[NormLayer]) -> nn.Sequential:
    """``num_convs`` x (3x3 conv [+ norm] + ReLU); conv weights N(0, 0.01), bias 0 (mmdetection ``normal_init``).

    The convs have a bias only without a norm layer (mmdetection ``ConvModule(bias="auto")``).
    """
    layers: list[nn.Module] = []
    for index in range(num_convs):
        conv = nn.Conv2d(in_channels if index == 0 else channels, channels, 3, padding=1, bias=norm_layer is None)
        nn.init.normal_(conv.weight, std=0.01)
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)
        layers.append(conv)
        if norm_layer is not None:
            layers.append(norm_layer(channels))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def prediction_conv(in_channels: int, out_channels: int, bias_value: float = 0.0) -> nn.Conv2d:
    """Final 3x3 conv of a branch, weights N(0, 0.01), constant bias."""
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.constant_(conv.bias, bias_value)
    return conv


def prior_bias(prior_probability: float) -> float:
    """Classification bias ``-log((1 - pi) / pi)`` (RetinaNet Sec. 4.1, "Initialization")."""
    return -math.log((1 - prior_probability) / prior_probability)


def flatten_level(output: Tensor) -> Tensor:
    """``(B, K, H, W)`` -> ``(B, H * W, K)`` (location-major, the order of the priors; one prior per location)."""
    return output.flatten(2).transpose(1, 2)


def log_variance_conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    """3x3 conv predicting ``alpha = log(sigma^2)`` of box coordinates: weights N(0, 1e-4), bias 0, so that
    training starts at ``sigma = 1`` (KL loss, He et al. 2019, Sec. 3.2 and Sec. 4 "implementation")."""
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
    nn.init.normal_(conv.weight, std=1e-4)
    nn.init.zeros_(conv.bias)
    return conv
