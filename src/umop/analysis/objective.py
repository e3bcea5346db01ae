"""Objective imbalance: how strongly each loss pulls on the shared features.

Survey "Imbalance Problems in Object Detection" (Oksuz et al.), Sec. 7 / Fig. 14: the classification and
regression losses of a detector compete for the same features; comparing the L2 norms of their gradients at
the shared FPN features shows which objective dominates training.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn


def _feature_tensors(output: Any) -> list[torch.Tensor]:
    """Flatten a backbone output (list / tuple / dict of tensors) into a list of tensors."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, Mapping):
        return [value for value in output.values() if isinstance(value, torch.Tensor)]
    if isinstance(output, Sequence):
        return [value for value in output if isinstance(value, torch.Tensor)]
    raise TypeError(f"model.backbone returned {type(output).__name__}; expected a list of feature tensors")


def _as_leaves(output: Any) -> Any:
    """Same structure as ``output`` with every tensor replaced by a detached leaf that requires grad.

    The values are unchanged, so the forward pass is numerically identical; the gradient of a loss with
    respect to these leaves is exactly d loss / d features, and no gradient flows into the backbone.
    """
    def leaf(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.detach().requires_grad_(True) if tensor.is_floating_point() else tensor

    if isinstance(output, torch.Tensor):
        return leaf(output)
    if isinstance(output, Mapping):
        return type(output)((key, leaf(value) if isinstance(value, torch.Tensor) else value)
                            for key, value in output.items())
    if isinstance(output, tuple):
        return tuple(leaf(value) if isinstance(value, torch.Tensor) else value for value in output)
    if isinstance(output, list):
        return [leaf(value) if isinstance(value, torch.Tensor) else value for value in output]
    return output


def loss_gradient_norms(model: nn.Module, images: list[torch.Tensor],
                        targets: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """L2 norm of the gradient of every loss term with respect to the shared FPN features (survey Fig. 14).

    Args:
        model: a ``umop`` one-stage detector, possibly wrapped in ``DistributedDataParallel`` (anything with a ``backbone`` sub-module whose output is the
            list of FPN feature maps P3..P7, each ``(B, C, H_l, W_l)``, and whose train-mode call returns a
            dict of scalar losses).
        images: list of float tensors ``[3, H, W]`` in 0..1, as for ``model(images, targets)``.
        targets: list of dicts with ``boxes`` ``(N, 4)`` xyxy and ``labels`` ``(N,)``.

    Returns:
        ``{"loss_cls": norm, "loss_box": norm, ...}``: one float per key of the loss dict that starts with
        ``loss_``; ``sqrt(sum_l ||d loss / d P_l||^2)`` over all levels. A loss with no path to the features
        (e.g. a constant zero box loss on an image without boxes) gives ``0.0``.

    Side effects: none on parameters' ``.grad`` (``torch.autograd.grad`` is used, not ``backward``), no
    optimizer step; the model's train/eval mode and all its buffers are restored afterwards.
    """
    if not isinstance(getattr(model, "backbone", None), nn.Module) and isinstance(getattr(model, "module", None),
                                                                                    nn.Module):
        # DistributedDataParallel / DataParallel wrapper: measure on the wrapped detector, so that no DDP
        # gradient reduction is prepared for a backward pass that never comes.
        model = model.module
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Module):
        raise ValueError("model: loss_gradient_norms needs a model with a `backbone` sub-module "
                         "(the FPN feature extractor, see docs/ARCHITECTURE.md)")
    captured: list[Any] = []

    def capture(_module: nn.Module, _inputs: Any, output: Any) -> Any:
        replaced = _as_leaves(output)
        captured.append(replaced)
        return replaced

    was_training = model.training
    saved_buffers = {name: buffer.detach().clone() for name, buffer in model.named_buffers()}
    handle = backbone.register_forward_hook(capture)
    try:
        model.train()
        with torch.enable_grad():
            losses = model(images, targets)
            if not captured:
                raise RuntimeError("model.backbone was not called during the forward pass")
            features = [f for f in _feature_tensors(captured[-1]) if f.requires_grad]
            norms: dict[str, float] = {}
            for name, loss in losses.items():
                if not name.startswith("loss_"):
                    continue
                if not isinstance(loss, torch.Tensor) or not loss.requires_grad or not features:
                    norms[name] = 0.0
                    continue
                grads = torch.autograd.grad(loss, features, retain_graph=True, allow_unused=True)
                squared = sum(float(g.detach().double().pow(2).sum()) for g in grads if g is not None)
                norms[name] = math.sqrt(squared)
    finally:
        handle.remove()
        model.train(was_training)
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                if name in saved_buffers and saved_buffers[name].shape == buffer.shape:
                    buffer.copy_(saved_buffers[name])
    return norms


class ObjectiveLogHook:
    """Training-log hook (:mod:`umop.engine.hooks`): every ``every`` iterations, the gradient norm of each
    loss at the FPN features, logged as ``objective/grad_norm/<loss>`` (survey Fig. 14).

    ``hook(model, images, targets) -> {"objective/grad_norm/loss_cls": float, ...}``; a model without a
    ``backbone`` raises ValueError (the trainer then switches the hook off with a warning).
    """

    name = "objective"

    def __init__(self, every: int) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = int(every)
        self.enabled = True

    def __call__(self, model: nn.Module, images: list[torch.Tensor],
                 targets: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        norms = loss_gradient_norms(model, images, targets)
        return {f"objective/grad_norm/{key}": float(value) for key, value in norms.items()}


def objective_log_hooks(config: Any) -> list[ObjectiveLogHook]:
    """The hooks that config key ``log.objective_every`` asks for (none when it is 0); registered as the
    ``"objective"`` log-hook factory by ``umop/__init__.py``."""
    every = config.log.objective_every
    return [ObjectiveLogHook(every)] if every > 0 else []
