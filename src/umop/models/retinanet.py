"""RetinaNet (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017).

9 anchors per location, max-IoU assignment 0.5 / 0.4 with low-quality matches, DeltaXYWH box deltas, L1
(mmdetection 1x), smooth-L1 or GIoU box loss, classification loss switchable (focal / UMOP PFL).
Parameter names equal torchvision's ``retinanet_resnet50_fpn`` so its weights load as they are
(:func:`load_torchvision_retinanet_weights`).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou_loss
from torchvision.ops.misc import Conv2dNormActivation

from ..assigners.common import AssignResult, PaddedTargets
from ..assigners.max_iou import MaxIoUAssigner
from .anchors import AnchorGenerator, retinanet_anchor_generator
from .box_coder import DeltaXYWHBoxCoder
from .detector import OneStageDetector

__all__ = ["RetinaNet", "RetinaNetHead", "RetinaNetClassificationHead", "RetinaNetRegressionHead",
           "load_torchvision_retinanet_weights", "BOX_LOSSES"]

BOX_LOSSES = ("l1", "smooth_l1", "giou")


def _tower(channels: int, num_convs: int, norm_layer: Optional[Callable[..., nn.Module]]) -> nn.Sequential:
    """``num_convs`` x (3x3 conv [+ norm] + ReLU), weights N(0, 0.01), bias 0 (RetinaNet Sec. 4.1)."""
    tower = nn.Sequential(*[Conv2dNormActivation(channels, channels, norm_layer=norm_layer) for _ in range(num_convs)])
    for layer in tower.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.normal_(layer.weight, std=0.01)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return tower


def _flatten_level(output: Tensor, channels_per_anchor: int) -> Tensor:
    """``(B, A_loc * K, H, W)`` -> ``(B, H * W * A_loc, K)`` (location-major, anchor-minor)."""
    batch, _, height, width = output.shape
    output = output.view(batch, -1, channels_per_anchor, height, width).permute(0, 3, 4, 1, 2)
    return output.reshape(batch, -1, channels_per_anchor)


class RetinaNetClassificationHead(nn.Module):
    """Class subnet: 4 convs + a 3x3 conv to ``num_anchors * num_classes`` logits; the final bias is
    ``-log((1 - pi) / pi)`` with prior probability ``pi = 0.01`` (RetinaNet Sec. 4.1, "Initialization").

    ``forward(features: list[(B, C_in, H_l, W_l)]) -> (B, A, num_classes)``.
    """

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int, prior_probability: float = 0.01,
                 num_convs: int = 4, norm_layer: Optional[Callable[..., nn.Module]] = None) -> None:
        super().__init__()
        self.conv = _tower(in_channels, num_convs, norm_layer)
        self.cls_logits = nn.Conv2d(in_channels, num_anchors * num_classes, kernel_size=3, padding=1)
        nn.init.normal_(self.cls_logits.weight, std=0.01)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_probability) / prior_probability))
        self.num_classes = num_classes

    def forward(self, features: list[Tensor]) -> Tensor:
        return torch.cat([_flatten_level(self.cls_logits(self.conv(f)), self.num_classes) for f in features], dim=1)


class RetinaNetRegressionHead(nn.Module):
    """Box subnet: 4 convs + a 3x3 conv to ``num_anchors * 4`` deltas. ``forward -> (B, A, 4)``."""

    def __init__(self, in_channels: int, num_anchors: int, num_convs: int = 4,
                 norm_layer: Optional[Callable[..., nn.Module]] = None) -> None:
        super().__init__()
        self.conv = _tower(in_channels, num_convs, norm_layer)
        self.bbox_reg = nn.Conv2d(in_channels, num_anchors * 4, kernel_size=3, padding=1)
        nn.init.normal_(self.bbox_reg.weight, std=0.01)
        nn.init.zeros_(self.bbox_reg.bias)

    def forward(self, features: list[Tensor]) -> Tensor:
        return torch.cat([_flatten_level(self.bbox_reg(self.conv(f)), 4) for f in features], dim=1)


class RetinaNetHead(nn.Module):
    """Both subnets. ``forward(features) -> {"cls_logits": (B, A, C), "bbox_regression": (B, A, 4)}``."""

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int, prior_probability: float = 0.01,
                 num_convs: int = 4, norm_layer: Optional[Callable[..., nn.Module]] = None) -> None:
        super().__init__()
        self.classification_head = RetinaNetClassificationHead(
            in_channels, num_anchors, num_classes, prior_probability, num_convs, norm_layer)
        self.regression_head = RetinaNetRegressionHead(in_channels, num_anchors, num_convs, norm_layer)

    def forward(self, features: list[Tensor]) -> dict[str, Tensor]:
        return {"cls_logits": self.classification_head(features), "bbox_regression": self.regression_head(features)}


class RetinaNet(OneStageDetector):
    """RetinaNet on an FPN backbone.

    Args:
        backbone: FPN backbone (``umop.models.build_backbone``), returns P3..P7.
        num_classes: number of object classes.
        anchor_generator: default :func:`retinanet_anchor_generator` (9 anchors, sizes 4 * stride * 2^(k/3)).
        head: default :class:`RetinaNetHead`.
        assigner: default ``MaxIoUAssigner(num_classes, 0.5, 0.4, low_quality_matches=True)``.
        box_loss: ``"l1"`` on deltas (mmdetection 1x), ``"smooth_l1"`` (``smooth_l1_beta``) or ``"giou"``
            on decoded boxes.
        box_loss_weight: multiplier of the box loss.
        smooth_l1_beta: beta of the smooth-L1 box loss.
        head_norm_layer: normalisation in the head towers (None as in the paper; ``partial(nn.GroupNorm, 32)``
            as torchvision's v2).
        prior_probability: initial foreground probability of the classifier (0.01).
        head_num_convs: convs per head tower (4 in the paper).
        **kwargs: :class:`OneStageDetector` options (``cls_loss``, PFL options, inference settings).

    Losses are sums over the batch divided by ``avg_factor = sum_i max(pos_i, 1)`` over the images (averaged
    over processes), as mmdetection's ``AnchorHead`` (torchvision instead averages per-image normalised
    losses). Anchors outside their image's own padded size are ignored (mmdetection's valid flags; label
    weight 0 and left out of the matching). Inference: mmdetection's / torchvision's NMS IoU 0.5.
    """

    default_nms_thresh = 0.5
    clamp_positives_per_image = True

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        anchor_generator: Optional[AnchorGenerator] = None,
        head: Optional[nn.Module] = None,
        assigner: Optional[Callable[..., AssignResult]] = None,
        box_loss: str = "l1",
        box_loss_weight: float = 1.0,
        smooth_l1_beta: float = 1.0 / 9,
        head_norm_layer: Optional[Callable[..., nn.Module]] = None,
        prior_probability: float = 0.01,
        head_num_convs: int = 4,
        **kwargs: Any,
    ) -> None:
        if box_loss not in BOX_LOSSES:
            raise ValueError(f"box_loss must be one of {list(BOX_LOSSES)}, got {box_loss!r}")
        anchor_generator = anchor_generator or retinanet_anchor_generator(getattr(backbone, "strides", (8, 16, 32, 64, 128)))
        if head is None:
            head = RetinaNetHead(backbone.out_channels, anchor_generator.num_priors_per_location, num_classes,
                                 prior_probability=prior_probability, num_convs=head_num_convs,
                                 norm_layer=head_norm_layer)
        super().__init__(backbone, head, anchor_generator, num_classes, **kwargs)
        self.assigner = assigner or MaxIoUAssigner(num_classes, 0.5, 0.4, low_quality_matches=True)
        self.box_coder = DeltaXYWHBoxCoder((1.0, 1.0, 1.0, 1.0))
        self.box_loss = box_loss
        self.box_loss_weight = box_loss_weight
        self.smooth_l1_beta = smooth_l1_beta

    def compute_losses(self, head_outputs: dict[str, Tensor], priors: Tensor, assign_result: AssignResult,
                       gt: PaddedTargets) -> dict[str, Any]:
        positive, _, normalizer = self.positives(assign_result, head_outputs["cls_logits"].dtype)
        loss_cls, stats = self.classification_loss(head_outputs["cls_logits"], assign_result, normalizer)

        # Dense, masked box loss (no boolean indexing -> no host sync). Non-positive priors regress onto
        # themselves so that their (masked) targets stay finite.
        regression = head_outputs["bbox_regression"]  # (B, A, 4)
        index = assign_result.matched_gt.clamp(min=0).unsqueeze(-1).expand(-1, -1, 4)
        matched_boxes = torch.gather(gt.boxes, 1, index)  # (B, A, 4)
        priors_b = priors.unsqueeze(0).expand_as(matched_boxes)
        matched_boxes = torch.where(positive.unsqueeze(-1), matched_boxes, priors_b)
        if self.box_loss == "giou":
            decoded = self.box_coder.decode(regression, priors_b)
            per_prior = generalized_box_iou_loss(decoded.reshape(-1, 4), matched_boxes.reshape(-1, 4), reduction="none")
            per_prior = per_prior.view_as(positive)
        else:
            target = self.box_coder.encode(matched_boxes, priors_b)
            if self.box_loss == "l1":
                per_prior = F.l1_loss(regression, target, reduction="none").sum(-1)
            else:
                per_prior = F.smooth_l1_loss(regression, target, reduction="none", beta=self.smooth_l1_beta).sum(-1)
        loss_box = (per_prior * positive.to(per_prior.dtype)).sum() / normalizer * self.box_loss_weight
        return {"loss_cls": loss_cls, "loss_box": loss_box, "stats": stats}


def load_torchvision_retinanet_weights(model: RetinaNet, tv_model: nn.Module) -> RetinaNet:
    """Copy the weights of a torchvision ``RetinaNet`` (e.g. ``retinanet_resnet50_fpn``) into ``model``.

    The parameter names are the same (``backbone.body``, ``backbone.fpn``, ``head.*``); BatchNorm
    statistics go into the frozen batch norms (``num_batches_tracked`` is dropped).
    """
    state = {k: v for k, v in tv_model.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"tv_model does not match: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model
