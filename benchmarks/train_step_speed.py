"""Training-step speed, interleaved in one process: umop float32, umop under AMP, torchvision float32.

Two settings (``--model``):

- ``retinanet_r50``: umop RetinaNet R50-FPN vs torchvision ``retinanet_resnet50_fpn``, 2 images 512x512,
  80 classes, the same weights (copied from the torchvision model), the same frozen layers (stem + layer1,
  frozen BN: torchvision's recipe with an ImageNet backbone), no resizing.
- ``atss_r18``: umop ATSS R18-FPN as the BCCD recipe (from scratch, trainable BN, FPN 128, PFL, 3 classes),
  4 images 384x544 (torchvision has no ATSS: umop float32 vs umop AMP only).

One step = forward (with loss) + backward. AMP = ``torch.autocast`` with ``--amp-dtype`` (bf16 on CPU; on
CUDA bf16 or fp16, and torchvision under AMP too); the losses run in float32 either way. On a CPU without
native bf16 (no AVX512-BF16 / AMX) bf16 is emulated and many times slower: the AMP candidates are left out
(the script says so) unless ``--force-amp``. Candidates run round-robin, ``--repeats`` rounds after
``--warmup``; the medians are compared:

    python benchmarks/train_step_speed.py                               # CPU, both models
    python benchmarks/train_step_speed.py --device cuda --amp-dtype fp16

Goals (issue 12, CPU with native bf16: AVX512-BF16 or AMX): RetinaNet R50 umop bf16 >= 2.0x torchvision fp32;
ATSS-R18 umop bf16 >= 1.8x umop fp32 (``--channels-last`` also times umop with ``channels_last=True``, the
model option, and prints the goals for it). Earlier goal: torchvision fp32 / umop fp32 >= 1.0 on CPU, >= 1.3
on a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
from typing import Callable

import torch
from torchvision.models.detection import retinanet_resnet50_fpn

from timing import interleaved_times, timed
from umop.engine.amp import cpu_supports_bf16
from umop.integrations.torchvision import freeze_batchnorm
from umop.models import build_detector, load_torchvision_retinanet_weights

SETTINGS = {  # name: (images, height, width, num_classes)
    "retinanet_r50": (2, 512, 512, 80),
    "atss_r18": (4, 384, 544, 3),
}
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def freeze_like_pretrained_recipe(model: torch.nn.Module) -> None:
    """BatchNorm2d -> FrozenBatchNorm2d and stem + layer1 frozen, as torchvision does with an ImageNet
    backbone (``trainable_backbone_layers=3``); with ``weights_backbone=None`` it would train every BN."""

    freeze_batchnorm(model)
    for name, parameter in model.backbone.body.named_parameters():
        if name.startswith(("conv1", "bn1", "layer1")):
            parameter.requires_grad_(False)


def make_batch(num_images: int, height: int, width: int, num_classes: int, device: torch.device,
               boxes_per_image: int = 12):
    generator = torch.Generator().manual_seed(0)
    images, targets = [], []
    size = torch.tensor([width, height], dtype=torch.float32)
    for _ in range(num_images):
        images.append(torch.rand(3, height, width, generator=generator).to(device))
        xy = torch.rand(boxes_per_image, 2, generator=generator) * size * 0.7
        wh = 16 + torch.rand(boxes_per_image, 2, generator=generator) * size * 0.3
        boxes = torch.cat([xy, torch.minimum(xy + wh, size)], dim=1)
        labels = torch.randint(0, num_classes, (boxes_per_image,), generator=generator)
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device)})
    return images, targets


def train_step(model: torch.nn.Module, images, targets, autocast_dtype: torch.dtype | None,
               device: torch.device) -> Callable[[], None]:
    """A closure running forward (under autocast if ``autocast_dtype``) + backward, then dropping the grads."""
    def run() -> None:
        context = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
                   else contextlib.nullcontext())
        with context:
            losses = model(images, targets)
        total = sum(value for key, value in losses.items() if key != "stats")  # umop: loss_*; torchvision: 2 keys
        total.backward()
        model.zero_grad(set_to_none=True)
    return run


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


def build_models(setting: str, device: torch.device, channels_last: bool) -> dict[str, torch.nn.Module]:
    _, _, _, num_classes = SETTINGS[setting]
    torch.manual_seed(0)
    models: dict[str, torch.nn.Module] = {}
    if setting == "retinanet_r50":
        tv = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_classes,
                                    nms_thresh=0.6, detections_per_img=100)
        freeze_like_pretrained_recipe(tv)
        tv.transform.resize = lambda image, target=None: (image, target)  # no resizing, like umop
        models["umop"] = build_detector("retinanet", num_classes, backbone="resnet50")
        load_torchvision_retinanet_weights(models["umop"], tv)
        models["torchvision"] = tv
        trainable = {k: sum(p.numel() for p in m.parameters() if p.requires_grad) for k, m in models.items()}
        assert trainable["umop"] == trainable["torchvision"], trainable
    else:  # the BCCD recipe's model (src/umop/configs/bccd_atss_r18_pfl.yaml)
        models["umop"] = build_detector("atss", num_classes, backbone="resnet18", fpn_channels=128,
                                        frozen_stages=-1, backbone_norm="bn", cls_loss="pfl")
    if channels_last:
        models["umop_cl"] = build_detector(
            "retinanet", num_classes, backbone="resnet50", channels_last=True) if setting == "retinanet_r50" else \
            build_detector("atss", num_classes, backbone="resnet18", fpn_channels=128, frozen_stages=-1,
                           backbone_norm="bn", cls_loss="pfl", channels_last=True)
        models["umop_cl"].load_state_dict(models["umop"].state_dict())
    for model in models.values():
        model.to(device).train()
    return models


def run_setting(setting: str, args, device: torch.device, amp_dtype: torch.dtype | None) -> dict[str, float]:
    num_images, height, width, num_classes = SETTINGS[setting]
    height, width = (max(32, int(side * args.image_scale) // 32 * 32) for side in (height, width))
    models = build_models(setting, device, args.channels_last)
    images, targets = make_batch(num_images, height, width, num_classes, device)
    amp = args.amp_dtype
    candidates: dict[str, Callable[[], None]] = {"umop fp32": train_step(models["umop"], images, targets, None, device)}
    if amp_dtype is not None:
        candidates[f"umop {amp}"] = train_step(models["umop"], images, targets, amp_dtype, device)
    if "umop_cl" in models:
        candidates["umop fp32 channels_last"] = train_step(models["umop_cl"], images, targets, None, device)
        if amp_dtype is not None:
            candidates[f"umop {amp} channels_last"] = train_step(models["umop_cl"], images, targets, amp_dtype, device)
    if "torchvision" in models:
        candidates["torchvision fp32"] = train_step(models["torchvision"], images, targets, None, device)
        if amp_dtype is not None and device.type == "cuda":
            candidates[f"torchvision {amp}"] = train_step(models["torchvision"], images, targets, amp_dtype, device)
    print(f"\n[{setting}] {num_images} x {height}x{width}, {num_classes} classes, repeats={args.repeats}", flush=True)
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for round_index in range(args.warmup + args.repeats):  # round-robin, as timing.interleaved_times
        for name, run in candidates.items():
            elapsed = timed(run, device)
            if round_index >= args.warmup:
                times[name].append(elapsed)
            print(f"  round {round_index + 1}{' (warm-up)' if round_index < args.warmup else ''}: {name} "
                  f"{elapsed * 1000:.1f} ms", flush=True)
    median = {name: statistics.median(values) for name, values in times.items()}
    for name, values in times.items():
        print(f"  {name:28s} median {median[name] * 1000:9.1f} ms   all: {[round(t * 1000, 1) for t in values]}")

    def ratio(slow: str, fast: str, goal: float | None = None) -> None:
        if slow in median and fast in median:
            goal_text = f"   (goal >= {goal:.1f})" if goal is not None else ""
            print(f"  ratio {slow} / {fast} = {median[slow] / median[fast]:.3f}{goal_text}")

    ratio("torchvision fp32", "umop fp32")
    ratio("umop fp32", f"umop {amp}", goal=1.8 if setting == "atss_r18" else None)
    ratio("torchvision fp32", f"umop {amp}", goal=2.0 if setting == "retinanet_r50" else None)
    ratio(f"torchvision {amp}", f"umop {amp}")
    ratio("umop fp32", "umop fp32 channels_last")
    ratio(f"umop {amp}", f"umop {amp} channels_last")
    ratio("torchvision fp32", f"umop {amp} channels_last", goal=2.0 if setting == "retinanet_r50" else None)
    ratio("umop fp32", f"umop {amp} channels_last", goal=1.8 if setting == "atss_r18" else None)
    if setting == "retinanet_r50" and args.loss_path:
        loss_times = loss_path_times(models["umop"], models["torchvision"], images, targets, device,
                                     repeats=max(5, args.repeats))
        loss_median = {k: statistics.median(v) for k, v in loss_times.items()}
        print(f"  loss path only (assignment + losses + backward, fp32): umop {loss_median['umop'] * 1000:.1f} ms, "
              f"torchvision {loss_median['torchvision'] * 1000:.1f} ms, "
              f"ratio torchvision/umop = {loss_median['torchvision'] / loss_median['umop']:.3f}")
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", choices=[*SETTINGS, "all"], default="all")
    parser.add_argument("--amp-dtype", choices=[*AMP_DTYPES, "none"], default="bf16",
                        help="autocast dtype of the AMP candidates ('none': float32 only)")
    parser.add_argument("--force-amp", action="store_true",
                        help="time bf16 on a CPU without native bf16 too (emulated: very slow)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave as is)")
    parser.add_argument("--channels-last", action="store_true", help="also time umop in channels_last")
    parser.add_argument("--image-scale", type=float, default=1.0,
                        help="scale the image sizes (e.g. 0.25 for a quick dry run; figures then are not the goals')")
    parser.add_argument("--no-loss-path", dest="loss_path", action="store_false",
                        help="skip RetinaNet's loss-path-only comparison")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    amp_dtype = AMP_DTYPES.get(args.amp_dtype)
    native_bf16 = cpu_supports_bf16()
    if device.type == "cpu" and amp_dtype is not None:
        if amp_dtype == torch.float16:
            print("fp16 autocast is not a CPU training mode: AMP candidates left out")
            amp_dtype = None
        elif not native_bf16 and not args.force_amp:
            print("this CPU has no native bf16 (AVX512-BF16 / AMX): bf16 would be emulated and many times slower "
                  "than float32, so the bf16 candidates are left out (--force-amp times them anyway)")
            amp_dtype = None
    print(f"device={device} threads={torch.get_num_threads()} torch={torch.__version__} "
          f"cpu_native_bf16={native_bf16}"
          + (f" gpu={torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""))
    for setting in SETTINGS if args.model == "all" else [args.model]:
        run_setting(setting, args, device, amp_dtype)


if __name__ == "__main__":
    main()
