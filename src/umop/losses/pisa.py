"""PISA: Prime Sample Attention (Cao, Chen, Loy and Lin, "Prime Sample Attention in Object Detection",
CVPR 2020, arXiv:1904.04821), the one-stage form used by mmdetection's ``pisa_retinanet``.

- **IoU-HLR** (Sec. 3.2): the hierarchical local rank of each positive. Positives are grouped by their ground
  truth and sorted by IoU (of the *predicted* box with its ground truth) to get a local rank; then all the
  positives of a class (over the whole batch) are sorted by (local rank ascending, IoU descending), and the
  position in that order is the IoU-HLR ``r`` (0 = most prime).
- **ISR-P** (Sec. 3.3, Eq. 2-3): importance-based positive re-weighting of the classification loss,
  ``u = (n_max - r) / n_max`` with ``n_max`` the largest number of positives of any class,
  ``w' = ((1 - bias) * u * w + bias) ** k`` (``w`` the original label weight), then rescaled so that the
  positives' weighted classification loss is unchanged: ``w'' = w' * sum(L w) / sum(L w')``.
  RetinaNet setting: ``k = 2``, ``bias = 0``.
- **CARL** (Sec. 3.4, Eq. 4-5): classification-aware regression loss. Each positive's regression loss is
  multiplied by ``v = ((1 - bias) * p + bias) ** k`` with ``p`` the predicted score of its ground-truth class
  (sigmoid for one-stage), normalised so the weights sum to the number of positives; the gradient flows into
  the classification branch through ``p``. RetinaNet setting: ``k = 1``, ``bias = 0.2``.

Differences from mmdetection's ``isr_p`` / ``carl_loss``: batched ``(B, A)`` inputs in umop's label convention
(``0..C-1`` positive, ``C`` background, ``-1`` ignored) and vectorised with stable sorts instead of Python
loops over classes and ground truths (no host synchronisation); ties in IoU are broken by anchor order
(mmdetection's unstable sort leaves them arbitrary); mmdetection ranks by the float key
``iou + n_max - local_rank``, which equals our lexicographic (local rank, IoU) order except for the corner case
IoU = 1 vs IoU = 0 in adjacent local ranks. ``isr_p`` takes the IoUs and the per-anchor classification loss
from the caller instead of a box coder and a loss module.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["hierarchical_local_rank", "isr_p", "carl_loss", "CARLLoss", "PISA"]


def _check_labels(name: str, labels: Tensor, ref: Tensor) -> None:
    if labels.shape != ref.shape:
        raise ValueError(f"{name} must have shape {tuple(ref.shape)}, got {tuple(labels.shape)}")


def _rank_within_groups(primary: Tensor, order: Tensor) -> Tensor:
    """Given ``order`` sorting by ``primary`` (ascending, stable), return each element's rank in its group."""
    sorted_keys = primary[order]
    starts = torch.searchsorted(sorted_keys, sorted_keys, right=False)
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(order.numel(), device=order.device) - starts
    return ranks


def hierarchical_local_rank(ious: Tensor, labels: Tensor, matched_gt: Tensor,
                            num_classes: int) -> tuple[Tensor, Tensor]:
    """IoU-HLR of every positive (PISA Sec. 3.2), ranked per class over the whole batch.

    Args:
        ious: (B, A) IoU of each anchor's predicted box with its matched ground truth.
        labels: (B, A) long, ``0..num_classes-1`` positive, ``num_classes`` background, ``-1`` ignored.
        matched_gt: (B, A) long, per-image index of the matched ground truth (any value for non-positives).
        num_classes: number of foreground classes.

    Returns:
        ``(rank, n_max)``: rank (B, A) long, the IoU-HLR (0 = most prime) for positives, -1 elsewhere;
        n_max: 0-d long tensor, the largest number of positives of a class (0 without positives).
    """
    if ious.ndim != 2:
        raise ValueError(f"ious must have shape (B, A), got {tuple(ious.shape)}")
    _check_labels("labels", labels, ious)
    _check_labels("matched_gt", matched_gt, ious)
    batch, num = ious.shape
    positive = (labels >= 0) & (labels < num_classes)
    flat_pos = positive.reshape(-1)
    iou = ious.detach().reshape(-1)
    gt = matched_gt.reshape(-1).long().clamp(min=0)
    image = torch.arange(batch, device=ious.device).repeat_interleave(num)
    num_gt = gt.max().clamp(min=0) + 1 if gt.numel() else torch.ones((), dtype=torch.long, device=ious.device)
    cls = torch.where(flat_pos, labels.reshape(-1).long(), torch.full_like(gt, num_classes))
    # one group per (image, gt, class) -- a gt has a single class, the class only guards inconsistent input
    group = (image * num_gt + gt) * (num_classes + 1) + cls

    # local rank: IoU descending inside each ground truth's group
    by_iou = torch.argsort(-iou, stable=True)
    order = by_iou[torch.argsort(group[by_iou], stable=True)]
    local = _rank_within_groups(group, order)

    # class rank: (local rank ascending, IoU descending) inside each class
    order = by_iou[torch.argsort(local[by_iou], stable=True)]
    order = order[torch.argsort(cls[order], stable=True)]
    rank = _rank_within_groups(cls, order)

    counts = torch.zeros(num_classes + 1, dtype=torch.long, device=ious.device).scatter_add_(
        0, cls, torch.ones_like(cls))[:num_classes]
    n_max = counts.max() if num_classes > 0 else counts.new_zeros(())
    rank = torch.where(flat_pos, rank, torch.full_like(rank, -1))
    return rank.view(batch, num), n_max


