"""Load a trained detector from a checkpoint, evaluate it, or draw its detections on images."""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..evaluation import detections_to_coco_results
from .builders import build_model, test_min_size
from .checkpoint import load_checkpoint, load_model_state
from .config import Config, ConfigError, apply_overrides, config_from_dict, load_config

__all__ = ["load_trained_model", "checkpoint_config", "predict_images", "draw_detections", "PALETTE"]

PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45",
           "#fabed4", "#469990", "#dcbeff", "#9a6324", "#fffac8", "#800000", "#aaffc3", "#808000"]


def checkpoint_config(checkpoint: dict[str, Any], checkpoint_path: str | Path, config: str | Path | None = None,
                      overrides: list[str] | None = None) -> Config:
    """The config of a trained model: ``config`` (a path / packaged name) if given, else the one stored in
    the checkpoint by the Trainer; ``overrides`` (``--set``) apply to either.

    Raises:
        ConfigError: no config given and the checkpoint stores none (a bare ``state_dict``).
    """
    if config is not None:
        return load_config(config, overrides)
    stored = checkpoint.get("config")
    if not isinstance(stored, dict):
        raise ConfigError(f"checkpoint '{checkpoint_path}' stores no config (a bare state_dict?): pass the config "
                          f"too, e.g. umop eval CONFIG {checkpoint_path}")
    return config_from_dict(apply_overrides(stored, overrides), source=f"config stored in '{checkpoint_path}'")


