"""One-stage detectors (RetinaNet, ATSS, FCOS, VFNet) on a shared base, backbones, priors and box coders."""

from .anchors import AnchorGenerator, PointGenerator, atss_anchor_generator, retinanet_anchor_generator
from .backbone import FPNBackbone, FrozenBatchNorm2d, WeightsUnavailableError, build_backbone
from .box_coder import DeltaXYWHBoxCoder, DistancePointCoder
from .build import DETECTORS, build_detector
from .detector import CLS_LOSSES, OneStageDetector
from .retinanet import RetinaNet, RetinaNetHead, load_torchvision_retinanet_weights

__all__ = [
    "AnchorGenerator", "PointGenerator", "atss_anchor_generator", "retinanet_anchor_generator",
    "FPNBackbone", "FrozenBatchNorm2d", "WeightsUnavailableError", "build_backbone",
    "DeltaXYWHBoxCoder", "DistancePointCoder", "DETECTORS", "build_detector", "CLS_LOSSES",
    "OneStageDetector", "RetinaNet", "RetinaNetHead", "load_torchvision_retinanet_weights",
]
