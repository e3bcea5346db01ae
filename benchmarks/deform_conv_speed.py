"""Forward + backward time of VFNet's 3x3 deformable convolution: torchvision's op vs umop's sampling form.

Both run interleaved in one process on the same tensors (a P3-sized map of a 240x320 image and a P3 map of
an 800x1333 image at 32 channels); prints the median times and torchvision / umop.

    .venv/bin/python benchmarks/deform_conv_speed.py [--repeats 7] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import statistics

import torch

from timing import interleaved_times
from umop.models.deform import deform_conv2d

SHAPES = [(2, 64, 30, 40, 64), (2, 32, 100, 167, 32)]  # (B, C, H, W, C_out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device={device} threads={torch.get_num_threads()} torch={torch.__version__}")
    generator = torch.Generator().manual_seed(0)
    for batch, channels, height, width, out_channels in SHAPES:
        x = torch.randn(batch, channels, height, width, generator=generator).to(device).requires_grad_(True)
        offset = (torch.randn(batch, 18, height, width, generator=generator) * 2).to(device).requires_grad_(True)
        weight = torch.randn(out_channels, channels, 3, 3, generator=generator).to(device).requires_grad_(True)
        def forward_backward(implementation: str):
            return lambda: deform_conv2d(x, offset, weight, implementation=implementation).square().sum().backward()

        times = interleaved_times({name: forward_backward(name) for name in ("torchvision", "sampling")},
                                  repeats=args.repeats, warmup=1, device=device)
        median = {name: statistics.median(values) for name, values in times.items()}
        shape = f"{batch}x{channels}x{height}x{width} -> {out_channels}"
        print(f"{shape}: torchvision {median['torchvision'] * 1e3:.1f} ms, "
              f"umop sampling {median['sampling'] * 1e3:.1f} ms, torchvision / umop = "
              f"{median['torchvision'] / median['sampling']:.2f}")


if __name__ == "__main__":
    main()
