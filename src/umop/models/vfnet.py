"""VarifocalNet (Zhang et al., "VarifocalNet: An IoU-aware Dense Object Detector", CVPR 2021), as
mmdetection's ``vfnet_r50_fpn_1x_coco``.

- priors: one ``8 * stride`` square anchor per location for the ATSS assignment; the box regression is the
  distance ``(l, t, r, b)`` from the anchor centre ``(i * stride, j * stride)`` (offset 0 for both the ATSS
  anchors and the box-origin points, mmdetection's ``center_offset=0.0``);
- assignment: ATSS (top-9 per level, mean + std IoU threshold, centre inside), :class:`ATSSAssigner`; the
  anchors outside their image's own padded size are left out of it (mmdetection's valid flags);
- head (VFNet Sec. 4, Fig. 3): 3 x (3x3 conv + GN + ReLU) per branch; an initial box
  ``exp(scale_l * x) * reg_denom_l`` (``reg_denom`` = upper end of the level's FCOS scale range, the last
  one twice the previous: 64, 128, 256, 512, 1024; mmdetection's ``bbox_norm_type="reg_denom"``); from it
  the 9 *star-shaped* sampling points (the point, the 4 side mid-points and 4 corners of the box) give the
  offsets of a 3x3 deformable convolution (``torchvision.ops.deform_conv2d``, or on CPU the equal and ~8x
  faster bilinear-sampling form of :mod:`umop.models.deform`; ``deform_conv_impl``) on both towers; the
  refined box is ``exp(scale'_l * x') * initial box`` (the initial box detached) and the IoU-aware classification score
  comes from the deformable features; the gradient reaching the initial box through the offsets is scaled
  by ``gradient_mul = 0.1``;
- losses: the injected classification loss, by default the varifocal loss (alpha 0.75, gamma 2; VFNet Eq. 2)
  whose IoU-aware target ``q = IoU(refined box, gt)`` at the gt class of a positive is the ``quality`` the
  detector computes for every loss that ``needs_quality`` (varifocal, quality_focal), divided by the number
  of positives; the injected box loss (default GIoU) on the initial box (weight 1.5) and the refined box
  (weight 2.0), each weighted by the (detached) IoU of that box with its gt and divided by the sum of those
  weights (clamped >= 1); the IoU weights are clamped >= 1e-6. All divided by ``max(number of positives, 1)``
  (averaged over processes, mmdetection ``VFNetHead``). As mmdetection's ``VFNetHead``, the varifocal loss
  takes no label weights: the anchors outside their image count as background there (weight 1); under any
  other classification loss they have weight 0 (its ``use_vfl=False`` path passes the label weights). The
  level statistics count valid anchors only. Binary-target losses (focal, pfl, ...) get one-hot targets: UMOP's PFL estimates
  gamma_ad from the positives' predicted probability of a binary target;
- inference: score ``sigmoid(cls)`` (already IoU-aware, no centerness), boxes from the refined distances;
  mmdetection ``test_cfg``: score threshold 0.05, per-level top-1000, NMS IoU 0.6, 100 per image.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import DeformConv2d

from ..assigners.atss import ATSSAssigner
from ..assigners.common import AssignResult
from ..assigners.fcos import FCOS_REGRESS_RANGES
from ..distributed import mean_over_processes
from ..layers import NormLayer, Scale, conv_tower, flatten_level, group_norm, prediction_conv, prior_bias
from ..losses import VarifocalLoss, aligned_box_iou
from ..structures.targets import masked_box_pairs
from .anchors import AnchorGenerator
from .box_coder import DistancePointCoder
from .deform import IMPLEMENTATIONS as DEFORM_IMPLEMENTATIONS
from .deform import deform_conv2d
from .detector import LossInputs, OneStageDetector

__all__ = ["VFNet", "VFNetHead", "star_dcn_offset", "vfnet_reg_denoms"]


def vfnet_reg_denoms(regress_ranges: Sequence[tuple[float, float]] = FCOS_REGRESS_RANGES) -> list[float]:
    """Upper end of each scale range, the last one twice the previous (mmdetection ``VFNetHead.reg_denoms``):
    ``[64, 128, 256, 512, 1024]`` for the FCOS ranges."""
    denoms = [float(hi) for _, hi in regress_ranges]
    denoms[-1] = denoms[-2] * 2
    return denoms


def star_dcn_offset(bbox_pred: Tensor, stride: float, gradient_mul: float = 0.1) -> Tensor:
    """Offsets of a 3x3 deformable conv sampling the 9 star points of the predicted boxes (VFNet Sec. 4).

    Args:
        bbox_pred: ``(B, 4, H, W)`` distances ``(l, t, r, b)`` in pixels.
        stride: the level's stride (pixels per feature cell).
        gradient_mul: fraction of the gradient that flows back into ``bbox_pred``.
    Returns:
        ``(B, 18, H, W)`` offsets in ``deform_conv2d``'s layout: for kernel point ``k = 3 * i + j`` (row ``i``,
        column ``j``), channels ``2k`` (dy) and ``2k + 1`` (dx). Kernel point ``(i, j)`` is moved from the regular
        grid position ``(i - 1, j - 1)`` to ``(y_i, x_j)`` with ``y = (-t, 0, b)``, ``x = (-l, 0, r)`` (in cells).
    """
    scaled = ((1 - gradient_mul) * bbox_pred.detach() + gradient_mul * bbox_pred) / stride
    left, top, right, bottom = scaled.unbind(1)  # each (B, H, W)
    zeros = torch.zeros_like(left)
    ys = torch.stack((-top, zeros, bottom), dim=1)  # (B, 3, H, W), row i
    xs = torch.stack((-left, zeros, right), dim=1)  # column j
    batch, _, height, width = ys.shape
    y = ys[:, :, None].expand(batch, 3, 3, height, width)
    x = xs[:, None, :].expand(batch, 3, 3, height, width)
    base = torch.arange(-1.0, 2.0, device=bbox_pred.device, dtype=bbox_pred.dtype)
    y = y - base.view(1, 3, 1, 1, 1)
    x = x - base.view(1, 1, 3, 1, 1)
    return torch.stack((y, x), dim=3).reshape(batch, 18, height, width)


class VFNetHead(nn.Module):
    """VFNet head with star-shaped deformable refinement.

    Args:
        in_channels: FPN channels.
        num_classes: ``C``.
        strides: stride of each level.
        reg_denoms: per level, the scale of the initial box (:func:`vfnet_reg_denoms`).
        num_convs: convs per tower (3).
        feat_channels: tower channels (default ``in_channels``).
        norm_layer: ``channels -> nn.Module`` (default :func:`group_norm`).
        gradient_mul: gradient fraction from the deformable offsets into the initial box (0.1).
        prior_probability: initial foreground probability (0.01).
        deform_conv_impl: ``"auto"`` (default: bilinear sampling on CPU, torchvision's kernel elsewhere),
            ``"torchvision"`` or ``"sampling"``; see :func:`umop.models.deform.deform_conv2d`. The weights
            live in ``DeformConv2d`` modules either way.

    ``forward(features) -> {"cls_logits": (B, A, C), "bbox_init": (B, A, 4), "bbox_regression": (B, A, 4)}``,
    the box outputs being distances ``(l, t, r, b)`` in pixels (initial and refined).
    """

    def __init__(self, in_channels: int, num_classes: int, strides: Sequence[int] = (8, 16, 32, 64, 128),
                 reg_denoms: Optional[Sequence[float]] = None, num_convs: int = 3,
                 feat_channels: Optional[int] = None, norm_layer: Optional[NormLayer] = group_norm,
                 gradient_mul: float = 0.1, prior_probability: float = 0.01,
                 deform_conv_impl: str = "auto") -> None:
        super().__init__()
        if deform_conv_impl not in DEFORM_IMPLEMENTATIONS:
            raise ValueError(f"deform_conv_impl must be one of {DEFORM_IMPLEMENTATIONS}, "
                             f"got {deform_conv_impl!r}")
        self.deform_conv_impl = deform_conv_impl
        feat_channels = feat_channels or in_channels
        self.strides = [int(s) for s in strides]
        self.reg_denoms = list(reg_denoms) if reg_denoms is not None else vfnet_reg_denoms()
        if len(self.reg_denoms) != len(self.strides):
            raise ValueError(f"reg_denoms ({len(self.reg_denoms)}) must have one entry per stride ({len(self.strides)})")
        self.gradient_mul = gradient_mul
        self.cls_convs = conv_tower(in_channels, feat_channels, num_convs, norm_layer)
        self.reg_convs = conv_tower(in_channels, feat_channels, num_convs, norm_layer)
        self.reg_conv_init = conv_tower(feat_channels, feat_channels, 1, norm_layer)
        self.reg_init = prediction_conv(feat_channels, 4)
        self.reg_refine_dconv = DeformConv2d(feat_channels, feat_channels, 3, padding=1, bias=False)
        self.reg_refine = prediction_conv(feat_channels, 4)
        self.cls_dconv = DeformConv2d(feat_channels, feat_channels, 3, padding=1, bias=False)
        self.cls = prediction_conv(feat_channels, num_classes, prior_bias(prior_probability))
        for dconv in (self.reg_refine_dconv, self.cls_dconv):
            nn.init.normal_(dconv.weight, std=0.01)
        self.scales = nn.ModuleList([Scale(1.0) for _ in self.strides])
        self.scales_refine = nn.ModuleList([Scale(1.0) for _ in self.strides])

    def _deform(self, conv: DeformConv2d, feature: Tensor, offset: Tensor) -> Tensor:
        return deform_conv2d(feature, offset, conv.weight, conv.bias, padding=1,
                             implementation=self.deform_conv_impl)

    def forward(self, features: Sequence[Tensor]) -> dict[str, Tensor]:
        if len(features) != len(self.strides):
            raise ValueError(f"features: expected {len(self.strides)} levels, got {len(features)}")
        cls_logits, boxes_init, boxes_refine = [], [], []
        for level, feature in enumerate(features):
            cls_feat = self.cls_convs(feature)
            reg_feat = self.reg_convs(feature)
            init = self.scales[level](self.reg_init(self.reg_conv_init(reg_feat))).float().exp()
            init = init * self.reg_denoms[level]  # (B, 4, H, W) pixels
            offset = star_dcn_offset(init, self.strides[level], self.gradient_mul).to(reg_feat.dtype)
            refine_feat = F.relu(self._deform(self.reg_refine_dconv, reg_feat, offset))
            refine = self.scales_refine[level](self.reg_refine(refine_feat)).float().exp() * init.detach()
            cls_logits.append(flatten_level(self.cls(F.relu(self._deform(self.cls_dconv, cls_feat, offset)))))
            boxes_init.append(flatten_level(init))
            boxes_refine.append(flatten_level(refine))
        return {"cls_logits": torch.cat(cls_logits, 1), "bbox_init": torch.cat(boxes_init, 1),
                "bbox_regression": torch.cat(boxes_refine, 1)}


class VFNet(OneStageDetector):
    """VarifocalNet on an FPN backbone.

    Args:
        backbone: FPN backbone returning P3..P7.
        num_classes: number of object classes.
        anchor_generator: default: one ``anchor_scale * stride`` square per location, centres at
            ``(i * stride, j * stride)`` (mmdetection ``center_offset=0.0``).
        head: default :class:`VFNetHead`.
        assigner: default ``ATSSAssigner(num_classes, topk=9)``.
        head_norm_layer, num_convs, gradient_mul, prior_probability, deform_conv_impl: head options.
        **kwargs: :class:`OneStageDetector` options: ``cls_loss`` (default varifocal), ``box_loss`` (default
            GIoU), ``sampler``, ``reweighting``, ``loss_weights``, inference settings.

    Training returns ``{"loss_cls", "loss_box" (refined), "loss_box_init", "stats"}``; loss weights 1, 2, 1.5.
    """

    box_outputs = {"loss_box": "bbox_regression", "loss_box_init": "bbox_init"}
    default_cls_loss = "varifocal"
    default_box_loss = "giou"
    default_loss_weights = {"loss_cls": 1.0, "loss_box": 2.0, "loss_box_init": 1.5}
    default_nms_thresh = 0.6

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        anchor_generator: Optional[AnchorGenerator] = None,
        anchor_scale: float = 8.0,
        head: Optional[nn.Module] = None,
        assigner: Optional[Callable[..., AssignResult]] = None,
        head_norm_layer: Optional[NormLayer] = group_norm,
        num_convs: int = 3,
        gradient_mul: float = 0.1,
        prior_probability: float = 0.01,
        deform_conv_impl: str = "auto",
        **kwargs: Any,
    ) -> None:
        strides = list(getattr(backbone, "strides", (8, 16, 32, 64, 128)))
        if anchor_generator is None:
            anchor_generator = AnchorGenerator([(anchor_scale * s,) for s in strides], [(1.0,)] * len(strides),
                                               strides, round_base=False, offset=0.0)
        if anchor_generator.num_priors_per_location != 1:
            raise ValueError("anchor_generator: VFNet uses one anchor per location, got "
                             f"{anchor_generator.num_priors_per_location}")
        if head is None:
            head = VFNetHead(backbone.out_channels, num_classes, strides, num_convs=num_convs,
                             norm_layer=head_norm_layer, gradient_mul=gradient_mul,
                             prior_probability=prior_probability, deform_conv_impl=deform_conv_impl)
        super().__init__(backbone, head, anchor_generator, num_classes, **kwargs)
        self.assigner = assigner or ATSSAssigner(num_classes, topk=9)
        self.box_coder = DistancePointCoder()  # decodes distances from the anchor centres

    def box_weights(self, inputs: LossInputs) -> dict[str, tuple[Tensor, Tensor]]:
        """Each box weighted by its own (detached) IoU with its gt, divided by the sum (>= 1; VFNet / mmdet)."""
        decoded_init = inputs.decoded("bbox_init")  # outside no_grad: the cached boxes feed the box loss too
        with torch.no_grad():
            iou_init = aligned_box_iou(*masked_box_pairs(decoded_init, inputs.matched_boxes,
                                                         inputs.positive)).clamp(min=1e-6) * inputs.positive_f
        return {key: (iou, mean_over_processes(iou.sum()).clamp(min=1))
                for key, iou in (("loss_box", inputs.quality), ("loss_box_init", iou_init))}

    def classification_weight(self, assign_result: AssignResult, dtype: torch.dtype) -> Tensor:
        """As mmdetection's ``VFNetHead``: the varifocal loss gets no label weights (the priors outside their
        image count as background, weight 1); every other classification loss gets the valid priors only. The
        level statistics count the valid priors either way (``valid=`` of the loss protocol)."""
        if isinstance(self.cls_loss, VarifocalLoss):
            return torch.ones_like(assign_result.labels, dtype=dtype)
        return super().classification_weight(assign_result, dtype)
