"""ATSS (Zhang et al., "Bridging the Gap Between Anchor-based and Anchor-free Detection via Adaptive Training
Sample Selection", CVPR 2020), as mmdetection's ``atss_r50_fpn_1x_coco``.

- one square anchor of size ``8 * stride`` per location (octave base scale 8, ATSS Sec. 4);
- ATSS assignment (:class:`umop.assigners.atss.ATSSAssigner`, top-9 per level, IoU >= mean + std, centre
  inside the gt);
- head: 4 x (3x3 conv + GroupNorm + ReLU) per branch, classification / box deltas / centerness convs, a
  learnable scale per level on the box output (FCOS Sec. 3.2);
- box deltas ``DeltaXYWH`` with ``target_stds = (0.1, 0.1, 0.2, 0.2)`` (coder weights ``1 / std``); the box
  loss (default GIoU on the decoded boxes, weight 2.0) is weighted per positive by its centerness target and
  divided by the batch's sum of centerness targets (clamped to >= 1);
- centerness: binary cross-entropy against the FCOS centerness (FCOS Eq. 3) of the anchor centre in its gt,
  divided by ``avg_factor = sum_i max(pos_i, 1)`` over the images (mmdetection ``ATSSHead``);
- classification: the injected ``cls_loss`` (default focal), divided by the same ``avg_factor``;
- anchors outside their image's own padded size are invalid (mmdetection's valid flags): left out of the
  ATSS candidates, loss weight 0, not counted in the level statistics;
- inference (mmdetection ``test_cfg``): score threshold 0.05 and per-level top-1000 on ``sigmoid(cls)``
  alone, then the score ``sigmoid(cls) * sigmoid(centerness)`` (``score_factors``) for NMS (IoU 0.6) and
  the final ranking.

The head blocks live in :mod:`umop.layers`; the centerness parts shared with FCOS are here
(:func:`centerness_loss`, :func:`centerness_score_factors`).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..assigners.atss import ATSSAssigner
from ..assigners.common import AssignResult
from ..assigners.fcos import fcos_centerness
from ..distributed import mean_over_processes
from ..layers import NormLayer, Scale, conv_tower, flatten_level, group_norm, log_variance_conv, prediction_conv, prior_bias
from .anchors import AnchorGenerator, atss_anchor_generator
from .box_coder import DeltaXYWHBoxCoder
from .detector import AnchorBasedDetector, LossInputs

__all__ = ["ATSS", "ATSSHead", "ATSS_TARGET_STDS", "centerness_loss", "centerness_score_factors",
           "centerness_box_weights"]

ATSS_TARGET_STDS = (0.1, 0.1, 0.2, 0.2)


def centerness_score_factors(head_outputs: dict[str, Tensor]) -> Tensor:
    """``sigmoid(centerness)`` ``(B, A)``: multiplied into the class scores that pass the score threshold and
    the pre-NMS top-k (FCOS Sec. 3.3; mmdetection ``score_factors``)."""
    return head_outputs["centerness"].sigmoid()


def centerness_box_weights(centerness_target: Tensor, min_avg_factor: float) -> tuple[Tensor, Tensor]:
    """ATSS / FCOS box-loss weights: each positive weighs its centerness target ``(B, A)`` (0 elsewhere), and
    the ``avg_factor`` is their sum averaged over processes, clamped to ``min_avg_factor`` (mmdetection: 1 for
    ATSS, 1e-6 for FCOS)."""
    return centerness_target, mean_over_processes(centerness_target.sum()).clamp(min=min_avg_factor)


def centerness_loss(centerness_logits: Tensor, centerness_target: Tensor, positive: Tensor,
                    avg_factor: Tensor) -> Tensor:
    """Binary cross-entropy of the centerness logits ``(B, A)`` against the FCOS Eq. 3 target over the
    positives, divided by ``avg_factor`` (the number of positives)."""
    loss = F.binary_cross_entropy_with_logits(centerness_logits, centerness_target,
                                              weight=positive.to(centerness_target.dtype), reduction="sum")
    return loss / avg_factor


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

        log_var: add a log-variance branch on the regression tower (KL loss).

    ``forward(features: list[(B, C_in, H_l, W_l)]) -> {"cls_logits": (B, A, C), "bbox_regression": (B, A, 4)
    (deltas), "centerness": (B, A) (logits)}`` (+ ``"bbox_log_var"`` ``(B, A, 4)`` with ``log_var``).
    """

    def __init__(self, in_channels: int, num_classes: int, num_levels: int = 5, num_convs: int = 4,
                 feat_channels: Optional[int] = None, norm_layer: Optional[NormLayer] = group_norm,
                 prior_probability: float = 0.01, log_var: bool = False) -> None:
        super().__init__()
        feat_channels = feat_channels or in_channels
        self.cls_convs = conv_tower(in_channels, feat_channels, num_convs, norm_layer)
        self.reg_convs = conv_tower(in_channels, feat_channels, num_convs, norm_layer)
        self.atss_cls = prediction_conv(feat_channels, num_classes, prior_bias(prior_probability))
        self.atss_reg = prediction_conv(feat_channels, 4)
        self.atss_centerness = prediction_conv(feat_channels, 1)
        self.scales = nn.ModuleList([Scale(1.0) for _ in range(num_levels)])
        self.atss_log_var = log_variance_conv(feat_channels, 4) if log_var else None

    def forward(self, features: Sequence[Tensor]) -> dict[str, Tensor]:
        if len(features) != len(self.scales):
            raise ValueError(f"features: expected {len(self.scales)} levels, got {len(features)}")
        cls_logits, deltas, centerness, log_var = [], [], [], []
        for feature, scale in zip(features, self.scales):
            cls_feat = self.cls_convs(feature)
            reg_feat = self.reg_convs(feature)
            cls_logits.append(flatten_level(self.atss_cls(cls_feat)))
            deltas.append(flatten_level(scale(self.atss_reg(reg_feat))))
            centerness.append(flatten_level(self.atss_centerness(reg_feat)))
            if self.atss_log_var is not None:
                log_var.append(flatten_level(self.atss_log_var(reg_feat)))
        outputs = {"cls_logits": torch.cat(cls_logits, 1), "bbox_regression": torch.cat(deltas, 1),
                   "centerness": torch.cat(centerness, 1).squeeze(-1)}
        if log_var:
            outputs["bbox_log_var"] = torch.cat(log_var, 1)
        return outputs


