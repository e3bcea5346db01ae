"""Training-step speed: umop RetinaNet R50-FPN vs torchvision ``retinanet_resnet50_fpn``.

Both models get the same two images (512x512 by default) and the same targets, with the same weights
(copied from the torchvision model), the same frozen layers (stem + layer1, frozen batch norm: torchvision's
recipe with an ImageNet backbone) and no resizing. One step = forward (with loss) + backward. The two models
are timed interleaved in one process, ``--repeats`` times after a warm-up, and the medians are compared:

    python benchmarks/train_step_speed.py                      # CPU
    python benchmarks/train_step_speed.py --device cuda        # GPU

Prints ``ratio torchvision/umop`` (> 1: umop is faster). Goal: >= 1.0 on CPU, >= 1.3 on a GPU.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torchvision.models.detection import retinanet_resnet50_fpn

from timing import interleaved_times, timed
from umop.integrations.torchvision import freeze_batchnorm
from umop.models import build_detector, load_torchvision_retinanet_weights


def freeze_like_pretrained_recipe(model: torch.nn.Module) -> None:
    """BatchNorm2d -> FrozenBatchNorm2d and stem + layer1 frozen, as torchvision does with an ImageNet
    backbone (``trainable_backbone_layers=3``); with ``weights_backbone=None`` it would train every BN."""

    freeze_batchnorm(model)
    for name, parameter in model.backbone.body.named_parameters():
        if name.startswith(("conv1", "bn1", "layer1")):
            parameter.requires_grad_(False)


def make_batch(size: int, num_classes: int, device: torch.device, boxes_per_image: int = 12):
    generator = torch.Generator().manual_seed(0)
    images, targets = [], []
    for _ in range(2):
        images.append(torch.rand(3, size, size, generator=generator).to(device))
        xy = torch.rand(boxes_per_image, 2, generator=generator) * size * 0.7
        wh = 16 + torch.rand(boxes_per_image, 2, generator=generator) * size * 0.3
        boxes = torch.cat([xy, (xy + wh).clamp(max=size)], dim=1)
        labels = torch.randint(0, num_classes, (boxes_per_image,), generator=generator)
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device)})
    return images, targets


def step(model: torch.nn.Module, images, targets, device: torch.device) -> float:
    def forward_backward() -> None:
        losses = model(images, targets)
        total = sum(value for key, value in losses.items() if key != "stats")  # umop: loss_*; torchvision: 2 keys
        total.backward()

    elapsed = timed(forward_backward, device)
    model.zero_grad(set_to_none=True)
    return elapsed


def loss_path_times(umop_model, tv, images, targets, device: torch.device, repeats: int) -> dict[str, list[float]]:
    """Assignment + losses + their backward only, on the same (detached) head outputs: the part of the step
    where the two implementations differ (backbone and head are the same modules)."""
    with torch.no_grad():
        batch, _ = umop_model.preprocess(images)
        features = umop_model.backbone(batch)
        head_outputs = umop_model.head(features)
        priors, counts = umop_model.priors_for_features(features)
        image_list, tv_targets = tv.transform(images, targets)
        tv_anchors = tv.anchor_generator(image_list, features)

    def run_umop() -> None:
        outputs = {k: v.detach().requires_grad_(True) for k, v in head_outputs.items()}
        gt = umop_model._prepare_targets(targets, len(images), device)
        losses = umop_model.compute_losses(outputs, priors, umop_model.assign(priors, counts, gt), gt)
        (losses["loss_cls"] + losses["loss_box"]).backward()

    def run_tv() -> None:
        outputs = {k: v.detach().requires_grad_(True) for k, v in head_outputs.items()}
        losses = tv.compute_loss(tv_targets, outputs, tv_anchors)
        (losses["classification"] + losses["bbox_regression"]).backward()

    return interleaved_times({"umop": run_umop, "torchvision": run_tv}, repeats=repeats, warmup=1, device=device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--num-classes", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave as is)")
    parser.add_argument("--channels-last", action="store_true", help="umop backbone in channels_last")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)

    tv = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=args.num_classes,
                                nms_thresh=0.6, detections_per_img=100)
    freeze_like_pretrained_recipe(tv)
    tv.transform.resize = lambda image, target=None: (image, target)  # no resizing, like umop
    umop_model = build_detector("retinanet", args.num_classes, backbone="resnet50", channels_last=args.channels_last)
    load_torchvision_retinanet_weights(umop_model, tv)
    tv.to(device).train()
    umop_model.to(device).train()
    trainable_tv = sum(p.numel() for p in tv.parameters() if p.requires_grad)
    trainable_umop = sum(p.numel() for p in umop_model.parameters() if p.requires_grad)
    assert trainable_tv == trainable_umop, (trainable_tv, trainable_umop)

    images, targets = make_batch(args.size, args.num_classes, device)
    for _ in range(args.warmup):
        step(umop_model, images, targets, device)
        step(tv, images, targets, device)
    times = {"umop": [], "torchvision": []}
    for repeat in range(args.repeats):
        order = [("umop", umop_model), ("torchvision", tv)]
        if repeat % 2:
            order.reverse()
        for name, model in order:
            times[name].append(step(model, images, targets, device))
    median = {k: statistics.median(v) for k, v in times.items()}
    print(f"device={device} threads={torch.get_num_threads()} images=2x{args.size}x{args.size} "
          f"classes={args.num_classes} repeats={args.repeats} trainable_params={trainable_umop}")
    for name in ("umop", "torchvision"):
        print(f"{name:12s} median {median[name] * 1000:9.1f} ms   all: {[round(t * 1000, 1) for t in times[name]]}")
    print(f"ratio torchvision/umop = {median['torchvision'] / median['umop']:.3f}")
    loss_times = loss_path_times(umop_model, tv, images, targets, device, repeats=max(5, args.repeats))
    loss_median = {k: statistics.median(v) for k, v in loss_times.items()}
    print(f"loss path only (assignment + losses + backward): umop {loss_median['umop'] * 1000:.1f} ms, "
          f"torchvision {loss_median['torchvision'] * 1000:.1f} ms, "
          f"ratio torchvision/umop = {loss_median['torchvision'] / loss_median['umop']:.3f}")


if __name__ == "__main__":
    main()
