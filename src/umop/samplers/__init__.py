"""Samplers of the imbalance toolkit (survey "Imbalance Problems in Object Detection", Oksuz et al. TPAMI
2020, Sec. 4.1.1 hard sampling) for dense detectors.

Functional forms (batched ``(B, A)`` tensors, boolean selection masks per image): :func:`ohem_select`,
:func:`iou_balanced_negative_sample`. Modules implementing the :class:`Sampler` protocol
(``weight = sampler(logits, targets, labels, max_ious, weight)``, see :mod:`umop.samplers.base`), by config
name in ``SAMPLERS``: ``ohem``, ``iou_balanced``, ``random``; ``REWEIGHTINGS`` holds ``pisa``
(:class:`umop.losses.PISA`). ``build_sampler`` / ``build_reweighting`` validate options and build.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from ..losses.pisa import PISA
from ..registry import Registry
from .base import Sampler
from .iou_balanced import IoUBalancedSampler, iou_balanced_negative_sample
from .ohem import OHEMSampler, ohem_select
from .random_sampling import RandomSampler

__all__ = ["ohem_select", "iou_balanced_negative_sample", "Sampler", "OHEMSampler", "IoUBalancedSampler",
           "RandomSampler", "SAMPLERS", "REWEIGHTINGS", "build_sampler", "build_reweighting"]

SAMPLERS: Registry[Sampler] = Registry("sampler", Sampler)
SAMPLERS.register("ohem", OHEMSampler, "Liu et al., SSD, ECCV 2016 (hard negative mining, 3:1); "
                  "Shrivastava et al., OHEM, CVPR 2016")
SAMPLERS.register("iou_balanced", IoUBalancedSampler, "Pang et al., Libra R-CNN, CVPR 2019 (IoU-balanced sampling)")
SAMPLERS.register("random", RandomSampler, "Girshick, Fast R-CNN, ICCV 2015 (minibatch with a positive fraction)")

REWEIGHTINGS: Registry[nn.Module] = Registry("sample reweighting", PISA)
REWEIGHTINGS.register("pisa", PISA, "Cao et al., Prime Sample Attention in Object Detection, CVPR 2020")


def build_sampler(name_or_module: str | Sampler, **options: Any) -> Sampler:
    """A sampler from its config name and options (validated), or the given module."""
    return SAMPLERS.build(name_or_module, **options)


def build_reweighting(name_or_module: str | PISA, **options: Any) -> PISA:
    """A sample reweighting (``pisa``) from its name and options (validated), or the given module."""
    return REWEIGHTINGS.build(name_or_module, **options)
