"""Run a detector over a data loader and evaluate it in the original image coordinates."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from ..evaluation import evaluate_detections
from .distributed import all_gather_objects

__all__ = ["rescale_boxes", "run_inference", "run_inference_with_failures", "evaluate_model"]


def rescale_boxes(boxes: torch.Tensor, from_size: Sequence[int], to_size: Sequence[int]) -> torch.Tensor:
    """Scale xyxy ``boxes`` from an image of size ``from_size`` (H, W) to ``to_size`` (H, W)."""
    scale_y = float(to_size[0]) / float(from_size[0])
    scale_x = float(to_size[1]) / float(from_size[1])
    return boxes * boxes.new_tensor([scale_x, scale_y, scale_x, scale_y])


def _original_size(target: dict[str, Any], image: torch.Tensor) -> tuple[int, int]:
    size = target.get("orig_size")
    if size is None:
        return int(image.shape[-2]), int(image.shape[-1])
    size = size.tolist() if isinstance(size, torch.Tensor) else list(size)
    return int(size[0]), int(size[1])


@torch.no_grad()
def run_inference(model: nn.Module, data_loader: Iterable, device: torch.device,
                  progress: bool = False) -> tuple[list[dict], list[dict]]:
    """Detections and ground truth of every image of ``data_loader``, boxes in original image coordinates.

    The loader yields ``(images, targets)`` as :func:`umop.data.collate_fn` makes them; each target's
    ``"orig_size"`` (H, W) is the size before the resize transform. Returns two lists in loader order:
    detections ``{"boxes", "scores", "labels", "image_id"[, "levels"]}`` and targets ``{"boxes", "labels",
    "image_id", "orig_size"}`` (CPU tensors). An image that could not be read (``None``, from a dataset with
    ``unreadable="skip"``) is left out of both; use :func:`run_inference_with_failures` to get those too.
    """
    detections, targets_out, _ = run_inference_with_failures(model, data_loader, device, progress)
    return detections, targets_out


@torch.no_grad()
def run_inference_with_failures(model: nn.Module, data_loader: Iterable, device: torch.device,
                                progress: bool = False) -> tuple[list[dict], list[dict], list[dict]]:
    """:func:`run_inference` plus the images that could not be read: ``[{"image_id", "file_name",
    "load_error"}, ...]`` (the dataset's ``(None, info)`` samples)."""
    model.eval()
    detections: list[dict] = []
    targets_out: list[dict] = []
    failures: list[dict] = []
    iterator = data_loader
    if progress:
        from tqdm import tqdm

        iterator = tqdm(data_loader, desc="eval", leave=False, dynamic_ncols=True)
    for images, targets in iterator:
        failures.extend(target for image, target in zip(images, targets) if image is None)
        readable = [(image, target) for image, target in zip(images, targets) if image is not None]
        if not readable:
            continue
        images, targets = [pair[0] for pair in readable], [pair[1] for pair in readable]
        outputs = model([image.to(device, non_blocking=True) for image in images])
        for image, target, output in zip(images, targets, outputs):
            size = (int(image.shape[-2]), int(image.shape[-1]))
            original = _original_size(target, image)
            image_id = target.get("image_id", len(detections))
            image_id = int(image_id.item() if isinstance(image_id, torch.Tensor) else image_id)
            detections.append({
                "boxes": rescale_boxes(output["boxes"].float().cpu(), size, original),
                "scores": output["scores"].float().cpu(),
                "labels": output["labels"].cpu(),
                "image_id": image_id,
            })
            if "levels" in output:  # pyramid level of each detection (0 = P3), for the per-level table
                detections[-1]["levels"] = output["levels"].cpu()
            targets_out.append({
                "boxes": rescale_boxes(target["boxes"].float().cpu(), size, original),
                "labels": target["labels"].cpu(),
                "image_id": image_id,
                "orig_size": torch.tensor(original),
            })
    return detections, targets_out, failures


def evaluate_model(model: nn.Module, data_loader: Iterable, device: torch.device, num_classes: int,
                   class_names: Sequence[str] | None = None, progress: bool = False,
                   collect: dict | None = None) -> dict[str, Any]:
    """COCO AP of ``model`` on ``data_loader`` (gathered over DDP ranks, padded duplicates removed).

    Returns :func:`umop.evaluation.evaluate_detections`'s dict plus ``"num_images"`` (images evaluated,
    each exactly once), ``"num_failed_images"`` and ``"failed_images"`` (``[{"image_id", "file_name",
    "load_error"}]``: images that could not be read, left out of the evaluation with their ground truth).
    ``collect``, if given, receives ``"detections"`` and ``"targets"``: the evaluated lists (plots, results json).
    """
    detections, targets, failures = run_inference_with_failures(model, data_loader, device, progress=progress)
    gathered_dets: dict[int, dict] = {}
    gathered_targets: dict[int, dict] = {}
    gathered_failures: dict[int, dict] = {}
    for rank_dets, rank_targets, rank_failures in all_gather_objects((detections, targets, failures)):
        for detection, target in zip(rank_dets, rank_targets):
            gathered_dets.setdefault(target["image_id"], detection)
            gathered_targets.setdefault(target["image_id"], target)
        for failure in rank_failures:
            gathered_failures.setdefault(int(failure["image_id"]), dict(failure))
    image_ids = sorted(gathered_targets)
    if not image_ids:
        if gathered_failures:
            first = next(iter(gathered_failures.values()))
            raise ValueError(f"none of the {len(gathered_failures)} evaluation images could be read "
                             f"(e.g. {first['file_name']}: {first['load_error']})")
        raise ValueError("evaluation data loader yielded no images")
    metrics = evaluate_detections([gathered_dets[i] for i in image_ids], [gathered_targets[i] for i in image_ids],
                                  num_classes, class_names)
    metrics["num_images"] = len(image_ids)
    if collect is not None:
        collect.update(detections=[gathered_dets[i] for i in image_ids],
                       targets=[gathered_targets[i] for i in image_ids])
    metrics["num_failed_images"] = len(gathered_failures)
    metrics["failed_images"] = [gathered_failures[i] for i in sorted(gathered_failures)]
    if gathered_failures:
        import warnings

        warnings.warn(f"evaluation: {len(gathered_failures)} image(s) could not be read and were not evaluated "
                      f"(e.g. {next(iter(gathered_failures.values()))['file_name']}); {len(image_ids)} evaluated",
                      RuntimeWarning, stacklevel=2)
    return metrics
