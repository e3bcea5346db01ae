"""``OneStageDetector``: the shared body of RetinaNet, ATSS, FCOS and VFNet.

The base class does everything that does not depend on the detector:

1. input checks, ImageNet normalisation, zero padding (bottom / right) to a multiple of 32 -- no resizing;
2. ``features = self.backbone(batch)`` (list P3..P7), ``head_outputs = self.head(features)``;
3. priors (anchors or points) for the padded batch from ``self.prior_generator``, and in training their
   per-image valid flags ``(B, A)`` (mmdetection's rule: inside the image's own size padded to /32; priors in
   the padding added for a larger image of the batch are invalid), when ``uses_valid_flags`` (RetinaNet,
   ATSS, VFNet; not FCOS, whose mmdetection head has none);
4. training: padded ground truth -> ``self.assign(...)`` -> ``self.compute_losses(...)``;
   inference: ``self.postprocess(...)`` (as mmdetection's ``_predict_by_feat_single`` +
   ``_bbox_post_process``: per level the top-k of the class scores above the score threshold, times the
   optional score factors (centerness), decode, clip, drop zero-area boxes, class-wise NMS, cap);
5. the classification-loss switch (``cls_loss``: focal / pfl / pfl_mean) in :meth:`classification_loss`.

What a subclass provides
------------------------
- ``head``: ``nn.Module``, ``forward(features: list[Tensor]) -> dict[str, Tensor]`` with at least
  ``"cls_logits"`` ``(B, A, C)`` and the box output (default key ``"bbox_regression"``, ``(B, A, 4)``),
  anchors ordered level-major, location-major (row-major), anchor-minor -- the order of the priors.
- ``prior_generator``: :class:`umop.models.anchors.AnchorGenerator` / ``PointGenerator`` (passed to
  ``__init__``).
- ``assign(priors (A, 4), num_priors_per_level, gt: PaddedTargets) -> AssignResult``: geometry only,
  batched (see :mod:`umop.assigners`).
- ``compute_losses(head_outputs, priors, assign_result, gt) -> dict``: returns ``"loss_*"`` scalars and
  ``"stats"``; use :meth:`classification_loss` for the classification term so that ``cls_loss`` works.
- optionally ``predict_scores(head_outputs) -> (B, A, C)`` class probabilities that are thresholded and
  ranked (default: sigmoid of cls_logits), ``score_factors(head_outputs) -> (B, A) | None`` multiplied into
  the kept scores before NMS (ATSS / FCOS: sigmoid of the centerness) and ``decode_boxes(head_outputs,
  priors, image_index, prior_index) -> (B, K, 4)`` (default: ``self.box_coder.decode`` of
  ``head_outputs[self.box_output_key]``).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torchvision.ops import batched_nms

from ..assigners.common import AssignResult, PaddedTargets, pad_targets, validate_targets
from ..losses._precision import upcast_low_precision
from ..losses.progressive import level_index_for, level_matrix_for
from .backbone import feature_size

__all__ = ["OneStageDetector", "CLS_LOSSES", "one_hot_targets"]

CLS_LOSSES = ("focal", "pfl", "pfl_mean")
_PFL_LEVEL_REDUCTION = {"pfl": "sum", "pfl_mean": "mean"}


def one_hot_targets(labels: Tensor, positive: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """``(B, A, C)`` one-hot targets from labels ``(B, A)`` (rows of zeros for background / ignored priors),
    built with one scatter (no ``(B, A, C + 1)`` int64 intermediate)."""
    targets = torch.zeros(*labels.shape, num_classes, dtype=dtype, device=labels.device)
    index = labels.clamp(min=0, max=num_classes - 1).unsqueeze(-1)
    return targets.scatter_(-1, index, positive.unsqueeze(-1).to(dtype))



def mean_over_processes(value: Tensor) -> Tensor:
    """Mean of a (detached) scalar over the ``torch.distributed`` processes; identity in one process.

    Loss normalisers (positive counts, weight sums) go through this, as mmdetection's ``reduce_mean``:
    with the per-process losses divided by the *mean* count, DDP's gradient average equals the gradient
    of one process that holds the whole global batch.
    """
    value = value.detach()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value)
        value = value / dist.get_world_size()
    return value


class OneStageDetector(nn.Module):
    """Base class of the one-stage detectors (torchvision calling convention).

    Args:
        backbone: maps ``(B, 3, H, W)`` to ``list[Tensor]`` P3..P7; has ``out_channels`` and ``strides``.
        head: see the module docstring.
        prior_generator: ``(feature_sizes, device, dtype) -> (priors (A, 4), num_priors_per_level)``.
        num_classes: ``C`` (no background class).
        cls_loss: ``"focal"`` (Lin et al. 2017), ``"pfl"`` (UMOP progressive focal loss, levels summed as in
            the released code) or ``"pfl_mean"`` (UMOP Eq. 1, mean over levels). Subclasses may accept more
            (VFNet: ``"varifocal"``).
        gamma, alpha: focal loss parameters (alpha is used by ``"focal"``; PFL uses ``alpha_ad = w / gamma_ad``).
        delta, w, estimator: PFL parameters (UMOP Eq. 3-4), see :func:`umop.losses.progressive_focal_loss`.
        pfl_options: further keyword arguments of ``progressive_focal_loss`` (e.g. ``sync``).
        image_mean, image_std: normalisation (ImageNet by default).
        size_divisible: pad height and width up to a multiple of this.
        score_thresh, nms_thresh, detections_per_img, topk_candidates: inference settings, mmdetection's
            ``test_cfg`` of each detector's 1x config: ``score_thr`` 0.05, ``max_per_img`` 100, ``nms_pre``
            1000 per level, NMS IoU ``default_nms_thresh`` of the class (RetinaNet 0.5, ATSS 0.6, FCOS 0.5,
            VFNet 0.6) when ``nms_thresh`` is None; ``min_bbox_size`` 0: boxes of zero width or height
            after clipping are dropped.

    Class attributes of a subclass: ``default_nms_thresh``; ``uses_valid_flags`` (priors in another
    image's padding are left out of assignment and losses); ``clamp_positives_per_image`` (the loss
    normaliser is ``sum_i max(pos_i, 1)`` as mmdetection's ``AnchorHead`` / ``ATSSHead``, else
    ``max(sum_i pos_i, 1)`` as its ``FCOSHead`` / ``VFNetHead``).
    """

    box_output_key = "bbox_regression"
    valid_cls_losses: tuple[str, ...] = CLS_LOSSES
    default_nms_thresh: float = 0.6
    uses_valid_flags: bool = True
    clamp_positives_per_image: bool = False

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        prior_generator: nn.Module,
        num_classes: int,
        *,
        cls_loss: str = "focal",
        gamma: float = 2.0,
        alpha: float = 0.25,
        delta: float = 0.5,
        w: Optional[float] = None,
        estimator: str = "official",
        pfl_options: Optional[Mapping[str, Any]] = None,
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
        if cls_loss not in self.valid_cls_losses:
            raise ValueError(f"cls_loss must be one of {list(self.valid_cls_losses)}, got {cls_loss!r}")
        if estimator not in ("official", "paper"):
            raise ValueError(f"estimator must be 'official' or 'paper', got {estimator!r}")
        if delta < 0:
            raise ValueError(f"delta must be >= 0, got {delta}")
        self.backbone = backbone
        self.head = head
        self.prior_generator = prior_generator
        self.num_classes = num_classes
        self.strides: list[int] = list(prior_generator.strides)
        self.cls_loss = cls_loss
        self.gamma, self.alpha, self.delta, self.w, self.estimator = gamma, alpha, delta, w, estimator
        self.pfl_options = dict(pfl_options or {})
        self.register_buffer("image_mean", torch.tensor(image_mean, dtype=torch.float32).view(3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(image_std, dtype=torch.float32).view(3, 1, 1), persistent=False)
        self.size_divisible = size_divisible
        self.score_thresh = score_thresh
        self.nms_thresh = self.default_nms_thresh if nms_thresh is None else nms_thresh
        self.detections_per_img = detections_per_img
        self.topk_candidates = topk_candidates

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

    def compute_losses(
        self, head_outputs: dict[str, Tensor], priors: Tensor, assign_result: AssignResult, gt: PaddedTargets
    ) -> dict[str, Any]:
        """``"loss_*"`` scalars and ``"stats"`` (subclass)."""
        raise NotImplementedError(f"{type(self).__name__} must implement compute_losses()")

    def predict_scores(self, head_outputs: dict[str, Tensor]) -> Tensor:
        """``(B, A, C)`` class probabilities that the score threshold and the pre-NMS top-k see."""
        return head_outputs["cls_logits"].sigmoid()

    def score_factors(self, head_outputs: dict[str, Tensor]) -> Optional[Tensor]:
        """``(B, A)`` factors multiplied into the kept scores before NMS (mmdetection ``score_factors``), or
        None (default)."""
        return None

    def decode_boxes(self, head_outputs: dict[str, Tensor], priors: Tensor, image_index: Tensor, prior_index: Tensor) -> Tensor:
        """Boxes ``(B, K, 4)`` of the selected priors: ``image_index``, ``prior_index`` ``(B, K)`` long."""
        deltas = head_outputs[self.box_output_key][image_index, prior_index]
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

    def level_index(self, num_priors_per_level: Sequence[int], device) -> Tensor:
        """``(A,)`` long: pyramid level of each prior (cached per layout and device, shared with PFL)."""
        return level_index_for(num_priors_per_level, device)

    def prior_strides(self, num_priors_per_level: Sequence[int], device) -> Tensor:
        """``(A,)`` float: stride of the level of each prior."""
        strides = torch.as_tensor(self.strides, dtype=torch.float32, device=device)
        return strides[self.level_index(num_priors_per_level, device)]

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
    def level_counts(self, mask: Tensor, num_priors_per_level: Sequence[int]) -> Tensor:
        """``(L,)`` float: number of True entries of ``mask (B, A)`` per level, summed over the batch."""
        per_prior = mask.sum(dim=0, dtype=torch.float32)  # (A,)
        return per_prior @ level_matrix_for(num_priors_per_level, mask.device, torch.float32)

    def level_statistics(self, assign_result: AssignResult) -> dict[str, Tensor]:
        """``num_positive`` and ``num_anchors`` ``(L,)`` float, summed over the batch; ``num_anchors`` counts
        the valid priors only (``assign_result.prior_valid``; all priors when it is None)."""
        counts = assign_result.num_anchors_per_level
        positive = assign_result.positive_mask
        if assign_result.prior_valid is None:
            num_anchors = torch.tensor(counts, dtype=torch.float32, device=positive.device) * positive.shape[0]
        else:
            num_anchors = self.level_counts(assign_result.prior_valid, counts)
        return {"num_positive": self.level_counts(positive, counts), "num_anchors": num_anchors}

    def positives(self, assign_result: AssignResult, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        """``(positive (B, A) bool, positive as dtype, avg_factor)``.

        The ``avg_factor`` (loss normaliser) is averaged over processes (mmdetection ``reduce_mean``) and is
        ``sum_i max(pos_i, 1)`` over the images when ``clamp_positives_per_image`` (mmdetection's
        ``AnchorHead`` / ``ATSSHead``: each image's ``SamplingResult.num_pos = max(pos_i, 1)``), else
        ``max(sum_i pos_i, 1)`` (``FCOSHead`` / ``VFNetHead``).
        """
        positive = assign_result.positive_mask
        positive_f = positive.to(dtype)
        if self.clamp_positives_per_image:
            return positive, positive_f, mean_over_processes(positive_f.sum(dim=1).clamp(min=1).sum())
        return positive, positive_f, mean_over_processes(positive_f.sum()).clamp(min=1)

    def classification_loss(
        self,
        cls_logits: Tensor,
        assign_result: AssignResult,
        normalizer: Tensor,
        targets: Optional[Tensor] = None,
        weight: Optional[Tensor] = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Classification loss of the configured ``cls_loss``, summed and divided by ``normalizer``.

        Args:
            cls_logits: ``(B, A, C)``.
            assign_result: labels ``(B, A)`` (C = background, -1 = ignore).
            normalizer: scalar tensor, the ``avg_factor`` of :meth:`positives`.
            targets: optional ``(B, A, C)`` targets (default: one-hot of the labels).
            weight: optional ``(B, A)`` weights (default: 1 for valid, 0 for ignored priors, which include the
                priors outside their image; PFL's valid elements are those of weight > 0).
        Returns:
            the loss and stats: ``num_positive``, ``num_anchors`` ``(L,)`` (:meth:`level_statistics`; + ``gamma_ad``,
            ``alpha_ad`` for PFL).
        """
        labels = assign_result.labels
        counts = assign_result.num_anchors_per_level
        num_classes = cls_logits.shape[-1]
        if targets is None:
            targets = one_hot_targets(labels, assign_result.positive_mask, num_classes, cls_logits.dtype)
        if weight is None:
            weight = (labels >= 0).to(cls_logits.dtype)
        stats = self.level_statistics(assign_result)
        if self.cls_loss == "focal":
            from ..losses.focal import sigmoid_focal_loss

            # the normaliser folded into the weight: the fused backward then needs no extra (B, A, C) product
            loss = sigmoid_focal_loss(cls_logits, targets, alpha=self.alpha, gamma=self.gamma, reduction="sum",
                                      weight=weight / normalizer)
            return loss, stats
        from ..losses.progressive import progressive_focal_loss

        loss, pfl_stats = progressive_focal_loss(
            cls_logits, targets, counts, gamma=self.gamma, delta=self.delta, w=self.w, estimator=self.estimator,
            level_reduction=_PFL_LEVEL_REDUCTION[self.cls_loss], weight=weight, avg_factor=normalizer,
            return_stats=True, **self.pfl_options,
        )
        stats["gamma_ad"] = pfl_stats["gamma_ad"]
        stats["alpha_ad"] = pfl_stats["alpha_ad"]
        return loss, stats

    # ------------------------------------------------------------------ inference
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
        levels = self.level_index(num_priors_per_level, device)[top_priors]  # (B, K)

        boxes, top_scores, top_labels = boxes[keep], top_scores[keep], top_labels[keep]
        image_index, levels = image_index[keep], levels[keep]
        kept = batched_nms(boxes, top_scores, image_index * num_classes + top_labels, self.nms_thresh)
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
