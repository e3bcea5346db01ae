"""Losses: UMOP's progressive focal loss and the imbalance toolkit of Oksuz et al.'s survey.

One convention (mmdetection's): every element-wise loss is ``loss(pred, target, weight=None,
reduction="mean", avg_factor=None, *, <options>)`` ending in :func:`~umop.losses.reduction.weight_reduce_loss`.
Their ``nn.Module`` twins implement the detector protocols of :mod:`umop.losses.base`:
:class:`ClassificationLoss` (``(logits, targets, num_priors_per_level, weight, avg_factor) -> (loss, stats)``)
and :class:`BoxLoss` (``(pred, target, weight, avg_factor) -> loss``). ``CLS_LOSSES`` / ``BOX_LOSSES`` map
config names to them; ``build_cls_loss`` / ``build_box_loss`` validate options and build.
"""
from .alrp import ALRPLoss, alrp_loss
from .ap_loss import APLoss, ap_loss
from .balanced_l1 import BalancedL1Loss, balanced_l1_loss
from .base import BoxLoss, ClassificationLoss, level_statistics
from .focal import FocalLoss, sigmoid_focal_loss
from .ghm import GHMCLoss, GHMRLoss, ghm_weights, ghmc_loss, ghmr_loss
from .iou import (BoundedIoULoss, CIoULoss, DIoULoss, GIoULoss, IoULoss, aligned_box_iou, bounded_iou_loss,
                  ciou_loss, diou_loss, giou_loss, iou_loss)
from .kl import KLLoss, kl_loss, variance_voting
from .pisa import PISA, CARLLoss, carl_loss, hierarchical_local_rank, isr_p
from ..structures.levels import level_index_for, level_matrix_for
from .progressive import ProgressiveFocalLoss, check_pfl_options, progressive_focal_loss
from .quality_focal import QualityFocalLoss, quality_focal_loss
from .rank_sort import RankSortLoss, rank_sort_loss
from .reduction import weight_reduce_loss
from .registry import BOX_LOSSES, CLS_LOSSES, build_box_loss, build_cls_loss
from .smooth_l1 import L1Loss, SmoothL1Loss, l1_loss, smooth_l1_loss
from .varifocal import VarifocalLoss, varifocal_loss

__all__ = [
    "ClassificationLoss", "BoxLoss", "level_statistics", "weight_reduce_loss",
    "CLS_LOSSES", "BOX_LOSSES", "build_cls_loss", "build_box_loss",
    "sigmoid_focal_loss", "FocalLoss", "progressive_focal_loss", "ProgressiveFocalLoss", "check_pfl_options",
    "varifocal_loss", "VarifocalLoss", "quality_focal_loss", "QualityFocalLoss",
    "ghmc_loss", "ghmr_loss", "GHMCLoss", "GHMRLoss", "ghm_weights", "ap_loss", "APLoss",
    "alrp_loss", "ALRPLoss", "rank_sort_loss", "RankSortLoss",
    "l1_loss", "smooth_l1_loss", "L1Loss", "SmoothL1Loss", "balanced_l1_loss", "BalancedL1Loss",
    "iou_loss", "giou_loss", "diou_loss", "ciou_loss", "bounded_iou_loss", "aligned_box_iou",
    "IoULoss", "GIoULoss", "DIoULoss", "CIoULoss", "BoundedIoULoss", "kl_loss", "KLLoss", "variance_voting",
    "carl_loss", "CARLLoss", "isr_p", "hierarchical_local_rank", "PISA",
    "level_index_for", "level_matrix_for",
]
