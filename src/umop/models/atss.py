"""ATSS (Zhang et al., "Bridging the Gap Between Anchor-based and Anchor-free Detection via Adaptive Training
Sample Selection", CVPR 2020), as mmdetection's ``atss_r50_fpn_1x_coco``.

- one square anchor of size ``8 * stride`` per location (octave base scale 8, ATSS Sec. 4);
- ATSS assignment (:class:`umop.assigners.atss.ATSSAssigner`, top-9 per level, IoU >= mean + std, centre
  inside the gt);
- head: 4 x (3x3 conv + GroupNorm + ReLU) per branch, classification / box deltas / centerness convs, a
  learnable scale per level on the box output (FCOS Sec. 3.2);
- box deltas ``DeltaXYWH`` with ``target_stds = (0.1, 0.1, 0.2, 0.2)`` (coder weights ``1 / std``), decoded
  and trained with the GIoU loss (weight 2.0), weighted per positive by its centerness target and divided by
  the batch's sum of centerness targets (clamped to >= 1);
- centerness: binary cross-entropy against the FCOS centerness (FCOS Eq. 3) of the anchor centre in its gt,
  divided by ``avg_factor = sum_i max(pos_i, 1)`` over the images (mmdetection ``ATSSHead``);
- classification: ``cls_loss`` of the base class (focal / pfl / pfl_mean), divided by the same ``avg_factor``;
- anchors outside their image's own padded size are invalid (mmdetection's valid flags): left out of the
  ATSS candidates, loss weight 0, not counted in the level statistics;
- inference (mmdetection ``test_cfg``): score threshold 0.05 and per-level top-1000 on ``sigmoid(cls)``
  alone, then the score ``sigmoid(cls) * sigmoid(centerness)`` (``score_factors``) for NMS (IoU 0.6) and
  the final ranking.

This module also holds the head building blocks shared with FCOS and VFNet (:class:`Scale`,
:func:`group_norm`, :func:`conv_tower`, :func:`flatten_level`).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..assigners.atss import ATSSAssigner
from ..assigners.common import AssignResult, PaddedTargets
from ..assigners.fcos import fcos_centerness
from ..losses.iou import giou_loss
from .anchors import AnchorGenerator, atss_anchor_generator
from .box_coder import DeltaXYWHBoxCoder
from .detector import OneStageDetector, mean_over_processes

__all__ = ["ATSS", "ATSSHead", "Scale", "group_norm", "conv_tower", "flatten_level", "masked_box_pairs",
           "ATSS_TARGET_STDS", "centerness_score_factors"]

ATSS_TARGET_STDS = (0.1, 0.1, 0.2, 0.2)
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


def masked_box_pairs(pred: Tensor, target: Tensor, positive: Tensor) -> tuple[Tensor, Tensor]:
    """Replace the non-positive entries of ``pred``/``target`` ``(B, A, 4)`` by one fixed valid box.

    Lets a box loss run densely over all priors (no boolean indexing, no host sync) with finite values and
    exactly zero gradient at the non-positive priors; the caller still multiplies by a positive mask/weight.
    """
    dummy = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=pred.dtype, device=pred.device).expand_as(pred)
    mask = positive.unsqueeze(-1)
    return torch.where(mask, pred, dummy), torch.where(mask, target.to(pred.dtype), dummy)


def centerness_score_factors(head_outputs: dict[str, Tensor]) -> Tensor:
    """``sigmoid(centerness)`` ``(B, A)``: multiplied into the class scores that pass the score threshold and
    the pre-NMS top-k (FCOS Sec. 3.3; mmdetection ``score_factors``)."""
    return head_outputs["centerness"].sigmoid()


def centerness_weighted_losses(decoded: Tensor, target_boxes: Tensor, centerness_target: Tensor,
                               centerness_logits: Tensor, positive: Tensor, num_positive: Tensor,
                               box_loss_weight: float, centerness_loss_weight: float,
                               min_box_normalizer: float) -> dict[str, Tensor]:
    """ATSS / FCOS box and centerness losses (mmdetection): GIoU of the positives weighted by their centerness
    target and divided by its sum (averaged over processes, clamped to ``min_box_normalizer``); BCE of the
    centerness logits over the positives divided by ``num_positive`` (the classification ``avg_factor``).

    Args:
        decoded, target_boxes: ``(B, A, 4)`` predicted and matched boxes (xyxy).
        centerness_target: ``(B, A)``, 0 at non-positive priors; centerness_logits: ``(B, A)``.
        positive: ``(B, A)`` bool; num_positive: scalar normaliser.
    """
    pred_boxes, target_boxes = masked_box_pairs(decoded, target_boxes, positive)
    loss_box = giou_loss(pred_boxes, target_boxes, weight=centerness_target, reduction="sum")
    loss_box = loss_box / mean_over_processes(centerness_target.sum()).clamp(min=min_box_normalizer)
    loss_centerness = F.binary_cross_entropy_with_logits(
        centerness_logits, centerness_target, weight=positive.to(centerness_target.dtype), reduction="sum")
    return {"loss_box": loss_box * box_loss_weight,
            "loss_centerness": loss_centerness / num_positive * centerness_loss_weight}


class ATSSHead(nn.Module):
    """ATSS head (one anchor per location).

    Args:
        in_channels: FPN channels.
        num_classes: ``C``.
        num_levels: pyramid levels (one :class:`Scale` each).
        num_convs: convs per branch (4).
        feat_channels: tower channels (default ``in_channels``).
        norm_layer: ``channels -> nn.Module`` (default :func:`group_norm`; ``None``: no norm).
        prior_probability: initial foreground probability of the classifier (0.01).

    ``forward(features: list[(B, C_in, H_l, W_l)]) -> {"cls_logits": (B, A, C), "bbox_regression": (B, A, 4)
    (deltas), "centerness": (B, A) (logits)}``.
    """

    def __init__(self, in_channels: int, num_classes: int, num_levels: int = 5, num_convs: int = 4,
                 feat_channels: Optional[int] = None, norm_layer: Optional[NormLayer] = group_norm,
                 prior_probability: float = 0.01) -> None:
        super().__init__()
        feat_channels = feat_channels or in_channels
        self.cls_convs = conv_tower(in_channels, feat_channels, num_convs, norm_layer)
        self.reg_convs = conv_tower(in_channels, feat_channels, num_convs, norm_layer)
        self.atss_cls = prediction_conv(feat_channels, num_classes, prior_bias(prior_probability))
        self.atss_reg = prediction_conv(feat_channels, 4)
        self.atss_centerness = prediction_conv(feat_channels, 1)
        self.scales = nn.ModuleList([Scale(1.0) for _ in range(num_levels)])

    def forward(self, features: Sequence[Tensor]) -> dict[str, Tensor]:
        if len(features) != len(self.scales):
            raise ValueError(f"features: expected {len(self.scales)} levels, got {len(features)}")
        cls_logits, deltas, centerness = [], [], []
        for feature, scale in zip(features, self.scales):
            cls_feat = self.cls_convs(feature)
            reg_feat = self.reg_convs(feature)
            cls_logits.append(flatten_level(self.atss_cls(cls_feat)))
            deltas.append(flatten_level(scale(self.atss_reg(reg_feat))))
            centerness.append(flatten_level(self.atss_centerness(reg_feat)))
        return {"cls_logits": torch.cat(cls_logits, 1), "bbox_regression": torch.cat(deltas, 1),
                "centerness": torch.cat(centerness, 1).squeeze(-1)}


def centerness_of_priors(priors: Tensor, boxes: Tensor) -> Tensor:
    """FCOS Eq. 3 centerness of the prior centres ``(A, 4)`` in their boxes ``(B, A, 4)`` -> ``(B, A)``."""
    centres = (priors[:, :2] + priors[:, 2:]) / 2
    distances = torch.cat((centres - boxes[..., :2], boxes[..., 2:] - centres), dim=-1)  # l, t, r, b
    return fcos_centerness(distances)


class ATSS(OneStageDetector):
    """ATSS detector on an FPN backbone.

    Args:
        backbone: FPN backbone returning P3..P7 (``out_channels``, ``strides``).
        num_classes: number of object classes.
        anchor_generator: default :func:`atss_anchor_generator` (one ``8 * stride`` square per location).
        head: default :class:`ATSSHead`.
        assigner: default ``ATSSAssigner(num_classes, topk=9)``.
        box_coder: default ``DeltaXYWHBoxCoder(1 / ATSS_TARGET_STDS)``.
        box_loss_weight: GIoU loss weight (2.0).
        centerness_loss_weight: centerness BCE weight (1.0).
        head_norm_layer, num_convs, prior_probability: head options (when ``head`` is not given).
        **kwargs: :class:`OneStageDetector` options (``cls_loss``, PFL options, inference settings).

    Training returns ``{"loss_cls", "loss_box", "loss_centerness", "stats"}``.
    """

    default_nms_thresh = 0.6
    clamp_positives_per_image = True

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        anchor_generator: Optional[AnchorGenerator] = None,
        head: Optional[nn.Module] = None,
        assigner: Optional[Callable[..., AssignResult]] = None,
        box_coder: Optional[DeltaXYWHBoxCoder] = None,
        box_loss_weight: float = 2.0,
        centerness_loss_weight: float = 1.0,
        head_norm_layer: Optional[NormLayer] = group_norm,
        num_convs: int = 4,
        prior_probability: float = 0.01,
        **kwargs: Any,
    ) -> None:
        strides = getattr(backbone, "strides", (8, 16, 32, 64, 128))
        anchor_generator = anchor_generator or atss_anchor_generator(strides)
        if anchor_generator.num_priors_per_location != 1:
            raise ValueError("anchor_generator: ATSS uses one anchor per location, got "
                             f"{anchor_generator.num_priors_per_location}")
        if head is None:
            head = ATSSHead(backbone.out_channels, num_classes, len(strides), num_convs,
                            norm_layer=head_norm_layer, prior_probability=prior_probability)
        super().__init__(backbone, head, anchor_generator, num_classes, **kwargs)
        self.assigner = assigner or ATSSAssigner(num_classes, topk=9)
        self.box_coder = box_coder or DeltaXYWHBoxCoder(tuple(1.0 / s for s in ATSS_TARGET_STDS))
        self.box_loss_weight = box_loss_weight
        self.centerness_loss_weight = centerness_loss_weight

    def score_factors(self, head_outputs: dict[str, Tensor]) -> Tensor:
        return centerness_score_factors(head_outputs)

    def compute_losses(self, head_outputs: dict[str, Tensor], priors: Tensor, assign_result: AssignResult,
                       gt: PaddedTargets) -> dict[str, Any]:
        cls_logits = head_outputs["cls_logits"]
        positive, positive_f, num_positive = self.positives(assign_result, cls_logits.dtype)
        loss_cls, stats = self.classification_loss(cls_logits, assign_result, num_positive)

        index = assign_result.matched_gt.clamp(min=0).unsqueeze(-1).expand(-1, -1, 4)
        matched_boxes = torch.gather(gt.boxes, 1, index)  # (B, A, 4)
        decoded = self.box_coder.decode(head_outputs["bbox_regression"], priors.unsqueeze(0))  # (B, A, 4)
        centerness_target = centerness_of_priors(priors, matched_boxes) * positive_f  # (B, A)
        # ATSS / mmdetection: GIoU weighted by the centerness target, normalised by its sum (>= 1).
        losses = centerness_weighted_losses(decoded, matched_boxes, centerness_target, head_outputs["centerness"],
                                            positive, num_positive, self.box_loss_weight,
                                            self.centerness_loss_weight, min_box_normalizer=1.0)
        return {"loss_cls": loss_cls, **losses, "stats": stats}
