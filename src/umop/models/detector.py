"""``OneStageDetector``: the shared body of RetinaNet, ATSS, FCOS and VFNet.

The detector produces the training targets and calls the loss components it was given (DETR's model /
criterion split, torchvision's constructor injection, mmdetection's one loss convention):

1. input checks, ImageNet normalisation, zero padding (bottom / right) to a multiple of 32 -- no resizing;
2. ``features = self.backbone(batch)`` (list P3..P7), ``head_outputs = self.head(features)``;
3. priors (anchors or points) for the padded batch from ``self.prior_generator``, and in training their
   per-image valid flags ``(B, A)`` (mmdetection's rule: inside the image's own size padded to /32; priors in
   the padding added for a larger image of the batch are invalid), when ``uses_valid_flags`` (RetinaNet,
   ATSS, VFNet; not FCOS, whose mmdetection head has none);
4. training: padded ground truth -> ``self.assign(...)`` -> :meth:`compute_losses`, which builds the targets
   (one-hot labels, prior weights, box targets, box weights, ``avg_factor``) and calls the injected modules:
   ``cls_loss`` (:class:`umop.losses.ClassificationLoss`), ``box_loss`` (:class:`umop.losses.BoxLoss`), an
   optional ``sampler`` (:class:`umop.samplers.Sampler`) and an optional sample ``reweighting`` (PISA);
   every ``"loss_*"`` term is multiplied by the detector's weight table ``loss_weights``;
   inference: ``self.postprocess(...)`` (as mmdetection's ``_predict_by_feat_single`` +
   ``_bbox_post_process``: per level the top-k of the class scores above the score threshold, times the
   optional score factors (centerness), decode, clip, drop zero-area boxes, class-wise NMS, cap).

What the detector computes for a loss that asks for it (the module's class attributes):
``needs_quality`` -> ``quality`` = IoU of each positive's decoded box with its gt (VFNet's refined box);
``needs_loc_error`` -> ``loc_error`` = the box loss of each prior (aLRP); ``replaces_box_loss`` -> the loss
returns ``loss_box`` itself; a box loss with ``needs_log_var`` -> the head's log-variance branch (KL loss).

What a subclass provides
------------------------
- ``head``: ``nn.Module``, ``forward(features: list[Tensor]) -> dict[str, Tensor]`` with at least
  ``"cls_logits"`` ``(B, A, C)`` and the box output ``"bbox_regression"`` ``(B, A, 4)`` (deltas or distances,
  decoded by ``self.box_coder``; with a KL box loss also ``"bbox_log_var"`` ``(B, A, 4)``), priors ordered
  level-major, location-major (row-major), anchor-minor -- the order of the priors.
- ``prior_generator``, ``assigner`` (``(priors (A, 4), num_priors_per_level, gt) -> AssignResult``) and
  ``box_coder`` (``decode``; ``encode`` where deltas losses apply: ``has_delta_coder``).
- ``loss_weights``: the weight of every loss term, e.g. ``{"loss_cls": 1.0, "loss_box": 2.0,
  "loss_centerness": 1.0}`` (class attribute ``default_loss_weights``; overridable per instance).
- optionally :meth:`box_weights` (per prior weight of the box loss and its ``avg_factor``; default: the
  positives and their count), :meth:`extra_losses` (e.g. the centerness loss), ``box_outputs`` (head output
  key per box-loss term; VFNet trains an initial and a refined box), :meth:`predict_scores` (the class
  probabilities that the score threshold and the pre-NMS top-k see), :meth:`score_factors` (``(B, A)``
  multiplied into the kept scores before NMS; ATSS / FCOS: the centerness), :meth:`classification_weight`.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

from ..assigners.common import AssignResult, PaddedTargets, pad_targets, validate_targets
from ..distributed import mean_over_processes
from ..losses import BOX_LOSSES, CLS_LOSSES, PISA, BoxLoss, ClassificationLoss, sigmoid_focal_loss
from ..losses._precision import upcast_low_precision
from ..losses.iou import aligned_box_iou
from ..losses.kl import variance_voting
from ..samplers import REWEIGHTINGS, SAMPLERS, IoUBalancedSampler, Sampler
from ..structures.levels import level_index_for
from ..structures.targets import masked_box_pairs, matched_gt_boxes, one_hot_targets
from .backbone import feature_size

__all__ = ["OneStageDetector", "AnchorBasedDetector", "LossInputs", "check_components"]


class LossInputs:
    """What the detector prepared for its losses (one training step; ``B`` images, ``A`` priors).

    positive: ``(B, A)`` bool; positive_f: the same as float; avg_factor: the batch's positive count averaged
    over processes, >= 1 (mmdetection ``reduce_mean``); matched_boxes: ``(B, A, 4)`` gt box of each prior;
    :meth:`decoded` (head-output key -> ``(B, A, 4)`` decoded boxes) and :attr:`quality` (``(B, A)`` detached
    IoU of the main decoded box with its gt at the positives, clamped >= 1e-6, 0 elsewhere) are computed on
    first use only; extras: targets a detector computes once for several terms (e.g. the centerness target).
    """

    def __init__(self, head_outputs: dict[str, Tensor], priors: Tensor, assign_result: AssignResult,
                 positive: Tensor, avg_factor: Tensor, matched_boxes: Tensor, box_coder: Any) -> None:
        self.head_outputs, self.priors, self.assign_result = head_outputs, priors, assign_result
        self.positive, self.positive_f = positive, positive.to(head_outputs["cls_logits"].dtype)
        self.avg_factor, self.matched_boxes = avg_factor, matched_boxes
        self.box_coder = box_coder
        self.extras: dict[str, Tensor] = {}
        self._decoded: dict[str, Tensor] = {}

    def decoded(self, output_key: str) -> Tensor:
        """``(B, A, 4)`` boxes decoded from the head output ``output_key`` at every prior."""
        if output_key not in self._decoded:
            self._decoded[output_key] = self.box_coder.decode(self.head_outputs[output_key], self.priors.unsqueeze(0))
        return self._decoded[output_key]

    @cached_property
    def quality(self) -> Tensor:
        """IoU of the main decoded box with its gt (VFNet Sec. 3.1 target), detached."""
        decoded = self.decoded("bbox_regression")  # outside no_grad: the cached boxes feed the box loss too
        with torch.no_grad():
            iou = aligned_box_iou(*masked_box_pairs(decoded, self.matched_boxes, self.positive))
            return iou.clamp(min=1e-6) * self.positive_f


def check_components(detector: str, cls_loss: ClassificationLoss, box_loss: BoxLoss, sampler: Optional[Sampler],
                     reweighting: Optional[nn.Module], *, has_delta_coder: bool, supports_log_var: bool,
                     has_prior_ious: bool) -> None:
    """ValueError naming both parts when a combination makes no sense (called when a detector is built)."""
    cls_name, box_name = type(cls_loss).__name__, type(box_loss).__name__
    if sampler is not None and not cls_loss.accepts_sampler:
        raise ValueError(f"sampler {type(sampler).__name__} cannot be used with cls_loss {cls_name}: a ranking "
                         "loss ranks every prior of the batch and takes no sampled subset")
    if isinstance(sampler, IoUBalancedSampler) and not has_prior_ious:
        raise ValueError(f"sampler {type(sampler).__name__} needs the priors' IoU with the gt, which detector "
                         f"{detector} (point priors) does not have")
    if cls_loss.needs_loc_error and box_loss.space != "boxes":
        raise ValueError(f"cls_loss {cls_name} needs the localisation error of each positive in [0, 1] (aLRP Eq. 9; "
                         f"RS: GIoU), but box_loss {box_name} works on encoded deltas; use box_loss giou (or iou, "
                         "diou, ciou, bounded_iou)")
    if box_loss.space == "deltas" and not has_delta_coder:
        raise ValueError(f"box_loss {box_name} works on encoded deltas, but detector {detector} has no delta "
                         "box coder (its box output is a distance); use a box loss on decoded boxes (iou, giou, "
                         "diou, ciou, bounded_iou)")
    if box_loss.needs_log_var and not supports_log_var:
        raise ValueError(f"box_loss {box_name} needs a predicted variance, which the head of detector "
                         f"{detector} does not have")
    if reweighting is not None and cls_loss.replaces_box_loss:
        raise ValueError(f"reweighting {type(reweighting).__name__} cannot be used with cls_loss {cls_name}, "
                         "which produces the box loss itself")
    if reweighting is not None and not cls_loss.accepts_sampler:
        raise ValueError(f"reweighting {type(reweighting).__name__} cannot be used with cls_loss {cls_name}: "
                         "a ranking loss takes no prior weights")


class OneStageDetector(nn.Module):
    """Base class of the one-stage detectors (torchvision calling convention).

    Args:
        backbone: maps ``(B, 3, H, W)`` to ``list[Tensor]`` P3..P7; has ``out_channels`` and ``strides``.
        head: see the module docstring.
        prior_generator: ``(feature_sizes, device, dtype) -> (priors (A, 4), num_priors_per_level)``.
        num_classes: ``C`` (no background class).
        cls_loss: a :class:`umop.losses.ClassificationLoss` or a registered name (``umop.losses.CLS_LOSSES``,
            default options); default: the detector's ``default_cls_loss``.
        box_loss: a :class:`umop.losses.BoxLoss` or a registered name (``umop.losses.BOX_LOSSES``); default:
            the detector's ``default_box_loss``.
        sampler: optional :class:`umop.samplers.Sampler` (or name): zero weight for unselected negatives.
        reweighting: optional PISA (:class:`umop.losses.PISA` or ``"pisa"``): ISR-P weights of the positives
            + the CARL loss (``loss_carl``). ISR-P keeps the positives' total classification loss, measured
            with the sigmoid focal loss (PISA's RetinaNet setting) whatever ``cls_loss`` is.
        loss_weights: weight of each loss term, merged over the detector's ``default_loss_weights``.
        image_mean, image_std: normalisation (ImageNet by default).
        size_divisible: pad height and width up to a multiple of this.
        score_thresh, nms_thresh, detections_per_img, topk_candidates: inference settings (mmdetection 1x:
            0.05, 0.6, 100, 1000 per level).
    """

    box_outputs: dict[str, str] = {"loss_box": "bbox_regression"}  # loss term -> head output key
    default_cls_loss = "focal"
    default_box_loss = "l1"
    default_loss_weights: dict[str, float] = {"loss_cls": 1.0, "loss_box": 1.0}
    has_delta_coder = False    # box_coder.encode gives regression deltas (a deltas box loss applies)
    supports_log_var = False   # the head can grow a log-variance branch (KL loss)
    has_prior_ious = True      # assign_result.max_ious: each prior box's largest IoU with a gt (IoU-based samplers)
    default_nms_thresh: float = 0.6   # mmdetection test_cfg NMS IoU of the detector
    uses_valid_flags: bool = True     # priors in another image's padding leave assignment and losses
    clamp_positives_per_image: bool = False  # avg_factor sum_i max(pos_i, 1) (AnchorHead / ATSSHead)

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        prior_generator: nn.Module,
        num_classes: int,
        *,
        cls_loss: ClassificationLoss | str | None = None,
        box_loss: BoxLoss | str | None = None,
        sampler: Sampler | str | None = None,
        reweighting: PISA | str | None = None,
        loss_weights: Optional[Mapping[str, float]] = None,
        image_mean: Sequence[float] = (0.485, 0.456, 0.406),
        image_std: Sequence[float] = (0.229, 0.224, 0.225),
        size_divisible: int = 32,
        score_thresh: float = 0.05,
        nms_thresh: Optional[float] = None,
        detections_per_img: int = 100,
        topk_candidates: int = 1000,
    ) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.backbone = backbone
        self.head = head
        self.prior_generator = prior_generator
        self.num_classes = num_classes
        self.strides: list[int] = list(prior_generator.strides)
        self.cls_loss = CLS_LOSSES.build(self.default_cls_loss if cls_loss is None else cls_loss)
        self.box_loss = BOX_LOSSES.build(self.default_box_loss if box_loss is None else box_loss)
        self.sampler = SAMPLERS.build(sampler) if sampler is not None else None
        self.reweighting = REWEIGHTINGS.build(reweighting) if reweighting is not None else None
        check_components(type(self).__name__, self.cls_loss, self.box_loss, self.sampler, self.reweighting,
                         has_delta_coder=self.has_delta_coder, supports_log_var=self.supports_log_var,
                         has_prior_ious=self.has_prior_ious)
        weights = dict(self.default_loss_weights)
        if self.reweighting is not None:
            weights["loss_carl"] = 1.0
        for key, value in (loss_weights or {}).items():
            if key not in weights:
                raise ValueError(f"loss_weights: unknown term {key!r} for {type(self).__name__}; "
                                 f"valid: {sorted(weights)}")
            weights[key] = float(value)
        self.loss_weights = weights
        self.var_voting = bool(getattr(self.box_loss, "var_voting", False))  # KLLoss(var_voting=True)
        self.register_buffer("image_mean", torch.tensor(image_mean, dtype=torch.float32).view(3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(image_std, dtype=torch.float32).view(3, 1, 1), persistent=False)
        self.size_divisible = size_divisible
        # inference settings
        self.score_thresh = score_thresh
        self.nms_thresh = self.default_nms_thresh if nms_thresh is None else nms_thresh
        self.detections_per_img, self.topk_candidates = detections_per_img, topk_candidates

    # ------------------------------------------------------------------ subclass interface
    def assign(self, priors: Tensor, num_priors_per_level: list[int], gt: PaddedTargets,
               prior_valid: Optional[Tensor] = None) -> AssignResult:
        """Geometry-only batched assignment by the detector's ``assigner`` (set by the subclass).

        ``prior_valid`` ``(B, A)`` bool (or None) is passed on as the assigner's ``prior_valid`` keyword."""
        assigner = getattr(self, "assigner", None)
        if assigner is None:
            raise NotImplementedError(f"{type(self).__name__} must set an assigner or implement assign()")
        if prior_valid is None:
            return assigner(priors, num_priors_per_level, gt)
        return assigner(priors, num_priors_per_level, gt, prior_valid=prior_valid)

    def classification_weight(self, assign_result: AssignResult, dtype: torch.dtype) -> Tensor:
        """``(B, A)`` weight of each prior in the classification loss: 1 for assigned priors (positive or
        background), 0 for ignored ones, which include the priors outside their image (valid flags)."""
        return assign_result.valid_mask.to(dtype)

    def avg_factor(self, positive: Tensor) -> Tensor:
        """The loss normaliser from the ``(B, A)`` positives, averaged over processes (mmdetection
        ``reduce_mean``): ``sum_i max(pos_i, 1)`` over the images when ``clamp_positives_per_image``
        (mmdetection's ``AnchorHead`` / ``ATSSHead``: each image's ``num_pos = max(pos_i, 1)``), else
        ``max(sum_i pos_i, 1)`` (``FCOSHead`` / ``VFNetHead``)."""
        if self.clamp_positives_per_image:
            return mean_over_processes(positive.sum(dim=1, dtype=torch.float32).clamp(min=1).sum())
        return mean_over_processes(positive.sum(dtype=torch.float32)).clamp(min=1)

    def box_weights(self, inputs: LossInputs) -> dict[str, tuple[Tensor, Tensor]]:
        """Per box-loss term: the ``(B, A)`` weight of each prior (0 at non-positives) and the ``avg_factor``.

        Default (RetinaNet): every positive weighs 1, divided by the number of positives.
        """
        return {key: (inputs.positive_f, inputs.avg_factor) for key in self.box_outputs}

    def extra_losses(self, inputs: LossInputs) -> dict[str, Tensor]:
        """Detector-specific loss terms beside classification and box (e.g. centerness); unweighted."""
        return {}

    def predict_scores(self, head_outputs: dict[str, Tensor]) -> Tensor:
        """``(B, A, C)`` class probabilities that the score threshold and the pre-NMS top-k see."""
        return head_outputs["cls_logits"].sigmoid()

    def score_factors(self, head_outputs: dict[str, Tensor]) -> Optional[Tensor]:
        """``(B, A)`` factors multiplied into the kept scores before NMS (mmdetection ``score_factors``), or
        None (default)."""
        return None

    def decode_boxes(self, head_outputs: dict[str, Tensor], priors: Tensor, image_index: Tensor, prior_index: Tensor) -> Tensor:
        """Boxes ``(B, K, 4)`` of the selected priors: ``image_index``, ``prior_index`` ``(B, K)`` long."""
        deltas = head_outputs["bbox_regression"][image_index, prior_index]
        return self.box_coder.decode(deltas, priors[prior_index])

    # ------------------------------------------------------------------ input handling
    def preprocess(self, images: Sequence[Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
        """Normalise and zero-pad a list of ``[3, H_i, W_i]`` images (0..1) to ``(B, 3, H, W)``, H, W
        multiples of ``size_divisible``. Returns the batch and the unpadded ``(H_i, W_i)``."""
        if not isinstance(images, (list, tuple)) or len(images) == 0:
            raise ValueError("images must be a non-empty list of [3, H, W] tensors")
        for index, image in enumerate(images):
            if not isinstance(image, Tensor) or image.ndim != 3 or image.shape[0] != 3:
                raise ValueError(f"images[{index}] must be a [3, H, W] tensor, got {getattr(image, 'shape', type(image))}")
            if not image.is_floating_point():
                raise ValueError(f"images[{index}] must be a float tensor in 0..1, got {image.dtype}")
        sizes = [(int(im.shape[1]), int(im.shape[2])) for im in images]
        d = self.size_divisible
        height = -(-max(h for h, _ in sizes) // d) * d
        width = -(-max(w for _, w in sizes) // d) * d
        device = self.image_mean.device
        batch = torch.zeros((len(images), 3, height, width), dtype=images[0].dtype, device=device)
        for index, (image, (h, w)) in enumerate(zip(images, sizes)):
            # Normalise then pad with zeros, as torchvision's GeneralizedRCNNTransform.
            batch[index, :, :h, :w] = (image.to(device) - self.image_mean) / self.image_std
        if not bool(torch.isfinite(batch.sum())):
            for index, image in enumerate(images):
                if not torch.isfinite(image).all():
                    raise ValueError(f"images[{index}] contains NaN or inf")
        return batch, sizes

    def _prepare_targets(self, targets: Optional[Sequence[Mapping[str, Tensor]]], batch_size: int, device) -> PaddedTargets:
        if targets is None:
            raise ValueError("targets are required in training mode")
        if len(targets) != batch_size:
            raise ValueError(f"targets: expected {batch_size} dicts (one per image), got {len(targets)}")
        validate_targets(targets, self.num_classes)
        return pad_targets(targets, device)

    def priors_for_features(self, features: Sequence[Tensor]) -> tuple[Tensor, list[int]]:
        sizes = [(int(f.shape[-2]), int(f.shape[-1])) for f in features]
        return self.prior_generator(sizes, features[0].device, torch.float32)

    def prior_valid_flags(self, image_sizes: Sequence[tuple[int, int]], feature_sizes: Sequence[tuple[int, int]],
                          device) -> Optional[Tensor]:
        """``(B, A)`` bool valid flags of the priors (see :meth:`AnchorGenerator.valid_flags`): each image's
        ``(H_i, W_i)`` padded up to ``size_divisible`` (mmdetection's per-image ``pad_shape``); None when
        the detector does not use valid flags (``uses_valid_flags`` False)."""
        if not self.uses_valid_flags:
            return None
        d = self.size_divisible
        pad_sizes = [(-(-int(h) // d) * d, -(-int(w) // d) * d) for h, w in image_sizes]
        return self.prior_generator.valid_flags(feature_sizes, pad_sizes, device)

    # ------------------------------------------------------------------ public API
    def assign_targets(self, image_size: tuple[int, int], targets: Sequence[Mapping[str, Tensor]],
                       image_sizes: Optional[Sequence[tuple[int, int]]] = None) -> AssignResult:
        """Assignment for a batch padded to ``image_size`` (rounded up to ``size_divisible``) without a
        network forward (used by ``umop.analysis``). ``image_sizes``: optional ``(H_i, W_i)`` of each image
        (default: every image fills ``image_size``); priors outside an image are invalid as in training."""
        d = self.size_divisible
        if image_sizes is not None and len(image_sizes) != len(targets):
            raise ValueError(f"image_sizes: expected {len(targets)} sizes (one per target), got {len(image_sizes)}")
        height, width = (-(-int(s) // d) * d for s in image_size)
        device = self.image_mean.device
        sizes = [(feature_size(height, s), feature_size(width, s)) for s in self.strides]
        priors, counts = self.prior_generator(sizes, device, torch.float32)
        gt = self._prepare_targets(targets, len(targets), device)
        image_sizes = image_sizes if image_sizes is not None else [(height, width)] * len(targets)
        return self.assign(priors, counts, gt, self.prior_valid_flags(image_sizes, sizes, device))

    def forward(self, images: Sequence[Tensor], targets: Optional[Sequence[Mapping[str, Tensor]]] = None):
        """Training: ``dict`` of losses (+ ``"stats"``); eval: list of ``{"boxes", "scores", "labels",
        "levels"}``."""
        batch, image_sizes = self.preprocess(images)
        gt = self._prepare_targets(targets, len(images), batch.device) if self.training else None
        features = self.backbone(batch)
        head_outputs = self.head(features)
        priors, counts = self.priors_for_features(features)
        if self.training:  # under AMP: assignment, losses and level statistics in float32, outside autocast
            feature_sizes = [(int(f.shape[-2]), int(f.shape[-1])) for f in features]
            prior_valid = self.prior_valid_flags(image_sizes, feature_sizes, batch.device)
            with torch.autocast(batch.device.type, enabled=False):
                head_outputs = {key: upcast_low_precision(value) for key, value in head_outputs.items()}
                assign_result = self.assign(priors, counts, gt, prior_valid)
                return self.compute_losses(head_outputs, priors, assign_result, gt)
        return self.postprocess(head_outputs, priors, counts, image_sizes)

    # ------------------------------------------------------------------ losses
    def compute_losses(
        self, head_outputs: dict[str, Tensor], priors: Tensor, assign_result: AssignResult, gt: PaddedTargets
    ) -> dict[str, Any]:
        """Targets -> the injected losses -> ``"loss_*"`` terms weighted by ``loss_weights``, and ``"stats"``.

        Vectorised over the batch; no host synchronisation.
        """
        logits = head_outputs["cls_logits"]
        dtype = logits.dtype
        positive = assign_result.positive_mask
        inputs = LossInputs(head_outputs, priors, assign_result, positive,
                            self.avg_factor(positive).to(dtype),
                            matched_gt_boxes(gt.boxes, assign_result.matched_gt), self.box_coder)

        targets = one_hot_targets(assign_result.labels, positive, self.num_classes, dtype)
        weight = self.classification_weight(assign_result, dtype)
        if self.sampler is not None:
            max_ious = assign_result.max_ious if assign_result.max_ious is not None else assign_result.ious
            weight = self.sampler(logits.detach(), targets, assign_result.labels, max_ious, weight)
        box_weights = self.box_weights(inputs)
        per_prior_box = None
        if self.cls_loss.needs_loc_error or self.reweighting is not None:
            per_prior_box = self.per_prior_box_loss(inputs, next(iter(self.box_outputs)))
        if self.reweighting is not None:  # PISA ISR-P: importance weights of the positives (no gradient)
            with torch.no_grad():
                focal = sigmoid_focal_loss(logits.detach(), targets, reduction="none").sum(-1)  # (B, A)
            weight = self.reweighting.reweight(inputs.quality, assign_result.labels, assign_result.matched_gt, focal,
                                               weight, self.num_classes)

        result, stats = self.cls_loss(logits, targets, assign_result.num_anchors_per_level, weight,
                                      inputs.avg_factor, quality=inputs.quality if self.cls_loss.needs_quality else None,
                                      loc_error=per_prior_box if self.cls_loss.needs_loc_error else None,
                                      positive=positive, valid=assign_result.prior_valid)
        weights = self.loss_weights
        if isinstance(result, dict):  # aLRP: the classification loss produces the (self-balanced) box loss
            losses = {key: value * weights["loss_cls"] for key, value in result.items()}
        else:
            losses = {"loss_cls": result * weights["loss_cls"]}
        for key, output_key in self.box_outputs.items():
            if key not in losses:
                box_weight, avg_factor = box_weights[key]
                losses[key] = self.box_loss_term(inputs, output_key, box_weight, avg_factor) * weights[key]
        for key, value in self.extra_losses(inputs).items():
            losses[key] = value * weights[key]
        if self.reweighting is not None:  # PISA CARL
            losses["loss_carl"] = self.reweighting.carl(logits, assign_result.labels, per_prior_box,
                                                        inputs.avg_factor) * weights["loss_carl"]
        losses["stats"] = stats
        return losses

    def box_pairs(self, inputs: LossInputs, output_key: str) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """``pred``, ``target`` ``(B * A, 4)`` in the box loss's space (finite everywhere; only positives
        matter) and the extra keyword arguments (``log_var`` for a KL loss)."""
        if self.box_loss.space == "boxes":
            pred, target = masked_box_pairs(inputs.decoded(output_key), inputs.matched_boxes, inputs.positive)
        else:  # deltas: non-positive priors regress onto themselves so that their (masked) targets stay finite
            priors_b = inputs.priors.unsqueeze(0).expand_as(inputs.matched_boxes)
            target_boxes = torch.where(inputs.positive.unsqueeze(-1), inputs.matched_boxes, priors_b)
            pred, target = inputs.head_outputs[output_key], self.box_coder.encode(target_boxes, priors_b)
        extra = {}
        if self.box_loss.needs_log_var:
            extra["log_var"] = inputs.head_outputs["bbox_log_var"].reshape(-1, 4)
        return pred.reshape(-1, 4), target.reshape(-1, 4), extra

    def box_loss_term(self, inputs: LossInputs, output_key: str, weight: Tensor, avg_factor: Tensor) -> Tensor:
        """The box loss of one head output: ``sum(weight * loss) / avg_factor`` over the priors."""
        pred, target, extra = self.box_pairs(inputs, output_key)
        return self.box_loss(pred, target, weight.reshape(-1), avg_factor, **extra)

    def per_prior_box_loss(self, inputs: LossInputs, loss_key: str) -> Tensor:
        """``(B, A)`` unweighted box loss of every prior (with gradient; 0 at non-positives): aLRP's
        localisation error, PISA CARL's regression loss."""
        pred, target, extra = self.box_pairs(inputs, self.box_outputs[loss_key])
        loss = self.box_loss(pred, target, None, None, reduction_override="none", **extra)
        if loss.dim() == 2:
            loss = loss.sum(-1)
        return loss.view_as(inputs.positive_f) * inputs.positive_f

    # ------------------------------------------------------------------ inference
    def box_log_variance(self, head_outputs: dict[str, Tensor], priors: Tensor, image_index: Tensor,
                         prior_index: Tensor, boxes: Tensor) -> Tensor:
        """``(K, 4)`` log-variance of the decoded ``x1, y1, x2, y2`` of the selected priors, from the head's
        delta log-variances by first-order propagation through ``DeltaXYWH`` decoding:
        ``var(x1) = var(x2) = (w_a / w_x)^2 var(dx) + (w / (2 w_w))^2 var(dw)`` (and the same for y)."""
        log_var = head_outputs["bbox_log_var"][image_index, prior_index].float()  # (K, 4) of dx, dy, dw, dh
        anchors = priors[prior_index]
        wx, wy, ww, wh = self.box_coder.weights
        anchor_w, anchor_h = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
        box_w, box_h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        var_x = (anchor_w / wx) ** 2 * log_var[:, 0].exp() + (box_w / (2 * ww)) ** 2 * log_var[:, 2].exp()
        var_y = (anchor_h / wy) ** 2 * log_var[:, 1].exp() + (box_h / (2 * wh)) ** 2 * log_var[:, 3].exp()
        return torch.stack((var_x, var_y, var_x, var_y), dim=-1).clamp(min=1e-12).log()

    @torch.no_grad()
    def postprocess(
        self, head_outputs: dict[str, Tensor], priors: Tensor, num_priors_per_level: Sequence[int],
        image_sizes: Sequence[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        """Detections of each image, as mmdetection's ``_predict_by_feat_single`` + ``_bbox_post_process``:

        1. per level, the top-``topk_candidates`` (over priors x classes) of the class scores
           (:meth:`predict_scores`) above ``score_thresh`` (``nms_pre``, ``score_thr``);
        2. the kept scores times the prior's :meth:`score_factors` (ATSS / FCOS: the centerness), so a
           confident class score with a low centerness is thresholded on the class score alone;
        3. decode, clip to the unpadded image, drop the boxes of zero width or height (``min_bbox_size`` 0);
        4. class-wise NMS (``nms_thresh``), keep the ``detections_per_img`` highest scores.

        Returns one dict per image: ``"boxes"`` ``(K, 4)`` xyxy, ``"scores"`` ``(K,)``, ``"labels"`` ``(K,)``
        long, ``"levels"`` ``(K,)`` long (pyramid level of the prior that produced the detection, 0 = P3).
        Vectorised over the batch: one top-k per level for all images, one ``batched_nms`` call (the NMS
        groups are image x class).
        """
        scores = self.predict_scores(head_outputs)  # (B, A, C)
        factors = self.score_factors(head_outputs)  # (B, A) or None
        batch, _, num_classes = scores.shape
        device = scores.device
        top_scores, top_priors, top_labels = [], [], []
        start = 0
        for count in num_priors_per_level:
            level_scores = scores[:, start:start + count].reshape(batch, -1)  # (B, A_l * C)
            k = min(self.topk_candidates, level_scores.shape[1])
            values, flat_index = level_scores.topk(k, dim=1)
            top_scores.append(values)
            top_priors.append(torch.div(flat_index, num_classes, rounding_mode="floor") + start)
            top_labels.append(flat_index % num_classes)
            start += count
        top_scores = torch.cat(top_scores, dim=1)  # (B, K)
        top_priors = torch.cat(top_priors, dim=1)
        top_labels = torch.cat(top_labels, dim=1)
        keep = top_scores > self.score_thresh  # on the class score alone (mmdetection filter_scores_and_topk)
        if factors is not None:
            top_scores = top_scores * torch.gather(factors.to(top_scores.dtype), 1, top_priors)
        image_index = torch.arange(batch, device=device)[:, None].expand_as(top_priors)
        boxes = self.decode_boxes(head_outputs, priors, image_index, top_priors)  # (B, K, 4)
        limits = torch.tensor([[w, h, w, h] for h, w in image_sizes], dtype=boxes.dtype, device=device)
        boxes = torch.minimum(boxes.clamp(min=0), limits[:, None, :])
        keep = keep & (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])  # min_bbox_size = 0
        levels = level_index_for(num_priors_per_level, device)[top_priors]  # (B, K)

        boxes, top_scores, top_labels = boxes[keep], top_scores[keep], top_labels[keep]
        image_index, levels = image_index[keep], levels[keep]
        groups = image_index * num_classes + top_labels
        kept = batched_nms(boxes, top_scores, groups, self.nms_thresh)
        if self.var_voting:  # KL loss: each kept box voted by its candidates (He et al. 2019, Alg. 1)
            log_var = self.box_log_variance(head_outputs, priors, image_index, top_priors[keep], boxes)
            voted = variance_voting(boxes[kept], top_scores[kept], groups[kept], boxes, top_scores, groups, log_var,
                                    sigma_t=self.box_loss.sigma_t)
            boxes = boxes.index_put((kept,), voted)
        # ``kept`` is sorted by decreasing score; regroup per image keeping that order, then cap.
        kept = kept[torch.sort(image_index[kept], stable=True).indices]
        kept_images = image_index[kept]
        per_image = torch.bincount(kept_images, minlength=batch)
        first = torch.cumsum(per_image, 0) - per_image
        rank = torch.arange(kept.numel(), device=device) - first[kept_images]
        kept = kept[rank < self.detections_per_img]
        per_image = per_image.clamp(max=self.detections_per_img).tolist()
        return [
            {"boxes": b, "scores": s, "labels": l, "levels": v}
            for b, s, l, v in zip(boxes[kept].split(per_image), top_scores[kept].split(per_image),
                                  top_labels[kept].split(per_image), levels[kept].split(per_image))
        ]


class AnchorBasedDetector(OneStageDetector):
    """A detector whose priors are anchor boxes regressed as deltas (RetinaNet, ATSS), with mmdetection's
    ``AnchorHead`` conventions: a delta box coder (so the deltas box losses apply), a head that can grow
    KL loss's log-variance branch, and ``avg_factor = sum_i max(pos_i, 1)`` over the images."""

    has_delta_coder = True
    supports_log_var = True
    clamp_positives_per_image = True
