"""Element-weight handling shared by the losses (mmdetection semantics)."""
from __future__ import annotations

import torch
from torch import Tensor


def broadcast_weight(weight: Tensor | None, pred: Tensor, name: str = "weight") -> Tensor | None:
    """Return ``weight`` ready to multiply an element-wise loss of ``pred``'s shape, or None.

    A weight of shape ``pred.shape[:-1]`` (one weight per row, e.g. per anchor for (B, A, C) logits or per
    box for (N, 4) boxes) gets a trailing dimension; any other weight must broadcast to ``pred.shape``.
    Raises ``ValueError`` naming the argument and both shapes otherwise.
    """
    if weight is None:
        return None
    if pred.ndim >= 1 and weight.shape == pred.shape[:-1] and weight.shape != pred.shape:
        weight = weight.unsqueeze(-1)
    try:
        shape = torch.broadcast_shapes(weight.shape, pred.shape)
    except RuntimeError:
        shape = None
    if shape != pred.shape:
        raise ValueError(f"{name} of shape {tuple(weight.shape)} does not broadcast to pred's shape "
                         f"{tuple(pred.shape)} (nor equals pred.shape[:-1])")
    return weight