def isr_p(ious: Tensor, labels: Tensor, matched_gt: Tensor, cls_loss: Tensor, num_classes: int,
          label_weights: Tensor | None = None, *, k: float = 2.0, bias: float = 0.0) -> Tensor:
    """ISR-P: importance-based re-weighting of the positives' classification weights (PISA Eq. 2-3).

    Args:
        ious: (B, A) IoU of each anchor's predicted (decoded) box with its matched ground truth.
        labels: (B, A) long, ``0..num_classes-1`` positive, ``num_classes`` background, ``-1`` ignored.
        matched_gt: (B, A) long per-image ground-truth index of each anchor.
        cls_loss: (B, A) per-anchor classification loss (e.g. the focal loss summed over classes, computed
            with ``reduction="none"``); used only to keep the positives' total loss unchanged.
        num_classes: number of foreground classes.
        label_weights: (B, A) original classification weights (ones when ``None``).
        k, bias: the non-linear mapping (RetinaNet: k = 2, bias = 0).

    Returns:
        (B, A) new label weights (no gradient): re-weighted for positives, unchanged elsewhere.
    """
    if label_weights is None:
        label_weights = torch.ones_like(ious)
    _check_labels("cls_loss", cls_loss, ious)
    _check_labels("label_weights", label_weights, ious)
    rank, n_max = hierarchical_local_rank(ious, labels, matched_gt, num_classes)
    positive = rank >= 0
    with torch.no_grad():
        lw = label_weights.detach().to(ious.dtype)
        n = n_max.clamp(min=1).to(ious.dtype)
        u = (n - rank.to(ious.dtype)) / n                                  # linear map of the HLR
        imp = (bias + lw * u * (1 - bias)).pow(k)
        loss = cls_loss.detach().to(ious.dtype)
        original = (loss * lw * positive).sum()
        new = (loss * imp * positive).sum()
        ratio = torch.where(new > 0, original / torch.where(new > 0, new, torch.ones_like(new)),
                            torch.ones_like(new))
        return torch.where(positive, imp * ratio, lw)


def carl_loss(cls_score: Tensor, labels: Tensor, reg_loss: Tensor, num_classes: int, *, k: float = 1.0,
              bias: float = 0.2, avg_factor: float | Tensor | None = None, sigmoid: bool = True) -> Tensor:
    """CARL: classification-aware regression loss (PISA Eq. 4-5), one-stage form.

    Args:
        cls_score: (B, A, C) classification logits (``C = num_classes`` for sigmoid, ``num_classes + 1``
            with a background column for softmax).
        labels: (B, A) long, ``0..num_classes-1`` positive, ``num_classes`` background, ``-1`` ignored.
        reg_loss: (B, A) or (B, A, 4) un-reduced regression loss of every anchor (e.g. smooth L1 against the
            regression targets; non-positives are ignored).
        num_classes: number of foreground classes.
        k, bias: the mapping (RetinaNet: k = 1, bias = 0.2).
        avg_factor: divisor of the weighted sum (default: the number of positives, at least 1; mmdetection's
            ``pisa_retinanet`` passes the number of positives).
        sigmoid: sigmoid scores (one-stage) or softmax over the last dimension.

    Returns:
        scalar ``sum_i v_i * reg_loss_i / avg_factor``; gradients reach both ``cls_score`` and ``reg_loss``.
    """
    if cls_score.ndim != 3 or cls_score.shape[:2] != labels.shape:
        raise ValueError(f"cls_score must have shape (B, A, C) with (B, A) = labels.shape {tuple(labels.shape)}, "
                         f"got {tuple(cls_score.shape)}")
    if reg_loss.shape != labels.shape and reg_loss.shape[:-1] != labels.shape:
        raise ValueError(f"reg_loss must have shape {tuple(labels.shape)} or {tuple(labels.shape)} + (D,), "
                         f"got {tuple(reg_loss.shape)}")
    if sigmoid and cls_score.shape[-1] != num_classes:
        raise ValueError(f"cls_score has {cls_score.shape[-1]} columns, expected num_classes={num_classes} "
                         "for sigmoid scores")
    positive = (labels >= 0) & (labels < num_classes)
    prob = cls_score.sigmoid() if sigmoid else cls_score.softmax(-1)
    index = torch.where(positive, labels, torch.zeros_like(labels)).long().unsqueeze(-1)
    score = prob.gather(-1, index).squeeze(-1)                          # p of the gt class, keeps gradient
    weights = (bias + (1 - bias) * score).pow(k) * positive
    num_pos = positive.sum().to(cls_score.dtype)
    total = weights.sum()
    weights = weights * (num_pos / torch.where(total > 0, total, torch.ones_like(total)))
    if avg_factor is None:
        avg_factor = num_pos.clamp(min=1)
    per_anchor = reg_loss if reg_loss.shape == labels.shape else reg_loss.sum(-1)
    per_anchor = torch.where(positive, per_anchor, torch.zeros_like(per_anchor))
    return (per_anchor * weights).sum() / avg_factor


