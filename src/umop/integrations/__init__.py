"""Adapters that bring UMOP to other detection libraries."""

from .torchvision import freeze_batchnorm, use_progressive_focal_loss

__all__ = ["use_progressive_focal_loss", "freeze_batchnorm"]