def load_trained_model(config: Config, checkpoint_path: str | Path | dict[str, Any],
                       device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Build the config's detector and load the weights of ``checkpoint_path`` (a Trainer checkpoint, or the
    dict already loaded from it).

    The detector is built without pretrained backbone weights (no download, no ``backbone_weights`` file):
    the checkpoint replaces every weight anyway. Returns ``(model in eval mode, info)`` with ``info =
    {"class_names", "label_to_category_id", "epoch"}``; the number of classes comes from the checkpoint when it
    records its class names.
    """
    if isinstance(checkpoint_path, dict):
        checkpoint, source = checkpoint_path, "checkpoint"
    else:
        checkpoint, source = load_checkpoint(checkpoint_path, map_location="cpu"), f"checkpoint '{checkpoint_path}'"
    class_names = list(checkpoint.get("class_names") or [f"class_{i}" for i in range(config.model.num_classes)])
    options = {k: v for k, v in config.model.options.items() if k != "backbone_weights"}
    model_config = dataclasses.replace(config.model, pretrained_backbone=False, options=options)
    model = build_model(model_config, num_classes=len(class_names))
    load_model_state(model, checkpoint["model"],
                     f"{source} (model '{config.model.name}', backbone '{config.model.backbone}')")
    info = {
        "class_names": class_names,
        "label_to_category_id": list(checkpoint.get("label_to_category_id") or range(1, len(class_names) + 1)),
        "epoch": checkpoint.get("epoch"),
    }
    return model.to(device).eval(), info


def score_thresholds(score_thresh: float | Sequence[float], labels: torch.Tensor) -> torch.Tensor | float:
    """The threshold of each detection: ``score_thresh`` itself, or ``score_thresh[label]`` when it is a per-class
    sequence (e.g. the LRP-optimal thresholds, ``umop predict --score-thresh lrp``)."""
    if isinstance(score_thresh, (int, float)):
        return float(score_thresh)
    return torch.as_tensor(list(score_thresh), dtype=torch.float32)[labels.long()]


def draw_detections(image: torch.Tensor, detection: dict[str, torch.Tensor], class_names: Sequence[str],
                    score_thresh: float | Sequence[float] = 0.3) -> torch.Tensor:
    """Draw boxes with ``"name score"`` captions on a ``uint8 [3, H, W]`` image; returns a new uint8 image.
    ``score_thresh``: one threshold, or one per class (indexed by label)."""
    from torchvision.utils import draw_bounding_boxes

    keep = detection["scores"] >= score_thresholds(score_thresh, detection["labels"])
    boxes = detection["boxes"][keep].float()
    labels = detection["labels"][keep].tolist()
    scores = detection["scores"][keep].tolist()
    if not len(labels):
        return image.clone()
    captions = [f"{class_names[label]} {score:.2f}" for label, score in zip(labels, scores)]
    colors = [PALETTE[label % len(PALETTE)] for label in labels]
    width = max(1, round(min(image.shape[-2:]) / 200))
    return draw_bounding_boxes(image, boxes, labels=captions, colors=colors, width=width, label_colors="white",
                               label_background_colors=colors, fill_labels=True)


@torch.no_grad()
def predict_images(model: nn.Module, image_paths: Sequence[str | Path], out_dir: str | Path, *,
                   class_names: Sequence[str], label_to_category_id: Sequence[int] | None = None,
                   min_size: int = 800, max_size: int = 1333, score_thresh: float | Sequence[float] = 0.3,
                   device: torch.device | str = "cpu", min_display_size: int = 384) -> dict[str, Any]:
    """Detect objects in image files; write one PNG per image with the boxes drawn, and a results json.

    Images are resized like the evaluation data (shorter side ``min_size``, longer ``<= max_size``); boxes
    are mapped back to the original pixels. ``OUT_DIR/results.json`` is a COCO results list (image ids are
    1..N in the given order; ``OUT_DIR/images.json`` maps them to the files). Detections below
    ``score_thresh`` (one value, or one per class) are neither drawn nor written. Pictures whose shorter side
    is below ``min_display_size`` are enlarged by an integer factor (:func:`display_scale`) so that captions
    stay readable.

    An input that cannot be read as an image (missing, corrupt, not an image: a json, ...) is skipped with a
    warning and listed under ``"skipped"``; the others are processed. Raises ``ValueError`` when none can be
    read.

    Returns ``{"results": path, "images": [png paths], "num_detections": int, "skipped": [{"file",
    "error"}]}``.
    """
    from PIL import Image
    from torchvision import tv_tensors

    from ..data import build_transforms
    from ..data.image_io import read_image_rgb
    from .inference import rescale_boxes

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    transforms = build_transforms(train=False, min_size=min_size, max_size=max_size, flip_prob=0.0)
    model.eval()
    detections, image_records, pngs = [], [], []
    skipped: list[dict[str, str]] = []
    used_names: set[str] = set()
    for path in image_paths:
        path = Path(path)
        try:
            if not path.is_file():
                raise OSError(f"image '{path}' does not exist")
            original = read_image_rgb(path)
        except OSError as error:
            skipped.append({"file": str(path), "error": str(error)})
            warnings.warn(f"predict: skipped {path}: {error}", RuntimeWarning, stacklevel=2)
            continue
        index = len(image_records)
        height, width = original.shape[-2:]
        empty = {"boxes": tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(height, width)),
                 "labels": torch.zeros(0, dtype=torch.int64)}
        image, _ = transforms(tv_tensors.Image(original), empty)
        image = image.as_subclass(torch.Tensor)
        output = model([image.to(device)])[0]
        detection = {
            "boxes": rescale_boxes(output["boxes"].float().cpu(), image.shape[-2:], (height, width)),
            "scores": output["scores"].float().cpu(),
            "labels": output["labels"].cpu(),
        }
        if "levels" in output:  # the results json keeps each detection's pyramid level ("level")
            detection["levels"] = output["levels"].cpu()
        detections.append(detection)
        image_records.append({"id": index + 1, "file_name": str(path), "width": int(width), "height": int(height)})
        name = path.stem
        while name in used_names:  # two inputs with the same stem from different folders
            name += "_"
        used_names.add(name)
        scale = display_scale(height, width, min_display_size)
        canvas = original
        if scale > 1:  # small images are enlarged (nearest neighbour) so the captions stay readable
            canvas = original.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
        shown = {**detection, "boxes": detection["boxes"] * scale}
        drawn = draw_detections(canvas, shown, class_names, score_thresh)
        png = out_dir / f"{name}.png"
        Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(png)
        pngs.append(png)
    if not image_records:
        raise ValueError(f"none of the {len(skipped)} inputs could be read as an image "
                         f"(e.g. {skipped[0]['file']}: {skipped[0]['error']})" if skipped else "no images given")
    results = detections_to_coco_results(detections, image_ids=[r["id"] for r in image_records],
                                         label_to_category_id=label_to_category_id, score_thresh=score_thresh)
    results_path = out_dir / "results.json"
    results_path.write_text(json.dumps(results))
    categories = [{"id": int(cid), "name": name} for name, cid in
                  zip(class_names, label_to_category_id or range(1, len(class_names) + 1))]
    (out_dir / "images.json").write_text(json.dumps({"images": image_records, "categories": categories,
                                                     "skipped": skipped}, indent=1))
    return {"results": results_path, "images": pngs, "num_detections": len(results), "skipped": skipped}


def display_scale(height: int, width: int, min_display_size: int = 384) -> int:
    """Integer enlargement of a picture so that its shorter side reaches ``min_display_size`` (at least 1)."""
    return max(1, -(-min_display_size // max(1, min(height, width))))


def eval_sizes(config: Config) -> tuple[int, int]:
    """``(min_size, max_size)`` used at test time by a config."""
    return test_min_size(config.data), config.data.max_size