class CARLLoss(nn.Module):
    """Module form of :func:`carl_loss` with ``loss_weight``."""

    def __init__(self, num_classes: int, k: float = 1.0, bias: float = 0.2, sigmoid: bool = True,
                 loss_weight: float = 1.0) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.k, self.bias, self.sigmoid = float(k), float(bias), bool(sigmoid)
        self.loss_weight = float(loss_weight)

    def forward(self, cls_score: Tensor, labels: Tensor, reg_loss: Tensor,
                avg_factor: float | Tensor | None = None) -> Tensor:
        return self.loss_weight * carl_loss(cls_score, labels, reg_loss, self.num_classes, k=self.k,
                                            bias=self.bias, avg_factor=avg_factor, sigmoid=self.sigmoid)


class PISA(nn.Module):
    """PISA (Cao et al., CVPR 2020) as a sample-reweighting option of a dense detector (config
    ``model.reweighting: pisa``): ISR-P for the positives' classification weights and CARL as an extra loss.

    The detector calls, in its loss step (all inputs of one batch, labels in umop's convention)::

        weight = pisa.reweight(ious, labels, matched_gt, cls_loss_per_prior, weight)   # ISR-P, no gradient
        loss_carl = pisa.carl(logits, labels, box_loss_per_prior, avg_factor)          # CARL, with gradient

    with ``ious`` (B, A) the IoU of each prior's decoded box with its matched ground truth, ``matched_gt``
    (B, A) its per-image ground-truth index, ``cls_loss_per_prior`` (B, A) the classification loss summed over
    the classes (``reduction="none"``), ``box_loss_per_prior`` (B, A) the un-reduced box loss. RetinaNet's
    settings (mmdetection ``pisa_retinanet``): ISR-P ``k = 2, bias = 0``; CARL ``k = 1, bias = 0.2``.
    """

    def __init__(self, isr_k: float = 2.0, isr_bias: float = 0.0, carl_k: float = 1.0, carl_bias: float = 0.2,
                 carl_loss_weight: float = 1.0) -> None:
        super().__init__()
        for name, value in (("isr_bias", isr_bias), ("carl_bias", carl_bias)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        self.isr_k, self.isr_bias = float(isr_k), float(isr_bias)
        self.carl_k, self.carl_bias, self.carl_loss_weight = float(carl_k), float(carl_bias), float(carl_loss_weight)

    def reweight(self, ious: Tensor, labels: Tensor, matched_gt: Tensor, cls_loss_per_prior: Tensor,
                 weight: Tensor, num_classes: int) -> Tensor:
        """ISR-P (PISA Eq. 2-3): the positives' weights re-set by their IoU-HLR, (B, A), no gradient."""
        return isr_p(ious, labels, matched_gt, cls_loss_per_prior, num_classes, label_weights=weight,
                     k=self.isr_k, bias=self.isr_bias)

    def carl(self, logits: Tensor, labels: Tensor, box_loss_per_prior: Tensor,
             avg_factor: float | Tensor | None = None) -> Tensor:
        """CARL (PISA Eq. 4-5): ``carl_loss_weight * sum_i v_i box_loss_i / avg_factor`` over the positives."""
        return self.carl_loss_weight * carl_loss(logits, labels, box_loss_per_prior, logits.shape[-1],
                                                 k=self.carl_k, bias=self.carl_bias, avg_factor=avg_factor)

    def extra_repr(self) -> str:
        return (f"isr_k={self.isr_k}, isr_bias={self.isr_bias}, carl_k={self.carl_k}, "
                f"carl_bias={self.carl_bias}, carl_loss_weight={self.carl_loss_weight}")
