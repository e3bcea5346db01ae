"""Config names of the classification and box losses, with their papers (issue 11, part 3).

``CLS_LOSSES`` / ``BOX_LOSSES`` map a name to a :class:`~umop.losses.base.ClassificationLoss` /
:class:`~umop.losses.base.BoxLoss` class; ``build_cls_loss(name_or_module, **options)`` /
``build_box_loss(...)`` validate the options (unknown name -> ``ValueError`` with the nearest valid one) and
build the module; a module passes through unchanged.
"""
from __future__ import annotations

from typing import Any

from ..registry import Registry
from .alrp import ALRPLoss
from .ap_loss import APLoss
from .balanced_l1 import BalancedL1Loss
from .base import BoxLoss, ClassificationLoss
from .focal import FocalLoss
from .ghm import GHMCLoss, GHMRLoss
from .iou import BoundedIoULoss, CIoULoss, DIoULoss, GIoULoss, IoULoss
from .kl import KLLoss
from .progressive import ProgressiveFocalLoss
from .quality_focal import QualityFocalLoss
from .rank_sort import RankSortLoss
from .smooth_l1 import L1Loss, SmoothL1Loss
from .varifocal import VarifocalLoss

__all__ = ["CLS_LOSSES", "BOX_LOSSES", "build_cls_loss", "build_box_loss"]

CLS_LOSSES: Registry[ClassificationLoss] = Registry("classification loss", ClassificationLoss)
CLS_LOSSES.register("focal", FocalLoss, "Lin et al., Focal Loss for Dense Object Detection, ICCV 2017")
CLS_LOSSES.register("pfl", ProgressiveFocalLoss, "Wu et al., Progressive Hard-case Mining across Pyramid "
                    "Levels in Object Detection (UMOP), 2021; level losses summed (released code)",
                    level_reduction="sum")
CLS_LOSSES.register("pfl_mean", ProgressiveFocalLoss, "Wu et al. (UMOP), 2021, Eq. 1: level losses averaged",
                    level_reduction="mean")
CLS_LOSSES.register("varifocal", VarifocalLoss, "Zhang et al., VarifocalNet: An IoU-aware Dense Object "
                    "Detector, CVPR 2021")
CLS_LOSSES.register("quality_focal", QualityFocalLoss, "Li et al., Generalized Focal Loss, NeurIPS 2020 (QFL)")
CLS_LOSSES.register("ghm_c", GHMCLoss, "Li, Liu and Wang, Gradient Harmonized Single-stage Detector, AAAI 2019")
CLS_LOSSES.register("ap_loss", APLoss, "Chen et al., Towards Accurate One-Stage Object Detection with "
                    "AP-Loss, CVPR 2019")
CLS_LOSSES.register("alrp", ALRPLoss, "Oksuz et al., A Ranking-based, Balanced Loss Function Unifying "
                    "Classification and Localisation in Object Detection (aLRP loss), NeurIPS 2020")
CLS_LOSSES.register("rank_sort", RankSortLoss, "Oksuz et al., Rank & Sort Loss for Object Detection and "
                    "Instance Segmentation, ICCV 2021")

BOX_LOSSES: Registry[BoxLoss] = Registry("box loss", BoxLoss)
BOX_LOSSES.register("l1", L1Loss, "L1 on encoded deltas")
BOX_LOSSES.register("smooth_l1", SmoothL1Loss, "Girshick, Fast R-CNN, ICCV 2015")
BOX_LOSSES.register("balanced_l1", BalancedL1Loss, "Pang et al., Libra R-CNN, CVPR 2019")
BOX_LOSSES.register("ghm_r", GHMRLoss, "Li, Liu and Wang, Gradient Harmonized Single-stage Detector, AAAI 2019")
BOX_LOSSES.register("iou", IoULoss, "Yu et al., UnitBox, ACM MM 2016")
BOX_LOSSES.register("giou", GIoULoss, "Rezatofighi et al., Generalized Intersection over Union, CVPR 2019")
BOX_LOSSES.register("diou", DIoULoss, "Zheng et al., Distance-IoU Loss, AAAI 2020")
BOX_LOSSES.register("ciou", CIoULoss, "Zheng et al., Distance-IoU Loss, AAAI 2020 (complete IoU)")
BOX_LOSSES.register("bounded_iou", BoundedIoULoss, "Tychsen-Smith and Petersson, Improving Object "
                    "Localization with Fitness NMS and Bounded IoU Loss, CVPR 2018")
BOX_LOSSES.register("kl", KLLoss, "He et al., Bounding Box Regression with Uncertainty for Accurate Object "
                    "Detection, CVPR 2019")


def build_cls_loss(name_or_module: str | ClassificationLoss, **options: Any) -> ClassificationLoss:
    """A classification loss from its config name and options (validated), or the given module."""
    return CLS_LOSSES.build(name_or_module, **options)


def build_box_loss(name_or_module: str | BoxLoss, **options: Any) -> BoxLoss:
    """A box loss from its config name and options (validated), or the given module."""
    return BOX_LOSSES.build(name_or_module, **options)
