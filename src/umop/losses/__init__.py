"""Losses. Functional forms follow mmdetection's signature where they apply:
``(pred, target, weight=None, reduction=..., avg_factor/normalizer)``."""
from .focal import sigmoid_focal_loss
from .progressive import ProgressiveFocalLoss, progressive_focal_loss

__all__ = ["sigmoid_focal_loss", "progressive_focal_loss", "ProgressiveFocalLoss"]
