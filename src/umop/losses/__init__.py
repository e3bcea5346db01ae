"""Losses: UMOP's progressive focal loss and the imbalance toolkit of Oksuz et al.'s survey.

Functional forms follow mmdetection's signature where it applies:
``(pred, target, weight=None, reduction=..., avg_factor/normalizer)``; each has an ``nn.Module`` twin.
"""
from .ap_loss import APLoss, ap_loss
from .balanced_l1 import BalancedL1Loss, balanced_l1_loss
from .focal import sigmoid_focal_loss
from .ghm import GHMCLoss, GHMRLoss, ghm_weights, ghmc_loss, ghmr_loss
from .iou import ciou_loss, diou_loss, giou_loss, iou_loss
from .kl import KLLoss, kl_loss
from .pisa import CARLLoss, carl_loss, hierarchical_local_rank, isr_p
from .progressive import ProgressiveFocalLoss, progressive_focal_loss
from .varifocal import varifocal_loss

__all__ = [
    "sigmoid_focal_loss", "progressive_focal_loss", "ProgressiveFocalLoss",
    "iou_loss", "giou_loss", "diou_loss", "ciou_loss", "varifocal_loss",
    "ghmc_loss", "ghmr_loss", "GHMCLoss", "GHMRLoss", "ghm_weights",
    "balanced_l1_loss", "BalancedL1Loss", "kl_loss", "KLLoss", "ap_loss", "APLoss",
    "carl_loss", "CARLLoss", "isr_p", "hierarchical_local_rank",
]
