"""``build_detector(name, num_classes, ...)``: the one entry point to the four detectors."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Optional

from torch import nn

from .backbone import build_backbone

__all__ = ["DETECTORS", "build_detector"]

# name -> (module, class). Every class has the signature ``Cls(backbone: nn.Module, num_classes: int,
# *, cls_loss: str, **options)`` (see ``OneStageDetector``); modules are imported lazily.
DETECTORS: dict[str, tuple[str, str]] = {
    "retinanet": ("umop.models.retinanet", "RetinaNet"),
    "atss": ("umop.models.atss", "ATSS"),
    "fcos": ("umop.models.fcos", "FCOS"),
    "vfnet": ("umop.models.vfnet", "VFNet"),
}


def build_detector(
    name: str,
    num_classes: int,
    *,
    backbone: str | nn.Module = "resnet50",
    pretrained_backbone: bool = False,
    cls_loss: Optional[str] = None,
    backbone_weights: Optional[str | Path] = None,
    fpn_channels: int = 256,
    frozen_stages: int = 1,
    extra_source: str = "p5",
    channels_last: bool = False,
    backbone_norm: str = "frozen_bn",
    **options: Any,
) -> nn.Module:
    """Build a one-stage detector.

    Args:
        name: ``"retinanet"``, ``"atss"``, ``"fcos"`` or ``"vfnet"``.
        num_classes: number of object classes (no background).
        backbone: a backbone name (``umop.models.backbone.TORCHVISION_BACKBONES`` / ``TIMM_BACKBONES`` /
            ``"timm:<model>"``) or a ready FPN backbone module (list of P3..P7 maps, ``out_channels``).
        pretrained_backbone: load torchvision's ImageNet weights (needs the internet or torch's hub cache).
        cls_loss: ``"focal"``, ``"pfl"``, ``"pfl_mean"`` (VFNet also ``"varifocal"``); ``None`` keeps the
            detector's own default (focal loss; varifocal loss for VFNet).
        backbone_weights: local torchvision state_dict file for the backbone (instead of downloading).
        fpn_channels, frozen_stages, extra_source, channels_last, backbone_norm: see :func:`build_backbone`
            (``out_channels``, ..., ``norm``).
        **options: detector options (PFL ``gamma``/``delta``/``w``/``estimator``, ``box_loss``, inference
            thresholds, ...).
    """
    if name not in DETECTORS:
        raise ValueError(f"name: unknown detector {name!r}; valid names: {sorted(DETECTORS)}")
    if isinstance(backbone, str):
        backbone = build_backbone(
            backbone, pretrained=pretrained_backbone, weights_path=backbone_weights, out_channels=fpn_channels,
            frozen_stages=frozen_stages, extra_source=extra_source, channels_last=channels_last,
            norm=backbone_norm,
        )
    elif not isinstance(backbone, nn.Module):
        raise ValueError(f"backbone must be a name or an nn.Module, got {type(backbone).__name__}")
    module_name, class_name = DETECTORS[name]
    detector_class = getattr(importlib.import_module(module_name), class_name)
    if cls_loss is not None:
        options["cls_loss"] = cls_loss
    return detector_class(backbone, num_classes, **options)
