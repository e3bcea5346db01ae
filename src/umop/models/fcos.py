"""FCOS (Tian et al., "FCOS: Fully Convolutional One-Stage Object Detection", ICCV 2019).

Configuration: mmdetection's ``fcos_r50-caffe_fpn_gn-head-center-normbbox-centeronreg-giou_1x`` (the
"FCOS improvements" of the FCOS repository, also torchvision's ``fcos_resnet50_fpn``):

- points at the cell centres ``(i + 0.5) * stride`` (:class:`umop.models.anchors.PointGenerator`);
- assignment: :class:`umop.assigners.fcos.FCOSAssigner` (centre sampling radius 1.5, scale ranges
  ``(-1, 64), (64, 128), (128, 256), (256, 512), (512, inf)``, ambiguous points -> min-area gt);
- head: 4 x (3x3 conv + GroupNorm + ReLU) per branch; the centerness branch sits on the *regression* tower
  (``centerness_on_reg``); box distances ``(l, t, r, b)`` are predicted in units of the level's stride
  (``norm_on_bbox``): ``relu(scale_l * x) * stride_l`` pixels;
- losses: the injected classification loss (default focal) / number of positives; the injected box loss
  (default GIoU, weight 1.0) on the decoded boxes, weighted by the centerness target and divided by its sum
  (FCOS repository); centerness binary cross-entropy (FCOS Eq. 3 target) / number of positives. The box
  output is a distance (no delta coder): box losses on deltas (l1, smooth_l1, balanced_l1, ghm_r, kl) do not
  apply, and the priors are points (no prior IoU for IoU-based samplers);
- no valid flags: mmdetection's ``FCOSHead`` has none, so the points in the padding added for a larger image
  of the batch are background samples (as there; RetinaNet, ATSS and VFNet leave them out);
- normaliser ``max(sum of positives, 1)`` averaged over processes (mmdetection ``FCOSHead``);
- inference (mmdetection ``test_cfg``): score threshold 0.05 and per-level top-1000 on ``sigmoid(cls)``
  alone, then the score ``sigmoid(cls) * sigmoid(centerness)`` (FCOS Sec. 3.3, ``score_factors``) for NMS
  (IoU 0.5) and the final ranking.

The plain FCOS of the paper (centerness on the classification branch, ``exp`` distances in pixels, no centre
sampling) is available through ``centerness_on_reg=False``, ``norm_on_bbox=False``, ``center_sampling=False``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..assigners.common import AssignResult
from ..assigners.fcos import FCOS_REGRESS_RANGES, FCOSAssigner
from ..layers import NormLayer, Scale, conv_tower, flatten_level, group_norm, prediction_conv, prior_bias
from .anchors import PointGenerator
from .atss import centerness_box_weights, centerness_loss, centerness_score_factors
from .box_coder import DistancePointCoder
from .detector import LossInputs, OneStageDetector

__all__ = ["FCOS", "FCOSHead"]


class FCOSHead(nn.Module):
    """FCOS head.

    Args:
        in_channels: FPN channels.
        num_classes: ``C``.
        strides: stride of each level (distances are returned in pixels).
        num_convs: convs per branch (4).
        feat_channels: tower channels (default ``in_channels``).
        norm_layer: ``channels -> nn.Module`` (default :func:`group_norm`).
        centerness_on_reg: centerness conv on the regression tower (True) or the classification tower.
        norm_on_bbox: distances ``relu(s x) * stride`` (True) or ``exp(s x)`` pixels (FCOS paper).
        prior_probability: initial foreground probability (0.01).

    ``forward(features) -> {"cls_logits": (B, A, C), "bbox_regression": (B, A, 4) distances (l, t, r, b) in
    pixels, "centerness": (B, A) logits}``.
    """

    def __init__(self, in_channels: int, num_classes: int, strides: Sequence[int] = (8, 16, 32, 64, 128),
                 num_convs: int = 4, feat_channels: Optional[int] = None, norm_layer: Optional[NormLayer] = group_norm,
                 centerness_on_reg: bool = True, norm_on_bbox: bool = True, prior_probability: float = 0.01) -> None:
        super().__init__()
        feat_channels = feat_channels or in_channels
        self.strides = [int(s) for s in strides]
        self.centerness_on_reg = centerness_on_reg
        self.norm_on_bbox = norm_on_bbox
        self.cls_convs = conv_tower(in_channels, feat_channels, num_convs, norm_layer)
        self.reg_convs = conv_tower(in_channels, feat_channels, num_convs, norm_layer)
        self.conv_cls = prediction_conv(feat_channels, num_classes, prior_bias(prior_probability))
        self.conv_reg = prediction_conv(feat_channels, 4)
        self.conv_centerness = prediction_conv(feat_channels, 1)
        self.scales = nn.ModuleList([Scale(1.0) for _ in self.strides])

    def forward(self, features: Sequence[Tensor]) -> dict[str, Tensor]:
        if len(features) != len(self.strides):
            raise ValueError(f"features: expected {len(self.strides)} levels, got {len(features)}")
        cls_logits, distances, centerness = [], [], []
        for feature, scale, stride in zip(features, self.scales, self.strides):
            cls_feat = self.cls_convs(feature)
            reg_feat = self.reg_convs(feature)
            cls_logits.append(flatten_level(self.conv_cls(cls_feat)))
            raw = scale(self.conv_reg(reg_feat)).float()
            distance = F.relu(raw) * stride if self.norm_on_bbox else raw.exp()
            distances.append(flatten_level(distance))
            centerness.append(flatten_level(self.conv_centerness(reg_feat if self.centerness_on_reg else cls_feat)))
        return {"cls_logits": torch.cat(cls_logits, 1), "bbox_regression": torch.cat(distances, 1),
                "centerness": torch.cat(centerness, 1).squeeze(-1)}


class FCOS(OneStageDetector):
    """FCOS detector on an FPN backbone.

    Args:
        backbone: FPN backbone returning P3..P7.
        num_classes: number of object classes.
        point_generator: default ``PointGenerator(strides, offset=0.5)``.
        head: default :class:`FCOSHead`.
        assigner: default :class:`FCOSAssigner` with the options below.
        regress_ranges, center_sampling, center_sample_radius: assignment options.
        centerness_on_reg, norm_on_bbox, head_norm_layer, num_convs, prior_probability: head options.
        **kwargs: :class:`OneStageDetector` options: ``cls_loss`` (default focal), ``box_loss`` (default
            GIoU), ``sampler``, ``reweighting``, ``loss_weights``, inference settings.

    Training returns ``{"loss_cls", "loss_box", "loss_centerness", "stats"}``; loss weights 1, 1, 1.
    """

    default_box_loss = "giou"
    default_loss_weights = {"loss_cls": 1.0, "loss_box": 1.0, "loss_centerness": 1.0}
    has_prior_ious = False
    default_nms_thresh = 0.5
    uses_valid_flags = False

    def __init__(self, backbone: nn.Module, num_classes: int, *, point_generator: Optional[PointGenerator] = None,
                 head: Optional[nn.Module] = None, assigner: Optional[Callable[..., AssignResult]] = None,
                 regress_ranges: Sequence[tuple[float, float]] = FCOS_REGRESS_RANGES, center_sampling: bool = True,
                 center_sample_radius: float = 1.5, centerness_on_reg: bool = True, norm_on_bbox: bool = True,
                 head_norm_layer: Optional[NormLayer] = group_norm, num_convs: int = 4,
                 prior_probability: float = 0.01, **kwargs: Any) -> None:
        strides = list(getattr(backbone, "strides", (8, 16, 32, 64, 128)))
        point_generator = point_generator or PointGenerator(strides, offset=0.5)
        if head is None:
            head = FCOSHead(backbone.out_channels, num_classes, strides, num_convs, norm_layer=head_norm_layer,
                            centerness_on_reg=centerness_on_reg, norm_on_bbox=norm_on_bbox,
                            prior_probability=prior_probability)
        super().__init__(backbone, head, point_generator, num_classes, **kwargs)
        self.assigner = assigner or FCOSAssigner(num_classes, strides, regress_ranges, center_sampling,
                                                 center_sample_radius)
        self.box_coder = DistancePointCoder()

    def score_factors(self, head_outputs: dict[str, Tensor]) -> Tensor:
        return centerness_score_factors(head_outputs)

    def centerness_target(self, inputs: LossInputs) -> Tensor:
        """``(B, A)`` the assigner's FCOS Eq. 3 centerness target at the positives, 0 elsewhere."""
        if "centerness" not in inputs.extras:
            centerness = inputs.assign_result.extras["centerness"].to(inputs.positive_f.dtype)
            inputs.extras["centerness"] = centerness * inputs.positive_f
        return inputs.extras["centerness"]

    def box_weights(self, inputs: LossInputs) -> dict[str, tuple[Tensor, Tensor]]:
        # FCOS / mmdetection: the box normaliser (sum of centerness targets) is clamped to 1e-6, not 1
        return {"loss_box": centerness_box_weights(self.centerness_target(inputs), 1e-6)}

    def extra_losses(self, inputs: LossInputs) -> dict[str, Tensor]:
        return {"loss_centerness": centerness_loss(inputs.head_outputs["centerness"], self.centerness_target(inputs),
                                                   inputs.positive, inputs.avg_factor)}
