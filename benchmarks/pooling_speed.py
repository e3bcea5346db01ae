"""The ResNet stem's 3x3/2 max pooling on CPU: NCHW (torchvision's layout) vs umop's ChannelsLastMaxPool2d.

    python benchmarks/pooling_speed.py            # (4, 64, 192, 272): the ATSS-R18 BCCD benchmark batch

Prints the median forward (no gradient) and forward+backward times of both, interleaved, in float32 and bf16
(umop's pool takes the NCHW kernel when a gradient flows, so its forward+backward is torch's).
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch import nn

from timing import interleaved_times
from umop.layers import ChannelsLastMaxPool2d


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=4, default=[4, 64, 192, 272], metavar=("N", "C", "H", "W"))
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.manual_seed(0)
    pools = {"torch NCHW": nn.MaxPool2d(3, 2, 1), "umop channels_last": ChannelsLastMaxPool2d(3, 2, 1)}
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.relu(torch.randn(*args.shape)).to(dtype).requires_grad_()
        candidates = {}
        for name, pool in pools.items():
            candidates[f"{name} forward"] = lambda pool=pool: pool(x.detach())
            candidates[f"{name} forward+backward"] = lambda pool=pool: pool(x).sum().backward()
        times = {name: statistics.median(values) for name, values in
                 interleaved_times(candidates, args.repeats, 2, torch.device("cpu")).items()}
        print(f"{str(dtype).removeprefix('torch.')} {tuple(args.shape)}")
        for name, median in times.items():
            print(f"  {name:36s} {median * 1000:8.2f} ms")
        for step in ("forward", "forward+backward"):
            print(f"  ratio {step}: NCHW / umop = {times[f'torch NCHW {step}'] / times[f'umop channels_last {step}']:.2f}")


if __name__ == "__main__":
    main()
