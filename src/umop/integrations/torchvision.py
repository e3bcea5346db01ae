"""UMOP for torchvision users: swap the focal loss of a torchvision RetinaNet / FCOS for PFL.

>>> model = torchvision.models.detection.retinanet_resnet50_fpn(weights=None, num_classes=3)
>>> use_progressive_focal_loss(model, delta=0.5)        # training code unchanged
>>> losses = model(images, targets)                        # "classification" is now PFL
>>> model.pfl_stats["gamma_ad"]                            # per-level gamma of the last batch

The classification loss of all images is computed in one batched call of
:func:`umop.losses.progressive_focal_loss` on ``(B, A, C)`` targets gathered from torchvision's matches, so
the per-level statistics (UMOP Eq. 4-6) pool the whole batch. Normalisation is torchvision's:
RetinaNet divides each image's sum by its foreground count and averages over images (done here through the
per-anchor ``weight``); FCOS divides the batch sum by the batch's foreground count.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import Tensor, nn

from ..assigners.common import pad_targets
from ..losses.progressive import progressive_focal_loss
from ..structures.targets import one_hot_targets

__all__ = ["use_progressive_focal_loss", "freeze_batchnorm"]

_BETWEEN_THRESHOLDS = -2  # torchvision Matcher.BETWEEN_THRESHOLDS (ignored anchors)


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` of ``module`` (in place) by torchvision's ``FrozenBatchNorm2d`` with the
    same statistics and affine parameters, and return ``module``.

    torchvision's detection builders do this only when an ImageNet backbone is loaded; with
    ``weights_backbone=None`` every BN trains. Use it to compare a randomly initialised torchvision detector
    with umop's (FrozenBN by default) on equal terms.
    """
    from torchvision.ops.misc import FrozenBatchNorm2d

    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(child, key).detach())
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module


def _gather_targets(targets: list[dict[str, Tensor]], matched_idxs: list[Tensor], num_classes: int,
                    dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """One-hot ``(B, A, C)`` targets, foreground ``(B, A)`` and valid ``(B, A)`` masks, batched."""
    matched = torch.stack(matched_idxs)  # (B, A)
    labels = pad_targets(targets, matched.device).labels  # (B, M)
    foreground = matched >= 0
    matched_labels = torch.gather(labels, 1, matched.clamp(min=0))
    matched_labels = torch.where(foreground, matched_labels, torch.full_like(matched_labels, num_classes))
    one_hot = one_hot_targets(matched_labels, foreground, num_classes, dtype)
    valid = matched != _BETWEEN_THRESHOLDS
    return one_hot, foreground, valid


def use_progressive_focal_loss(model: nn.Module, **pfl_options: Any) -> nn.Module:
    """Replace the classification loss of a torchvision ``RetinaNet`` or ``FCOS`` by PFL, in place.

    Args:
        model: ``torchvision.models.detection.RetinaNet`` or ``FCOS``.
        **pfl_options: keyword arguments of :func:`umop.losses.progressive_focal_loss` (``gamma``, ``delta``,
            ``w``, ``estimator``, ``level_reduction``, ``sync``).
    Returns:
        ``model``; after each training forward, ``model.pfl_stats`` holds the per-level tensors
        ``gamma_ad``, ``alpha_ad``, ``num_positive``, ``num_valid``.
    """
    from torchvision.models.detection import FCOS, RetinaNet

    if not isinstance(model, (RetinaNet, FCOS)):
        raise ValueError(f"model must be a torchvision RetinaNet or FCOS, got {type(model).__name__}")
    allowed = {"gamma", "delta", "w", "estimator", "level_reduction", "sync"}
    unknown = set(pfl_options) - allowed
    if unknown:
        raise ValueError(f"pfl_options: unknown {sorted(unknown)}; valid: {sorted(allowed)}")
    cls_head = model.head.classification_head
    num_classes = cls_head.num_classes

    def record_levels(module: nn.Module, inputs: tuple) -> None:
        features = inputs[0]
        module._umop_num_anchors_per_level = [f.shape[-2] * f.shape[-1] * module.num_anchors for f in features]

    if not getattr(cls_head, "_umop_pfl", False):
        cls_head.register_forward_pre_hook(record_levels)
    cls_head._umop_pfl = True

    def pfl_loss(targets: list[dict[str, Tensor]], cls_logits: Tensor, matched_idxs: list[Tensor],
                 per_image_normalisation: bool) -> Tensor:
        one_hot, foreground, valid = _gather_targets(targets, matched_idxs, num_classes, cls_logits.dtype)
        weight = valid.to(cls_logits.dtype)
        if per_image_normalisation:  # torchvision RetinaNet: sum_i loss_i / max(1, fg_i), mean over images
            per_image = foreground.sum(dim=1, keepdim=True).clamp(min=1).to(cls_logits.dtype)
            weight = weight / per_image
            avg_factor = float(len(targets))
        else:  # torchvision FCOS: batch sum / batch foreground count
            avg_factor = foreground.sum().clamp(min=1).to(cls_logits.dtype)
        loss, stats = progressive_focal_loss(
            cls_logits, one_hot, cls_head._umop_num_anchors_per_level, weight=weight, avg_factor=avg_factor,
            return_stats=True, **pfl_options,
        )
        model.pfl_stats = {k: v.detach() for k, v in stats.items()}
        return loss

    if isinstance(model, RetinaNet):
        def retinanet_cls_loss(self, targets, head_outputs, matched_idxs):
            return pfl_loss(targets, head_outputs["cls_logits"], matched_idxs, per_image_normalisation=True)

        cls_head.compute_loss = types.MethodType(retinanet_cls_loss, cls_head)
    else:
        head = model.head
        original = type(head).compute_loss

        def fcos_loss(self, targets, head_outputs, anchors, matched_idxs):
            losses = original(self, targets, head_outputs, anchors, matched_idxs)
            losses["classification"] = pfl_loss(targets, head_outputs["cls_logits"], matched_idxs,
                                                per_image_normalisation=False)
            return losses

        head.compute_loss = types.MethodType(fcos_loss, head)
    return model
