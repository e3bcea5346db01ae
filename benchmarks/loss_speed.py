"""Forward + backward time of the classification losses on RetinaNet-sized tensors, side by side.

2 images at 640x640, 9 anchors per location on P3-P7 (76,725 anchors per image), 80 classes: about 12.3
million logits. Prints the median time of each loss and the ratios the foundation issue asks for:
    PFL / umop focal loss       (goal <= 1.10)
    PFL / torchvision focal     (goal <= 1.00)
The three losses run interleaved in the same process, on the same tensors, so the ratios are fair.

    .venv/bin/python benchmarks/loss_speed.py [--repeats 15] [--device cpu|cuda] [--threads N]
"""
from __future__ import annotations

import argparse
import statistics

import torch
import torchvision

from timing import interleaved_times
from umop.losses import progressive_focal_loss, sigmoid_focal_loss


def retinanet_sized_inputs(device: torch.device, images: int = 2, size: int = 640, anchors_per_location: int = 9,
                           num_classes: int = 80, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    num_anchors_per_level = [(size // stride) ** 2 * anchors_per_location for stride in (8, 16, 32, 64, 128)]
    num_anchors = sum(num_anchors_per_level)
    logits = (torch.randn(images, num_anchors, num_classes, generator=generator) * 2 - 4).to(device)
    targets = torch.zeros(images, num_anchors, num_classes)
    positive_anchor = torch.rand(images, num_anchors, generator=generator) < 0.002
    positive_class = torch.randint(num_classes, (images, num_anchors), generator=generator)
    targets[positive_anchor, positive_class[positive_anchor]] = 1
    weight = (torch.rand(images, num_anchors, generator=generator) > 0.05).float()  # some ignored anchors
    avg_factor = positive_anchor.sum().clamp(min=1).float()
    return logits, targets.to(device), weight.to(device), avg_factor.to(device), num_anchors_per_level


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--size", type=int, default=640, help="image side (640: the figures above; smaller: a dry run)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    logits, targets, weight, avg_factor, num_anchors_per_level = retinanet_sized_inputs(device, size=args.size)
    print(f"device={device} threads={torch.get_num_threads()} torch={torch.__version__} "
          f"torchvision={torchvision.__version__} logits={tuple(logits.shape)} ({logits.numel() / 1e6:.1f} M)")

    def run_torchvision(x):
        loss = torchvision.ops.sigmoid_focal_loss(x, targets, reduction="none")
        return (loss * weight.unsqueeze(-1)).sum() / avg_factor

    def run_umop_focal(x):
        # the normaliser folded into the weight: the fastest way to call it (backward then needs no copy),
        # so the PFL / umop focal ratio is measured against umop's best focal loss
        return sigmoid_focal_loss(x, targets, reduction="sum", weight=weight / avg_factor)

    def run_pfl(x):
        return progressive_focal_loss(x, targets, num_anchors_per_level, weight=weight, avg_factor=avg_factor)

    def forward_backward(loss_fn):
        return lambda: loss_fn(logits.detach().requires_grad_(True)).backward()

    candidates = {"torchvision focal": run_torchvision, "umop focal": run_umop_focal, "umop PFL": run_pfl}
    # the first two rounds warm up the allocator and caches
    times = interleaved_times({name: forward_backward(fn) for name, fn in candidates.items()},
                              repeats=args.repeats, warmup=2, device=device)
    median = {name: statistics.median(values) for name, values in times.items()}
    for name, value in median.items():
        print(f"{name:>18}: {value * 1e3:8.1f} ms (median of {args.repeats}, forward + backward)")
    # Ratios of the medians, and the median of the per-round ratios (each round runs the three losses back to
    # back, so a round's ratio sees the same machine load on both sides: the steadier figure on a busy host).
    def ratio(numerator: str, denominator: str) -> str:
        per_round = statistics.median(a / b for a, b in zip(times[numerator], times[denominator]))
        return f"{median[numerator] / median[denominator]:.3f} (median of per-round ratios {per_round:.3f})"

    print(f"PFL / umop focal        = {ratio('umop PFL', 'umop focal')}  (goal <= 1.10)")
    print(f"PFL / torchvision focal = {ratio('umop PFL', 'torchvision focal')}  (goal <= 1.00)")
    print(f"umop focal / torchvision focal = {ratio('umop focal', 'torchvision focal')}")


if __name__ == "__main__":
    main()
