"""Two gloo processes with one image each compute the gradient of one process holding both images.

This needs PFL's synchronised per-level gamma (``sync=True``) and loss normalisers averaged over the
processes (``mean_over_processes``, mmdetection's ``reduce_mean``): DDP then averages the per-process
gradients into exactly the single-process gradient.
"""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import umop

DETECTORS = ("retinanet", "atss", "fcos", "vfnet")


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return umop.build_detector(name, 2, backbone="resnet18", cls_loss="pfl", fpn_channels=32,
                                 cls_loss_options={"delta": 1.0})


def _batch():
    generator = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 96, 96, generator=generator) for _ in range(2)]
    targets = [  # very different positive counts on the two images
        {"boxes": torch.tensor([[8.0, 8.0, 40.0, 44.0], [50.0, 30.0, 90.0, 90.0], [10.0, 60.0, 30.0, 80.0]]),
         "labels": torch.tensor([0, 1, 1])},
        {"boxes": torch.tensor([[20.0, 20.0, 70.0, 60.0]]), "labels": torch.tensor([0])},
    ]
    return images, targets


def _gradients(model, images, targets) -> list[torch.Tensor]:
    model.train()
    losses = model(images, targets)
    total = sum(value for key, value in losses.items() if key.startswith("loss_"))
    params = [p for p in model.parameters() if p.requires_grad]
    return [g if g is not None else torch.zeros_like(p)
            for g, p in zip(torch.autograd.grad(total, params, allow_unused=True), params)]


def _worker(rank: int, port: int, result_file: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        images, targets = _batch()
        averaged = {}
        for name in DETECTORS:
            grads = _gradients(_model(name), images[rank:rank + 1], targets[rank:rank + 1])
            for grad in grads:  # what DDP does: average the gradients over the processes
                dist.all_reduce(grad)
                grad /= 2
            averaged[name] = grads
        if rank == 0:
            torch.save(averaged, result_file)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_processes_give_the_single_process_gradient(tmp_path):
    result_file = str(tmp_path / "grads.pt")
    mp.spawn(_worker, args=(_free_port(), result_file), nprocs=2, join=True)
    distributed = torch.load(result_file)
    images, targets = _batch()
    for name in DETECTORS:
        single = _gradients(_model(name), images, targets)
        assert any(g.abs().sum() > 0 for g in single)
        for grad_distributed, grad_single in zip(distributed[name], single):
            torch.testing.assert_close(grad_distributed, grad_single, rtol=1e-4, atol=1e-6, msg=name)
