"""RetinaNet (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017).

9 anchors per location, max-IoU assignment 0.5 / 0.4 with low-quality matches, DeltaXYWH box deltas; the
classification loss (default focal), the box loss (default L1 on the deltas, mmdetection 1x), a sampler and
PISA are injected components (:class:`umop.models.detector.OneStageDetector`).
Parameter names equal torchvision's ``retinanet_resnet50_fpn`` so its weights load as they are
(:func:`load_torchvision_retinanet_weights`).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn
from torchvision.ops.misc import Conv2dNormActivation

from ..assigners.common import AssignResult
from ..assigners.max_iou import MaxIoUAssigner
from ..layers import log_variance_conv
from .anchors import AnchorGenerator, retinanet_anchor_generator
from .box_coder import DeltaXYWHBoxCoder
from .detector import AnchorBasedDetector

__all__ = ["RetinaNet", "RetinaNetHead", "RetinaNetClassificationHead", "RetinaNetRegressionHead",
           "load_torchvision_retinanet_weights"]


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
    """Box subnet: 4 convs + a 3x3 conv to ``num_anchors * 4`` deltas. ``forward -> (B, A, 4)``.

    With ``log_var=True`` a second 3x3 conv on the same tower predicts the log-variance ``alpha = log sigma^2``
    of each delta (KL loss, He et al. 2019, Sec. 3.2; weights N(0, 1e-4) as the paper's initialisation), and
    ``forward`` returns ``(deltas, log_var)``.
    """

    def __init__(self, in_channels: int, num_anchors: int, num_convs: int = 4,
                 norm_layer: Optional[Callable[..., nn.Module]] = None, log_var: bool = False) -> None:
        super().__init__()
        self.conv = _tower(in_channels, num_convs, norm_layer)
        self.bbox_reg = nn.Conv2d(in_channels, num_anchors * 4, kernel_size=3, padding=1)
        nn.init.normal_(self.bbox_reg.weight, std=0.01)
        nn.init.zeros_(self.bbox_reg.bias)
        self.bbox_log_var = log_variance_conv(in_channels, num_anchors * 4) if log_var else None

    def forward(self, features: list[Tensor]) -> Tensor | tuple[Tensor, Tensor]:
        towers = [self.conv(f) for f in features]
        deltas = torch.cat([_flatten_level(self.bbox_reg(t), 4) for t in towers], dim=1)
        if self.bbox_log_var is None:
            return deltas
        return deltas, torch.cat([_flatten_level(self.bbox_log_var(t), 4) for t in towers], dim=1)


class RetinaNetHead(nn.Module):
    """Both subnets. ``forward(features) -> {"cls_logits": (B, A, C), "bbox_regression": (B, A, 4)}`` (+
    ``"bbox_log_var"`` ``(B, A, 4)`` with ``log_var=True``)."""

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int, prior_probability: float = 0.01,
                 num_convs: int = 4, norm_layer: Optional[Callable[..., nn.Module]] = None,
                 log_var: bool = False) -> None:
        super().__init__()
        self.classification_head = RetinaNetClassificationHead(
            in_channels, num_anchors, num_classes, prior_probability, num_convs, norm_layer)
        self.regression_head = RetinaNetRegressionHead(in_channels, num_anchors, num_convs, norm_layer, log_var)

    def forward(self, features: list[Tensor]) -> dict[str, Tensor]:
        outputs = {"cls_logits": self.classification_head(features)}
        regression = self.regression_head(features)
        if isinstance(regression, tuple):
            outputs["bbox_regression"], outputs["bbox_log_var"] = regression
        else:
            outputs["bbox_regression"] = regression
        return outputs


class RetinaNet(AnchorBasedDetector):
    """RetinaNet on an FPN backbone.

    Args:
        backbone: FPN backbone (``umop.models.build_backbone``), returns P3..P7.
        num_classes: number of object classes.
        anchor_generator: default :func:`retinanet_anchor_generator` (9 anchors, sizes 4 * stride * 2^(k/3)).
        head: default :class:`RetinaNetHead` (with a log-variance branch when the box loss needs one).
        assigner: default ``MaxIoUAssigner(num_classes, 0.5, 0.4, low_quality_matches=True)``.
        head_norm_layer: normalisation in the head towers (None as in the paper; ``partial(nn.GroupNorm, 32)``
            as torchvision's v2).
        prior_probability: initial foreground probability of the classifier (0.01).
        head_num_convs: convs per head tower (4 in the paper).
        **kwargs: :class:`OneStageDetector` options: ``cls_loss`` (default focal), ``box_loss`` (default L1 on
            the deltas, mmdetection 1x), ``sampler``, ``reweighting``, ``loss_weights``, inference settings.

    Losses are sums over the batch divided by ``avg_factor = sum_i max(pos_i, 1)`` over the images (averaged
    over processes), as mmdetection's ``AnchorHead`` (torchvision instead averages per-image normalised
    losses). Anchors outside their image's own padded size are ignored (mmdetection's valid flags; label
    weight 0 and left out of the matching). Inference: mmdetection's / torchvision's NMS IoU 0.5. Loss
    weights: ``loss_cls`` 1, ``loss_box`` 1.
    """

    default_box_loss = "l1"
    default_loss_weights = {"loss_cls": 1.0, "loss_box": 1.0}
    default_nms_thresh = 0.5

    def __init__(self, backbone: nn.Module, num_classes: int, *, anchor_generator: Optional[AnchorGenerator] = None,
                 head: Optional[nn.Module] = None, assigner: Optional[Callable[..., AssignResult]] = None,
                 head_norm_layer: Optional[Callable[..., nn.Module]] = None, prior_probability: float = 0.01,
                 head_num_convs: int = 4, **kwargs: Any) -> None:
        strides = getattr(backbone, "strides", (8, 16, 32, 64, 128))
        anchor_generator = anchor_generator or retinanet_anchor_generator(strides)
        super().__init__(backbone, nn.Identity(), anchor_generator, num_classes, **kwargs)
        if head is None:
            head = RetinaNetHead(backbone.out_channels, anchor_generator.num_priors_per_location, num_classes,
                                 prior_probability=prior_probability, num_convs=head_num_convs,
                                 norm_layer=head_norm_layer, log_var=self.box_loss.needs_log_var)
        self.head = head
        self.assigner = assigner or MaxIoUAssigner(num_classes, 0.5, 0.4, low_quality_matches=True)
        self.box_coder = DeltaXYWHBoxCoder((1.0, 1.0, 1.0, 1.0))


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
