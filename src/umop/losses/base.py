"""The protocols a detector's injected loss components implement.

:class:`ClassificationLoss` — one classification loss of a dense detector::

    loss, stats = cls_loss(logits, targets, num_priors_per_level, weight, avg_factor,
                           quality=None, loc_error=None, positive=None, valid=None)

- ``logits``: ``(B, A, C)``, the priors (anchors / points) of all pyramid levels concatenated in level order;
- ``targets``: ``(B, A, C)`` float one-hot targets (a background prior is a row of zeros);
- ``num_priors_per_level``: ``[A_P3, ..., A_P7]`` summing to ``A``;
- ``weight``: ``(B, A)`` or ``None``; 0 marks an ignored / invalid prior (and a sampler's unselected
  negative), a positive value multiplies the prior's loss;
- ``avg_factor``: the loss normaliser (a float or a 0-d tensor, typically the number of positives >= 1);
- ``quality``: ``(B, A)`` or ``None``, the IoU of the decoded predicted box with its ground truth at the
  positives (any value elsewhere), for losses with IoU-aware targets (``needs_quality``);
- ``loc_error``: ``(B, A)`` or ``None``, the per-prior localisation loss (with gradient), for losses that
  also produce the box loss (``needs_loc_error``);
- ``positive``: ``(B, A)`` bool or ``None``, optional: the assignment's positive mask, used only for the
  statistics (without it they are read from ``targets``, one extra pass over ``(B, A, C)``);
- ``valid``: ``(B, A)`` bool or ``None``, optional: the priors inside their image (the detector's valid
  flags), used only for the statistics: a prior counts where ``weight > 0`` and it is valid. It matters where
  a loss weighs the priors of the padding too (VFNet's varifocal loss, as mmdetection's ``VFNetHead``).

It returns the loss (a 0-d tensor, or with ``replaces_box_loss`` a dict ``{"loss_cls", "loss_box"}``) and a
dict of per-level statistics, every tensor ``(L,)`` and detached: ``num_positive`` (positive priors with
weight > 0) and ``num_anchors`` (valid priors with weight > 0, summed over the batch), computed once here for every
loss; a loss may add its own (PFL: ``gamma_ad``, ``alpha_ad``). Subclasses implement :meth:`compute`.

Class attributes say what a loss needs, so that a detector can prepare its inputs and ``build_detector`` can
reject a combination that makes no sense:

- ``needs_quality``: ``quality`` is required;
- ``needs_loc_error``: ``loc_error`` is required;
- ``replaces_box_loss``: the loss returns ``{"loss_cls", "loss_box"}`` and the detector's box loss is only
  used to compute ``loc_error`` (aLRP loss);
- ``accepts_sampler``: a sampler's weight (0 for unselected negatives) may be given; ranking losses that rank
  every prior of the batch against each other do not accept one.

:class:`BoxLoss` — one box regression loss::

    loss = box_loss(pred, target, weight=None, avg_factor=None)

with ``pred``, ``target`` ``(N, 4)`` and ``weight`` ``(N,)`` or ``None``; ``space`` says whether they are
decoded ``xyxy`` boxes (``"boxes"``: IoU-family losses) or encoded regression deltas (``"deltas"``: L1-family
losses, GHM-R, KL). ``needs_log_var``: the loss needs the predicted log-variance ``(N, 4)`` of the deltas as
``log_var=`` (KL loss), and the detector needs the variance branch.
"""
from __future__ import annotations

from typing import ClassVar, Sequence

import torch
from torch import Tensor, nn

from ..structures.levels import level_matrix_for
from .fused_focal import last_dim_sums
from .reduction import REDUCTIONS, check_reduction

__all__ = ["ClassificationLoss", "BoxLoss", "level_statistics", "check_classification_inputs"]


def check_classification_inputs(logits: Tensor, targets: Tensor, num_priors_per_level: Sequence[int],
                                weight: Tensor | None) -> None:
    """ValueError naming the argument when the shapes do not follow the protocol."""
    if logits.dim() != 3:
        raise ValueError(f"logits must be (B, A, C), got shape {tuple(logits.shape)}")
    if targets.shape != logits.shape:
        raise ValueError(f"targets {tuple(targets.shape)} must have the shape of logits {tuple(logits.shape)}")
    counts = [int(n) for n in num_priors_per_level]
    if sum(counts) != logits.shape[1] or any(n < 0 for n in counts):
        raise ValueError(f"num_priors_per_level {counts} sums to {sum(counts)}, but logits "
                         f"{tuple(logits.shape)} has A={logits.shape[1]} priors")
    if weight is not None and weight.shape != logits.shape[:2]:
        raise ValueError(f"weight must be (B, A) = {tuple(logits.shape[:2])}, got {tuple(weight.shape)}")