def centerness_of_priors(priors: Tensor, boxes: Tensor) -> Tensor:
    """FCOS Eq. 3 centerness of the prior centres ``(A, 4)`` in their boxes ``(B, A, 4)`` -> ``(B, A)``."""
    centres = (priors[:, :2] + priors[:, 2:]) / 2
    distances = torch.cat((centres - boxes[..., :2], boxes[..., 2:] - centres), dim=-1)  # l, t, r, b
    return fcos_centerness(distances)


class ATSS(AnchorBasedDetector):
    """ATSS detector on an FPN backbone.

    Args:
        backbone: FPN backbone returning P3..P7 (``out_channels``, ``strides``).
        num_classes: number of object classes.
        anchor_generator: default :func:`atss_anchor_generator` (one ``8 * stride`` square per location).
        head: default :class:`ATSSHead` (with a log-variance branch when the box loss needs one).
        assigner: default ``ATSSAssigner(num_classes, topk=9)``.
        box_coder: default ``DeltaXYWHBoxCoder(1 / ATSS_TARGET_STDS)``.
        head_norm_layer, num_convs, prior_probability: head options (when ``head`` is not given).
        **kwargs: :class:`OneStageDetector` options: ``cls_loss`` (default focal), ``box_loss`` (default
            GIoU), ``sampler``, ``reweighting``, ``loss_weights``, inference settings.

    Training returns ``{"loss_cls", "loss_box", "loss_centerness", "stats"}``; loss weights 1, 2, 1.
    """

    default_box_loss = "giou"
    default_loss_weights = {"loss_cls": 1.0, "loss_box": 2.0, "loss_centerness": 1.0}
    default_nms_thresh = 0.6

    def __init__(self, backbone: nn.Module, num_classes: int, *, anchor_generator: Optional[AnchorGenerator] = None,
                 head: Optional[nn.Module] = None, assigner: Optional[Callable[..., AssignResult]] = None,
                 box_coder: Optional[DeltaXYWHBoxCoder] = None, head_norm_layer: Optional[NormLayer] = group_norm,
                 num_convs: int = 4, prior_probability: float = 0.01, **kwargs: Any) -> None:
        strides = getattr(backbone, "strides", (8, 16, 32, 64, 128))
        anchor_generator = anchor_generator or atss_anchor_generator(strides)
        if anchor_generator.num_priors_per_location != 1:
            raise ValueError("anchor_generator: ATSS uses one anchor per location, got "
                             f"{anchor_generator.num_priors_per_location}")
        super().__init__(backbone, nn.Identity(), anchor_generator, num_classes, **kwargs)
        if head is None:
            head = ATSSHead(backbone.out_channels, num_classes, len(strides), num_convs,
                            norm_layer=head_norm_layer, prior_probability=prior_probability,
                            log_var=self.box_loss.needs_log_var)
        self.head = head
        self.assigner = assigner or ATSSAssigner(num_classes, topk=9)
        self.box_coder = box_coder or DeltaXYWHBoxCoder(tuple(1.0 / s for s in ATSS_TARGET_STDS))

    def score_factors(self, head_outputs: dict[str, Tensor]) -> Tensor:
        return centerness_score_factors(head_outputs)

    def centerness_target(self, inputs: LossInputs) -> Tensor:
        """``(B, A)`` FCOS Eq. 3 centerness of each positive anchor's centre in its gt, 0 elsewhere."""
        if "centerness" not in inputs.extras:
            inputs.extras["centerness"] = centerness_of_priors(inputs.priors, inputs.matched_boxes) * inputs.positive_f
        return inputs.extras["centerness"]

    def box_weights(self, inputs: LossInputs) -> dict[str, tuple[Tensor, Tensor]]:
        # ATSS / mmdetection: the box loss weighted by the centerness target, normalised by its sum (>= 1).
        return {"loss_box": centerness_box_weights(self.centerness_target(inputs), 1.0)}

    def extra_losses(self, inputs: LossInputs) -> dict[str, Tensor]:
        return {"loss_centerness": centerness_loss(inputs.head_outputs["centerness"], self.centerness_target(inputs),
                                                   inputs.positive, inputs.avg_factor)}
