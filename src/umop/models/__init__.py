"""One-stage detectors (RetinaNet, ATSS, FCOS, VFNet) on a shared base, backbones, priors and box coders."""

from .anchors import AnchorGenerator, PointGenerator, atss_anchor_generator, retinanet_anchor_generator
from .atss import ATSS, ATSSHead
from .backbone import FPNBackbone, FrozenBatchNorm2d, WeightsUnavailableError, build_backbone
from .box_coder import DeltaXYWHBoxCoder, DistancePointCoder
from .build import DETECTORS, build_detector, check_detector_options
from .detector import AnchorBasedDetector, OneStageDetector
from .fcos import FCOS, FCOSHead
from .retinanet import RetinaNet, RetinaNetHead, load_torchvision_retinanet_weights
from .vfnet import VFNet, VFNetHead

__all__ = [
    "AnchorGenerator", "PointGenerator", "atss_anchor_generator", "retinanet_anchor_generator",
    "FPNBackbone", "FrozenBatchNorm2d", "WeightsUnavailableError", "build_backbone",
    "DeltaXYWHBoxCoder", "DistancePointCoder", "DETECTORS", "build_detector", "check_detector_options",
    "OneStageDetector", "AnchorBasedDetector", "RetinaNet", "RetinaNetHead", "ATSS", "ATSSHead", "FCOS", "FCOSHead", "VFNet", "VFNetHead",
    "load_torchvision_retinanet_weights",
]