def level_statistics(targets: Tensor, num_priors_per_level: Sequence[int], weight: Tensor | None,
                     positive: Tensor | None = None, valid: Tensor | None = None) -> dict[str, Tensor]:
    """``num_positive`` and ``num_anchors`` per level ``(L,)`` float32, summed over the batch.

    A prior is positive when its target row sums to more than 0 (targets are >= 0), or where the given
    ``positive (B, A)`` mask says so (a detector has it from the assignment: no pass over the targets); it
    counts only with ``weight > 0`` and, when ``valid (B, A)`` is given, only where it is True. One
    ``(2, A) @ (A, L)`` product; no host synchronisation.
    """
    with torch.no_grad():
        if positive is None:      # one BLAS pass, no (B, A, C) temporary
            positive = last_dim_sums(targets if targets.is_floating_point() else targets.float()) > 0
        positive = positive.bool()
        counted = weight > 0 if weight is not None else None
        if valid is not None:
            counted = valid.bool() if counted is None else counted & valid.bool()
        if counted is not None:
            per_prior = torch.stack([(positive & counted).sum(0), counted.sum(0)]).float()   # (2, A)
        else:
            per_prior = torch.stack([positive.sum(0).float(),
                                     torch.full_like(positive[0], targets.shape[0], dtype=torch.float32)])
        sums = per_prior @ level_matrix_for(num_priors_per_level, targets.device, torch.float32)
    return {"num_positive": sums[0], "num_anchors": sums[1]}


class ClassificationLoss(nn.Module):
    """Base class of the classification losses a detector takes (protocol in the module docstring)."""

    needs_quality: ClassVar[bool] = False
    needs_loc_error: ClassVar[bool] = False
    replaces_box_loss: ClassVar[bool] = False
    accepts_sampler: ClassVar[bool] = True

    def __init__(self, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.loss_weight = float(loss_weight)

    def forward(self, logits: Tensor, targets: Tensor, num_priors_per_level: Sequence[int],
                weight: Tensor | None = None, avg_factor: float | Tensor | None = None, *,
                quality: Tensor | None = None, loc_error: Tensor | None = None, positive: Tensor | None = None,
                valid: Tensor | None = None) -> tuple[Tensor | dict[str, Tensor], dict[str, Tensor]]:
        check_classification_inputs(logits, targets, num_priors_per_level, weight)
        for arg, mask in (("positive", positive), ("valid", valid)):
            if mask is not None and mask.shape != logits.shape[:2]:
                raise ValueError(f"{arg} must be (B, A) = {tuple(logits.shape[:2])}, got {tuple(mask.shape)}")
        name = type(self).__name__
        if self.needs_quality and quality is None:
            raise ValueError(f"{name} needs quality (B, A): the IoU of each positive's decoded box")
        if self.needs_loc_error and loc_error is None:
            raise ValueError(f"{name} needs loc_error (B, A): the per-prior localisation loss")
        for arg, value in (("quality", quality), ("loc_error", loc_error)):
            if value is not None and value.shape != logits.shape[:2]:
                raise ValueError(f"{arg} must be (B, A) = {tuple(logits.shape[:2])}, got {tuple(value.shape)}")
        if avg_factor is None:
            avg_factor = 1.0
        loss, extra = self.compute(logits, targets, num_priors_per_level, weight, avg_factor,
                                   quality=quality, loc_error=loc_error)
        stats = level_statistics(targets, num_priors_per_level, weight, positive, valid)
        stats.update({key: value.detach() for key, value in extra.items()})
        if self.loss_weight != 1.0:
            loss = ({key: self.loss_weight * value for key, value in loss.items()} if isinstance(loss, dict)
                    else self.loss_weight * loss)
        return loss, stats

    def compute(self, logits: Tensor, targets: Tensor, num_priors_per_level: Sequence[int],
                weight: Tensor | None, avg_factor: float | Tensor, *, quality: Tensor | None,
                loc_error: Tensor | None) -> tuple[Tensor | dict[str, Tensor], dict[str, Tensor]]:
        """The loss (summed over the valid elements and divided by ``avg_factor``) and extra (L,) stats."""
        raise NotImplementedError


class BoxLoss(nn.Module):
    """Base class of the box regression losses a detector takes (protocol in the module docstring).

    Subclasses implement :meth:`loss` (the functional loss with the module's options: weight, reduction and
    ``avg_factor`` applied); :meth:`forward` resolves ``reduction_override`` and multiplies by ``loss_weight``.
    """

    space: ClassVar[str] = "deltas"      # "boxes" (decoded xyxy) or "deltas" (encoded regression targets)
    needs_log_var: ClassVar[bool] = False

    def __init__(self, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__()
        self.reduction = check_reduction(reduction, REDUCTIONS)
        self.loss_weight = float(loss_weight)

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None,
                avg_factor: float | Tensor | None = None, reduction_override: str | None = None,
                **kwargs: Tensor) -> Tensor:
        reduction = check_reduction(reduction_override or self.reduction)
        return self.loss_weight * self.loss(pred, target, weight, reduction, avg_factor, **kwargs)

    def loss(self, pred: Tensor, target: Tensor, weight: Tensor | None, reduction: str,
             avg_factor: float | Tensor | None, **kwargs: Tensor) -> Tensor:
        """The functional loss with this module's options."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"space={self.space!r}, reduction={self.reduction!r}, loss_weight={self.loss_weight}"
