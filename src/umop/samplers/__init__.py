"""Samplers of the imbalance toolkit (survey "Imbalance Problems in Object Detection", Oksuz et al. TPAMI
2020, Sec. 4.1.1 hard sampling): online hard example mining and IoU-balanced negative sampling.

Both work on batched ``(B, A)`` tensors and return a boolean selection mask, per image independently.
"""
from .iou_balanced import iou_balanced_negative_sample
from .ohem import ohem_select

__all__ = ["ohem_select", "iou_balanced_negative_sample"]
