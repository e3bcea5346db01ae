"""Two gloo processes on CPU (batch 1 each) train exactly like one process with the same global batch 2."""

from __future__ import annotations

import os
import socket

import torch
import torch.multiprocessing as mp
from toy import ToyDataset, ToyDetector

from umop.engine import Trainer, config_from_dict


def _config(output_dir: str):
    return config_from_dict({
        "model": {"num_classes": 2},
        "solver": {"lr": 0.05, "epochs": 2, "steps": [1], "warmup_iters": 2, "weight_decay": 1e-3},
        "log": {"every": 1, "tensorboard": False, "progress_bar": False},
        "batch_size": 2, "workers": 0, "seed": 7, "device": "cpu", "output_dir": output_dir,
    })


def _train(output_dir: str) -> Trainer:
    torch.manual_seed(0)
    trainer = Trainer(_config(output_dir), model=ToyDetector(), train_dataset=ToyDataset(8))
    trainer.train()
    return trainer


def _worker(rank: int, world_size: int, port: int, output_dir: str, result_file: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from umop.engine.distributed import cleanup_distributed

    trainer = _train(output_dir)
    if rank == 0:
        torch.save({"params": [p.detach() for p in trainer.model.parameters()],
                    "iterations": trainer.iteration, "per_rank_batch": trainer.train_loader.batch_size}, result_file)
    cleanup_distributed()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_gloo_processes_match_one_process(tmp_path):
    result_file = str(tmp_path / "ddp.pt")
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / "ddp"), result_file), nprocs=2, join=True)
    ddp = torch.load(result_file)
    assert ddp["per_rank_batch"] == 1 and ddp["iterations"] == 8

    single = _train(str(tmp_path / "single"))
    assert single.train_loader.batch_size == 2 and single.iteration == 8
    for p_ddp, p_single in zip(ddp["params"], single.model.parameters()):
        torch.testing.assert_close(p_ddp, p_single.detach(), rtol=1e-5, atol=1e-6)
    torch.manual_seed(0)
    initial = ToyDetector()
    moved = any(not torch.allclose(p0, p1) for p0, p1 in zip(initial.parameters(), single.model.parameters()))
    assert moved  # the comparison is about trained parameters, not two untouched initialisations
    # rank 0 wrote the logs of the DDP run, with losses averaged over the ranks
    assert len((tmp_path / "ddp" / "log.jsonl").read_text().splitlines()) == 8
